// Launch helpers shared by the CUDA kernels of tood_ext (csrc/cuda/*.cu):
// block size, grid size for grid-stride loops, and 32/64-bit index selection.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../host_utils.h"  // with_index_type

namespace tood_ext {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Blocks of `threads` for `work` items, capped at kMaxBlocks (the kernels
// grid-stride over the rest).
inline int64_t num_blocks(int64_t work, int threads = kThreads) {
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, kMaxBlocks));
}

template <typename index_t>
__device__ __forceinline__ index_t global_thread() {
  return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

template <typename index_t>
__device__ __forceinline__ index_t grid_stride() {
  return static_cast<index_t>(gridDim.x) * blockDim.x;
}

}  // namespace tood_ext
