// CUDA kernels of deformable bilinear offset sampling. The per-element math is
// the one of csrc/deform/deform_sampling_utils.h, shared with the CPU kernels.
//
// Design:
// * forward: a gather. One thread per pixel (b, g, i, j) and chunk of up to
//   kChannelsPerThread channels of the group: the corners (offset reads,
//   floor, weights, and the index arithmetic) are computed once and serve the
//   chunk's channels, whose loads are independent and in flight together;
//   consecutive threads take consecutive pixels (coalesced stores). Grid-stride
//   loops, 32-bit indexing unless the sizes need 64-bit. Deterministic.
// * grad_offset / grad_mask: a gather, one thread per (b, g, i, j) that sums
//   over the group's channels in channel order. Deterministic.
// * grad_input: a scatter, threads as in the forward, each adding the upstream
//   gradient of its chunk's channels into their (up to) four corners with
//   gpuAtomicAdd. Atomics make the
//   order of the additions, hence the last bits, vary from run to run: the op
//   reports itself to at::globalContext().alertNotDeterministic, which raises
//   under torch.use_deterministic_algorithms(True) (warns with warn_only).
// * half/bfloat16 are loaded and computed in float32 (at::opmath_type);
//   grad_input is accumulated in a float32 buffer and cast once at the end.
// * launches use the current stream under a device guard and are checked.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../deform/deform_sampling.h"
#include "cuda_utils.cuh"

namespace tood_ext {
namespace deform {
namespace {

// Sizes of one call as the kernels' index type.
// Cpt: channels per thread of the forward / grad_input kernels (a chunk);
// chunks = ceil(Cg / Cpt) chunks per group.
template <typename index_t>
struct Dims {
  index_t B, C, G, Cg, H, W, HW, Cpt, chunks;
};

constexpr int64_t kChannelsPerThread = 8;

template <typename index_t>
Dims<index_t> make_dims(const DeformShape& s) {
  const int64_t cg = s.channels_per_group();
  const int64_t cpt = std::max<int64_t>(1, std::min(cg, kChannelsPerThread));
  return {static_cast<index_t>(s.batch), static_cast<index_t>(s.channels),
          static_cast<index_t>(s.groups), static_cast<index_t>(cg),
          static_cast<index_t>(s.height), static_cast<index_t>(s.width),
          static_cast<index_t>(s.plane()), static_cast<index_t>(cpt),
          static_cast<index_t>((cg + cpt - 1) / cpt)};
}

// Threads of the forward / grad_input kernels: one per (b, g, chunk, pixel).
inline int64_t chunk_units(const DeformShape& s) {
  const Dims<int64_t> d = make_dims<int64_t>(s);
  return d.B * d.G * d.chunks * d.HW;
}

// Unit u = ((b * G + g) * chunks + chunk) * HW + p: its offset block bg, pixel
// p and first plane (b, g * Cg + chunk * Cpt), and the chunk's channel count.
template <typename index_t>
struct ChunkUnit {
  index_t bg, p, plane, n;
};

template <typename index_t>
__device__ __forceinline__ ChunkUnit<index_t> chunk_unit(index_t u, const Dims<index_t>& d) {
  const index_t rest = u / d.HW, p = u - rest * d.HW;
  const index_t bg = rest / d.chunks, chunk = rest - bg * d.chunks;
  const index_t b = bg / d.G, g = bg - b * d.G;
  const index_t c0 = chunk * d.Cpt;
  const index_t n = d.Cg - c0 < d.Cpt ? d.Cg - c0 : d.Cpt;
  return {bg, p, (b * d.C + g * d.Cg + c0) * d.HW, n};
}

// Corners of pixel p of offset block bg = b * G + g.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void pixel_corners(const scalar_t* __restrict__ offset, index_t bg,
                                              index_t p, const Dims<index_t>& d,
                                              BilinearCorners<at::opmath_type<scalar_t>, index_t>& c) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t i = p / d.W, j = p - (p / d.W) * d.W;
  const scalar_t* dy = offset + 2 * bg * d.HW;
  deform_corners(i, j, static_cast<acc_t>(dy[p]), static_cast<acc_t>(dy[d.HW + p]), d.H, d.W, c);
}

// The loop of the forward / grad_input threads: each unit u of this thread
// (grid-stride), its pixel's corners and mask value (1 without a mask) computed
// once, then fn(corners, mask value, plane, p) per channel plane of the chunk
// (pixel p of plane (b, c) at plane + p).
template <typename scalar_t, typename index_t, typename Fn>
__device__ __forceinline__ void for_each_chunk_channel(index_t units,
                                                       const scalar_t* __restrict__ offset,
                                                       const scalar_t* __restrict__ mask,
                                                       const Dims<index_t>& d, Fn&& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t u = global_thread<index_t>(); u < units; u += grid_stride<index_t>()) {
    const ChunkUnit<index_t> t = chunk_unit(u, d);
    BilinearCorners<acc_t, index_t> cn;
    pixel_corners<scalar_t>(offset, t.bg, t.p, d, cn);
    const acc_t mv = mask ? static_cast<acc_t>(mask[t.bg * d.HW + t.p]) : acc_t(1);
    // unrolled: the loads of several channels are issued before the first store
#pragma unroll 4
    for (index_t k = 0; k < t.n; ++k) fn(cn, mv, t.plane + k * d.HW, t.p);
  }
}

// ---- forward ------------------------------------------------------------------------

template <typename scalar_t, typename index_t>
__global__ void deform_sampling_forward_kernel(const scalar_t* __restrict__ input,
                                               const scalar_t* __restrict__ offset,
                                               const scalar_t* __restrict__ mask,
                                               scalar_t* __restrict__ out, index_t units,
                                               Dims<index_t> d) {
  using acc_t = at::opmath_type<scalar_t>;
  for_each_chunk_channel(units, offset, mask, d, [&](const BilinearCorners<acc_t, index_t>& cn,
                                                     acc_t mv, index_t plane, index_t p) {
    acc_t v[4];
    load_corners(input + plane, cn, v);
    acc_t value = bilinear_value(cn, v);
    if (mask) value *= mv;
    out[plane + p] = static_cast<scalar_t>(value);
  });
}

// ---- backward -----------------------------------------------------------------------

// grad_input (acc_t buffer, zero-initialised) += the upstream gradient of each
// output element scattered into its four corners, by atomics.
template <typename scalar_t, typename index_t>
__global__ void deform_sampling_grad_input_kernel(const scalar_t* __restrict__ grad,
                                                  const scalar_t* __restrict__ offset,
                                                  const scalar_t* __restrict__ mask,
                                                  at::opmath_type<scalar_t>* __restrict__ grad_input,
                                                  index_t units, Dims<index_t> d) {
  using acc_t = at::opmath_type<scalar_t>;
  for_each_chunk_channel(units, offset, mask, d, [&](const BilinearCorners<acc_t, index_t>& cn,
                                                     acc_t mv, index_t plane, index_t p) {
    acc_t g = static_cast<acc_t>(grad[plane + p]);
    if (mask) g *= mv;
    if (g == acc_t(0)) return;  // nothing to add (a NaN gradient still goes through)
    acc_t* gin = grad_input + plane;
    scatter_corners(cn, g, [gin](index_t off, acc_t add) { gpuAtomicAdd(gin + off, add); });
  });
}

// grad_offset and grad_mask of pixel (b, g, p), summed over the group's
// channels in channel order by one thread.
template <typename scalar_t, typename index_t>
__global__ void deform_sampling_grad_position_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
    scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_mask, index_t total,
    Dims<index_t> d) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = global_thread<index_t>(); idx < total; idx += grid_stride<index_t>()) {
    const index_t bg = idx / d.HW, p = idx - bg * d.HW;
    const index_t b = bg / d.G, g = bg - b * d.G;
    BilinearCorners<acc_t, index_t> cn;
    pixel_corners<scalar_t>(offset, bg, p, d, cn);
    acc_t acc_y = 0, acc_x = 0, acc_m = 0;
    const index_t plane0 = (b * d.C + g * d.Cg) * d.HW;
    for (index_t c = 0; c < d.Cg; ++c) {
      const index_t plane = plane0 + c * d.HW;
      const acc_t g_out = static_cast<acc_t>(grad[plane + p]);
      acc_t v[4], gy, gx;
      load_corners(input + plane, cn, v);
      bilinear_position_grad(cn, v, gy, gx);
      acc_y += g_out * gy;
      acc_x += g_out * gx;
      if (mask) acc_m += g_out * bilinear_value(cn, v);
    }
    const acc_t m = mask ? static_cast<acc_t>(mask[idx]) : acc_t(1);
    grad_offset[2 * bg * d.HW + p] = static_cast<scalar_t>(m * acc_y);
    grad_offset[(2 * bg + 1) * d.HW + p] = static_cast<scalar_t>(m * acc_x);
    if (mask) grad_mask[idx] = static_cast<scalar_t>(acc_m);
  }
}

// ---- ops ----------------------------------------------------------------------------

struct CudaBackend {
  static at::Tensor forward(const DeformSamplingCall& call);
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
      const DeformSamplingBackwardCall& call);
};

at::Tensor CudaBackend::forward(const DeformSamplingCall& call) {
  const DeviceGuard guard(call.input.device());
  at::Tensor out = call.empty_output();
  if (call.empty()) return out;
  const DeformShape& s = call.shape;
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(call.input.scalar_type(), "deform_sampling_cuda", [&] {
    with_kernel_index_type(call.max_numel(), [&](auto index_c) {
      using index_t = decltype(index_c);
      const int64_t units = chunk_units(s);
      launch_kernel(deform_sampling_forward_kernel<scalar_t, index_t>, num_blocks(units), kThreads,
                    stream, call.input.const_data_ptr<scalar_t>(),
                    call.offset.const_data_ptr<scalar_t>(),
                    call.with_mask() ? call.mask.const_data_ptr<scalar_t>() : nullptr,
                    out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(units),
                    make_dims<index_t>(s));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> CudaBackend::backward(
    const DeformSamplingBackwardCall& call) {
  at::globalContext().alertNotDeterministic(
      "tood_ext::deform_sampling backward (grad of input) on CUDA");
  const DeviceGuard guard(call.input.device());
  if (call.empty()) return call.zero_grads();
  const DeformShape& s = call.shape;
  const at::Tensor &in = call.input, &off = call.offset, &m = call.mask;
  // grad_input accumulates in the op-math type: float32 for half/bfloat16.
  const auto acc_type = at::toOpMathType(in.scalar_type());
  at::Tensor grad_input_acc = at::zeros(in.sizes(), in.options().dtype(acc_type));
  // Zeros: with C = 0 (or H * W = 0) no kernel writes them.
  at::Tensor grad_offset = at::zeros(off.sizes(), off.options());
  at::Tensor grad_mask = call.with_mask() ? at::zeros(m.sizes(), m.options())
                                          : call.no_grad_mask();
  const cudaStream_t stream = current_stream();
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(in.scalar_type(), "deform_sampling_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_kernel_index_type(call.max_numel(), [&](auto index_c) {
      using index_t = decltype(index_c);
      const Dims<index_t> d = make_dims<index_t>(s);
      const scalar_t* pm = call.with_mask() ? m.const_data_ptr<scalar_t>() : nullptr;
      const int64_t units = chunk_units(s);
      launch_kernel(deform_sampling_grad_input_kernel<scalar_t, index_t>, num_blocks(units),
                    kThreads, stream, call.grad.const_data_ptr<scalar_t>(),
                    off.const_data_ptr<scalar_t>(), pm, grad_input_acc.mutable_data_ptr<acc_t>(),
                    static_cast<index_t>(units), d);
      const int64_t pixels = s.batch * s.groups * s.plane();
      if (pixels == 0) return;
      launch_kernel(deform_sampling_grad_position_kernel<scalar_t, index_t>, num_blocks(pixels),
                    kThreads, stream, call.grad.const_data_ptr<scalar_t>(),
                    in.const_data_ptr<scalar_t>(), off.const_data_ptr<scalar_t>(), pm,
                    grad_offset.mutable_data_ptr<scalar_t>(),
                    call.with_mask() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr,
                    static_cast<index_t>(pixels), d);
    });
  });
  at::Tensor grad_input = grad_input_acc.scalar_type() == in.scalar_type()
                              ? grad_input_acc
                              : grad_input_acc.to(in.scalar_type());
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TOOD_EXT_CUDA_IMPL(m) {
  m.impl("deform_sampling", &deform_sampling_op<CudaBackend>);
  m.impl("_deform_sampling_backward", &deform_sampling_backward_op<CudaBackend>);
}

}  // namespace deform
}  // namespace tood_ext
