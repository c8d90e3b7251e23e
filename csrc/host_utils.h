// Host-side helpers shared by every op family and both backends: argument
// checks that name the argument, and the 32/64-bit index type selection.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace tood_ext {

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device(), "; all inputs must be on the same device");
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; they must have the same floating dtype");
}

// Floating dtypes each backend implements: float32/float64 on CPU, plus
// float16/bfloat16 (float32 accumulation) on CUDA.
inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble ||
                  (t.is_cuda() && (st == at::kHalf || st == at::kBFloat16));
  TORCH_CHECK(ok, name, " must be float32 or float64",
              t.is_cuda() ? " (or float16/bfloat16)" : " on CPU (float16/bfloat16 are CUDA-only)",
              ", got ", st);
}

// Calls fn(index_t{}) with int32_t when every index stays below max_index
// < 2^31 - 1, else with int64_t (narrower arithmetic where it is safe).
template <typename Fn>
inline void with_index_type(int64_t max_index, Fn&& fn) {
  if (max_index < std::numeric_limits<int32_t>::max()) {
    fn(int32_t{});
  } else {
    fn(int64_t{});
  }
}

}  // namespace tood_ext
