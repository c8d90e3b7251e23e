// CUDA kernels of the box-metric ops. The per-element math is the one of
// csrc/box_ops/box_iou_utils.h, shared with the CPU kernels.
//
// Design:
// * forward (pairwise, aligned, loss, metric): one thread per output element,
//   grid-stride loops, 32-bit indexing unless the sizes need 64-bit.
// * pairwise backward: no atomics. grad(boxes1) is a warp per row (lanes over
//   columns, fixed-order shuffle reduction); grad(boxes2) a block per 32
//   columns (threads over rows, fixed-order shared-memory reduction). Each
//   pair is recomputed in both passes instead of storing (N, M) partials, so
//   results are bit-for-bit deterministic.
// * half/bfloat16 are loaded, computed in float32 (at::opmath_type), stored.
// * launches use the current stream under a device guard and are checked.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../box_ops/box_ops.h"
#include "cuda_utils.cuh"

namespace tood_ext {
namespace box_ops {
namespace {

// ---- element-wise pair values (aligned box_iou, iou_loss) ----------------------

template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void pair_values_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                   const scalar_t* __restrict__ w, bool is_loss,
                                   scalar_t* __restrict__ out, index_t n,
                                   at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = global_thread<index_t>(); i < n; i += grid_stride<index_t>()) {
    acc_t ba[4], bb[4];
    load_box(a + 4 * i, ba);
    load_box(b + 4 * i, bb);
    const acc_t v = pair_iou<acc_t, kMode, false>(ba, bb, eps, nullptr, nullptr);
    const acc_t wi = w ? static_cast<acc_t>(w[i]) : acc_t(1);
    out[i] = static_cast<scalar_t>(is_loss ? wi * (acc_t(1) - v) : v);
  }
}

template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void pair_values_backward_kernel(const scalar_t* __restrict__ grad, index_t gstride,
                                            const scalar_t* __restrict__ a,
                                            const scalar_t* __restrict__ b,
                                            const scalar_t* __restrict__ w, bool is_loss,
                                            scalar_t* __restrict__ grad_a,
                                            scalar_t* __restrict__ grad_b,
                                            scalar_t* __restrict__ grad_w, index_t n,
                                            at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = global_thread<index_t>(); i < n; i += grid_stride<index_t>()) {
    acc_t ba[4], bb[4], ga[4], gb[4];
    load_box(a + 4 * i, ba);
    load_box(b + 4 * i, bb);
    const acc_t v = pair_iou<acc_t, kMode, true>(ba, bb, eps, ga, gb);
    const acc_t g = static_cast<acc_t>(grad[i * gstride]);
    const acc_t wi = w ? static_cast<acc_t>(w[i]) : acc_t(1);
    const acc_t k = is_loss ? -g * wi : g;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      grad_a[4 * i + c] = static_cast<scalar_t>(k * ga[c]);
      grad_b[4 * i + c] = static_cast<scalar_t>(k * gb[c]);
    }
    if (grad_w) grad_w[i] = static_cast<scalar_t>(g * (acc_t(1) - v));
  }
}

template <typename scalar_t, IoUMode kMode>
void launch_pair_values(const scalar_t* a, const scalar_t* b, const scalar_t* w, bool is_loss,
                        scalar_t* out, int64_t n, double eps, cudaStream_t stream) {
  with_kernel_index_type(4 * n, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(pair_values_kernel<scalar_t, kMode, index_t>, num_blocks(n), kThreads, stream, a,
                  b, w, is_loss, out, static_cast<index_t>(n),
                  static_cast<at::opmath_type<scalar_t>>(eps));
  });
}

template <typename scalar_t, IoUMode kMode>
void launch_pair_values_backward(const scalar_t* grad, int64_t gstride, const scalar_t* a,
                                 const scalar_t* b, const scalar_t* w, bool is_loss,
                                 scalar_t* grad_a, scalar_t* grad_b, scalar_t* grad_w, int64_t n,
                                 double eps, cudaStream_t stream) {
  with_kernel_index_type(4 * n, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(pair_values_backward_kernel<scalar_t, kMode, index_t>, num_blocks(n), kThreads,
                  stream, grad, static_cast<index_t>(gstride), a, b, w, is_loss, grad_a, grad_b,
                  grad_w, static_cast<index_t>(n), static_cast<at::opmath_type<scalar_t>>(eps));
  });
}

// ---- pairwise box_iou -----------------------------------------------------------

template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void box_iou_pairwise_kernel(const scalar_t* __restrict__ b1,
                                        const scalar_t* __restrict__ b2,
                                        scalar_t* __restrict__ out, index_t n, index_t m,
                                        index_t total, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = global_thread<index_t>(); idx < total; idx += grid_stride<index_t>()) {
    const index_t r = idx / m;  // row of boxes1 over the flattened batch
    const index_t j = idx - r * m;
    acc_t ba[4], bb[4];
    load_box(b1 + 4 * r, ba);
    load_box(b2 + 4 * ((r / n) * m + j), bb);
    out[idx] = static_cast<scalar_t>(pair_iou<acc_t, kMode, false>(ba, bb, eps, nullptr, nullptr));
  }
}

// grad(boxes1)[r] = sum_j grad[r, j] * d iou(r, j) / d boxes1[r]: a warp per row.
template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void box_iou_backward_rows_kernel(const scalar_t* __restrict__ grad, index_t gstride,
                                             const scalar_t* __restrict__ b1,
                                             const scalar_t* __restrict__ b2,
                                             scalar_t* __restrict__ g1, index_t rows, index_t n,
                                             index_t m, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31;
  const index_t warps_per_block = blockDim.x >> 5;
  const index_t warp = static_cast<index_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
  const index_t warp_stride = static_cast<index_t>(gridDim.x) * warps_per_block;
  for (index_t r = warp; r < rows; r += warp_stride) {
    acc_t ba[4], acc[4] = {0, 0, 0, 0};
    load_box(b1 + 4 * r, ba);
    const scalar_t* row2 = b2 + 4 * (r / n) * m;
    for (index_t j = lane; j < m; j += 32) {
      acc_t bb[4], ga[4], gb[4];
      load_box(row2 + 4 * j, bb);
      pair_iou<acc_t, kMode, true>(ba, bb, eps, ga, gb);
      const acc_t g = static_cast<acc_t>(grad[(r * m + j) * gstride]);
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[c] += g * ga[c];
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        acc[c] += __shfl_down_sync(0xffffffffu, acc[c], offset);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int c = 0; c < 4; ++c) g1[4 * r + c] = static_cast<scalar_t>(acc[c]);
    }
  }
}

constexpr int kColTile = 32;  // columns per block (threadIdx.x)
constexpr int kColRows = 16;  // row lanes per block (threadIdx.y)

// grad(boxes2)[b, j] = sum_i grad[b, i, j] * d iou(i, j) / d boxes2[j]: a block
// per 32 columns; coalesced reads of grad along j, fixed-order reduction over y.
template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void box_iou_backward_cols_kernel(const scalar_t* __restrict__ grad, index_t gstride,
                                             const scalar_t* __restrict__ b1,
                                             const scalar_t* __restrict__ b2,
                                             scalar_t* __restrict__ g2, index_t batch, index_t n,
                                             index_t m, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kColRows][kColTile][4];
  const index_t tiles = (m + kColTile - 1) / kColTile;
  for (index_t t = blockIdx.x; t < batch * tiles; t += gridDim.x) {
    const index_t bi = t / tiles;
    const index_t j = (t - bi * tiles) * kColTile + threadIdx.x;
    acc_t acc[4] = {0, 0, 0, 0};
    if (j < m) {
      acc_t bb[4];
      load_box(b2 + 4 * (bi * m + j), bb);
      for (index_t i = threadIdx.y; i < n; i += kColRows) {
        acc_t ba[4], ga[4], gb[4];
        load_box(b1 + 4 * (bi * n + i), ba);
        pair_iou<acc_t, kMode, true>(ba, bb, eps, ga, gb);
        const acc_t g = static_cast<acc_t>(grad[((bi * n + i) * m + j) * gstride]);
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[c] += g * gb[c];
      }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) partial[threadIdx.y][threadIdx.x][c] = acc[c];
    __syncthreads();
    if (threadIdx.y == 0 && j < m) {
      for (int y = 1; y < kColRows; ++y) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[c] += partial[y][threadIdx.x][c];
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) g2[4 * (bi * m + j) + c] = static_cast<scalar_t>(acc[c]);
    }
    __syncthreads();
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                        bool aligned, double eps) {
  const auto shape = check_box_iou_args(boxes1, boxes2, aligned);
  const IoUMode md = parse_iou_mode(mode);
  const DeviceGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor out = at::empty(shape.out_sizes, b1.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(b1.scalar_type(), "box_iou_cuda", [&] {
    const scalar_t* p1 = b1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = b2.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    dispatch_iou_mode(md, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      if (aligned) {
        launch_pair_values<scalar_t, kMode>(p1, p2, nullptr, false, po, shape.n, eps, stream);
        return;
      }
      const int64_t total = out.numel();
      const int64_t max_index = std::max({total, 4 * b1.numel(), 4 * b2.numel()});
      with_kernel_index_type(max_index, [&](auto index_c) {
        using index_t = decltype(index_c);
        launch_kernel(box_iou_pairwise_kernel<scalar_t, kMode, index_t>, num_blocks(total),
                      kThreads, stream, p1, p2, po, static_cast<index_t>(shape.n),
                      static_cast<index_t>(shape.m), static_cast<index_t>(total),
                      static_cast<at::opmath_type<scalar_t>>(eps));
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> box_iou_backward_cuda(const at::Tensor& grad,
                                                         const at::Tensor& boxes1,
                                                         const at::Tensor& boxes2,
                                                         c10::string_view mode, bool aligned,
                                                         double eps) {
  const auto shape = check_box_iou_args(boxes1, boxes2, aligned);
  const IoUMode md = parse_iou_mode(mode);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape.out_sizes), "grad must have the shape of "
              "box_iou's output ", at::IntArrayRef(shape.out_sizes), ", got ", grad.sizes());
  check_same_dtype(grad, boxes1, "grad", "boxes1");
  check_same_device(grad, boxes1, "grad", "boxes1");
  const DeviceGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor g1 = at::zeros_like(b1), g2 = at::zeros_like(b2);
  if (grad.numel() == 0) return {g1, g2};
  at::Tensor g;
  int64_t gstride;
  std::tie(g, gstride) = grad_with_stride(grad);
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(b1.scalar_type(), "box_iou_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = b1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = b2.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* pg1 = g1.mutable_data_ptr<scalar_t>();
    scalar_t* pg2 = g2.mutable_data_ptr<scalar_t>();
    dispatch_iou_mode(md, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      if (aligned) {
        launch_pair_values_backward<scalar_t, kMode>(pg, gstride, p1, p2, nullptr, false, pg1,
                                                     pg2, nullptr, shape.n, eps, stream);
        return;
      }
      const int64_t rows = shape.batch * shape.n;
      const int64_t max_index = std::max({grad.numel(), 4 * b1.numel(), 4 * b2.numel()});
      with_kernel_index_type(max_index, [&](auto index_c) {
        using index_t = decltype(index_c);
        const int warps_per_block = kThreads / 32;
        launch_kernel(box_iou_backward_rows_kernel<scalar_t, kMode, index_t>,
                      num_blocks(rows, warps_per_block), kThreads, stream, pg,
                      static_cast<index_t>(gstride), p1, p2, pg1, static_cast<index_t>(rows),
                      static_cast<index_t>(shape.n), static_cast<index_t>(shape.m), acc_t(eps));
        const int64_t tiles = shape.batch * ((shape.m + kColTile - 1) / kColTile);
        launch_kernel(box_iou_backward_cols_kernel<scalar_t, kMode, index_t>, num_blocks(tiles, 1),
                      dim3(kColTile, kColRows), stream, pg, static_cast<index_t>(gstride), p1, p2,
                      pg2, static_cast<index_t>(shape.batch), static_cast<index_t>(shape.n),
                      static_cast<index_t>(shape.m), acc_t(eps));
      });
    });
  });
  return {g1, g2};
}

// ---- iou_loss ---------------------------------------------------------------------

at::Tensor iou_loss_cuda(const at::Tensor& pred, const at::Tensor& target,
                         const c10::optional<at::Tensor>& weight, c10::string_view mode,
                         double eps) {
  check_iou_loss_args(pred, target, weight);
  const IoUMode md = parse_iou_mode(mode);
  const DeviceGuard guard(pred.device());
  const at::Tensor p = pred.contiguous(), t = target.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty(pred.sizes().slice(0, pred.dim() - 1), p.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(p.scalar_type(), "iou_loss_cuda", [&] {
    dispatch_iou_mode(md, [&](auto mode_c) {
      launch_pair_values<scalar_t, decltype(mode_c)::value>(
          p.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
          has_w ? w.const_data_ptr<scalar_t>() : nullptr, true, out.mutable_data_ptr<scalar_t>(),
          out.numel(), eps, stream);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const c10::optional<at::Tensor>& weight, c10::string_view mode, double eps) {
  check_iou_loss_args(pred, target, weight);
  const IoUMode md = parse_iou_mode(mode);
  const auto loss_sizes = pred.sizes().slice(0, pred.dim() - 1);
  TORCH_CHECK(grad.sizes() == loss_sizes, "grad must have the shape of the unreduced loss ",
              loss_sizes, ", got ", grad.sizes());
  check_same_device(grad, pred, "grad", "pred");
  const DeviceGuard guard(pred.device());
  const at::Tensor p = pred.contiguous(), t = target.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor gp = at::empty_like(p), gt = at::empty_like(t), gw = at::empty(loss_sizes, p.options());
  if (grad.numel() == 0) return {gp, gt, gw};
  at::Tensor g;
  int64_t gstride;
  std::tie(g, gstride) = grad_with_stride(grad);
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(p.scalar_type(), "iou_loss_backward_cuda", [&] {
    dispatch_iou_mode(md, [&](auto mode_c) {
      launch_pair_values_backward<scalar_t, decltype(mode_c)::value>(
          g.const_data_ptr<scalar_t>(), gstride, p.const_data_ptr<scalar_t>(),
          t.const_data_ptr<scalar_t>(), has_w ? w.const_data_ptr<scalar_t>() : nullptr, true,
          gp.mutable_data_ptr<scalar_t>(), gt.mutable_data_ptr<scalar_t>(),
          gw.mutable_data_ptr<scalar_t>(), gw.numel(), eps, stream);
    });
  });
  return {gp, gt, gw};
}

// ---- alignment_metric ----------------------------------------------------------------

// blockIdx.y walks the (image, GT) rows, threads the anchors: the GT is
// uniform across the block, anchor boxes are read coalesced.
template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void alignment_metric_kernel(
    const scalar_t* __restrict__ scores, const scalar_t* __restrict__ boxes,
    const scalar_t* __restrict__ points, const int64_t* __restrict__ labels,
    const scalar_t* __restrict__ gt_boxes, const bool* __restrict__ gt_mask,
    scalar_t* __restrict__ metric, scalar_t* __restrict__ overlaps, bool* __restrict__ inside,
    index_t rows, index_t num_gts, index_t num_anchors, index_t num_classes,
    MetricExponents<at::opmath_type<scalar_t>> expo, at::opmath_type<scalar_t> inside_eps,
    at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t bg = blockIdx.y; bg < rows; bg += gridDim.y) {
    const bool valid = gt_mask[bg];
    const index_t b = bg / num_gts;
    acc_t gt[4];
    load_box(gt_boxes + 4 * bg, gt);
    const acc_t theta_gt =
        kMode == IoUMode::kCIoU ? aspect_angle(gt[0], gt[1], gt[2], gt[3]) : acc_t(0);
    const index_t label = valid ? static_cast<index_t>(labels[bg]) : 0;
    for (index_t a = global_thread<index_t>(); a < num_anchors; a += grid_stride<index_t>()) {
      const index_t out = bg * num_anchors + a;
      if (!valid) {  // padding GT: metric 0, overlap 0, not inside
        metric[out] = scalar_t(0);
        overlaps[out] = scalar_t(0);
        inside[out] = false;
        continue;
      }
      acc_t pred[4];
      load_box(boxes + 4 * (b * num_anchors + a), pred);
      const acc_t theta_pred =
          kMode == IoUMode::kCIoU ? aspect_angle(pred[0], pred[1], pred[2], pred[3]) : acc_t(0);
      const acc_t u = metric_overlap<acc_t, kMode>(pred, gt, theta_pred, theta_gt, eps);
      const acc_t s = static_cast<acc_t>(scores[(b * num_anchors + a) * num_classes + label]);
      metric[out] = static_cast<scalar_t>(alignment_metric_value(s, u, expo));
      overlaps[out] = static_cast<scalar_t>(u);
      inside[out] = centre_inside(static_cast<acc_t>(points[2 * a]),
                                  static_cast<acc_t>(points[2 * a + 1]), gt, inside_eps);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alignment_metric_cuda(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& anchor_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
    double alpha, double beta, c10::string_view iou_mode, double inside_eps, double eps) {
  const auto s = check_alignment_metric_args(pred_scores, pred_boxes, anchor_points, gt_labels,
                                             gt_boxes, gt_mask);
  const IoUMode md = parse_iou_mode(iou_mode, "iou_mode");
  const DeviceGuard guard(pred_scores.device());
  check_label_values(gt_labels, gt_mask, s.num_classes);
  const auto opts = pred_scores.options();
  at::Tensor metric = at::empty({s.batch, s.num_gts, s.num_anchors}, opts);
  at::Tensor overlaps = at::empty({s.batch, s.num_gts, s.num_anchors}, opts);
  at::Tensor inside = at::empty({s.batch, s.num_gts, s.num_anchors}, opts.dtype(at::kBool));
  if (metric.numel() == 0) return {metric, overlaps, inside};
  const at::Tensor sc = pred_scores.contiguous(), pb = pred_boxes.contiguous(),
                   ap = anchor_points.contiguous(), gl = gt_labels.contiguous(),
                   gb = gt_boxes.contiguous(), gm = gt_mask.contiguous();
  const int64_t rows = s.batch * s.num_gts;
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(sc.scalar_type(), "alignment_metric_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto expo = make_metric_exponents<acc_t>(alpha, beta);
    dispatch_iou_mode(md, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      const int64_t max_index = std::max({metric.numel(), sc.numel(), 4 * pb.numel()});
      with_kernel_index_type(max_index, [&](auto index_c) {
        using index_t = decltype(index_c);
        const dim3 grid(static_cast<unsigned>(num_blocks(s.num_anchors)),
                        static_cast<unsigned>(std::min<int64_t>(rows, max_blocks(65535))));
        launch_kernel(alignment_metric_kernel<scalar_t, kMode, index_t>, grid, kThreads, stream,
                      sc.const_data_ptr<scalar_t>(), pb.const_data_ptr<scalar_t>(),
                      ap.const_data_ptr<scalar_t>(), gl.const_data_ptr<int64_t>(),
                      gb.const_data_ptr<scalar_t>(), gm.const_data_ptr<bool>(),
                      metric.mutable_data_ptr<scalar_t>(), overlaps.mutable_data_ptr<scalar_t>(),
                      inside.mutable_data_ptr<bool>(), static_cast<index_t>(rows),
                      static_cast<index_t>(s.num_gts), static_cast<index_t>(s.num_anchors),
                      static_cast<index_t>(s.num_classes), expo, acc_t(inside_eps), acc_t(eps));
      });
    });
  });
  return {metric, overlaps, inside};
}

}  // namespace

TOOD_EXT_CUDA_IMPL(m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("_box_iou_backward", &box_iou_backward_cuda);
  m.impl("iou_loss", &iou_loss_cuda);
  m.impl("_iou_loss_backward", &iou_loss_backward_cuda);
  m.impl("alignment_metric", &alignment_metric_cuda);
}

}  // namespace box_ops
}  // namespace tood_ext
