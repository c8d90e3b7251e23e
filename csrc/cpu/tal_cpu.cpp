// CPU kernel of task_aligned_assign and task_aligned_assign_rotated: never a
// (B, G, A) tensor. Its phases carry the names of the CUDA kernel's
// (csrc/cuda/tal_cuda.cu), each a function below, templated on the box
// geometry (csrc/tal/tal_geometry.h; CpuGeom adds its vectorised row loops);
// the argument checks, contiguous inputs and background outputs come from
// the contract (csrc/tal/tal.h).
//   1. candidates (candidates_pass), per (image, GT), in parallel: overlap u
//      and the centre test of all anchors into a per-thread scratch row
//      (alignment_metric's vectorised loop; the centre test redone against
//      the widened box when min_inside_size > 0), then t for the anchors that
//      can rank and the top-k candidates by insertion (csrc/tal/tal_utils.h):
//      topk_then_inside_row, or inside_then_topk_row (the inside anchors of
//      t > 0, then the ranks of masked t = 0 in anchor order,
//      fill_zero_metric_ranks);
//   then per image (image_passes), in parallel over images, in anchor-sized
//   per-thread rows, race-free:
//   2. claims (claims_image): each positive candidate, GTs in order, counts
//      its anchor and keeps the claim of largest packed (u, GT) key with its
//      slot;
//   3. resolve (resolve_image): each claimed anchor's final GT (the key's, or
//      for conflict="all_gts" and >= 2 claims the argmax over all G GTs,
//      all_gts_argmax, recomputing u and the centre test against the image's
//      GTs prepared once per image); t and u from the
//      winner's slot, recomputed when the winner did not pick it; then the
//      per-GT maxima of t and u over the final positives (gt_maxima);
//   4. outputs (outputs_image): the outputs of each positive anchor.
// Extra memory: candidates (B, G, k) x (index, t, u, flag); per thread
// (threads <= cores) scratch rows of A (u, centre test, claim key, slot,
// count, final GT, t, u) and of G (maxima, prepared GTs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "../tal/tal.h"
#include "cpu_utils.h"

namespace tood_ext {
namespace tal {
namespace {

using box_ops::IoUMode;

// The CPU side of a geometry: the predicted boxes as structure-of-arrays
// columns (batch, R, A) that the row loops read contiguously, and those loops
// (the centre test of every anchor, the overlap of a span of anchors).
template <typename scalar_t, typename Geom>
struct CpuGeom;

// Axis-aligned: the vectorised loops of alignment_metric (cpu_utils.h),
// columns x1, y1, x2, y2 (and the CIoU aspect angle).
template <typename scalar_t, typename T, IoUMode kMode>
struct CpuGeom<scalar_t, AxisAlignedGeometry<T, kMode>> {
  using Geom = AxisAlignedGeometry<T, kMode>;
  static constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
  static at::Tensor columns(const at::Tensor& boxes, int64_t B, int64_t A) {
    return cpu::box_columns<scalar_t, kMode>(boxes, B, A);
  }
  static void inside_row(const cpu::MetricInputs<scalar_t>& in, const typename Geom::Gt& g,
                         bool* in_row) {
    cpu::inside_row(in, g.ib, in_row);
  }
  static void overlap_span(const cpu::MetricInputs<scalar_t>& in, const scalar_t* cols,
                           const typename Geom::Gt& g, int64_t begin, int64_t end,
                           scalar_t* u_out) {
    cpu::overlap_span<scalar_t, kMode>(in, cols, g.box, g.theta, begin, end, u_out);
  }
  static typename Geom::Pred pred_at(const scalar_t* cols, int64_t A, int64_t a) {
    const scalar_t* col = cols + a;
    return {{col[0], col[A], col[2 * A], col[3 * A]}, R == 5 ? static_cast<T>(col[4 * A]) : T(0)};
  }
};

// Rotated: columns of each predicted box's prepared Gaussian (probiou::Obb:
// x, y, a, b, c, det, det clamped), computed once per box instead of once per
// pair; the loops call the geometry's per-element functions.
template <typename scalar_t, typename T>
struct CpuGeom<scalar_t, RotatedGeometry<T>> {
  using Geom = RotatedGeometry<T>;
  static constexpr int64_t R = 7;
  static at::Tensor columns(const at::Tensor& boxes, int64_t B, int64_t A) {
    at::Tensor soa = at::empty({B, R, A}, boxes.options());
    const scalar_t* src = boxes.const_data_ptr<scalar_t>();
    scalar_t* dst = soa.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, cpu::grain_for(A), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* d = dst + b * R * A;
        for (int64_t a = 0; a < A; ++a) {
          const probiou::Obb<T> o = Geom::load_pred(src + 5 * (b * A + a)).obb;
          const T v[R] = {o.x, o.y, o.a, o.b, o.cab, o.det, o.det_c};
          for (int64_t r = 0; r < R; ++r) d[r * A + a] = static_cast<scalar_t>(v[r]);
        }
      }
    });
    return soa;
  }
  static void inside_row(const cpu::MetricInputs<scalar_t>& in, const typename Geom::Gt& g,
                         bool* in_row) {
    const scalar_t* points = in.points;
    const RotatedFrame<T> f = g.frame;
    for (int64_t a = 0; a < in.num_anchors; ++a) {
      in_row[a] = rotated_inside(f, static_cast<T>(points[2 * a]),
                                 static_cast<T>(points[2 * a + 1]));
    }
  }
  static typename Geom::Pred pred_at(const scalar_t* cols, int64_t A, int64_t a) {
    const scalar_t* col = cols + a;
    typename Geom::Pred q;
    q.obb = {col[0], col[A], col[2 * A], col[3 * A], col[4 * A], col[5 * A], col[6 * A], T(0)};
    return q;
  }
  static void overlap_span(const cpu::MetricInputs<scalar_t>& in, const scalar_t* cols,
                           const typename Geom::Gt& g, int64_t begin, int64_t end,
                           scalar_t* u_out) {
    const int64_t A = in.num_anchors;
    const T eps = in.eps;
    for (int64_t a = begin; a < end; ++a) {
      u_out[a] = static_cast<scalar_t>(Geom::overlap(pred_at(cols, A, a), g, eps));
    }
  }
};

// What the passes read and write: the metric inputs (with the predicted
// boxes' columns), the (B, G, K) candidate slots and the outputs.
template <typename scalar_t, typename Geom>
struct Passes {
  using acc_t = at::opmath_type<scalar_t>;
  using CG = CpuGeom<scalar_t, Geom>;
  static constexpr int64_t R = CG::R;
  static constexpr int64_t W = Geom::kWidth;
  cpu::MetricInputs<scalar_t> in;
  int64_t B, G, A, K;
  bool inside_first, all_gts;
  bool all_anchors;  // topk_then_inside ranks every anchor (beta <= 0), not only u > 0
  acc_t min_size;
  acc_t norm_eps;
  // candidate slots, (B, G, K)
  int32_t* cand_idx;
  bool* cand_pos;
  scalar_t* cand_t;
  scalar_t* cand_u;
  // outputs, (B, A) (boxes (B, A, W))
  int64_t* o_assigned;
  bool* o_fg;
  int64_t* o_labels;
  scalar_t* o_boxes;
  scalar_t* o_iou;
  scalar_t* o_metric;
  scalar_t* o_soft;

  // GT bg prepared for the centre test and the overlap
  typename Geom::Gt gt(int64_t bg) const {
    typename Geom::Gt g = Geom::load_gt(in.gt_boxes + W * bg, min_size);
    Geom::finish_gt(g);
    return g;
  }
};

// ---- 1. candidates -------------------------------------------------------------------

// Per-thread rows of phase 1: u and the centre test of every anchor, the top-k list.
template <typename scalar_t>
struct CandidateScratch {
  std::vector<scalar_t> u_store;
  std::unique_ptr<bool[]> in_store;
  std::vector<scalar_t> vals;
  std::vector<int32_t> idxs;
  scalar_t* u_row;
  bool* in_row;
  CandidateScratch(int64_t A, int64_t K)
      : u_store(A), in_store(new bool[A]), vals(K), idxs(K), u_row(u_store.data()),
        in_row(in_store.get()) {}
};

// "topk_then_inside": the top-k of t over the anchors that can rank (with
// beta > 0 an anchor whose box misses the GT has t = 0 or NaN, never a
// positive, so only anchors with u > 0 are ranked); positive: t > 0 and inside.
template <typename scalar_t, typename Geom>
void topk_then_inside_row(const Passes<scalar_t, Geom>& p, const cpu::MetricInputs<scalar_t> in,
                          int64_t bg, CandidateScratch<scalar_t>& s) {
  using CG = typename Passes<scalar_t, Geom>::CG;
  const int64_t A = p.A, K = p.K;
  const bool all_anchors = p.all_anchors;
  scalar_t* u_row = s.u_row;
  bool* in_row = s.in_row;
  const typename Geom::Gt gt = p.gt(bg);
  CG::overlap_span(in, in.box_cols + (bg / p.G) * p.R * A, gt, 0, A, u_row);
  CG::inside_row(in, gt, in_row);  // against the (widened) box of the centre test
  // the top-k list in locals: the hot loop keeps its pointers in registers
  scalar_t* vals = s.vals.data();
  int32_t* idxs = s.idxs.data();
  const int k = static_cast<int>(K);
  int count = 0;
  for (int64_t a = 0; a < A; ++a) {
    if (!(all_anchors || u_row[a] > 0)) continue;
    const scalar_t t = static_cast<scalar_t>(cpu::metric_of(in, bg, a, u_row[a]));
    topk_insert(vals, idxs, k, &count, t, static_cast<int32_t>(a));
  }
  for (int i = 0; i < count; ++i) {
    const int32_t a = idxs[i];
    p.cand_idx[bg * K + i] = a;
    p.cand_t[bg * K + i] = vals[i];
    p.cand_u[bg * K + i] = u_row[a];
    p.cand_pos[bg * K + i] = vals[i] > scalar_t(0) && in_row[a];
  }
}

// "inside_then_topk": the centre test first (vectorised), then u (vectorised)
// and t of the spans of inside anchors only (a GT holds a small share of the
// anchors, in runs along the grid rows); the top-k of the inside anchors of
// t > 0, then the ranks of masked t = 0 in anchor order.
template <typename scalar_t, typename Geom>
void inside_then_topk_row(const Passes<scalar_t, Geom>& p, const cpu::MetricInputs<scalar_t> in,
                          int64_t bg, CandidateScratch<scalar_t>& s) {
  using CG = typename Passes<scalar_t, Geom>::CG;
  const int64_t A = p.A, K = p.K;
  const typename Geom::Gt gt = p.gt(bg);
  CG::inside_row(in, gt, s.in_row);
  const int64_t b = bg / p.G;
  const scalar_t* img_cols = in.box_cols + b * p.R * A;
  const scalar_t* class_scores = in.scores + b * A * in.num_classes + in.labels[bg];
  scalar_t* vals = s.vals.data();  // locals: the hot loop keeps them in registers
  int32_t* idxs = s.idxs.data();
  scalar_t* u_row = s.u_row;
  const int k = static_cast<int>(K);
  int count = 0;
  cpu::for_each_true_span(s.in_row, A, [&](int64_t begin, int64_t end) {
    CG::overlap_span(in, img_cols, gt, begin, end, u_row);
    for (int64_t a = begin; a < end; ++a) {
      const scalar_t t = static_cast<scalar_t>(cpu::metric_at(in, class_scores, a, u_row[a]));
      if (t > scalar_t(0)) {  // t = 0 anchors take their ranks below
        topk_insert(vals, idxs, k, &count, t, static_cast<int32_t>(a));
      }
    }
  });
  for (int i = 0; i < count; ++i) {
    p.cand_idx[bg * K + i] = s.idxs[i];
    p.cand_t[bg * K + i] = s.vals[i];
    p.cand_u[bg * K + i] = s.u_row[s.idxs[i]];
    p.cand_pos[bg * K + i] = true;
  }
  // fewer than K inside anchors of t > 0: the masked t = 0 ranks
  fill_zero_metric_ranks<scalar_t>(
      A, count, static_cast<int>(K),
      [&](int32_t a) { return in_list(s.idxs.data(), count, a); },
      [&](int32_t a, bool* inside, scalar_t* t, scalar_t* u) {
        *inside = s.in_row[a];
        *u = *inside ? s.u_row[a] : scalar_t(0);
        *t = *inside ? static_cast<scalar_t>(cpu::metric_at(in, class_scores, a, s.u_row[a]))
                     : scalar_t(0);
      },
      [&](int i, int32_t a, scalar_t u, bool inside) {
        p.cand_idx[bg * K + i] = a;
        p.cand_t[bg * K + i] = scalar_t(0);
        p.cand_u[bg * K + i] = u;
        p.cand_pos[bg * K + i] = inside;
      });
}

template <typename scalar_t, typename Geom>
void candidates_pass(const Passes<scalar_t, Geom>& p) {
  at::parallel_for(0, p.B * p.G, cpu::grain_for(p.A), [&](int64_t begin, int64_t end) {
    CandidateScratch<scalar_t> scratch(p.A, p.K);
    for (int64_t bg = begin; bg < end; ++bg) {
      if (!p.in.gt_mask[bg]) continue;  // padding GT: its slots stay -1 / false
      // in: a local copy of the metric inputs (by value), provably unchanged by stores
      if (p.inside_first) {
        inside_then_topk_row(p, p.in, bg, scratch);
      } else {
        topk_then_inside_row(p, p.in, bg, scratch);
      }
    }
  });
}

// ---- 2.-4. per image: claims, resolve, outputs ---------------------------------------

template <typename scalar_t, typename Geom>
struct ImageScratch {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<uint64_t> key;    // the largest claim key of each anchor
  std::vector<int64_t> slot;    // its candidate slot
  std::vector<int32_t> count;   // claims of each anchor
  std::vector<int64_t> fin_gt;  // the final GT (-1: background)
  std::vector<acc_t> fin_t, fin_u, max_t, max_u;
  std::vector<typename Geom::Gt> gts;  // the image's GTs, prepared (conflict="all_gts")
  ImageScratch(int64_t A, int64_t G, bool all_gts)
      : key(A), slot(A), count(A), fin_gt(A), fin_t(A), fin_u(A), max_t(G), max_u(G),
        gts(all_gts ? G : 0) {}
};

// 2. claims, GTs in order; the largest key wins (ties impossible: g is in it)
template <typename scalar_t, typename Geom>
void claims_image(const Passes<scalar_t, Geom>& p, int64_t b, ImageScratch<scalar_t, Geom>& s) {
  const int64_t G = p.G, K = p.K;
  std::fill(s.key.begin(), s.key.end(), uint64_t(0));
  std::fill(s.count.begin(), s.count.end(), 0);
  for (int64_t i = b * G * K; i < (b + 1) * G * K; ++i) {
    if (!p.cand_pos[i]) continue;
    const int32_t a = p.cand_idx[i];
    ++s.count[a];
    const uint64_t k = claim_key(p.cand_u[i], (i / K) % G);
    if (k > s.key[a]) {
      s.key[a] = k;
      s.slot[a] = i;
    }
  }
}

// 3a. the final GT, t and u of each claimed anchor
template <typename scalar_t, typename Geom>
void resolve_image(const Passes<scalar_t, Geom>& p, int64_t b, ImageScratch<scalar_t, Geom>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  using CG = typename Passes<scalar_t, Geom>::CG;
  const cpu::MetricInputs<scalar_t> in = p.in;  // a local copy: provably unchanged by stores
  const int64_t A = p.A, G = p.G, K = p.K, R = p.R;
  bool gts_ready = false;  // the image's GTs, prepared at the first anchor that needs them
  for (int64_t a = 0; a < A; ++a) {
    s.fin_gt[a] = -1;
    if (s.count[a] == 0) continue;
    if (!p.all_gts || s.count[a] == 1) {
      s.fin_gt[a] = claim_gt(s.key[a]);
      s.fin_t[a] = p.cand_t[s.slot[a]];
      s.fin_u[a] = p.cand_u[s.slot[a]];
      continue;
    }
    if (!gts_ready) {
      for (int64_t g = 0; g < G; ++g) {
        if (in.gt_mask[b * G + g]) s.gts[g] = p.gt(b * G + g);
      }
      gts_ready = true;
    }
    const typename Geom::Pred pred = CG::pred_at(in.box_cols + b * R * A, A, a);
    acc_t u;
    bool inside;
    const int64_t w = all_gts_argmax<Geom, false>(
        pred, static_cast<acc_t>(in.points[2 * a]), static_cast<acc_t>(in.points[2 * a + 1]),
        [&](int64_t g) -> const typename Geom::Gt& { return s.gts[g]; }, in.gt_mask + b * G, G,
        in.eps, in.inside_eps, &u, &inside);
    s.fin_gt[a] = w;
    const int64_t row = (b * G + w) * K;
    const int s_w = find_slot(p.cand_idx + row, p.cand_pos + row, K, static_cast<int32_t>(a));
    if (s_w >= 0) {  // the winner picked it: its stored t and u
      s.fin_t[a] = p.cand_t[row + s_w];
      s.fin_u[a] = p.cand_u[row + s_w];
    } else {  // masked values: 0 unless inside the valid winner
      s.fin_u[a] = u;
      s.fin_t[a] = inside ? static_cast<acc_t>(cpu::metric_of(in, b * G + w, a, u)) : acc_t(0);
    }
  }
}

// 3b. the maxima of t and u over each GT's final positives
template <typename scalar_t, typename Geom>
void gt_maxima(int64_t A, ImageScratch<scalar_t, Geom>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  std::fill(s.max_t.begin(), s.max_t.end(), -std::numeric_limits<acc_t>::infinity());
  std::fill(s.max_u.begin(), s.max_u.end(), -std::numeric_limits<acc_t>::infinity());
  for (int64_t a = 0; a < A; ++a) {
    const int64_t g = s.fin_gt[a];
    if (g < 0) continue;
    s.max_t[g] = max_nan(s.max_t[g], s.fin_t[a]);
    s.max_u[g] = max_nan(s.max_u[g], s.fin_u[a]);
  }
}

// 4. the outputs of each positive anchor
template <typename scalar_t, typename Geom>
void outputs_image(const Passes<scalar_t, Geom>& p, int64_t b,
                   const ImageScratch<scalar_t, Geom>& s) {
  constexpr int64_t W = Geom::kWidth;
  const int64_t A = p.A, G = p.G;
  for (int64_t a = 0; a < A; ++a) {
    const int64_t g = s.fin_gt[a];
    if (g < 0) continue;
    const int64_t ba = b * A + a, bg = b * G + g;
    p.o_assigned[ba] = g;
    p.o_fg[ba] = true;
    p.o_labels[ba] = p.in.labels[bg];
    for (int64_t c = 0; c < W; ++c) p.o_boxes[W * ba + c] = p.in.gt_boxes[W * bg + c];
    p.o_iou[ba] = static_cast<scalar_t>(s.fin_u[a]);
    p.o_metric[ba] = static_cast<scalar_t>(s.fin_t[a]);
    p.o_soft[ba] = static_cast<scalar_t>(s.fin_t[a] * s.max_u[g] / (s.max_t[g] + p.norm_eps));
  }
}

template <typename scalar_t, typename Geom>
void image_passes(const Passes<scalar_t, Geom>& p) {
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    ImageScratch<scalar_t, Geom> scratch(p.A, p.G, p.all_gts);
    for (int64_t b = begin; b < end; ++b) {
      claims_image(p, b, scratch);
      resolve_image(p, b, scratch);
      gt_maxima(p.A, scratch);
      outputs_image(p, b, scratch);
    }
  });
}

// ---- the kernel of the contract (both ops) ---------------------------------------------

void task_aligned_assign_cpu(const TALContract& c) {
  const int64_t B = c.shape.batch, A = c.shape.num_anchors, G = c.shape.num_gts,
                C = c.shape.num_classes, K = c.K;
  const auto opts = c.pred_scores.options();
  const at::Tensor cand_idx = at::full({B, G, K}, -1, opts.dtype(at::kInt));
  const at::Tensor cand_pos = at::zeros({B, G, K}, opts.dtype(at::kBool));
  const at::Tensor cand_t = at::empty({B, G, K}, opts);
  const at::Tensor cand_u = at::empty({B, G, K}, opts);
  const auto& [assigned, fg, labels, boxes, ious, metrics, soft] = c.out;
  AT_DISPATCH_FLOATING_TYPES(c.pred_scores.scalar_type(), "task_aligned_assign_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_geometry<acc_t>(c.rotated, c.mode, [&](auto geom) {
      using Geom = decltype(geom);
      const at::Tensor cols = CpuGeom<scalar_t, Geom>::columns(c.pred_boxes, B, A);
      const bool inside_first = c.candidates == Candidates::kInsideThenTopk;
      const Passes<scalar_t, Geom> p{
          {c.pred_scores.const_data_ptr<scalar_t>(), cols.const_data_ptr<scalar_t>(),
           c.anchor_points.const_data_ptr<scalar_t>(), c.gt_labels.const_data_ptr<int64_t>(),
           c.gt_boxes.const_data_ptr<scalar_t>(), c.gt_mask.const_data_ptr<bool>(), G, A, C,
           box_ops::make_metric_exponents<acc_t>(c.alpha, c.beta), acc_t(c.inside_eps),
           acc_t(c.eps)},
          B, G, A, K, inside_first, c.conflict == Conflict::kAllGts,
          !inside_first && !(c.beta > 0.0), static_cast<acc_t>(c.min_inside_size),
          acc_t(c.norm_eps),
          cand_idx.mutable_data_ptr<int32_t>(), cand_pos.mutable_data_ptr<bool>(),
          cand_t.mutable_data_ptr<scalar_t>(), cand_u.mutable_data_ptr<scalar_t>(),
          assigned.mutable_data_ptr<int64_t>(), fg.mutable_data_ptr<bool>(),
          labels.mutable_data_ptr<int64_t>(), boxes.mutable_data_ptr<scalar_t>(),
          ious.mutable_data_ptr<scalar_t>(), metrics.mutable_data_ptr<scalar_t>(),
          soft.mutable_data_ptr<scalar_t>()};
      candidates_pass(p);
      image_passes(p);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("task_aligned_assign", &task_aligned_assign_op<task_aligned_assign_cpu, kNoTopkLimit>);
  m.impl("task_aligned_assign_rotated",
         &task_aligned_assign_rotated_op<task_aligned_assign_cpu, kNoTopkLimit>);
}

}  // namespace tal
}  // namespace tood_ext
