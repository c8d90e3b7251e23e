// A CPU emulator of the small part of CUDA that tood_ext's kernels use, so that
// the very source of csrc/cuda/*.cu (kernels, launch geometry and ATen glue)
// can be compiled by the host compiler (-DTOOD_CUDA_EMU) and run on machines
// without a GPU. tests/test_cuda_emu.py builds it and compares every CUDA op
// with the CPU kernels; on a machine with a GPU the real kernels are tested
// instead.
//
// What is emulated:
// * the launch: every block of the grid, in a shuffled order; the threads of
//   a block as fibers of one OS thread, resumed in a shuffled order
//   after every barrier, so that results depending on the order of blocks or
//   threads show up as mismatches;
// * threadIdx / blockIdx / blockDim / gridDim, __syncthreads, __syncwarp,
//   __shfl_{sync,xor_sync,down_sync,up_sync}, atomicAdd / atomicMax,
//   gpuAtomicAdd, __shared__ (one copy per kernel, used by one block at a time);
// * the launch-configuration limits (block <= 1024 threads, grid.y/z <= 65535,
//   ...), raised as errors as cudaLaunchKernel would report them.
// What the emulator reports as errors: a warp shuffle or __syncwarp whose mask
// names a lane that has exited or waits elsewhere (stricter than PTX, which
// skips exited lanes: NVIDIA's guidance, and a bug in our kernels), a shuffle
// reading a lane outside its mask (an undefined value on a GPU), a shuffle
// width that is not a power of two <= 32, and threads that wait at barriers
// no other thread can reach (deadlock).
// What it does not model: memory-model races between threads that do not
// synchronise (a thread runs uninterrupted between barriers), shared memory
// left from the previous block (it is not re-poisoned), out-of-bounds accesses
// (plain host memory; the AddressSanitizer build catches those past an
// allocation), timing. Block and thread orders come from a seed: the launch
// count, plus TOOD_CUDA_EMU_SEED when set, named in every error.
#pragma once

#ifndef TOOD_CUDA_EMU
#error "cuda_emu.h is the CUDA emulator: compile with -DTOOD_CUDA_EMU"
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- CUDA's keywords and built-in variables ----------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// one copy per kernel instantiation; the emulator runs one block at a time
#define __shared__ static

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned int x, y, z;
};
using cudaStream_t = void*;

// Set by the emulator before it resumes a thread.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};

namespace tood_ext {
namespace emu {

// Runs body() once per thread of the grid (see the file comment).
void run(dim3 grid, dim3 block, const std::function<void()>& body);

// Barrier of the calling thread's block / of the lanes of `mask` in its warp.
void block_barrier();
void warp_barrier(unsigned mask);
// Warp shuffle: publishes `bits` (the caller's value) and returns the value of
// lane src_lane (< 32) as published in the same shuffle; both lanes must be
// in `mask`.
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src_lane);
// Lane of the calling thread in its warp (0..31).
int lane_id();
// Raises (for the calling thread) unless width is a power of two <= 32.
void check_shuffle_width(int width);

// When > 0, the most blocks tood_ext's grid-stride launches use (max_blocks()
// of csrc/cuda/cuda_utils.cuh); 0 (the default) leaves their grids alone.
int64_t& grid_cap();
// When true, tood_ext's kernels take their 64-bit index instantiations
// (with_kernel_index_type of csrc/cuda/cuda_utils.cuh) at any size.
bool& force_int64_index();
// Blocks (grid.x * grid.y * grid.z) of the most recent launch.
int64_t last_launch_blocks();
// Launches emulated so far by this process.
int64_t launches();

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "emulated shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// The value `v` of lane `from` in a shuffle of the lanes of `mask`.
template <typename T>
inline T read_lane(unsigned mask, T v, int from) {
  return from_bits<T>(warp_exchange(mask, to_bits(v), from));
}

// kernel(args...) on every thread, the arguments converted once to the
// kernel's parameter types (as a launch copies them to the device).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run(grid, block, [&] { std::apply(kernel, params); });
}

}  // namespace emu
}  // namespace tood_ext

// ---- intrinsics ----------------------------------------------------------------------
inline void __syncthreads() { tood_ext::emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { tood_ext::emu::warp_barrier(mask); }

// Source lane of a shuffle within segments of `width` lanes (a power of two
// <= 32, else an error); lane offsets and masks use their low 5 bits, as PTX's
// shfl.sync does; a source beyond the caller's segment yields the caller's own
// value (CUDA's rule), an earlier segment's lane is read.
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  tood_ext::emu::check_shuffle_width(width);
  const int lane = tood_ext::emu::lane_id();
  const int base = lane - lane % width;
  const int from = base + (src & (width - 1));
  return tood_ext::emu::read_lane(mask, v, from);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  tood_ext::emu::check_shuffle_width(width);
  const int lane = tood_ext::emu::lane_id();
  const int end = lane - lane % width + width;
  int from = lane ^ (lane_mask & 31);
  if (from >= end) from = lane;
  return tood_ext::emu::read_lane(mask, v, from);
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  tood_ext::emu::check_shuffle_width(width);
  const int lane = tood_ext::emu::lane_id();
  const int end = lane - lane % width + width;
  int from = lane + static_cast<int>(delta & 31u);
  if (from >= end) from = lane;
  return tood_ext::emu::read_lane(mask, v, from);
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  tood_ext::emu::check_shuffle_width(width);
  const int lane = tood_ext::emu::lane_id();
  const int base = lane - lane % width;
  int from = lane - static_cast<int>(delta & 31u);
  if (from < base) from = lane;
  return tood_ext::emu::read_lane(mask, v, from);
}

// Threads of the emulator switch only at barriers and shuffles, so a plain
// read-modify-write is atomic. Each returns the old value, as CUDA's do.
#define TOOD_EMU_ATOMIC(name, T, expr) \
  inline T name(T* address, T val) {   \
    const T old = *address;            \
    *address = (expr);                 \
    return old;                        \
  }
TOOD_EMU_ATOMIC(atomicAdd, int, old + val)
TOOD_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
TOOD_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
TOOD_EMU_ATOMIC(atomicAdd, float, old + val)
TOOD_EMU_ATOMIC(atomicAdd, double, old + val)
TOOD_EMU_ATOMIC(atomicMax, int, old < val ? val : old)
TOOD_EMU_ATOMIC(atomicMax, unsigned int, old < val ? val : old)
TOOD_EMU_ATOMIC(atomicMax, long long, old < val ? val : old)
TOOD_EMU_ATOMIC(atomicMax, unsigned long long, old < val ? val : old)
#undef TOOD_EMU_ATOMIC

// ATen's gpuAtomicAdd (ATen/cuda/Atomic.cuh): half/bfloat16 added in float.
template <typename T, typename = std::enable_if_t<std::is_same<T, c10::Half>::value ||
                                                  std::is_same<T, c10::BFloat16>::value>>
inline T gpuAtomicAdd(T* address, T val) {
  const T old = *address;
  *address = static_cast<T>(static_cast<float>(old) + static_cast<float>(val));
  return old;
}
inline float gpuAtomicAdd(float* address, float val) { return atomicAdd(address, val); }
inline double gpuAtomicAdd(double* address, double val) { return atomicAdd(address, val); }
