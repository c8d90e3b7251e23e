// Host contracts of the ProbIoU op family (probiou, _probiou_backward,
// probiou_loss, _probiou_loss_backward): every argument check, the contiguous
// inputs, the outputs and the registered host function of each op, written
// once for the CPU and CUDA implementations (csrc/cpu/probiou_cpu.cpp,
// csrc/cuda/probiou_cuda.cu), which keep only their loops / launches. The
// per-pair math is csrc/box_ops/probiou_utils.h; schemas in csrc/schemas.h.
#pragma once

#include <ATen/ATen.h>
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

// probiou's inputs. aligned: batch 1, n = the number of pairs, m 1.
struct ProbIouArgs {
  at::Tensor b1, b2;  // contiguous
  bool aligned, ciou;
  double eps, floor;
  int64_t batch, n, m;
  std::vector<int64_t> out_sizes;  // (..., N, M), aligned (..., N)
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
  if (aligned) {
    TORCH_CHECK(b1.sizes() == b2.sizes(), "aligned probiou needs b1 and b2 of the same shape "
                "(..., N, 5), got ", b1.sizes(), " and ", b2.sizes());
    s.out_sizes = box_ops::leading_dims(b1, 1);
    s.batch = 1;
    s.n = b1.numel() / 5;
    s.m = 1;
  } else {
    TORCH_CHECK(b1.dim() >= 2 && b2.dim() >= 2,
                "pairwise probiou needs b1 (..., N, 5) and b2 (..., M, 5), got shapes ",
                b1.sizes(), " and ", b2.sizes());
    auto lead1 = box_ops::leading_dims(b1, 2), lead2 = box_ops::leading_dims(b2, 2);
    TORCH_CHECK(lead1 == lead2, "pairwise probiou needs the same leading (batch) dims in b1 ",
                b1.sizes(), " and b2 ", b2.sizes());
    s.batch = 1;
    for (int64_t d : lead1) s.batch *= d;
    s.n = b1.size(-2);
    s.m = b2.size(-2);
    s.out_sizes = lead1;
    s.out_sizes.push_back(s.n);
    s.out_sizes.push_back(s.m);
  }
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

// probiou_loss's inputs: n = the number of box pairs.
struct ProbIouLossArgs {
  at::Tensor pred, target;  // contiguous
  at::Tensor weight;        // contiguous; undefined without a weight
  bool ciou;
  double eps, floor;
  std::vector<int64_t> out_sizes;  // the unreduced loss: pred's shape without its last dim
  int64_t n;
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
  TORCH_CHECK(pred.sizes() == target.sizes(), "pred and target must have the same shape "
              "(..., 5), got ", pred.sizes(), " and ", target.sizes());
  s.out_sizes = box_ops::leading_dims(pred, 1);
  const bool has_w = weight.has_value() && weight->defined();
  if (has_w) {
    check_same_dtype(*weight, pred, "weight", "pred");
    check_same_device(*weight, pred, "weight", "pred");
    TORCH_CHECK(weight->sizes() == at::IntArrayRef(s.out_sizes),
                "weight must have the shape of pred without its last dim, ",
                at::IntArrayRef(s.out_sizes), ", got ", weight->sizes());
  }
  s.pred = pred.contiguous();
  s.target = target.contiguous();
  if (has_w) s.weight = weight->contiguous();
  s.n = pred.numel() / 5;
  return s;
}

using ProbIouLossContract = ForwardContract<ProbIouLossArgs>;

struct ProbIouLossBackwardContract : ProbIouLossArgs, GradInput {
  at::Tensor grad_pred, grad_target, grad_weight;  // uninitialised; every element written
};

inline ProbIouLossContract prepare_probiou_loss(const at::Tensor& pred, const at::Tensor& target,
                                                const c10::optional<at::Tensor>& weight,
                                                double eps, double floor, bool ciou) {
  return box_ops::with_output(probiou_loss_args(pred, target, weight, eps, floor, ciou),
                              pred.options());
}

inline ProbIouLossBackwardContract prepare_probiou_loss_backward(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const c10::optional<at::Tensor>& weight, double eps, double floor, bool ciou) {
  ProbIouLossArgs args = probiou_loss_args(pred, target, weight, eps, floor, ciou);
  GradInput g = box_ops::grad_input(grad, args.out_sizes, "the unreduced loss", pred, "pred");
  ProbIouLossBackwardContract c{std::move(args), std::move(g)};
  c.grad_pred = at::empty_like(c.pred);
  c.grad_target = at::empty_like(c.target);
  c.grad_weight = at::empty(c.out_sizes, c.pred.options());
  return c;
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
