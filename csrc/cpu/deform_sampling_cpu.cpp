// CPU implementation of deformable bilinear offset sampling: the op glue. The
// entry points and every argument check are the family's contract
// (csrc/deform/deform_sampling.h: deform_sampling_op<CpuBackend>);
// the loops live in the two paths (csrc/cpu/deform_planar.cpp,
// csrc/cpu/deform_pixel_major.cpp, sharing csrc/cpu/deform/plan.h), each
// compiled for the baseline ISA and for AVX2 (csrc/cpu/deform/isa.h).
//
// The CPU kernels' two environment switches are read here, once per process
// (at the first call), and passed down as arguments:
// * TOOD_EXT_CPU_ISA=generic: never run the AVX2 clones (same bits: tested);
// * TOOD_EXT_DEFORM_CPU_PATH=planar | pixel_major: that path for every shape
//   (default: pixel-major for groups of >= 4 channels on planes of <= 65536
//   pixels, else planar; both give the same bits: tested).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../deform/deform_sampling.h"
#include "deform/plan.h"

namespace tood_ext {
namespace deform {
namespace {

using namespace cpu_kernels;

enum class CpuPath { kAuto, kPlanar, kPixelMajor };

struct DeformCpuConfig {
  bool avx2;     // the AVX2 clones may run
  CpuPath path;  // a forced path, or kAuto
};

DeformCpuConfig read_config() {
  DeformCpuConfig c{false, CpuPath::kAuto};
#ifdef TOOD_CPU_AVX2_CLONE
  const char* isa = std::getenv("TOOD_EXT_CPU_ISA");
  if (isa == nullptr || std::strcmp(isa, "generic") != 0) {
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2") != 0;
  }
#endif
  const char* path = std::getenv("TOOD_EXT_DEFORM_CPU_PATH");
  if (path != nullptr && std::strcmp(path, "planar") == 0) c.path = CpuPath::kPlanar;
  if (path != nullptr && std::strcmp(path, "pixel_major") == 0) c.path = CpuPath::kPixelMajor;
  return c;
}

// The environment as of the first call (thread-safe static initialisation).
const DeformCpuConfig& config() {
  static const DeformCpuConfig c = read_config();
  return c;
}

bool use_pixel_major(const DeformShape& s, CpuPath path) {
  if (path != CpuPath::kAuto) return path == CpuPath::kPixelMajor;
  return s.channels_per_group() >= kMinPixelMajorGroup && s.plane() <= kPixelMajorMaxPlane;
}

template <typename scalar_t>
DeformArgs<scalar_t> make_args(const DeformSamplingCall& call) {
  const DeformShape& s = call.shape;
  return {call.input.const_data_ptr<scalar_t>(), call.offset.const_data_ptr<scalar_t>(),
          call.with_mask() ? call.mask.const_data_ptr<scalar_t>() : nullptr,
          s.batch, s.channels, s.groups, s.channels_per_group(), s.height, s.width, s.plane(),
          config().avx2};
}

struct CpuBackend {
  static at::Tensor forward(const DeformSamplingCall& call);
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
      const DeformSamplingBackwardCall& call);
};

at::Tensor CpuBackend::forward(const DeformSamplingCall& call) {
  at::Tensor out = call.empty_output();
  if (call.empty()) return out;
  const bool pixel_major = use_pixel_major(call.shape, config().path);
  AT_DISPATCH_FLOATING_TYPES(call.input.scalar_type(), "deform_sampling_cpu", [&] {
    with_index_type(call.shape.plane(), [&](auto index_c) {
      using index_t = decltype(index_c);
      const DeformArgs<scalar_t> a = make_args<scalar_t>(call);
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      if (pixel_major) {
        forward_pixel_major<scalar_t, index_t>(a, o);
      } else {
        forward_planar<scalar_t, index_t>(a, o);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> CpuBackend::backward(
    const DeformSamplingBackwardCall& call) {
  if (call.empty()) return call.zero_grads();
  // every element of each is written by the kernels (grad_input zeroed by its owner)
  at::Tensor grad_input = at::empty(call.input.sizes(), call.options());
  at::Tensor grad_offset = at::empty(call.offset.sizes(), call.options());
  at::Tensor grad_mask = call.with_mask() ? at::empty(call.mask.sizes(), call.options())
                                          : call.no_grad_mask();
  const bool pixel_major = use_pixel_major(call.shape, config().path);
  AT_DISPATCH_FLOATING_TYPES(call.input.scalar_type(), "deform_sampling_backward_cpu", [&] {
    const DeformGrads<scalar_t> gr{
        call.grad.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
        grad_offset.mutable_data_ptr<scalar_t>(),
        call.with_mask() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr};
    with_index_type(call.shape.plane(), [&](auto index_c) {
      using index_t = decltype(index_c);
      const DeformArgs<scalar_t> a = make_args<scalar_t>(call);
      if (pixel_major) {
        backward_pixel_major<scalar_t, index_t>(a, gr);
      } else {
        backward_planar<scalar_t, index_t>(a, gr);
      }
    });
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("deform_sampling", &deform_sampling_op<CpuBackend>);
  m.impl("_deform_sampling_backward", &deform_sampling_backward_op<CpuBackend>);
}

}  // namespace deform
}  // namespace tood_ext
