// Portability macros shared by every kernel source of tood_ext.
//
// The only place where host and device compilation differ: the math headers
// under csrc/<family>/ use TOOD_HOST_DEVICE_INLINE and are compiled unchanged by
// the C++ compiler (CPU kernels) and by nvcc (CUDA kernels), so the CPU tests
// exercise the exact arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TOOD_HOST_DEVICE __host__ __device__
#else
#define TOOD_HOST_DEVICE
#endif

// Host compilers: always inline, also into the CPU kernels' ISA-specific
// clones (functions with a target attribute), into which GCC otherwise declines
// to inline plain inline functions, leaving the hot loops scalar with calls.
#if !defined(__CUDACC__) && !defined(__HIPCC__) && defined(__GNUC__)
#define TOOD_HOST_DEVICE_INLINE TOOD_HOST_DEVICE inline __attribute__((always_inline))
#else
#define TOOD_HOST_DEVICE_INLINE TOOD_HOST_DEVICE inline
#endif

// Loop unrolling hint for the shared math (nvcc honours it; host compilers
// unroll the fixed 4-iteration loops on their own at -O3).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define TOOD_UNROLL _Pragma("unroll")
#else
#define TOOD_UNROLL
#endif
