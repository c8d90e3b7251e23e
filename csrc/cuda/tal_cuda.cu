// CUDA kernel of task_aligned_assign and task_aligned_assign_rotated, never a
// (B, G, A) tensor; every kernel is templated on the box geometry
// (csrc/tal/tal_geometry.h: axis-aligned IoU family, or rotated ProbIoU):
//   1. candidates: a warp per (image, GT). Each lane scans anchors lane,
//      lane + 32, ... computing t, u and the centre test (the geometry's
//      inside and overlap: shared math with the CPU kernel) and
//      keeps its own ranked top-k (registers / local memory, tal_utils.h's
//      insertion); then k rounds of a warp-wide arg-best over the 32 list
//      heads (shuffles) merge them in rank order; for "inside_then_topk"
//      with fewer than k inside anchors of t > 0, lane 0 then gives the
//      remaining ranks to the anchors of masked t = 0 in index order.
//   2. claims: a thread per (image, GT, slot); each positive candidate
//      atomicMax-es its packed (u, GT) key into the anchor's claim (and, for
//      conflict="all_gts", atomicAdd-s the anchor's claim count).
//   3. resolve: a thread per (image, anchor) with a claim: its final GT (the
//      key's, or for "all_gts" with >= 2 claims the argmax over all G GTs,
//      tal_utils.h's all_gts_argmax, recomputing u and the centre test), its
//      t and u (the winner's slot, recomputed when the winner did not pick
//      it), and an atomicMax of both into the GT's maxima (order-preserving
//      integer images of the floats, NaN on top).
//   4. outputs: a thread per (image, anchor).
// Every atomic is a max (or a count), order-independent: deterministic.
// Extra memory: candidates (B, G, k) x (index, t, u, flag), claims, counts
// and final t, u (B, A), maxima (B, G) x 2. topk <= 64 on CUDA. The argument
// checks, contiguous inputs and background outputs come from the contract
// (csrc/tal/tal.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <limits>

#include "../tal/tal.h"
#include "cuda_utils.cuh"

namespace tood_ext {
namespace tal {
namespace {

constexpr int kMaxTopkCuda = 64;

template <typename scalar_t>
struct Inputs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* scores;
  const scalar_t* boxes;
  const scalar_t* points;
  const int64_t* labels;
  const scalar_t* gt_boxes;
  const bool* gt_mask;
  int64_t rows, num_gts, num_anchors, num_classes;
  int topk;
  bool inside_first;
  box_ops::MetricExponents<acc_t> expo;
  acc_t inside_eps, eps, min_size;
};

// Order-preserving unsigned image of a float (for atomicMax): negative values
// bit-inverted, positive ones with the sign bit set; NaN maps to the top, as
// max_nan ranks it. 0 lies below every image, the "no positive yet" value.
template <typename T>
struct Ordered;
template <>
struct Ordered<float> {
  using type = unsigned int;
};
template <>
struct Ordered<double> {
  using type = unsigned long long;
};

template <typename T>
__device__ __forceinline__ typename Ordered<T>::type to_ordered(T v) {
  using U = typename Ordered<T>::type;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  if (!(v == v)) return ~U(0);
  U bits;
  memcpy(&bits, &v, sizeof(U));
  return (bits & sign) ? ~bits : (bits | sign);
}

template <typename T>
__device__ __forceinline__ T from_ordered(typename Ordered<T>::type o) {
  using U = typename Ordered<T>::type;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  if (o == ~U(0)) return std::numeric_limits<T>::quiet_NaN();
  const U bits = (o & sign) ? (o & ~sign) : ~o;
  T v;
  memcpy(&v, &bits, sizeof(U));
  return v;
}

template <typename scalar_t, typename Geom, int KMAX>
__global__ void __launch_bounds__(kThreads)
    tal_candidates_kernel(const Inputs<scalar_t> in, int32_t* __restrict__ cand_idx,
                          at::opmath_type<scalar_t>* __restrict__ cand_t,
                          at::opmath_type<scalar_t>* __restrict__ cand_u,
                          bool* __restrict__ cand_pos) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t bg = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (bg >= in.rows || !in.gt_mask[bg]) return;  // whole warps; slots stay -1 / false
  const int64_t A = in.num_anchors, b = bg / in.num_gts, K = in.topk;
  constexpr int W = Geom::kWidth;
  // the GT, prepared for the centre test (widened by min_size) and the overlap
  typename Geom::Gt gt = Geom::load_gt(in.gt_boxes + W * bg, in.min_size);
  Geom::finish_gt(gt);
  const scalar_t* score_col = in.scores + b * A * in.num_classes + in.labels[bg];
  const scalar_t* boxes = in.boxes + b * A * W;

  // t, u and the centre test of anchor a for this GT
  auto evaluate = [&](int64_t a, acc_t& t, acc_t& u, bool& inside) {
    const typename Geom::Pred pred = Geom::load_pred(boxes + W * a);
    u = Geom::overlap(pred, gt, in.eps);
    t = box_ops::alignment_metric_value(static_cast<acc_t>(score_col[a * in.num_classes]), u,
                                        in.expo);
    inside = Geom::inside(gt, static_cast<acc_t>(in.points[2 * a]),
                          static_cast<acc_t>(in.points[2 * a + 1]), in.inside_eps);
  };

  acc_t vals[KMAX];
  int32_t idxs[KMAX];
  int count = 0;
  for (int64_t a = lane; a < A; a += 32) {
    acc_t t, u;
    bool inside;
    evaluate(a, t, u, inside);
    // inside_then_topk ranks the inside anchors of t > 0; t = 0 ranks below
    if (in.inside_first && !(inside && t > acc_t(0))) continue;
    topk_insert(vals, idxs, static_cast<int>(K), &count, t, static_cast<int32_t>(a));
  }

  // Merge the 32 ranked lists: each round, the best head over the warp (a
  // butterfly, so every lane agrees) is taken and its lane pops it.
  const acc_t none_t = -std::numeric_limits<acc_t>::infinity();
  const int32_t none_a = std::numeric_limits<int32_t>::max();
  int head = 0;
  int r = 0;
  for (; r < K; ++r) {
    const bool has = head < count;
    acc_t best_t = has ? vals[head] : none_t;
    int32_t best_a = has ? idxs[head] : none_a;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const acc_t other_t = __shfl_xor_sync(0xffffffffu, best_t, offset);
      const int32_t other_a = __shfl_xor_sync(0xffffffffu, best_a, offset);
      if (ranks_before(other_t, other_a, best_t, best_a)) {
        best_t = other_t;
        best_a = other_a;
      }
    }
    if (best_a == none_a) break;  // every list is exhausted (uniform over the warp)
    if (has && idxs[head] == best_a) ++head;
    if (lane == 0) {
      acc_t t, u;
      bool inside;
      evaluate(best_a, t, u, inside);
      const int64_t slot = bg * K + r;
      cand_idx[slot] = best_a;
      cand_t[slot] = best_t;
      cand_u[slot] = u;
      cand_pos[slot] = best_t > acc_t(0) && inside;
    }
  }
  // inside_then_topk with fewer than K inside anchors of t > 0: the ranks of
  // masked t = 0, in anchor order, by lane 0 (it wrote the r ranked slots)
  if (in.inside_first && r < K && lane == 0) {
    int32_t* idx_row = cand_idx + bg * K;
    fill_zero_metric_ranks<acc_t>(
        A, r, static_cast<int>(K), [&](int32_t a) { return in_list(idx_row, r, a); },
        [&](int32_t a, bool* inside, acc_t* t, acc_t* u) {
          evaluate(a, *t, *u, *inside);
          if (!*inside) *t = *u = acc_t(0);
        },
        [&](int s, int32_t a, acc_t u, bool inside) {
          idx_row[s] = a;
          cand_t[bg * K + s] = acc_t(0);
          cand_u[bg * K + s] = u;
          cand_pos[bg * K + s] = inside;
        });
  }
}

template <typename acc_t>
__global__ void tal_claim_kernel(const int32_t* __restrict__ cand_idx,
                                 const acc_t* __restrict__ cand_u,
                                 const bool* __restrict__ cand_pos, int64_t total, int64_t G,
                                 int64_t K, int64_t A, unsigned long long* __restrict__ claims,
                                 int* __restrict__ counts) {
  for (int64_t i = global_thread<int64_t>(); i < total; i += grid_stride<int64_t>()) {
    if (!cand_pos[i]) continue;
    const int64_t bg = i / K;
    const int64_t b = bg / G, g = bg - b * G;
    const int64_t ba = b * A + cand_idx[i];
    atomicMax(claims + ba, static_cast<unsigned long long>(claim_key(cand_u[i], g)));
    if (counts != nullptr) atomicAdd(counts + ba, 1);
  }
}

template <typename scalar_t, typename Geom>
__global__ void tal_resolve_kernel(const Inputs<scalar_t> in,
                                   const int32_t* __restrict__ cand_idx,
                                   const at::opmath_type<scalar_t>* __restrict__ cand_t,
                                   const at::opmath_type<scalar_t>* __restrict__ cand_u,
                                   const bool* __restrict__ cand_pos,
                                   const unsigned long long* __restrict__ claims,
                                   const int* __restrict__ counts, int64_t total,
                                   int64_t* __restrict__ o_assigned,
                                   at::opmath_type<scalar_t>* __restrict__ fin_t,
                                   at::opmath_type<scalar_t>* __restrict__ fin_u,
                                   typename Ordered<at::opmath_type<scalar_t>>::type* max_t,
                                   typename Ordered<at::opmath_type<scalar_t>>::type* max_u) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t A = in.num_anchors, G = in.num_gts, K = in.topk;
  constexpr int W = Geom::kWidth;
  for (int64_t ba = global_thread<int64_t>(); ba < total; ba += grid_stride<int64_t>()) {
    const unsigned long long key = claims[ba];
    if (key == 0) continue;  // nobody's positive
    const int64_t b = ba / A, a = ba - b * A;
    int64_t w = claim_gt(key);
    acc_t u_w = acc_t(0);
    bool inside_w = false;
    if (counts != nullptr && counts[ba] >= 2) {  // conflict="all_gts"
      const typename Geom::Pred pred = Geom::load_pred(in.boxes + W * ba);
      const scalar_t* gts = in.gt_boxes + W * b * G;
      const acc_t min_size = in.min_size;
      w = all_gts_argmax<Geom, true>(
          pred, static_cast<acc_t>(in.points[2 * a]), static_cast<acc_t>(in.points[2 * a + 1]),
          [&](int64_t g) { return Geom::load_gt(gts + W * g, min_size); }, in.gt_mask + b * G,
          G, in.eps, in.inside_eps, &u_w, &inside_w);
    }
    const int64_t bg = b * G + w, row = bg * K;
    const int s = find_slot(cand_idx + row, cand_pos + row, K, static_cast<int32_t>(a));
    acc_t t, u;
    if (s >= 0) {  // the winner picked it (always so for conflict="candidates")
      t = cand_t[row + s];
      u = cand_u[row + s];
    } else {  // masked values: 0 unless inside the valid winner
      u = u_w;
      t = inside_w ? box_ops::alignment_metric_value(
                         static_cast<acc_t>(in.scores[ba * in.num_classes + in.labels[bg]]), u_w,
                         in.expo)
                   : acc_t(0);
    }
    o_assigned[ba] = w;
    fin_t[ba] = t;
    fin_u[ba] = u;
    atomicMax(max_t + bg, to_ordered(t));
    atomicMax(max_u + bg, to_ordered(u));
  }
}

template <typename scalar_t, int W>
__global__ void tal_outputs_kernel(const int64_t* __restrict__ assigned,
                                   const at::opmath_type<scalar_t>* __restrict__ fin_t,
                                   const at::opmath_type<scalar_t>* __restrict__ fin_u,
                                   const typename Ordered<at::opmath_type<scalar_t>>::type* max_t,
                                   const typename Ordered<at::opmath_type<scalar_t>>::type* max_u,
                                   const int64_t* __restrict__ labels,
                                   const scalar_t* __restrict__ gt_boxes, int64_t total, int64_t G,
                                   int64_t A, double norm_eps, bool* o_fg, int64_t* o_labels,
                                   scalar_t* o_boxes, scalar_t* o_iou, scalar_t* o_metric,
                                   scalar_t* o_soft) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t ba = global_thread<int64_t>(); ba < total; ba += grid_stride<int64_t>()) {
    const int64_t g = assigned[ba];
    if (g < 0) continue;
    const int64_t bg = (ba / A) * G + g;
    const acc_t denom = from_ordered<acc_t>(max_t[bg]) + static_cast<acc_t>(norm_eps);
    const acc_t t = fin_t[ba];
    o_fg[ba] = true;
    o_labels[ba] = labels[bg];
#pragma unroll
    for (int c = 0; c < W; ++c) o_boxes[W * ba + c] = gt_boxes[W * bg + c];
    o_iou[ba] = static_cast<scalar_t>(fin_u[ba]);
    o_metric[ba] = static_cast<scalar_t>(t);
    o_soft[ba] = static_cast<scalar_t>(t * from_ordered<acc_t>(max_u[bg]) / denom);
  }
}

void task_aligned_assign_cuda(const TALContract& c) {
  const DeviceGuard guard(c.pred_scores.device());
  const int64_t B = c.shape.batch, A = c.shape.num_anchors, G = c.shape.num_gts,
                C = c.shape.num_classes, K = c.K;
  const at::Tensor &sc = c.pred_scores, &pb = c.pred_boxes, &ap = c.anchor_points,
                   &gl = c.gt_labels, &gb = c.gt_boxes, &gm = c.gt_mask;
  const auto acc_opts = sc.options().dtype(at::toOpMathType(sc.scalar_type()));
  at::Tensor cand_idx = at::full({B, G, K}, -1, sc.options().dtype(at::kInt));
  at::Tensor cand_pos = at::zeros({B, G, K}, sc.options().dtype(at::kBool));
  at::Tensor cand_t = at::empty({B, G, K}, acc_opts);
  at::Tensor cand_u = at::empty({B, G, K}, acc_opts);
  at::Tensor claims = at::zeros({B, A}, sc.options().dtype(at::kLong));
  auto* p_claims = reinterpret_cast<unsigned long long*>(claims.mutable_data_ptr<int64_t>());
  const bool all_gts = c.conflict == Conflict::kAllGts;
  at::Tensor counts;  // claims per anchor, conflict="all_gts" only
  if (all_gts) counts = at::zeros({B, A}, sc.options().dtype(at::kInt));
  int* p_counts = all_gts ? counts.mutable_data_ptr<int>() : nullptr;
  at::Tensor fin_t = at::empty({B, A}, acc_opts), fin_u = at::empty({B, A}, acc_opts);
  // per-GT maxima as Ordered<acc_t> images (same width as acc_t), 0 = none yet
  const auto ord_dtype = at::toOpMathType(sc.scalar_type()) == at::kDouble ? at::kLong : at::kInt;
  at::Tensor max_t = at::zeros({B, G}, sc.options().dtype(ord_dtype));
  at::Tensor max_u = at::zeros({B, G}, sc.options().dtype(ord_dtype));
  const int64_t rows = B * G;
  const cudaStream_t stream = current_stream();
  const auto& [assigned, fg, labels, boxes, ious, metrics, soft] = c.out;

  TOOD_DISPATCH_CUDA_FLOATING_TYPES(sc.scalar_type(), "task_aligned_assign_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using ord_t = typename Ordered<acc_t>::type;
    static_assert(sizeof(ord_t) == sizeof(acc_t), "Ordered<acc_t> must match acc_t's width");
    auto* p_max_t = static_cast<ord_t*>(max_t.mutable_data_ptr());
    auto* p_max_u = static_cast<ord_t*>(max_u.mutable_data_ptr());
    const Inputs<scalar_t> in{sc.const_data_ptr<scalar_t>(), pb.const_data_ptr<scalar_t>(),
                              ap.const_data_ptr<scalar_t>(), gl.const_data_ptr<int64_t>(),
                              gb.const_data_ptr<scalar_t>(), gm.const_data_ptr<bool>(),
                              rows, G, A, C, static_cast<int>(K),
                              c.candidates == Candidates::kInsideThenTopk,
                              box_ops::make_metric_exponents<acc_t>(c.alpha, c.beta),
                              acc_t(c.inside_eps), acc_t(c.eps), acc_t(c.min_inside_size)};
    const int64_t total = rows * K, anchors = B * A;
    dispatch_geometry<acc_t>(c.rotated, c.mode, [&](auto geom) {
      using Geom = decltype(geom);
      const int64_t blocks = (rows * 32 + kThreads - 1) / kThreads;
      if (K <= 16) {
        launch_kernel(tal_candidates_kernel<scalar_t, Geom, 16>, blocks, kThreads, stream, in,
                      cand_idx.mutable_data_ptr<int32_t>(), cand_t.mutable_data_ptr<acc_t>(),
                      cand_u.mutable_data_ptr<acc_t>(), cand_pos.mutable_data_ptr<bool>());
      } else {
        launch_kernel(tal_candidates_kernel<scalar_t, Geom, kMaxTopkCuda>, blocks, kThreads,
                      stream, in, cand_idx.mutable_data_ptr<int32_t>(),
                      cand_t.mutable_data_ptr<acc_t>(), cand_u.mutable_data_ptr<acc_t>(),
                      cand_pos.mutable_data_ptr<bool>());
      }
      launch_kernel(tal_claim_kernel<acc_t>, num_blocks(total), kThreads, stream,
                    cand_idx.const_data_ptr<int32_t>(), cand_u.const_data_ptr<acc_t>(),
                    cand_pos.const_data_ptr<bool>(), total, G, K, A, p_claims, p_counts);
      launch_kernel(tal_resolve_kernel<scalar_t, Geom>, num_blocks(anchors), kThreads, stream, in,
                    cand_idx.const_data_ptr<int32_t>(), cand_t.const_data_ptr<acc_t>(),
                    cand_u.const_data_ptr<acc_t>(), cand_pos.const_data_ptr<bool>(), p_claims,
                    p_counts, anchors, assigned.mutable_data_ptr<int64_t>(),
                    fin_t.mutable_data_ptr<acc_t>(), fin_u.mutable_data_ptr<acc_t>(), p_max_t,
                    p_max_u);
      launch_kernel(tal_outputs_kernel<scalar_t, Geom::kWidth>, num_blocks(anchors), kThreads,
                    stream, assigned.const_data_ptr<int64_t>(), fin_t.const_data_ptr<acc_t>(),
                    fin_u.const_data_ptr<acc_t>(), p_max_t, p_max_u,
                    gl.const_data_ptr<int64_t>(), gb.const_data_ptr<scalar_t>(), anchors, G, A,
                    c.norm_eps, fg.mutable_data_ptr<bool>(), labels.mutable_data_ptr<int64_t>(),
                    boxes.mutable_data_ptr<scalar_t>(), ious.mutable_data_ptr<scalar_t>(),
                    metrics.mutable_data_ptr<scalar_t>(), soft.mutable_data_ptr<scalar_t>());
    });
  });
}

}  // namespace

TOOD_EXT_CUDA_IMPL(m) {
  m.impl("task_aligned_assign", &task_aligned_assign_op<task_aligned_assign_cuda, kMaxTopkCuda>);
  m.impl("task_aligned_assign_rotated",
         &task_aligned_assign_rotated_op<task_aligned_assign_cuda, kMaxTopkCuda>);
}

}  // namespace tal
}  // namespace tood_ext
