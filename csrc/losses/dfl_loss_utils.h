// Per-row math of the distribution focal loss (tood_ext.dfl_loss), shared by
// the CPU kernels (csrc/cpu/losses_cpu.cpp) and the CUDA kernels
// (csrc/cuda/losses_cuda.cu).
//
// One row: logits x[0, R) over R = reg_max bins and a target distance y. As
// ultralytics' DFLoss: y is clamped to [0, R - 1 - 0.01], l = floor(y), the
// weights of bins l and l + 1 are w_l = l + 1 - y and w_r = 1 - w_l, and
// L = -(w_l log_softmax(x)_l + w_r log_softmax(x)_{l+1}) = lse(x) - w_l x_l - w_r x_{l+1};
// dL/dx_c = softmax(x)_c - w_l [c == l] - w_r [c == l + 1]. A NaN target or
// logit makes its row NaN (value and gradient) and nothing else.
#pragma once

#include <cstdint>

#include "../macros.h"
#include "sparse_cls_loss_utils.h"  // exp_neg, log_

namespace tood_ext {
namespace losses {

// The two bins of target y among `bins` and the left weight (NaN y: bin 0, NaN weight).
template <typename T>
struct DflBins {
  int64_t left;
  T wl;
};

template <typename T>
TOOD_HOST_DEVICE_INLINE DflBins<T> dfl_bins(T y, int64_t bins) {
  const T hi = static_cast<T>(bins - 1) - static_cast<T>(0.01);
  T yc = y < T(0) ? T(0) : y;  // NaN stays NaN
  yc = yc > hi ? hi : yc;
  DflBins<T> b;
  b.left = yc == yc ? static_cast<int64_t>(yc) : 0;
  b.wl = static_cast<T>(b.left + 1) - yc;
  return b;
}

// The row loops work in kDflLanes interleaved lanes (bin c in lane c % kDflLanes,
// the lanes combined in a fixed order at the end): elementwise over the lanes, so
// that a compiler vectorises them (for R = 16 on the CPU: the bins of a row in two
// 8-wide AVX2 vectors, see csrc/cpu/losses_cpu.cpp) without reassociating a sum.
// The order is the same on every device.
constexpr int kDflLanes = 8;

// log(sum(exp(x))) of one row, max-shifted (a NaN logit gives NaN: through the sum).
template <typename T, typename scalar_t>
TOOD_HOST_DEVICE_INLINE T row_logsumexp(const scalar_t* x, int64_t bins) {
  T lane[kDflLanes];
  for (int j = 0; j < kDflLanes; ++j) lane[j] = static_cast<T>(x[0]);
  for (int64_t c0 = 0; c0 < bins; c0 += kDflLanes) {
    for (int j = 0; j < kDflLanes; ++j) {
      const int64_t c = c0 + j;
      const T v = c < bins ? static_cast<T>(x[c]) : lane[j];
      lane[j] = v > lane[j] ? v : lane[j];  // a NaN never wins
    }
  }
  T m = lane[0];
  for (int j = 1; j < kDflLanes; ++j) m = lane[j] > m ? lane[j] : m;
  for (int j = 0; j < kDflLanes; ++j) lane[j] = 0;
  for (int64_t c0 = 0; c0 < bins; c0 += kDflLanes) {
    for (int j = 0; j < kDflLanes; ++j) {
      const int64_t c = c0 + j;
      // exp(x - m); the bins past the row's end add exp(-inf) = 0 through a product
      const T e = exp_neg(m - static_cast<T>(x[c < bins ? c : 0]));
      lane[j] += e * (c < bins ? T(1) : T(0));
    }
  }
  T s = 0;
  for (int j = 0; j < kDflLanes; ++j) s += lane[j];
  return m + log_(s);
}

template <typename T, typename scalar_t>
TOOD_HOST_DEVICE_INLINE T dfl_row_loss(const scalar_t* x, int64_t bins, T y) {
  const DflBins<T> b = dfl_bins(y, bins);
  const T lse = row_logsumexp<T>(x, bins);
  return lse - b.wl * static_cast<T>(x[b.left]) - (T(1) - b.wl) * static_cast<T>(x[b.left + 1]);
}

// grad[c] = scale * dL/dx_c for the row.
template <typename T, typename scalar_t>
TOOD_HOST_DEVICE_INLINE void dfl_row_grad(const scalar_t* x, int64_t bins, T y, T scale,
                                          scalar_t* grad) {
  const DflBins<T> b = dfl_bins(y, bins);
  const T lse = row_logsumexp<T>(x, bins);
  const T nan_guard = b.wl - b.wl;  // 0, or NaN for a NaN target: the whole row NaN
  const T wr = T(1) - b.wl;
  const int left = static_cast<int>(b.left);  // 32-bit compares: the float lanes' width
  for (int c = 0; c < static_cast<int>(bins); ++c) {
    // softmax exp(x - lse), minus the target's two weights (selects: no branch)
    const T d = exp_neg(lse - static_cast<T>(x[c])) + nan_guard -
                (c == left ? b.wl : T(0)) - (c == left + 1 ? wr : T(0));
    grad[c] = static_cast<scalar_t>(scale * d);
  }
}

}  // namespace losses
}  // namespace tood_ext
