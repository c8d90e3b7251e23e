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

// a * b rounded on its own. nvcc contracts a * b + c into one FMA by default
// (the host compilers run with -ffp-contract=off, csrc/correctness_flags.txt);
// math that must give a framework's bits for separate multiplies and adds
// (ultralytics' rotated centre test, csrc/tal/tal_geometry.h) multiplies with
// these on the device.
namespace tood_ext {

TOOD_HOST_DEVICE_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

TOOD_HOST_DEVICE_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace tood_ext
