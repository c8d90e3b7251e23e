// CPU kernels of the box-metric ops: loops under at::parallel_for around the
// per-element math of csrc/box_ops/box_iou_utils.h (the same functions the
// CUDA kernels call). Every loop writes disjoint outputs: race-free and
// deterministic for any thread count.
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

// ---- element-wise pair values: aligned box_iou and iou_loss ----------------
// out[i] = v(a_i, b_i)                      (weight == nullptr, is_loss == false)
// out[i] = w_i * (1 - v(a_i, b_i))           (is_loss; w_i = 1 without weight)
template <typename scalar_t, IoUMode kMode>
void pair_values_cpu(const scalar_t* a, const scalar_t* b, const scalar_t* w, bool is_loss,
                     scalar_t* out, int64_t n, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, grain_for(1), [&](int64_t begin, int64_t end) {
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

// Backward of pair_values_cpu; grad is read with stride gstride (0 or 1).
template <typename scalar_t, IoUMode kMode>
void pair_values_backward_cpu(const scalar_t* grad, int64_t gstride, const scalar_t* a,
                              const scalar_t* b, const scalar_t* w, bool is_loss,
                              scalar_t* grad_a, scalar_t* grad_b, scalar_t* grad_w, int64_t n,
                              double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, grain_for(1), [&](int64_t begin, int64_t end) {
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

// ---- box_iou -------------------------------------------------------------------

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                       bool aligned, double eps) {
  const auto shape = check_box_iou_args(boxes1, boxes2, aligned);
  const IoUMode m = parse_iou_mode(mode);
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor out = at::empty(shape.out_sizes, b1.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(b1.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = b1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = b2.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    dispatch_iou_mode(m, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      if (aligned) {
        pair_values_cpu<scalar_t, kMode>(p1, p2, nullptr, false, po, shape.n, eps);
        return;
      }
      const int64_t n = shape.n, mm = shape.m;
      constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
      const at::Tensor soa = box_columns<scalar_t, kMode>(b2, shape.batch, mm);
      const scalar_t* ps = soa.const_data_ptr<scalar_t>();
      at::parallel_for(0, shape.batch * n, grain_for(mm), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          acc_t ba[4];
          load_box(p1 + 4 * r, ba);
          const acc_t ta = angle_of<kMode>(ba);
          const scalar_t* x1 = ps + (r / n) * R * mm;
          const scalar_t *y1 = x1 + mm, *x2 = y1 + mm, *y2 = x2 + mm;
          const scalar_t* th = R == 5 ? y2 + mm : x1;  // read in CIoU mode only
          scalar_t* orow = po + r * mm;
          for (int64_t j = 0; j < mm; ++j) {
            const acc_t bb[4] = {x1[j], y1[j], x2[j], y2[j]};
            orow[j] = static_cast<scalar_t>(pair_iou_angles<acc_t, kMode, false>(
                ba, bb, ta, static_cast<acc_t>(th[j]), acc_t(eps), nullptr, nullptr));
          }
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> box_iou_backward_cpu(const at::Tensor& grad,
                                                        const at::Tensor& boxes1,
                                                        const at::Tensor& boxes2,
                                                        c10::string_view mode, bool aligned,
                                                        double eps) {
  const auto shape = check_box_iou_args(boxes1, boxes2, aligned);
  const IoUMode m = parse_iou_mode(mode);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape.out_sizes), "grad must have the shape of "
              "box_iou's output ", at::IntArrayRef(shape.out_sizes), ", got ", grad.sizes());
  check_same_dtype(grad, boxes1, "grad", "boxes1");
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor g1 = at::zeros_like(b1), g2 = at::zeros_like(b2);
  if (grad.numel() == 0) return {g1, g2};
  at::Tensor g;
  int64_t gstride;
  std::tie(g, gstride) = grad_with_stride(grad);
  AT_DISPATCH_FLOATING_TYPES(b1.scalar_type(), "box_iou_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = b1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = b2.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* pg1 = g1.mutable_data_ptr<scalar_t>();
    scalar_t* pg2 = g2.mutable_data_ptr<scalar_t>();
    dispatch_iou_mode(m, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      if (aligned) {
        pair_values_backward_cpu<scalar_t, kMode>(pg, gstride, p1, p2, nullptr, false, pg1, pg2,
                                                  nullptr, shape.n, eps);
        return;
      }
      const int64_t n = shape.n, mm = shape.m;
      constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
      const at::Tensor soa = box_columns<scalar_t, kMode>(b2, shape.batch, mm);
      const scalar_t* ps = soa.const_data_ptr<scalar_t>();
      // Pass 1, grad of boxes1: per row, the products g * d iou / d a go to a
      // scratch row (a vectorised loop over j), then are summed in order.
      at::parallel_for(0, shape.batch * n, grain_for(mm), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> scratch(4 * mm);
        for (int64_t r = begin; r < end; ++r) {
          acc_t ba[4];
          load_box(p1 + 4 * r, ba);
          const acc_t ta = angle_of<kMode>(ba);
          const scalar_t* x1 = ps + (r / n) * R * mm;
          const scalar_t *y1 = x1 + mm, *x2 = y1 + mm, *y2 = x2 + mm;
          const scalar_t* th = R == 5 ? y2 + mm : x1;
          const scalar_t* grow = pg + r * mm * gstride;
          for (int64_t j = 0; j < mm; ++j) {
            const acc_t bb[4] = {x1[j], y1[j], x2[j], y2[j]};
            acc_t ga[4], gb[4];
            pair_iou_angles<acc_t, kMode, true>(ba, bb, ta, static_cast<acc_t>(th[j]),
                                                acc_t(eps), ga, gb);
            const acc_t g = static_cast<acc_t>(grow[j * gstride]);
            for (int c = 0; c < 4; ++c) scratch[c * mm + j] = g * ga[c];
          }
          for (int c = 0; c < 4; ++c) {
            acc_t sum = 0;
            for (int64_t j = 0; j < mm; ++j) sum += scratch[c * mm + j];
            pg1[4 * r + c] = static_cast<scalar_t>(sum);
          }
        }
      });
      // Pass 2, grad of boxes2: tiles of kTile columns; rows i in order, the
      // columns of the tile in a vectorised inner loop, one accumulator each.
      constexpr int64_t kTile = 64;
      const int64_t tiles = (mm + kTile - 1) / kTile;
      at::parallel_for(0, shape.batch * tiles, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t bi = t / tiles, j0 = (t - bi * tiles) * kTile;
          const int64_t jn = std::min(kTile, mm - j0);
          acc_t acc[4][kTile] = {};
          const scalar_t* x1 = ps + bi * R * mm + j0;
          const scalar_t *y1 = x1 + mm, *x2 = y1 + mm, *y2 = x2 + mm;
          const scalar_t* th = R == 5 ? y2 + mm : x1;
          for (int64_t i = 0; i < n; ++i) {
            acc_t ba[4];
            load_box(p1 + 4 * (bi * n + i), ba);
            const acc_t ta = angle_of<kMode>(ba);
            const scalar_t* grow = pg + ((bi * n + i) * mm + j0) * gstride;
            for (int64_t jj = 0; jj < jn; ++jj) {
              const acc_t bb[4] = {x1[jj], y1[jj], x2[jj], y2[jj]};
              acc_t ga[4], gb[4];
              pair_iou_angles<acc_t, kMode, true>(ba, bb, ta, static_cast<acc_t>(th[jj]),
                                                  acc_t(eps), ga, gb);
              const acc_t g = static_cast<acc_t>(grow[jj * gstride]);
              for (int c = 0; c < 4; ++c) acc[c][jj] += g * gb[c];
            }
          }
          for (int64_t jj = 0; jj < jn; ++jj) {
            for (int c = 0; c < 4; ++c) {
              pg2[4 * (bi * mm + j0 + jj) + c] = static_cast<scalar_t>(acc[c][jj]);
            }
          }
        }
      });
    });
  });
  return {g1, g2};
}

// ---- iou_loss (element-wise, unreduced) ---------------------------------------

at::Tensor iou_loss_cpu(const at::Tensor& pred, const at::Tensor& target,
                        const c10::optional<at::Tensor>& weight, c10::string_view mode,
                        double eps) {
  check_iou_loss_args(pred, target, weight);
  const IoUMode m = parse_iou_mode(mode);
  const at::Tensor p = pred.contiguous(), t = target.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty(pred.sizes().slice(0, pred.dim() - 1), p.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "iou_loss_cpu", [&] {
    dispatch_iou_mode(m, [&](auto mode_c) {
      pair_values_cpu<scalar_t, decltype(mode_c)::value>(
          p.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
          has_w ? w.const_data_ptr<scalar_t>() : nullptr, true, out.mutable_data_ptr<scalar_t>(),
          out.numel(), eps);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const c10::optional<at::Tensor>& weight, c10::string_view mode, double eps) {
  check_iou_loss_args(pred, target, weight);
  const IoUMode m = parse_iou_mode(mode);
  const auto loss_sizes = pred.sizes().slice(0, pred.dim() - 1);
  TORCH_CHECK(grad.sizes() == loss_sizes, "grad must have the shape of the unreduced loss ",
              loss_sizes, ", got ", grad.sizes());
  const at::Tensor p = pred.contiguous(), t = target.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor gp = at::empty_like(p), gt = at::empty_like(t), gw = at::empty(loss_sizes, p.options());
  if (grad.numel() == 0) return {gp, gt, gw};
  at::Tensor g;
  int64_t gstride;
  std::tie(g, gstride) = grad_with_stride(grad);
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "iou_loss_backward_cpu", [&] {
    dispatch_iou_mode(m, [&](auto mode_c) {
      pair_values_backward_cpu<scalar_t, decltype(mode_c)::value>(
          g.const_data_ptr<scalar_t>(), gstride, p.const_data_ptr<scalar_t>(),
          t.const_data_ptr<scalar_t>(), has_w ? w.const_data_ptr<scalar_t>() : nullptr, true,
          gp.mutable_data_ptr<scalar_t>(), gt.mutable_data_ptr<scalar_t>(),
          gw.mutable_data_ptr<scalar_t>(), gw.numel(), eps);
    });
  });
  return {gp, gt, gw};
}

// ---- alignment_metric (dense (B, G, A) form) ----------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> alignment_metric_cpu(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& anchor_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
    double alpha, double beta, c10::string_view iou_mode, double inside_eps, double eps) {
  const auto s = check_alignment_metric_args(pred_scores, pred_boxes, anchor_points, gt_labels,
                                             gt_boxes, gt_mask);
  const IoUMode m = parse_iou_mode(iou_mode, "iou_mode");
  check_label_values(gt_labels, gt_mask, s.num_classes);
  const auto opts = pred_scores.options();
  at::Tensor metric = at::empty({s.batch, s.num_gts, s.num_anchors}, opts);
  at::Tensor overlaps = at::empty({s.batch, s.num_gts, s.num_anchors}, opts);
  at::Tensor inside = at::empty({s.batch, s.num_gts, s.num_anchors}, opts.dtype(at::kBool));
  if (metric.numel() == 0) return {metric, overlaps, inside};
  const at::Tensor sc = pred_scores.contiguous(), pb = pred_boxes.contiguous(),
                   ap = anchor_points.contiguous(), gl = gt_labels.contiguous(),
                   gb = gt_boxes.contiguous(), gm = gt_mask.contiguous();
  const int64_t A = s.num_anchors, C = s.num_classes, G = s.num_gts;
  AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "alignment_metric_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* psc = sc.const_data_ptr<scalar_t>();
    const scalar_t* pap = ap.const_data_ptr<scalar_t>();
    const scalar_t* pgb = gb.const_data_ptr<scalar_t>();
    const int64_t* pgl = gl.const_data_ptr<int64_t>();
    const bool* pgm = gm.const_data_ptr<bool>();
    scalar_t* pmet = metric.mutable_data_ptr<scalar_t>();
    scalar_t* pov = overlaps.mutable_data_ptr<scalar_t>();
    bool* pin = inside.mutable_data_ptr<bool>();
    dispatch_iou_mode(m, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      const at::Tensor cols = box_columns<scalar_t, kMode>(pb, s.batch, A);
      const cpu::MetricInputs<scalar_t> in{
          psc, cols.const_data_ptr<scalar_t>(), pap, pgl, pgb, pgm, G, A, C,
          make_metric_exponents<acc_t>(alpha, beta), acc_t(inside_eps), acc_t(eps)};
      at::parallel_for(0, s.batch * G, grain_for(A), [&](int64_t begin, int64_t end) {
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
  return {metric, overlaps, inside};
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("_box_iou_backward", &box_iou_backward_cpu);
  m.impl("iou_loss", &iou_loss_cpu);
  m.impl("_iou_loss_backward", &iou_loss_backward_cpu);
  m.impl("alignment_metric", &alignment_metric_cpu);
}

}  // namespace box_ops
}  // namespace tood_ext
