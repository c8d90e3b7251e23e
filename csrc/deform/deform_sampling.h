// Host-side argument checks of the deformable sampling op, shared by the CPU
// and CUDA implementations (csrc/cpu/deform_sampling_cpu.cpp,
// csrc/cuda/deform_sampling_cuda.cu). Schemas live in csrc/ops.cpp.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

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

}  // namespace deform
}  // namespace tood_ext
