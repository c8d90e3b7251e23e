// CUDA kernels of the loss op family. The per-element math is the one of
// csrc/losses/sparse_cls_loss_utils.h, shared with the CPU kernels; the
// argument checks are csrc/losses/losses.h's, shared too.
//
// Design:
// * forward: a grid-stride loop over the (rows, C) elements; each thread sums
//   its elements (float32 for float16/bfloat16/float32), each block reduces its
//   threads' sums in a fixed shared-memory tree (double) into its slot of a
//   partial buffer, and one block adds the slots in a fixed order into the 0-d
//   loss. No atomics: bit-for-bit deterministic for a given size.
// * backward: one thread per element writes grad_pred; nothing else of size
//   (rows, C) is allocated. The 0-d incoming gradient is read on the device
//   (no sync).
// * pred's layout (SparseClsLossPlan): element i of the loops is element i in
//   memory, row-major or class-major (a (..., C, A) buffer viewed as (..., A,
//   C), read in place; grad_pred written in it); cls_element gives its anchor
//   row and class. The forward's order is the memory order in both.
// * launches use the current stream under a device guard and are checked.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../losses/losses.h"
#include "cuda_utils.cuh"

namespace tood_ext {
namespace losses {
namespace {

constexpr int kLossThreads = 256;       // a power of two (the reduction tree)
constexpr int64_t kLossMaxBlocks = 4096;  // slots of the partial buffer

// Sums the block's per-thread values v in a fixed tree; thread 0 gets the sum.
__device__ __forceinline__ double block_sum(double v, double* buf) {
  const int t = threadIdx.x;
  buf[t] = v;
  __syncthreads();
  for (int half = kLossThreads / 2; half > 0; half >>= 1) {
    if (t < half) buf[t] += buf[t + half];
    __syncthreads();
  }
  return buf[0];
}

// The anchor row r and class c of element i in memory: row-major (anchors ==
// 0) i = r * C + c; class-major i = (l * C + c) * A + a with r = l * A + a.
template <typename index_t>
__device__ __forceinline__ void cls_element(index_t i, index_t classes, index_t anchors,
                                            index_t& r, index_t& c) {
  if (anchors == 0) {
    r = i / classes;
    c = i - r * classes;
    return;
  }
  const index_t line = i / anchors;
  const index_t l = line / classes;
  c = line - l * classes;
  r = l * anchors + (i - line * anchors);
}

template <ClsLossKind K, bool kSquare, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kLossThreads)
    cls_loss_partial_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ labels,
                            const scalar_t* __restrict__ scores,
                            const scalar_t* __restrict__ class_weight,
                            const scalar_t* __restrict__ weight, index_t classes,
                            index_t anchors, index_t n,
                            ClsLossParams<at::opmath_type<scalar_t>> p,
                            double* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double buf[kLossThreads];
  acc_t acc = 0;
  for (index_t i = global_thread<index_t>(); i < n; i += grid_stride<index_t>()) {
    index_t r, c;
    cls_element(i, classes, anchors, r, c);
    const int64_t label = labels[r];
    const acc_t t = label == static_cast<int64_t>(c) ? static_cast<acc_t>(scores[r]) : acc_t(0);
    const acc_t l = element_loss<K, kSquare>(static_cast<acc_t>(x[i]), t, p);
    const acc_t lc = class_weight ? static_cast<acc_t>(class_weight[c]) * l : l;
    acc += weight ? static_cast<acc_t>(weight[r]) * lc : lc;
  }
  const double total = block_sum(static_cast<double>(acc), buf);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// out[0] = the sum of partial[0, count) in a fixed order (one block).
template <typename out_t>
__global__ void __launch_bounds__(kLossThreads)
    sum_partials_kernel(const double* __restrict__ partial, int64_t count,
                        out_t* __restrict__ out) {
  __shared__ double buf[kLossThreads];
  double v = 0;
  for (int64_t j = threadIdx.x; j < count; j += kLossThreads) v += partial[j];
  const double total = block_sum(v, buf);
  if (threadIdx.x == 0) out[0] = static_cast<out_t>(total);
}

template <ClsLossKind K, bool kSquare, typename scalar_t, typename index_t>
__global__ void cls_loss_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad,
                                         const scalar_t* __restrict__ x,
                                         const int64_t* __restrict__ labels,
                                         const scalar_t* __restrict__ scores,
                                         const scalar_t* __restrict__ class_weight,
                                         const scalar_t* __restrict__ weight,
                                         index_t classes, index_t anchors, index_t n,
                                         ClsLossParams<at::opmath_type<scalar_t>> p,
                                         scalar_t* __restrict__ grad_pred) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g = grad[0];
  for (index_t i = global_thread<index_t>(); i < n; i += grid_stride<index_t>()) {
    index_t r, c;
    cls_element(i, classes, anchors, r, c);
    const int64_t label = labels[r];
    const acc_t t = label == static_cast<int64_t>(c) ? static_cast<acc_t>(scores[r]) : acc_t(0);
    const acc_t d = element_grad<K, kSquare>(static_cast<acc_t>(x[i]), t, p);
    const acc_t g_r = weight ? g * static_cast<acc_t>(weight[r]) : g;  // as the CPU loop
    const acc_t gw = class_weight ? g_r * static_cast<acc_t>(class_weight[c]) : g_r;
    grad_pred[i] = static_cast<scalar_t>(gw * d);
  }
}

// The dtype, kind (gamma == 2 as a compile-time square) and index-type dispatch
// of the cls loss kernels, forward and backward alike:
// fn(scalar_t{}, kind constant, square constant, index_t{}).
template <typename Fn>
void dispatch_cls_kernels(const SparseClsLossPlan& plan, int64_t n, Fn&& fn) {
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_cuda", [&] {
    dispatch_cls_loss(plan.kind, plan.gamma, [&](auto kind_c, auto square_c) {
      with_kernel_index_type(n, [&](auto index_v) { fn(scalar_t{}, kind_c, square_c, index_v); });
    });
  });
}

template <typename scalar_t>
const scalar_t* class_weight_ptr(const SparseClsLossPlan& plan) {
  return plan.class_weight.defined() ? plan.class_weight.const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
const scalar_t* weight_ptr(const SparseClsLossPlan& plan) {
  return plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
}

at::Tensor sparse_target_cls_loss_cuda(const at::Tensor& pred, const at::Tensor& labels,
                                       const at::Tensor& scores, c10::string_view kind,
                                       double gamma, c10::optional<double> alpha,
                                       bool activated,
                                       const c10::optional<at::Tensor>& class_weight,
                                       const c10::optional<at::Tensor>& weight) {
  const DeviceGuard guard(pred.device());
  const SparseClsLossPlan plan = prepare_sparse_target_cls_loss(
      pred, labels, scores, kind, gamma, alpha, activated, class_weight, weight);
  at::Tensor out = at::zeros({}, plan.loss_options);
  const int64_t n = plan.numel();
  if (n == 0) return out;
  const int64_t blocks = std::min(num_blocks(n, kLossThreads), max_blocks(kLossMaxBlocks));
  at::Tensor partial = at::empty({blocks}, plan.pred.options().dtype(at::kDouble));
  const cudaStream_t stream = current_stream();
  dispatch_cls_kernels(plan, n, [&](auto s, auto kind_c, auto square_c, auto index_v) {
    using scalar_t = decltype(s);
    using index_t = decltype(index_v);
    using acc_t = at::opmath_type<scalar_t>;
    launch_kernel(
        cls_loss_partial_kernel<decltype(kind_c)::value, decltype(square_c)::value, scalar_t,
                                index_t>,
        dim3(blocks), dim3(kLossThreads), stream, plan.pred.const_data_ptr<scalar_t>(),
        plan.labels.const_data_ptr<int64_t>(), plan.scores.const_data_ptr<scalar_t>(),
        class_weight_ptr<scalar_t>(plan), weight_ptr<scalar_t>(plan),
        static_cast<index_t>(plan.classes), static_cast<index_t>(plan.anchors),
        static_cast<index_t>(n), plan.params<acc_t>(),
        partial.mutable_data_ptr<double>());
  });
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "sparse_target_cls_loss_cuda_sum", [&] {
    launch_kernel(sum_partials_kernel<scalar_t>, dim3(1), dim3(kLossThreads), stream,
                  partial.const_data_ptr<double>(), blocks, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor sparse_target_cls_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& pred,
                                                const at::Tensor& labels,
                                                const at::Tensor& scores, c10::string_view kind,
                                                double gamma, c10::optional<double> alpha,
                                                bool activated,
                                                const c10::optional<at::Tensor>& class_weight,
                                                const c10::optional<at::Tensor>& weight) {
  const DeviceGuard guard(pred.device());
  const SparseClsLossPlan plan = prepare_sparse_target_cls_loss(
      pred, labels, scores, kind, gamma, alpha, activated, class_weight, weight, &grad);
  at::Tensor grad_pred = grad_pred_like(plan);
  const int64_t n = plan.numel();
  if (n == 0) return grad_pred.view(pred.sizes());
  const cudaStream_t stream = current_stream();
  dispatch_cls_kernels(plan, n, [&](auto s, auto kind_c, auto square_c, auto index_v) {
    using scalar_t = decltype(s);
    using index_t = decltype(index_v);
    using acc_t = at::opmath_type<scalar_t>;
    launch_kernel(
        cls_loss_backward_kernel<decltype(kind_c)::value, decltype(square_c)::value, scalar_t,
                                 index_t>,
        dim3(num_blocks(n)), dim3(kThreads), stream, plan.grad.const_data_ptr<acc_t>(),
        plan.pred.const_data_ptr<scalar_t>(), plan.labels.const_data_ptr<int64_t>(),
        plan.scores.const_data_ptr<scalar_t>(), class_weight_ptr<scalar_t>(plan),
        weight_ptr<scalar_t>(plan), static_cast<index_t>(plan.classes),
        static_cast<index_t>(plan.anchors),
        static_cast<index_t>(n), plan.params<acc_t>(), grad_pred.mutable_data_ptr<scalar_t>());
  });
  return grad_pred;
}

// ---- dfl_loss: one thread per row (R = reg_max bins, 16 in YOLOv8) ----------

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kLossThreads)
    dfl_partial_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                       const scalar_t* __restrict__ w, index_t bins, index_t rows,
                       double* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double buf[kLossThreads];
  acc_t acc = 0;
  for (index_t r = global_thread<index_t>(); r < rows; r += grid_stride<index_t>()) {
    const acc_t l = dfl_row_loss<acc_t>(x + r * bins, bins, static_cast<acc_t>(y[r]));
    acc += w ? static_cast<acc_t>(w[r]) * l : l;
  }
  const double total = block_sum(static_cast<double>(acc), buf);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename scalar_t, typename index_t>
__global__ void dfl_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad,
                                    const scalar_t* __restrict__ x,
                                    const scalar_t* __restrict__ y,
                                    const scalar_t* __restrict__ w, index_t bins, index_t rows,
                                    scalar_t* __restrict__ grad_pred) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g = grad[0];
  for (index_t r = global_thread<index_t>(); r < rows; r += grid_stride<index_t>()) {
    const acc_t scale = w ? g * static_cast<acc_t>(w[r]) : g;
    dfl_row_grad<acc_t>(x + r * bins, bins, static_cast<acc_t>(y[r]), scale,
                        grad_pred + r * bins);
  }
}

at::Tensor dfl_loss_cuda(const at::Tensor& pred_dist, const at::Tensor& target,
                         const c10::optional<at::Tensor>& weight) {
  const DeviceGuard guard(pred_dist.device());
  const DflLossPlan plan = prepare_dfl_loss(pred_dist, target, weight);
  at::Tensor out = at::zeros({}, plan.loss_options);
  if (plan.rows == 0) return out;
  const int64_t blocks =
      std::min(num_blocks(plan.rows, kLossThreads), max_blocks(kLossMaxBlocks));
  at::Tensor partial = at::empty({blocks}, plan.pred.options().dtype(at::kDouble));
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(plan.pred.scalar_type(), "dfl_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
    with_kernel_index_type(plan.numel(), [&](auto index_v) {
      using index_t = decltype(index_v);
      launch_kernel(dfl_partial_kernel<scalar_t, index_t>, dim3(blocks), dim3(kLossThreads),
                    stream, plan.pred.const_data_ptr<scalar_t>(),
                    plan.target.const_data_ptr<scalar_t>(), w, static_cast<index_t>(plan.bins),
                    static_cast<index_t>(plan.rows), partial.mutable_data_ptr<double>());
    });
    launch_kernel(sum_partials_kernel<acc_t>, dim3(1), dim3(kLossThreads), stream,
                  partial.const_data_ptr<double>(), blocks, out.mutable_data_ptr<acc_t>());
  });
  return out;
}

at::Tensor dfl_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& pred_dist,
                                  const at::Tensor& target,
                                  const c10::optional<at::Tensor>& weight) {
  const DeviceGuard guard(pred_dist.device());
  const DflLossPlan plan = prepare_dfl_loss(pred_dist, target, weight, &grad);
  at::Tensor grad_pred = at::empty(plan.pred.sizes(), plan.pred.options());
  if (plan.numel() == 0) return grad_pred.view(pred_dist.sizes());
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(plan.pred.scalar_type(), "dfl_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
    with_kernel_index_type(plan.numel(), [&](auto index_v) {
      using index_t = decltype(index_v);
      launch_kernel(dfl_backward_kernel<scalar_t, index_t>, dim3(num_blocks(plan.rows)),
                    dim3(kThreads), stream, plan.grad.const_data_ptr<acc_t>(),
                    plan.pred.const_data_ptr<scalar_t>(), plan.target.const_data_ptr<scalar_t>(),
                    w, static_cast<index_t>(plan.bins), static_cast<index_t>(plan.rows),
                    grad_pred.mutable_data_ptr<scalar_t>());
    });
  });
  return grad_pred.view(pred_dist.sizes());
}

}  // namespace

TOOD_EXT_CUDA_IMPL(m) {
  m.impl("sparse_target_cls_loss", &sparse_target_cls_loss_cuda);
  m.impl("_sparse_target_cls_loss_backward", &sparse_target_cls_loss_backward_cuda);
  m.impl("dfl_loss", &dfl_loss_cuda);
  m.impl("_dfl_loss_backward", &dfl_loss_backward_cuda);
}

}  // namespace losses
}  // namespace tood_ext
