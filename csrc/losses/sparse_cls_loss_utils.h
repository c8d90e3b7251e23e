// Per-element math of the sparse-target classification losses
// (tood_ext.sparse_target_cls_loss), shared by the CPU kernels
// (csrc/cpu/losses_cpu.cpp) and the CUDA kernels (csrc/cuda/losses_cuda.cu).
//
// One element: the prediction x of class c of one anchor (a logit, or a
// probability p for the activated QFL) and its target t (the anchor's score
// when c is its label, else 0). Each kind gives the loss L(x, t) and dL/dx:
// * kBCE:     L = bce(x, t) = (1 - t) x - min(x, 0) + log1p(exp(-|x|))
//             (PyTorch's binary_cross_entropy_with_logits), dL/dx = s - t,
//             s = sigmoid(x).
// * kQFL:     L = |t - s|^gamma * bce(x, t)   (mmdetection's quality focal loss,
//             use_sigmoid=True; the modulating factor is differentiated too).
// * kQFLProb: L = |t - p|^gamma * bce_p(p, t), bce_p = PyTorch's
//             binary_cross_entropy: logs clamped at -100, its gradient
//             (p - t) / max(p (1 - p), float(1e-12)); p outside [0, 1] gives NaN.
// * kVFL:     L = w * bce(x, t), w = t where t > 0, else alpha |s - t|^gamma
//             (mmdetection's varifocal loss, iou_weighted=True; w is
//             differentiated where it depends on s).
// A per-class weight multiplies L and dL/dx. NaN in x gives NaN in this
// element only. No #ifdef on the device: the CPU tests prove the GPU math.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../macros.h"

namespace tood_ext {
namespace losses {

enum class ClsLossKind : int { kBCE = 0, kQFL = 1, kQFLProb = 2, kVFL = 3 };

TOOD_HOST_DEVICE_INLINE float exp_(float x) { return expf(x); }
TOOD_HOST_DEVICE_INLINE double exp_(double x) { return exp(x); }
TOOD_HOST_DEVICE_INLINE float log_(float x) { return logf(x); }
TOOD_HOST_DEVICE_INLINE double log_(double x) { return log(x); }
TOOD_HOST_DEVICE_INLINE float log1p_(float x) { return log1pf(x); }
TOOD_HOST_DEVICE_INLINE double log1p_(double x) { return log1p(x); }
TOOD_HOST_DEVICE_INLINE float powf_(float x, float p) { return powf(x, p); }
TOOD_HOST_DEVICE_INLINE double powf_(double x, double p) { return pow(x, p); }

// The focusing exponent and the VFL negatives' factor, in the compute type.
template <typename T>
struct ClsLossParams {
  T gamma, alpha;
  bool gamma_is_two;  // |d|^2 as d * d (the default; PyTorch's pow does the same)
};

template <typename T>
TOOD_HOST_DEVICE_INLINE T abs_pow(T a, const ClsLossParams<T>& p) {  // a >= 0
  return p.gamma_is_two ? a * a : powf_(a, p.gamma);
}

// d/da a^gamma for a >= 0 (0 at a = 0, as PyTorch's pow backward for gamma >= 1).
template <typename T>
TOOD_HOST_DEVICE_INLINE T abs_pow_deriv(T a, const ClsLossParams<T>& p) {
  if (p.gamma_is_two) return T(2) * a;
  return a > T(0) ? p.gamma * powf_(a, p.gamma - T(1)) : T(0);
}

// bce-with-logits and sigmoid of x sharing one exp: e = exp(-|x|).
template <typename T>
struct LogitTerms {
  T bce, sig;
};

template <typename T>
TOOD_HOST_DEVICE_INLINE LogitTerms<T> logit_terms(T x, T t) {
  const T ax = x < T(0) ? -x : x;  // NaN x: e, bce and sig are NaN
  const T e = exp_(-ax);
  const T mn = x < T(0) ? x : T(0);
  LogitTerms<T> r;
  r.bce = (T(1) - t) * x - mn + log1p_(e);
  const T inv = T(1) / (T(1) + e);
  r.sig = x >= T(0) ? inv : e * inv;
  return r;
}

// PyTorch's binary_cross_entropy of a probability p, logs clamped at -100.
template <typename T>
TOOD_HOST_DEVICE_INLINE T prob_bce(T p, T t) {
  T lp = log_(p), l1p = log1p_(-p);
  lp = lp < T(-100) ? T(-100) : lp;
  l1p = l1p < T(-100) ? T(-100) : l1p;
  return (t - T(1)) * l1p - t * lp;
}

template <typename T>
TOOD_HOST_DEVICE_INLINE T prob_bce_grad(T p, T t) {
  const T eps = static_cast<T>(1e-12f);  // PyTorch's EPSILON, a float: not 1e-12 in float64
  T den = p * (T(1) - p);
  den = den < eps ? eps : den;
  return (p - t) / den;
}

// Loss of one element (x, t) of kind K.
template <ClsLossKind K, typename T>
TOOD_HOST_DEVICE_INLINE T element_loss(T x, T t, const ClsLossParams<T>& p) {
  if (K == ClsLossKind::kQFLProb) {
    if (!(x >= T(0) && x <= T(1))) return std::numeric_limits<T>::quiet_NaN();
    const T d = t - x;
    return abs_pow(d < T(0) ? -d : d, p) * prob_bce(x, t);
  }
  const LogitTerms<T> lt = logit_terms(x, t);
  if (K == ClsLossKind::kBCE) return lt.bce;
  const T d = lt.sig - t;
  const T ad = d < T(0) ? -d : d;
  if (K == ClsLossKind::kQFL) return abs_pow(ad, p) * lt.bce;
  // kVFL
  const T w = t > T(0) ? t : p.alpha * abs_pow(ad, p);
  return w * lt.bce;
}

// dL/dx of one element (x, t) of kind K.
template <ClsLossKind K, typename T>
TOOD_HOST_DEVICE_INLINE T element_grad(T x, T t, const ClsLossParams<T>& p) {
  if (K == ClsLossKind::kQFLProb) {
    if (!(x >= T(0) && x <= T(1))) return std::numeric_limits<T>::quiet_NaN();
    const T d = x - t;  // d|d|^gamma/dx = gamma |d|^(gamma-1) sign(d)
    const T ad = d < T(0) ? -d : d;
    const T sgn = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
    return abs_pow_deriv(ad, p) * sgn * prob_bce(x, t) + abs_pow(ad, p) * prob_bce_grad(x, t);
  }
  const LogitTerms<T> lt = logit_terms(x, t);
  const T d = lt.sig - t;  // also dbce/dx
  if (K == ClsLossKind::kBCE) return d;
  const T ad = d < T(0) ? -d : d;
  const T sgn = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
  const T dsig = lt.sig * (T(1) - lt.sig);
  const T dw = abs_pow_deriv(ad, p) * sgn * dsig;  // d|s - t|^gamma / dx
  if (K == ClsLossKind::kQFL) return dw * lt.bce + abs_pow(ad, p) * d;
  // kVFL
  if (t > T(0)) return t * d;
  return p.alpha * (dw * lt.bce + abs_pow(ad, p) * d);
}

// Calls fn(std::integral_constant<ClsLossKind, K>{}) for the run-time kind.
template <typename Fn>
inline void dispatch_cls_loss_kind(ClsLossKind kind, Fn&& fn) {
  switch (kind) {
    case ClsLossKind::kBCE: fn(std::integral_constant<ClsLossKind, ClsLossKind::kBCE>{}); break;
    case ClsLossKind::kQFL: fn(std::integral_constant<ClsLossKind, ClsLossKind::kQFL>{}); break;
    case ClsLossKind::kQFLProb:
      fn(std::integral_constant<ClsLossKind, ClsLossKind::kQFLProb>{});
      break;
    case ClsLossKind::kVFL: fn(std::integral_constant<ClsLossKind, ClsLossKind::kVFL>{}); break;
  }
}

}  // namespace losses
}  // namespace tood_ext
