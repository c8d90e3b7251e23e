// Host contracts of the ProbIoU op family (probiou, _probiou_backward,
// probiou_loss, _probiou_loss_backward): every argument check, the contiguous
// inputs, the outputs and the registered host function of each op, written
// once for the CPU and CUDA implementations (csrc/cpu/probiou_cpu.cpp,
// csrc/cuda/probiou_cuda.cu), which keep only their loops / launches. The
// per-pair math is csrc/box_ops/probiou_utils.h; schemas in csrc/schemas.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "../host_utils.h"
#include "box_ops.h"  // leading_dims, GradInput, grad_input, ForwardContract, with_output
#include "probiou_utils.h"

namespace tood_ext {
namespace probiou {

using box_ops::ForwardContract;
using box_ops::GradInput;

inline void check_obbs(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == 5, name,
              " must have shape (..., 5) holding oriented boxes (cx, cy, w, h, angle), got shape ",
              t.sizes());
}

// Two box tensors (..., 5) of one floating dtype and device; a is the
// reference whose dtype and device b must share.
inline void check_obb_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                           const char* b_name) {
  check_obbs(a, a_name);
  check_obbs(b, b_name);
  check_float_dtype(a, a_name);
  check_same_dtype(b, a, b_name, a_name);
  check_same_device(b, a, b_name, a_name);
}

inline void check_scalars(double eps, double floor) {
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < std::numeric_limits<double>::infinity(),
                    "eps must be a finite number >= 0, got ", eps);
  TORCH_CHECK_VALUE(floor >= 0.0 && floor < std::numeric_limits<double>::infinity(),
                    "floor must be a finite number >= 0, got ", floor);
}

// probiou's inputs (the layout: box_ops::PairLayout).
struct ProbIouArgs : box_ops::PairLayout {
  at::Tensor b1, b2;  // contiguous
  bool aligned, ciou;
  double eps, floor;
};

inline ProbIouArgs probiou_args(const at::Tensor& b1, const at::Tensor& b2, bool aligned,
                                double eps, double floor, bool ciou) {
  ProbIouArgs s;
  check_scalars(eps, floor);
  s.aligned = aligned;
  s.ciou = ciou;
  s.eps = eps;
  s.floor = floor;
  check_obb_pair(b1, "b1", b2, "b2");
  box_ops::set_pair_layout(s, "probiou", b1, "b1", b2, "b2", aligned, 5);
  s.b1 = b1.contiguous();
  s.b2 = b2.contiguous();
  return s;
}

using ProbIouContract = ForwardContract<ProbIouArgs>;

struct ProbIouBackwardContract : ProbIouArgs, GradInput {
  at::Tensor grad_b1, grad_b2;  // uninitialised, contiguous; every element written
};

inline ProbIouContract prepare_probiou(const at::Tensor& b1, const at::Tensor& b2, bool aligned,
                                       double eps, double floor, bool ciou) {
  return box_ops::with_output(probiou_args(b1, b2, aligned, eps, floor, ciou), b1.options());
}

inline ProbIouBackwardContract prepare_probiou_backward(const at::Tensor& grad,
                                                        const at::Tensor& b1,
                                                        const at::Tensor& b2, bool aligned,
                                                        double eps, double floor, bool ciou) {
  ProbIouArgs args = probiou_args(b1, b2, aligned, eps, floor, ciou);
  GradInput g = box_ops::grad_input(grad, args.out_sizes, "probiou's output", b1, "b1");
  ProbIouBackwardContract c{std::move(args), std::move(g)};
  c.grad_b1 = at::empty_like(c.b1);
  c.grad_b2 = at::empty_like(c.b2);
  return c;
}

// probiou_loss's inputs.
struct ProbIouLossArgs : box_ops::PairLossInputs {
  bool ciou;
  double eps, floor;
};

inline ProbIouLossArgs probiou_loss_args(const at::Tensor& pred, const at::Tensor& target,
                                         const c10::optional<at::Tensor>& weight, double eps,
                                         double floor, bool ciou) {
  ProbIouLossArgs s;
  check_scalars(eps, floor);
  s.ciou = ciou;
  s.eps = eps;
  s.floor = floor;
  check_obb_pair(pred, "pred", target, "target");
  box_ops::set_pair_loss_inputs(s, pred, target, weight, 5);
  return s;
}

using ProbIouLossContract = ForwardContract<ProbIouLossArgs>;
using ProbIouLossBackwardContract = box_ops::PairLossBackwardContract<ProbIouLossArgs>;

inline ProbIouLossContract prepare_probiou_loss(const at::Tensor& pred, const at::Tensor& target,
                                                const c10::optional<at::Tensor>& weight,
                                                double eps, double floor, bool ciou) {
  return box_ops::with_output(probiou_loss_args(pred, target, weight, eps, floor, ciou),
                              pred.options());
}

inline ProbIouLossBackwardContract prepare_probiou_loss_backward(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const c10::optional<at::Tensor>& weight, double eps, double floor, bool ciou) {
  return box_ops::pair_loss_backward_contract(
      probiou_loss_args(pred, target, weight, eps, floor, ciou), grad, pred);
}

// The raw pointers of the element-wise pair values (aligned probiou and
// probiou_loss) that both backends' loops / kernels take:
//   out[i] = v(a_i, b_i)                 (is_loss == false)
//   out[i] = w_i * (1 - v(a_i, b_i))     (is_loss; w_i = 1 without weight)
template <typename scalar_t>
struct PairValues {
  const scalar_t *a, *b, *w;
  bool is_loss;
  scalar_t* out;
  int64_t n;
  double eps, floor;
  bool ciou;
};

// Their backward: grad read with stride gstride (0 or 1); grad_w may be null.
template <typename scalar_t>
struct PairValueGrads {
  const scalar_t* grad;
  int64_t gstride;
  const scalar_t *a, *b, *w;
  bool is_loss;
  scalar_t *grad_a, *grad_b, *grad_w;
  int64_t n;
  double eps, floor;
  bool ciou;
};

template <typename scalar_t>
PairValues<scalar_t> pair_values(const ProbIouContract& c) {
  return {c.b1.const_data_ptr<scalar_t>(), c.b2.const_data_ptr<scalar_t>(), nullptr, false,
          c.out.mutable_data_ptr<scalar_t>(), c.n, c.eps, c.floor, c.ciou};
}

template <typename scalar_t>
PairValues<scalar_t> pair_values(const ProbIouLossContract& c) {
  return {c.pred.const_data_ptr<scalar_t>(), c.target.const_data_ptr<scalar_t>(),
          box_ops::ptr_or_null<scalar_t>(c.weight), true, c.out.mutable_data_ptr<scalar_t>(),
          c.n, c.eps, c.floor, c.ciou};
}

template <typename scalar_t>
PairValueGrads<scalar_t> pair_values(const ProbIouBackwardContract& c) {
  return {c.grad.const_data_ptr<scalar_t>(), c.grad_stride, c.b1.const_data_ptr<scalar_t>(),
          c.b2.const_data_ptr<scalar_t>(), nullptr, false,
          c.grad_b1.mutable_data_ptr<scalar_t>(), c.grad_b2.mutable_data_ptr<scalar_t>(),
          nullptr, c.n, c.eps, c.floor, c.ciou};
}

template <typename scalar_t>
PairValueGrads<scalar_t> pair_values(const ProbIouLossBackwardContract& c) {
  return {c.grad.const_data_ptr<scalar_t>(), c.grad_stride, c.pred.const_data_ptr<scalar_t>(),
          c.target.const_data_ptr<scalar_t>(), box_ops::ptr_or_null<scalar_t>(c.weight), true,
          c.grad_pred.mutable_data_ptr<scalar_t>(), c.grad_target.mutable_data_ptr<scalar_t>(),
          c.grad_weight.mutable_data_ptr<scalar_t>(), c.n, c.eps, c.floor, c.ciou};
}

// Element i of the element-wise ops: the one body that both backends' loops
// (csrc/cpu/probiou_cpu.cpp) and kernels (csrc/cuda/probiou_cuda.cu) run.
template <typename scalar_t, typename index_t>
TOOD_HOST_DEVICE_INLINE void pair_value_at(const PairValues<scalar_t>& p, index_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t ba[5], bb[5];
  load_obb(p.a + 5 * i, ba);
  load_obb(p.b + 5 * i, bb);
  const acc_t v = probiou_value(ba, bb, acc_t(p.eps), acc_t(p.floor), p.ciou);
  const acc_t wi = p.w ? static_cast<acc_t>(p.w[i]) : acc_t(1);
  p.out[i] = static_cast<scalar_t>(p.is_loss ? wi * (acc_t(1) - v) : v);
}

template <typename scalar_t, typename index_t>
TOOD_HOST_DEVICE_INLINE void pair_value_at(const PairValueGrads<scalar_t>& p, index_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t ba[5], bb[5], ga[5], gb[5];
  load_obb(p.a + 5 * i, ba);
  load_obb(p.b + 5 * i, bb);
  const acc_t g = static_cast<acc_t>(p.grad[i * static_cast<index_t>(p.gstride)]);
  const acc_t wi = p.w ? static_cast<acc_t>(p.w[i]) : acc_t(1);
  const acc_t k = p.is_loss ? -g * wi : g;  // d out / d value
  const acc_t v =
      probiou_pair<acc_t, true>(ba, bb, acc_t(p.eps), acc_t(p.floor), p.ciou, k, ga, gb);
  TOOD_UNROLL
  for (int c = 0; c < 5; ++c) {
    p.grad_a[5 * i + c] = static_cast<scalar_t>(ga[c]);
    p.grad_b[5 * i + c] = static_cast<scalar_t>(gb[c]);
  }
  if (p.grad_w) p.grad_w[i] = static_cast<scalar_t>(g * (acc_t(1) - v));
}

// ---- the registered host functions, one per op for both backends ------------
// Kernel: the backend's loops / launches, called only for non-empty outputs.

template <void (*Kernel)(const ProbIouContract&)>
at::Tensor probiou_op(const at::Tensor& b1, const at::Tensor& b2, bool aligned, double eps,
                      double floor, bool ciou) {
  const ProbIouContract c = prepare_probiou(b1, b2, aligned, eps, floor, ciou);
  if (c.out.numel() > 0) Kernel(c);
  return c.out;
}

template <void (*Kernel)(const ProbIouBackwardContract&)>
std::tuple<at::Tensor, at::Tensor> probiou_backward_op(const at::Tensor& grad,
                                                       const at::Tensor& b1,
                                                       const at::Tensor& b2, bool aligned,
                                                       double eps, double floor, bool ciou) {
  const ProbIouBackwardContract c =
      prepare_probiou_backward(grad, b1, b2, aligned, eps, floor, ciou);
  if (c.grad.numel() > 0) {
    Kernel(c);
  } else {  // no pairs: every box's gradient is an empty sum
    c.grad_b1.zero_();
    c.grad_b2.zero_();
  }
  return {c.grad_b1, c.grad_b2};
}

template <void (*Kernel)(const ProbIouLossContract&)>
at::Tensor probiou_loss_op(const at::Tensor& pred, const at::Tensor& target,
                           const c10::optional<at::Tensor>& weight, double eps, double floor,
                           bool ciou) {
  const ProbIouLossContract c = prepare_probiou_loss(pred, target, weight, eps, floor, ciou);
  if (c.out.numel() > 0) Kernel(c);
  return c.out;
}

template <void (*Kernel)(const ProbIouLossBackwardContract&)>
std::tuple<at::Tensor, at::Tensor, at::Tensor> probiou_loss_backward_op(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const c10::optional<at::Tensor>& weight, double eps, double floor, bool ciou) {
  const ProbIouLossBackwardContract c =
      prepare_probiou_loss_backward(grad, pred, target, weight, eps, floor, ciou);
  if (c.grad.numel() > 0) Kernel(c);
  return {c.grad_pred, c.grad_target, c.grad_weight};
}

// Registers the family's ops with one backend's kernels (the TORCH_LIBRARY_IMPL
// block of csrc/cpu/probiou_cpu.cpp and of csrc/cuda/probiou_cuda.cu).
template <void (*ProbIou)(const ProbIouContract&),
          void (*ProbIouBackward)(const ProbIouBackwardContract&),
          void (*ProbIouLoss)(const ProbIouLossContract&),
          void (*ProbIouLossBackward)(const ProbIouLossBackwardContract&)>
void register_probiou_ops(torch::Library& m) {
  m.impl("probiou", &probiou_op<ProbIou>);
  m.impl("_probiou_backward", &probiou_backward_op<ProbIouBackward>);
  m.impl("probiou_loss", &probiou_loss_op<ProbIouLoss>);
  m.impl("_probiou_loss_backward", &probiou_loss_backward_op<ProbIouLossBackward>);
}

}  // namespace probiou
}  // namespace tood_ext
