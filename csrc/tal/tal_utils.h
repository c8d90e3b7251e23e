// Per-element pieces of the task-aligned assignment (TAL), shared by the CPU
// kernel (csrc/cpu/tal_cpu.cpp) and the CUDA kernel (csrc/cuda/tal_cuda.cu):
// the candidate order, the top-k insertion, and the packed conflict key.
//
// Order of candidates of one GT: larger t first; equal t -> lower anchor
// index first. NaN t is never a candidate.
// Conflicts: an anchor positive for several GTs goes to the GT of largest
// overlap u compared at float32 precision; equal -> lower GT index. Both are
// folded into one 64-bit key so that the CUDA kernel can resolve them with a
// single atomicMax (order-independent, hence deterministic).
// conflict="all_gts" (ultralytics): an anchor claimed by >= 2 GTs goes to the
// argmax over ALL the image's GTs of u masked to 0 outside (inside & valid)
// pairs (all_gts_argmax below: torch.argmax's rules, first maximum, NaN above
// everything).
// min_inside_size (ultralytics' stride_val): the centre test runs against the
// GT box converted xyxy -> (centre, size) -> xyxy with sides shorter than
// min_inside_size set to it (inside_box below, ultralytics' arithmetic).
#pragma once

#include "../box_ops/box_iou_utils.h"
#include "../macros.h"

#include <cstdint>
#include <cstring>

namespace tood_ext {
namespace tal {

enum class Candidates : int { kTopkThenInside = 0, kInsideThenTopk = 1 };
enum class Conflict : int { kCandidates = 0, kAllGts = 1 };

// (t1, a1) ranks before (t2, a2)
template <typename T>
TOOD_HOST_DEVICE_INLINE bool ranks_before(T t1, int32_t a1, T t2, int32_t a2) {
  return t1 > t2 || (t1 == t2 && a1 < a2);
}

// Inserts candidate (t, a) into the ranked list (vals, idxs) of capacity k
// holding *count entries. Candidates must arrive in increasing anchor order
// per list, so a tie never displaces an entry already kept (it has the lower
// index). O(k) worst case, O(1) for the common reject.
template <typename T>
TOOD_HOST_DEVICE_INLINE void topk_insert(T* vals, int32_t* idxs, int k, int* count, T t,
                                         int32_t a) {
  if (!(t == t)) return;  // NaN
  int n = *count;
  if (n == k && !(t > vals[k - 1])) return;
  int pos = n < k ? n : k - 1;
  while (pos > 0 && vals[pos - 1] < t) {
    vals[pos] = vals[pos - 1];
    idxs[pos] = idxs[pos - 1];
    --pos;
  }
  vals[pos] = t;
  idxs[pos] = a;
  if (n < k) *count = n + 1;
}

// candidates="inside_then_topk" is ultralytics' (and PP-YOLOE's) top-k of t
// masked to 0 outside the (inside & valid) pairs, taken over all anchors,
// with equal values in anchor-index order. The inside anchors of t > 0 are
// ranked first (topk_insert); when there are n < k of them, ranks n, n + 1,
// ... go to the anchors of masked t = 0 in index order: an anchor outside
// the GT takes a rank but is no candidate, an inside anchor of t = 0 is a
// positive candidate (t = 0). An inside anchor of NaN t is skipped (never a
// candidate). ranked(a): a is one of the n; probe(a, &inside, &t, &u)
// evaluates anchor a for this GT; take(rank, a, u, inside) records a rank
// (u masked to 0 outside). O(n + k) probes, O(k) for ranked() each.
template <typename T, typename Ranked, typename Probe, typename Take>
TOOD_HOST_DEVICE_INLINE void fill_zero_metric_ranks(int64_t A, int n, int k, Ranked ranked,
                                                    Probe probe, Take take) {
  for (int64_t a = 0; a < A && n < k; ++a) {
    if (ranked(static_cast<int32_t>(a))) continue;
    bool inside;
    T t, u;
    probe(static_cast<int32_t>(a), &inside, &t, &u);
    if (inside && !(t == T(0))) continue;  // NaN (every inside t > 0 is ranked)
    take(n, static_cast<int32_t>(a), inside ? u : T(0), inside);
    ++n;
  }
}

// Is anchor a among the first n entries of idxs?
TOOD_HOST_DEVICE_INLINE bool in_list(const int32_t* idxs, int n, int32_t a) {
  for (int s = 0; s < n; ++s) {
    if (idxs[s] == a) return true;
  }
  return false;
}

// Conflict key of a claim of GT g with overlap u: float32 bits of u (u >= 0,
// so its bits order like the value) over the complement of g (lower g wins).
// Never 0, so 0 marks an anchor nobody claimed.
template <typename T>
TOOD_HOST_DEVICE_INLINE uint64_t claim_key(T u, int64_t g) {
  const float uf = u > T(0) ? static_cast<float>(u) : 0.0f;  // also maps -0 and NaN to +0
  uint32_t bits;
  memcpy(&bits, &uf, sizeof(bits));
  return (static_cast<uint64_t>(bits) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(g));
}

TOOD_HOST_DEVICE_INLINE int64_t claim_gt(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

// The box of the centre test. min_size <= 0: the GT itself. Otherwise
// ultralytics' select_candidates_in_gts: xyxy2xywh, each side < min_size set
// to min_size, xywh2xyxy, in the same operation order (c = (lo + hi) / 2,
// w = hi - lo, lo' = c - w / 2, hi' = c + w / 2), so that in float32 the box,
// and hence the test, is bit for bit ultralytics'. Every step is an add or
// an exact halving, so FMA contraction cannot change it.
template <typename T>
TOOD_HOST_DEVICE_INLINE void inside_box(const T gt[4], T min_size, T out[4]) {
  if (!(min_size > T(0))) {
    out[0] = gt[0];
    out[1] = gt[1];
    out[2] = gt[2];
    out[3] = gt[3];
    return;
  }
  for (int d = 0; d < 2; ++d) {
    const T lo = gt[d], hi = gt[d + 2];
    const T c = (lo + hi) / T(2);
    T w = hi - lo;
    w = w < min_size ? min_size : w;
    const T half = w / T(2);
    out[d] = c - half;
    out[d + 2] = c + half;
  }
}

// torch.argmax's order on one value: v replaces the best so far when it is
// larger, or NaN over a number (the first NaN wins, as the first maximum).
template <typename T>
TOOD_HOST_DEVICE_INLINE bool argmax_beats(T v, T best) {
  const bool best_nan = !(best == best);
  return !best_nan && (v > best || !(v == v));
}

// NaN-propagating max (torch.amax's), for the per-GT maxima of t and u.
template <typename T>
TOOD_HOST_DEVICE_INLINE T max_nan(T a, T b) {
  return (!(a == a) || a >= b) ? a : b;
}

// conflict="all_gts": the GT of anchor a (image b) by ultralytics' rule, the
// argmax over all G GTs of u masked to 0 where the centre is not inside the
// (widened) GT or the GT is padding; the first maximum wins, so an all-zero
// column gives GT 0 (padding or not). Writes the masked u and t's inputs of
// the winner: *u_out and *inside_out (valid & inside); t is the caller's
// (it needs the score). Geom: the box geometry (tal_geometry.h); pred: the
// anchor's predicted box; gt_at(g): the image's GT g as a Geom::Gt, ready for
// the overlap, or (kFinish) still to be finished (only inside GTs are);
// mask: the image's (G,) GT mask.
template <typename Geom, bool kFinish, typename T, typename GtAt>
TOOD_HOST_DEVICE_INLINE int64_t all_gts_argmax(const typename Geom::Pred& pred, T px, T py,
                                               GtAt&& gt_at, const bool* mask, int64_t G, T eps,
                                               T inside_eps, T* u_out, bool* inside_out) {
  int64_t best_g = 0;
  T best_u = T(0);
  bool best_in = false;
  for (int64_t g = 0; g < G; ++g) {
    T u = T(0);
    bool in = false;
    if (mask[g]) {
      auto&& gt = gt_at(g);
      in = Geom::inside(gt, px, py, inside_eps);
      if (in) {
        if constexpr (kFinish) Geom::finish_gt(gt);
        u = Geom::overlap(pred, gt, eps);
      }
    }
    if (g == 0 || argmax_beats(u, best_u)) {
      best_g = g;
      best_u = u;
      best_in = in;
    }
  }
  *u_out = best_u;
  *inside_out = best_in;
  return best_g;
}

// Slot s in [0, K) of the candidate list (idx, pos) holding positive anchor a,
// or -1 (conflict="all_gts": did the winner pick the anchor itself?).
TOOD_HOST_DEVICE_INLINE int find_slot(const int32_t* idx, const bool* pos, int64_t K, int32_t a) {
  for (int64_t s = 0; s < K; ++s) {
    if (pos[s] && idx[s] == a) return static_cast<int>(s);
  }
  return -1;
}

}  // namespace tal
}  // namespace tood_ext
