// Per-element pieces of the task-aligned assignment (TAL), shared by the CPU
// kernel (csrc/cpu/tal_cpu.cpp) and the CUDA kernel (csrc/cuda/tal_cuda.cu):
// the candidate order, the top-k insertion, and the packed conflict key.
//
// Order of candidates of one GT: larger t first; equal t -> lower anchor
// index first. NaN t is never a candidate.
// Conflicts: an anchor positive for several GTs goes to the GT of largest
// overlap u compared at float32 precision; equal -> lower GT index. Both are
// folded into one 64-bit key so that the CUDA kernel can resolve them with a
// single atomicMax (order-independent, hence deterministic).
#pragma once

#include "../macros.h"

#include <cstdint>
#include <cstring>

namespace tood_ext {
namespace tal {

enum class Candidates : int { kTopkThenInside = 0, kInsideThenTopk = 1 };

// (t1, a1) ranks before (t2, a2)
template <typename T>
TOOD_HOST_DEVICE_INLINE bool ranks_before(T t1, int32_t a1, T t2, int32_t a2) {
  return t1 > t2 || (t1 == t2 && a1 < a2);
}

// Inserts candidate (t, a) into the ranked list (vals, idxs) of capacity k
// holding *count entries. Candidates must arrive in increasing anchor order
// per list, so a tie never displaces an entry already kept (it has the lower
// index). O(k) worst case, O(1) for the common reject.
template <typename T>
TOOD_HOST_DEVICE_INLINE void topk_insert(T* vals, int32_t* idxs, int k, int* count, T t,
                                         int32_t a) {
  if (!(t == t)) return;  // NaN
  int n = *count;
  if (n == k && !(t > vals[k - 1])) return;
  int pos = n < k ? n : k - 1;
  while (pos > 0 && vals[pos - 1] < t) {
    vals[pos] = vals[pos - 1];
    idxs[pos] = idxs[pos - 1];
    --pos;
  }
  vals[pos] = t;
  idxs[pos] = a;
  if (n < k) *count = n + 1;
}

// Conflict key of a claim of GT g with overlap u: float32 bits of u (u >= 0,
// so its bits order like the value) over the complement of g (lower g wins).
// Never 0, so 0 marks an anchor nobody claimed.
template <typename T>
TOOD_HOST_DEVICE_INLINE uint64_t claim_key(T u, int64_t g) {
  const float uf = u > T(0) ? static_cast<float>(u) : 0.0f;  // also maps -0 and NaN to +0
  uint32_t bits;
  memcpy(&bits, &uf, sizeof(bits));
  return (static_cast<uint64_t>(bits) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(g));
}

TOOD_HOST_DEVICE_INLINE int64_t claim_gt(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

}  // namespace tal
}  // namespace tood_ext
