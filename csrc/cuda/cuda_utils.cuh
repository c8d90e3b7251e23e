// Launch helpers shared by the CUDA kernels of tood_ext (csrc/cuda/*.cu):
// block size, grid size for grid-stride loops, 32/64-bit index selection, and
// the few points where the glue touches the CUDA runtime (device guard,
// stream, launch, registration). With -DTOOD_CUDA_EMU those points go to the
// CPU emulator of csrc/tools/cuda_emu.h instead, so that the same .cu files
// run, unchanged, where there is no GPU (tests/test_cuda_emu.py).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include <ATen/Dispatch.h>
#include <torch/library.h>

#ifdef TOOD_CUDA_EMU
#include "../tools/cuda_emu.h"
#else
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "../host_utils.h"  // with_index_type

// TOOD_EXT_CUDA_IMPL(m) { m.impl(...); }: the CUDA kernels' registration
// (with the emulator: the CPU kernels of the test library tood_ext_emu).
#ifdef TOOD_CUDA_EMU
#define TOOD_EXT_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(tood_ext_emu, CPU, m)
#else
#define TOOD_EXT_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(tood_ext, CUDA, m)
#endif

// AT_DISPATCH over the CUDA kernels' dtypes: float32/64 and float16/bfloat16
// (the emulator runs on CPU tensors, whose argument checks refuse the half
// types: it compiles the float32/64 instantiations only).
#ifdef TOOD_CUDA_EMU
#define TOOD_DISPATCH_CUDA_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, __VA_ARGS__)
#else
#define TOOD_DISPATCH_CUDA_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
#endif

namespace tood_ext {

// The device guard and current stream of a launch.
#ifdef TOOD_CUDA_EMU
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
#endif

// kernel<<<grid, block, 0, stream>>>(args...), checked.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
#ifdef TOOD_CUDA_EMU
  (void)stream;
  emu::launch(kernel, grid, block, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// The most blocks of a grid-stride launch. Under the emulator a test can lower
// it (emu::grid_cap) so that every grid-stride loop takes several turns at
// test sizes, as it does on a GPU only at sizes far beyond them.
inline int64_t max_blocks(int64_t limit = kMaxBlocks) {
#ifdef TOOD_CUDA_EMU
  if (emu::grid_cap() > 0) return std::min(limit, emu::grid_cap());
#endif
  return limit;
}

// with_index_type for the kernels: 32-bit indexing where the sizes allow, else
// 64-bit. Under the emulator a test can force the 64-bit instantiations
// (emu::force_int64_index), which on a GPU only sizes beyond 2^31 elements reach.
template <typename Fn>
inline void with_kernel_index_type(int64_t max_index, Fn&& fn) {
#ifdef TOOD_CUDA_EMU
  if (emu::force_int64_index()) {
    fn(int64_t{});
    return;
  }
#endif
  with_index_type(max_index, std::forward<Fn>(fn));
}

// Blocks of `threads` for `work` items, capped at max_blocks() (the kernels
// grid-stride over the rest).
inline int64_t num_blocks(int64_t work, int threads = kThreads) {
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, max_blocks()));
}

template <typename index_t>
__device__ __forceinline__ index_t global_thread() {
  return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

template <typename index_t>
__device__ __forceinline__ index_t grid_stride() {
  return static_cast<index_t>(gridDim.x) * blockDim.x;
}

// ---- fixed-order reductions of the atomics-free pairwise backward kernels -----
// (box_iou's and probiou's: grad of the first set a warp per row, of the
// second a block per kColTile columns.)

// A warp per row: this thread's warp over the grid, and the grid's warps.
template <typename index_t>
__device__ __forceinline__ index_t global_warp() {
  const index_t warps_per_block = blockDim.x >> 5;
  return static_cast<index_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
}

template <typename index_t>
__device__ __forceinline__ index_t warp_grid_stride() {
  const index_t warps_per_block = blockDim.x >> 5;
  return static_cast<index_t>(gridDim.x) * warps_per_block;
}

// Sums each acc[c] over the warp's 32 lanes in a fixed order; lane 0 gets the sums.
template <typename T, int K>
__device__ __forceinline__ void warp_sum(T (&acc)[K]) {
#pragma unroll
  for (int c = 0; c < K; ++c) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      acc[c] += __shfl_down_sync(0xffffffffu, acc[c], offset);
    }
  }
}

constexpr int kColTile = 32;  // columns per block (threadIdx.x)
constexpr int kColRows = 16;  // row lanes per block (threadIdx.y)

// A block of kColTile x kColRows threads: sums each acc[c] over threadIdx.y in
// a fixed order through the block's shared partial; true in the threads of
// row 0, whose acc then hold the sums. Every thread of the block calls it; the
// caller syncs before partial is written again.
template <typename T, int K>
__device__ __forceinline__ bool column_tile_sum(T (&partial)[kColRows][kColTile][K],
                                                T (&acc)[K]) {
#pragma unroll
  for (int c = 0; c < K; ++c) partial[threadIdx.y][threadIdx.x][c] = acc[c];
  __syncthreads();
  if (threadIdx.y != 0) return false;
  for (int y = 1; y < kColRows; ++y) {
#pragma unroll
    for (int c = 0; c < K; ++c) acc[c] += partial[y][threadIdx.x][c];
  }
  return true;
}

// Launches the pair: rows_kernel(in, g1), a warp per row of the batch * n
// rows, and cols_kernel(in, g2), a block per kColTile of the m columns of
// each of the batch images.
template <typename RowsKernel, typename ColsKernel, typename In, typename T>
void launch_pairwise_backward(RowsKernel rows_kernel, ColsKernel cols_kernel, int64_t batch,
                              int64_t n, int64_t m, cudaStream_t stream, const In& in, T* g1,
                              T* g2) {
  const int warps_per_block = kThreads / 32;
  launch_kernel(rows_kernel, num_blocks(batch * n, warps_per_block), kThreads, stream, in, g1);
  const int64_t tiles = batch * ((m + kColTile - 1) / kColTile);
  launch_kernel(cols_kernel, num_blocks(tiles, 1), dim3(kColTile, kColRows), stream, in, g2);
}

}  // namespace tood_ext
