// CPU kernels of the box-metric ops: loops under at::parallel_for around the
// per-element math of csrc/box_ops/box_iou_utils.h (the same functions the
// CUDA kernels call). Every loop writes disjoint outputs: race-free and
// deterministic for any thread count. Argument checks, contiguous inputs and
// outputs come from the ops' contracts (csrc/box_ops/box_ops.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../box_ops/box_ops.h"
#include "cpu_utils.h"

namespace tood_ext {
namespace box_ops {
namespace {

using cpu::angle_of;
using cpu::box_columns;
using cpu::grain_for;

// ---- element-wise pair values: aligned box_iou and iou_loss (PairValues) ----

// The dtype and IoU-mode dispatch of a CPU kernel: fn(scalar_t{}, mode constant).
template <typename Fn>
void dispatch_cpu(const at::Tensor& t, IoUMode mode, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "box_ops_cpu", [&] {
    dispatch_iou_mode(mode, [&](auto mode_c) { fn(scalar_t{}, mode_c); });
  });
}

template <typename scalar_t, IoUMode kMode>
void pair_values_cpu(const PairValues<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *a = p.a, *b = p.b, *w = p.w;
  scalar_t* out = p.out;
  const bool is_loss = p.is_loss;
  const double eps = p.eps;
  at::parallel_for(0, p.n, grain_for(1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t ba[4], bb[4];
      load_box(a + 4 * i, ba);
      load_box(b + 4 * i, bb);
      const acc_t v = pair_iou<acc_t, kMode, false>(ba, bb, acc_t(eps), nullptr, nullptr);
      const acc_t wi = w ? static_cast<acc_t>(w[i]) : acc_t(1);
      out[i] = static_cast<scalar_t>(is_loss ? wi * (acc_t(1) - v) : v);
    }
  });
}

template <typename scalar_t, IoUMode kMode>
void pair_values_cpu(const PairValueGrads<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *grad = p.grad, *a = p.a, *b = p.b, *w = p.w;
  scalar_t *grad_a = p.grad_a, *grad_b = p.grad_b, *grad_w = p.grad_w;
  const int64_t gstride = p.gstride;
  const bool is_loss = p.is_loss;
  const double eps = p.eps;
  at::parallel_for(0, p.n, grain_for(1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t ba[4], bb[4], ga[4], gb[4];
      load_box(a + 4 * i, ba);
      load_box(b + 4 * i, bb);
      const acc_t v = pair_iou<acc_t, kMode, true>(ba, bb, acc_t(eps), ga, gb);
      const acc_t g = static_cast<acc_t>(grad[i * gstride]);
      const acc_t wi = w ? static_cast<acc_t>(w[i]) : acc_t(1);
      const acc_t k = is_loss ? -g * wi : g;
      for (int c = 0; c < 4; ++c) {
        grad_a[4 * i + c] = static_cast<scalar_t>(k * ga[c]);
        grad_b[4 * i + c] = static_cast<scalar_t>(k * gb[c]);
      }
      if (grad_w) grad_w[i] = static_cast<scalar_t>(g * (acc_t(1) - v));
    }
  });
}

// ---- pairwise box_iou: a row box of boxes1 against columns of boxes2 -------------

// The box_columns of one image's boxes2 from column j0 on.
template <typename scalar_t, IoUMode kMode>
struct Columns {
  static constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
  const scalar_t *x1, *y1, *x2, *y2, *th;  // th: the aspect angles, read in CIoU mode only
  Columns(const scalar_t* soa, int64_t image, int64_t m, int64_t j0)
      : x1(soa + image * R * m + j0), y1(x1 + m), x2(y1 + m), y2(x2 + m),
        th(R == 5 ? y2 + m : x1) {}
};

// A box of boxes1 with its aspect angle (CIoU); pair(j) is its IoU-family
// value with column j (and, for kGrad, both boxes' gradients into ga, gb).
template <typename scalar_t, IoUMode kMode>
struct RowBox {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t box[4];
  acc_t angle;
  acc_t eps;
  TOOD_HOST_DEVICE_INLINE RowBox(const scalar_t* p, double eps_) : eps(acc_t(eps_)) {
    load_box(p, box);
    angle = angle_of<kMode>(box);
  }
  // always inlined: the loops over j below vectorise only with the pair math in them
  template <bool kGrad>
  TOOD_HOST_DEVICE_INLINE acc_t pair(const Columns<scalar_t, kMode>& c, int64_t j, acc_t* ga,
                                     acc_t* gb) const {
    const acc_t bb[4] = {c.x1[j], c.y1[j], c.x2[j], c.y2[j]};
    return pair_iou_angles<acc_t, kMode, kGrad>(box, bb, angle, static_cast<acc_t>(c.th[j]), eps,
                                                ga, gb);
  }
};

template <typename scalar_t, IoUMode kMode>
void box_iou_pairwise(const BoxIouContract& c) {
  const int64_t n = c.n, mm = c.m;
  const scalar_t* p1 = c.boxes1.const_data_ptr<scalar_t>();
  scalar_t* po = c.out.mutable_data_ptr<scalar_t>();
  const at::Tensor soa = box_columns<scalar_t, kMode>(c.boxes2, c.batch, mm);
  const scalar_t* ps = soa.const_data_ptr<scalar_t>();
  at::parallel_for(0, c.batch * n, grain_for(mm), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const RowBox<scalar_t, kMode> row(p1 + 4 * r, c.eps);
      const Columns<scalar_t, kMode> cols(ps, r / n, mm, 0);
      scalar_t* orow = po + r * mm;
      for (int64_t j = 0; j < mm; ++j) {
        orow[j] = static_cast<scalar_t>(row.template pair<false>(cols, j, nullptr, nullptr));
      }
    }
  });
}

template <typename scalar_t, IoUMode kMode>
void box_iou_pairwise(const BoxIouBackwardContract& c) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = c.n, mm = c.m, gstride = c.grad_stride;
  const scalar_t* p1 = c.boxes1.const_data_ptr<scalar_t>();
  const scalar_t* pg = c.grad.const_data_ptr<scalar_t>();
  scalar_t* pg1 = c.grad_boxes1.mutable_data_ptr<scalar_t>();
  scalar_t* pg2 = c.grad_boxes2.mutable_data_ptr<scalar_t>();
  const at::Tensor soa = box_columns<scalar_t, kMode>(c.boxes2, c.batch, mm);
  const scalar_t* ps = soa.const_data_ptr<scalar_t>();
  // Pass 1, grad of boxes1: per row, the products g * d iou / d a go to a
  // scratch row (a vectorised loop over j), then are summed in order.
  at::parallel_for(0, c.batch * n, grain_for(mm), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(4 * mm);
    for (int64_t r = begin; r < end; ++r) {
      const RowBox<scalar_t, kMode> row(p1 + 4 * r, c.eps);
      const Columns<scalar_t, kMode> cols(ps, r / n, mm, 0);
      const scalar_t* grow = pg + r * mm * gstride;
      for (int64_t j = 0; j < mm; ++j) {
        acc_t ga[4], gb[4];
        row.template pair<true>(cols, j, ga, gb);
        const acc_t g = static_cast<acc_t>(grow[j * gstride]);
        for (int k = 0; k < 4; ++k) scratch[k * mm + j] = g * ga[k];
      }
      for (int k = 0; k < 4; ++k) {
        acc_t sum = 0;
        for (int64_t j = 0; j < mm; ++j) sum += scratch[k * mm + j];
        pg1[4 * r + k] = static_cast<scalar_t>(sum);
      }
    }
  });
  // Pass 2, grad of boxes2: tiles of kTile columns; rows i in order, the
  // columns of the tile in a vectorised inner loop, one accumulator each.
  constexpr int64_t kTile = 64;
  const int64_t tiles = (mm + kTile - 1) / kTile;
  at::parallel_for(0, c.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / tiles, j0 = (t - bi * tiles) * kTile;
      const int64_t jn = std::min(kTile, mm - j0);
      acc_t acc[4][kTile] = {};
      const Columns<scalar_t, kMode> cols(ps, bi, mm, j0);
      for (int64_t i = 0; i < n; ++i) {
        const RowBox<scalar_t, kMode> row(p1 + 4 * (bi * n + i), c.eps);
        const scalar_t* grow = pg + ((bi * n + i) * mm + j0) * gstride;
        for (int64_t jj = 0; jj < jn; ++jj) {
          acc_t ga[4], gb[4];
          row.template pair<true>(cols, jj, ga, gb);
          const acc_t g = static_cast<acc_t>(grow[jj * gstride]);
          for (int k = 0; k < 4; ++k) acc[k][jj] += g * gb[k];
        }
      }
      for (int64_t jj = 0; jj < jn; ++jj) {
        for (int k = 0; k < 4; ++k) {
          pg2[4 * (bi * mm + j0 + jj) + k] = static_cast<scalar_t>(acc[k][jj]);
        }
      }
    }
  });
}

// ---- the kernels of the contracts (csrc/box_ops/box_ops.h) -------------------------
// Each: the dtype and mode dispatch, then the loops above.

// box_iou and its backward: the element-wise loop when aligned, else the
// pairwise passes.
template <typename Contract>
void box_iou_cpu(const Contract& c) {
  dispatch_cpu(c.boxes1, c.mode, [&](auto s, auto m) {
    using scalar_t = decltype(s);
    if (c.aligned) {
      pair_values_cpu<scalar_t, decltype(m)::value>(pair_values<scalar_t>(c));
    } else {
      box_iou_pairwise<scalar_t, decltype(m)::value>(c);
    }
  });
}

// iou_loss (element-wise, unreduced) and its backward.
template <typename Contract>
void iou_loss_cpu(const Contract& c) {
  dispatch_cpu(c.pred, c.mode, [&](auto s, auto m) {
    pair_values_cpu<decltype(s), decltype(m)::value>(pair_values<decltype(s)>(c));
  });
}

void alignment_metric_cpu(const AlignmentMetricContract& c) {
  const int64_t A = c.shape.num_anchors, C = c.shape.num_classes, G = c.shape.num_gts;
  const at::Tensor &sc = c.pred_scores, &pb = c.pred_boxes, &ap = c.anchor_points,
                   &gl = c.gt_labels, &gb = c.gt_boxes, &gm = c.gt_mask;
  const double alpha = c.alpha, beta = c.beta, inside_eps = c.inside_eps, eps = c.eps;
  AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "alignment_metric_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* psc = sc.const_data_ptr<scalar_t>();
    const scalar_t* pap = ap.const_data_ptr<scalar_t>();
    const scalar_t* pgb = gb.const_data_ptr<scalar_t>();
    const int64_t* pgl = gl.const_data_ptr<int64_t>();
    const bool* pgm = gm.const_data_ptr<bool>();
    scalar_t* pmet = c.metric.mutable_data_ptr<scalar_t>();
    scalar_t* pov = c.overlaps.mutable_data_ptr<scalar_t>();
    bool* pin = c.inside.mutable_data_ptr<bool>();
    dispatch_iou_mode(c.mode, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      const at::Tensor cols = box_columns<scalar_t, kMode>(pb, c.shape.batch, A);
      const cpu::MetricInputs<scalar_t> in{
          psc, cols.const_data_ptr<scalar_t>(), pap, pgl, pgb, pgm, G, A, C,
          make_metric_exponents<acc_t>(alpha, beta), acc_t(inside_eps), acc_t(eps)};
      at::parallel_for(0, c.shape.batch * G, grain_for(A), [&](int64_t begin, int64_t end) {
        for (int64_t bg = begin; bg < end; ++bg) {
          scalar_t* met_row = pmet + bg * A;
          scalar_t* ov_row = pov + bg * A;
          bool* in_row = pin + bg * A;
          if (pgm[bg]) {
            cpu::metric_row<scalar_t, kMode>(in, bg, met_row, ov_row, in_row);
          } else {  // padding GT: metric 0, overlap 0, not inside
            std::fill(met_row, met_row + A, scalar_t(0));
            std::fill(ov_row, ov_row + A, scalar_t(0));
            std::fill(in_row, in_row + A, false);
          }
        }
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  register_box_ops<box_iou_cpu<BoxIouContract>, box_iou_cpu<BoxIouBackwardContract>,
                   iou_loss_cpu<IouLossContract>, iou_loss_cpu<IouLossBackwardContract>,
                   alignment_metric_cpu>(m);
}

}  // namespace box_ops
}  // namespace tood_ext
