// ISA dispatch of the CPU deform kernels (csrc/cpu/deform_*.cpp): the hot loops
// of one work unit run inside with_cpu_isa, which has them compiled once for the
// baseline and, on x86-64 with GCC, once more for AVX2, picked at run time.
//
// Code called inside the ISA clones must be inlined into them:
// [[gnu::always_inline]] on every helper, and no std::min/std::fill & co. there
// (GCC would call their baseline-ISA copies).
#pragma once

// Loops whose only memory dependences are gathers from a read-only plane:
// tells GCC that the gathers do not alias the stores (it cannot prove it).
#if defined(__GNUC__) && !defined(__clang__)
#define TOOD_GATHER_LOOP _Pragma("GCC ivdep")
#else
#define TOOD_GATHER_LOOP
#endif

// x86-64: the hot loops are also compiled for AVX2 (gathers, floor, blends in
// 8-wide vectors) and picked at run time when the CPU has it. No FMA: the AVX2
// code does the same IEEE operations in the same order as the baseline code,
// so both give the same bits (the flags of csrc/correctness_flags.txt).
// TOOD_EXT_CPU_ISA=generic forces the baseline (read once, by
// csrc/cpu/deform_sampling_cpu.cpp).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TOOD_CPU_AVX2_CLONE 1
#endif

// Marks the lambdas called inside the ISA clones (the one given to
// with_cpu_isa and the scatter adds): their bodies are inlined into each
// clone and compiled for its target. (GCC does not inline a plain function
// into a function with a target attribute: it would be called, compiled for
// the baseline, and mixing its SSE code with the clone's AVX code stalls.)
#define TOOD_INLINE_BODY __attribute__((always_inline))

namespace tood_ext {
namespace deform {
namespace cpu_kernels {

#ifdef TOOD_CPU_AVX2_CLONE
// tune=icelake-server: GCC's generic tuning never emits hardware gathers, and
// the emulated ones (a scalar load and a shuffle per lane) are what the
// sweeps then spend their time on. (An AVX-512 clone measured no faster on a
// Sapphire Rapids core: the sweeps are bound by gathered loads, not width.)
template <typename Fn>
__attribute__((target("avx2,tune=icelake-server"))) void run_avx2(Fn& fn) {
  fn();  // inlined: the loops in fn are compiled for AVX2 here
}
#endif

// Runs fn() (the hot loops of one work unit) with the best code generation:
// the AVX2 clone when avx2 (DeformArgs::avx2: the CPU has it and
// TOOD_EXT_CPU_ISA is not "generic"), else the baseline. Every clone does the
// same IEEE operations in the same order (the build passes -ffp-contract=off:
// no FMA contraction), so all give the same bits (tests/test_deform_cpu_bits.py).
template <typename Fn>
inline void with_cpu_isa(bool avx2, Fn&& fn) {
#ifdef TOOD_CPU_AVX2_CLONE
  if (avx2) {
    run_avx2(fn);
    return;
  }
#else
  (void)avx2;
#endif
  fn();
}

}  // namespace cpu_kernels
}  // namespace deform
}  // namespace tood_ext
