// The host contract of the deformable sampling op, shared by the CPU and CUDA
// implementations (csrc/cpu/deform_sampling_cpu.cpp, csrc/cuda/deform_sampling_cuda.cu):
// prepare_deform_sampling / prepare_deform_sampling_backward make every argument
// check (shape, dtype, device; the backward's upstream gradient included) and
// return what both backends need: the sizes, contiguous inputs, the output
// options and the shape of the gradients. The backend files keep only their
// loops / launches. Schemas live in csrc/schemas.h.
//
// Error types (README "Reliability"): a tensor of the wrong shape, dtype or
// device raises RuntimeError (TORCH_CHECK). The op has no non-tensor argument.
// Non-contiguous inputs are accepted (copied to contiguous here).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <tuple>

#include "../host_utils.h"
#include "deform_sampling_utils.h"

namespace tood_ext {
namespace deform {

inline bool has_mask(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->defined();
}

struct DeformShape {
  int64_t batch, channels, groups, height, width;
  int64_t channels_per_group() const { return groups > 0 ? channels / groups : 0; }
  int64_t plane() const { return height * width; }
};

// A checked call: sizes, the inputs made contiguous (mask undefined when
// absent), and the options of the outputs.
struct DeformSamplingCall {
  DeformShape shape;
  at::Tensor input;   // (B, C, H, W)
  at::Tensor offset;  // (B, 2 * G, H, W)
  at::Tensor mask;    // (B, G, H, W), or undefined

  bool with_mask() const { return mask.defined(); }
  bool empty() const { return input.numel() == 0; }  // nothing sampled (C = 0 included)
  at::TensorOptions options() const { return input.options(); }
  // the largest element index of any input (the kernels' index type)
  int64_t max_numel() const {
    return std::max({input.numel(), offset.numel(), with_mask() ? mask.numel() : int64_t(0)});
  }
  at::Tensor empty_output() const { return at::empty(input.sizes(), options()); }
};

// The backward's call: the forward's, plus the upstream gradient (contiguous,
// of the output's shape, dtype and device). Returns (grad_input, grad_offset,
// grad_mask), grad_mask of shape (0,) without a mask.
struct DeformSamplingBackwardCall : DeformSamplingCall {
  at::Tensor grad;  // (B, C, H, W)

  // grad_mask when there is no mask to differentiate
  at::Tensor no_grad_mask() const { return at::zeros({0}, options()); }
  // all-zero gradients (the result when nothing is sampled)
  std::tuple<at::Tensor, at::Tensor, at::Tensor> zero_grads() const {
    return {at::zeros(input.sizes(), options()), at::zeros(offset.sizes(), offset.options()),
            with_mask() ? at::zeros(mask.sizes(), mask.options()) : no_grad_mask()};
  }
};

// input (B, C, H, W), offset (B, 2 * G, H, W) with G | C, mask (B, G, H, W).
inline DeformShape check_deform_sampling_args(const at::Tensor& input, const at::Tensor& offset,
                                              const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (B, C, H, W), got shape ", input.sizes());
  TORCH_CHECK(offset.dim() == 4, "offset must be 4-D (B, 2*G, H, W), got shape ",
              offset.sizes());
  DeformShape s{input.size(0), input.size(1), offset.size(1) / 2, input.size(2), input.size(3)};
  TORCH_CHECK(offset.size(1) % 2 == 0, "offset must have an even number of channels 2*G "
              "((dy, dx) per offset group), got shape ", offset.sizes());
  TORCH_CHECK(offset.size(0) == s.batch, "offset must have the batch size B = ", s.batch,
              " of input ", input.sizes(), ", got shape ", offset.sizes());
  TORCH_CHECK(offset.size(2) == s.height && offset.size(3) == s.width,
              "offset must have the spatial size (H, W) = (", s.height, ", ", s.width,
              ") of input ", input.sizes(), ", got shape ", offset.sizes());
  TORCH_CHECK(s.groups > 0 ? s.channels % s.groups == 0 : s.channels == 0,
              "the channels C = ", s.channels, " of input must be divisible by the offset "
              "groups G = ", s.groups, " (offset has 2*G = ", offset.size(1), " channels)");
  check_float_dtype(input, "input");
  check_same_dtype(offset, input, "offset", "input");
  check_same_device(offset, input, "offset", "input");
  if (has_mask(mask)) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.dim() == 4 && m.size(0) == s.batch && m.size(1) == s.groups &&
                    m.size(2) == s.height && m.size(3) == s.width,
                "mask must have shape (B, G, H, W) = (", s.batch, ", ", s.groups, ", ",
                s.height, ", ", s.width, "), got shape ", m.sizes());
    check_same_dtype(m, input, "mask", "input");
    check_same_device(m, input, "mask", "input");
  }
  return s;
}

// The backward's upstream gradient: the shape, dtype and device of the output.
inline void check_grad(const at::Tensor& grad, const at::Tensor& input) {
  TORCH_CHECK(grad.sizes() == input.sizes(), "grad must have the shape of deform_sampling's "
              "output ", input.sizes(), ", got ", grad.sizes());
  check_same_dtype(grad, input, "grad", "input");
  check_same_device(grad, input, "grad", "input");
}

inline DeformSamplingCall prepare_deform_sampling(const at::Tensor& input, const at::Tensor& offset,
                                                  const c10::optional<at::Tensor>& mask) {
  const DeformShape s = check_deform_sampling_args(input, offset, mask);
  return {s, input.contiguous(), offset.contiguous(),
          has_mask(mask) ? mask->contiguous() : at::Tensor()};
}

inline DeformSamplingBackwardCall prepare_deform_sampling_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset,
    const c10::optional<at::Tensor>& mask) {
  const DeformShape s = check_deform_sampling_args(input, offset, mask);
  check_grad(grad, input);  // every check before any copy
  return {{s, input.contiguous(), offset.contiguous(),
           has_mask(mask) ? mask->contiguous() : at::Tensor()},
          grad.contiguous()};
}

// The op entry points of both backends, written once: the contract's checks,
// then the backend's loops / launches on the prepared call. A backend file
// defines a struct with
//   static at::Tensor forward(const DeformSamplingCall&);
//   static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
//       const DeformSamplingBackwardCall&);
// and registers deform_sampling_op<Backend> / deform_sampling_backward_op<Backend>.
template <typename Backend>
at::Tensor deform_sampling_op(const at::Tensor& input, const at::Tensor& offset,
                              const c10::optional<at::Tensor>& mask) {
  return Backend::forward(prepare_deform_sampling(input, offset, mask));
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_sampling_backward_op(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset,
    const c10::optional<at::Tensor>& mask) {
  return Backend::backward(prepare_deform_sampling_backward(grad, input, offset, mask));
}

}  // namespace deform
}  // namespace tood_ext
