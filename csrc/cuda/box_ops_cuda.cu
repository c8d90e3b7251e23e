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
// Argument checks, contiguous inputs and outputs come from the ops' contracts
// (csrc/box_ops/box_ops.h); this file holds the kernels and their launches.
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
void launch_pair_values(const PairValues<scalar_t>& p, cudaStream_t stream) {
  with_kernel_index_type(4 * p.n, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(pair_values_kernel<scalar_t, kMode, index_t>, num_blocks(p.n), kThreads, stream,
                  p.a, p.b, p.w, p.is_loss, p.out, static_cast<index_t>(p.n),
                  static_cast<at::opmath_type<scalar_t>>(p.eps));
  });
}

template <typename scalar_t, IoUMode kMode>
void launch_pair_values(const PairValueGrads<scalar_t>& p, cudaStream_t stream) {
  with_kernel_index_type(4 * p.n, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(pair_values_backward_kernel<scalar_t, kMode, index_t>, num_blocks(p.n),
                  kThreads, stream, p.grad, static_cast<index_t>(p.gstride), p.a, p.b, p.w,
                  p.is_loss, p.grad_a, p.grad_b, p.grad_w, static_cast<index_t>(p.n),
                  static_cast<at::opmath_type<scalar_t>>(p.eps));
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

// The inputs of both pairwise backward kernels: grad (batch, n, m) read with
// stride gstride, boxes1 (batch, n, 4), boxes2 (batch, m, 4).
template <typename scalar_t, typename index_t>
struct PairwiseGrad {
  const scalar_t* grad;
  index_t gstride;
  const scalar_t* b1;
  const scalar_t* b2;
  index_t batch, n, m;
  at::opmath_type<scalar_t> eps;
};

// grad(boxes1)[r] = sum_j grad[r, j] * d iou(r, j) / d boxes1[r]: a warp per row.
template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void box_iou_backward_rows_kernel(const PairwiseGrad<scalar_t, index_t> in,
                                             scalar_t* __restrict__ g1) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ grad = in.grad;
  const scalar_t* __restrict__ b1 = in.b1;
  const scalar_t* __restrict__ b2 = in.b2;
  const index_t gstride = in.gstride, n = in.n, m = in.m, rows = in.batch * in.n;
  const acc_t eps = in.eps;
  const int lane = threadIdx.x & 31;
  for (index_t r = global_warp<index_t>(); r < rows; r += warp_grid_stride<index_t>()) {
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
    warp_sum(acc);
    if (lane == 0) {
#pragma unroll
      for (int c = 0; c < 4; ++c) g1[4 * r + c] = static_cast<scalar_t>(acc[c]);
    }
  }
}

// grad(boxes2)[b, j] = sum_i grad[b, i, j] * d iou(i, j) / d boxes2[j]: a block
// per 32 columns; coalesced reads of grad along j, fixed-order reduction over y.
template <typename scalar_t, IoUMode kMode, typename index_t>
__global__ void box_iou_backward_cols_kernel(const PairwiseGrad<scalar_t, index_t> in,
                                             scalar_t* __restrict__ g2) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kColRows][kColTile][4];
  const scalar_t* __restrict__ b1 = in.b1;
  const scalar_t* __restrict__ b2 = in.b2;
  const scalar_t* __restrict__ grad = in.grad;
  const index_t batch = in.batch, n = in.n, m = in.m, gstride = in.gstride;
  const acc_t eps = in.eps;
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
    if (column_tile_sum(partial, acc) && j < m) {
#pragma unroll
      for (int c = 0; c < 4; ++c) g2[4 * (bi * m + j) + c] = static_cast<scalar_t>(acc[c]);
    }
    __syncthreads();
  }
}

// ---- the kernels of the contracts (csrc/box_ops/box_ops.h) -------------------------
// Each: the device guard, the dtype and mode dispatch, then the launches.

// The dtype (CUDA's set) and IoU-mode dispatch of a kernel: fn(scalar_t{}, mode constant).
template <typename Fn>
void dispatch_cuda(const at::Tensor& t, IoUMode mode, Fn&& fn) {
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(t.scalar_type(), "box_ops_cuda", [&] {
    dispatch_iou_mode(mode, [&](auto mode_c) { fn(scalar_t{}, mode_c); });
  });
}

template <typename scalar_t, IoUMode kMode>
void launch_box_iou_pairwise(const BoxIouContract& c, cudaStream_t stream) {
  const int64_t total = c.out.numel();
  const int64_t max_index = std::max({total, 4 * c.boxes1.numel(), 4 * c.boxes2.numel()});
  with_kernel_index_type(max_index, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(box_iou_pairwise_kernel<scalar_t, kMode, index_t>, num_blocks(total), kThreads,
                  stream, c.boxes1.const_data_ptr<scalar_t>(),
                  c.boxes2.const_data_ptr<scalar_t>(), c.out.mutable_data_ptr<scalar_t>(),
                  static_cast<index_t>(c.n), static_cast<index_t>(c.m),
                  static_cast<index_t>(total), static_cast<at::opmath_type<scalar_t>>(c.eps));
  });
}

template <typename scalar_t, IoUMode kMode>
void launch_box_iou_pairwise(const BoxIouBackwardContract& c, cudaStream_t stream) {
  const int64_t max_index =
      std::max({c.grad.numel(), 4 * c.boxes1.numel(), 4 * c.boxes2.numel()});
  with_kernel_index_type(max_index, [&](auto index_c) {
    using index_t = decltype(index_c);
    const PairwiseGrad<scalar_t, index_t> in{
        c.grad.const_data_ptr<scalar_t>(), static_cast<index_t>(c.grad_stride),
        c.boxes1.const_data_ptr<scalar_t>(), c.boxes2.const_data_ptr<scalar_t>(),
        static_cast<index_t>(c.batch), static_cast<index_t>(c.n), static_cast<index_t>(c.m),
        static_cast<at::opmath_type<scalar_t>>(c.eps)};
    launch_pairwise_backward(box_iou_backward_rows_kernel<scalar_t, kMode, index_t>,
                             box_iou_backward_cols_kernel<scalar_t, kMode, index_t>, c.batch,
                             c.n, c.m, stream, in, c.grad_boxes1.mutable_data_ptr<scalar_t>(),
                             c.grad_boxes2.mutable_data_ptr<scalar_t>());
  });
}

// box_iou and its backward: the element-wise kernel when aligned, else the
// pairwise kernels.
template <typename Contract>
void box_iou_cuda(const Contract& c) {
  const DeviceGuard guard(c.boxes1.device());
  dispatch_cuda(c.boxes1, c.mode, [&](auto s, auto m) {
    using scalar_t = decltype(s);
    if (c.aligned) {
      launch_pair_values<scalar_t, decltype(m)::value>(pair_values<scalar_t>(c), current_stream());
    } else {
      launch_box_iou_pairwise<scalar_t, decltype(m)::value>(c, current_stream());
    }
  });
}

// iou_loss (element-wise, unreduced) and its backward.
template <typename Contract>
void iou_loss_cuda(const Contract& c) {
  const DeviceGuard guard(c.pred.device());
  dispatch_cuda(c.pred, c.mode, [&](auto s, auto m) {
    launch_pair_values<decltype(s), decltype(m)::value>(pair_values<decltype(s)>(c),
                                                        current_stream());
  });
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

void alignment_metric_cuda(const AlignmentMetricContract& c) {
  const DeviceGuard guard(c.metric.device());
  const at::Tensor &sc = c.pred_scores, &pb = c.pred_boxes, &ap = c.anchor_points,
                   &gl = c.gt_labels, &gb = c.gt_boxes, &gm = c.gt_mask;
  const at::Tensor &metric = c.metric, &overlaps = c.overlaps, &inside = c.inside;
  const MetricShape& s = c.shape;
  const int64_t rows = s.batch * s.num_gts;
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(sc.scalar_type(), "alignment_metric_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto expo = make_metric_exponents<acc_t>(c.alpha, c.beta);
    dispatch_iou_mode(c.mode, [&](auto mode_c) {
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
                      static_cast<index_t>(s.num_classes), expo, acc_t(c.inside_eps),
                      acc_t(c.eps));
      });
    });
  });
}

}  // namespace

TOOD_EXT_CUDA_IMPL(m) {
  register_box_ops<box_iou_cuda<BoxIouContract>, box_iou_cuda<BoxIouBackwardContract>,
                   iou_loss_cuda<IouLossContract>, iou_loss_cuda<IouLossBackwardContract>,
                   alignment_metric_cuda>(m);
}

}  // namespace box_ops
}  // namespace tood_ext
