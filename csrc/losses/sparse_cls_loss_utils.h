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
// * kFocal:   L = (alpha t + (1 - alpha)(1 - t)) pt^gamma * bce(x, t),
//             pt = (1 - s) t + s (1 - t) (mmdetection's py_sigmoid_focal_loss;
//             its hard-label target t in {0, 1} generalised to a soft one;
//             1 - s is computed as sigmoid(-x), not by a subtraction).
// * kFocalProb: the same on a probability p (mmdetection's
//             py_focal_loss_with_prob, FocalLoss(activated=True): TOOD's ATSS
//             epochs), pt = (1 - p) t + p (1 - t), with bce_p as kQFLProb.
// The focal factors are differentiated. A per-class weight (and the host's
// per-anchor weight) multiplies L and dL/dx. NaN in x gives NaN in this
// element only. No #ifdef on the device: the CPU tests prove the GPU math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../macros.h"

namespace tood_ext {
namespace losses {

enum class ClsLossKind : int {
  kBCE = 0,
  kQFL = 1,
  kQFLProb = 2,
  kVFL = 3,
  kFocal = 4,
  kFocalProb = 5
};

TOOD_HOST_DEVICE_INLINE float log_(float x) { return logf(x); }
TOOD_HOST_DEVICE_INLINE double log_(double x) { return log(x); }
TOOD_HOST_DEVICE_INLINE float log1p_(float x) { return log1pf(x); }
TOOD_HOST_DEVICE_INLINE double log1p_(double x) { return log1p(x); }
TOOD_HOST_DEVICE_INLINE float powf_(float x, float p) { return powf(x, p); }
TOOD_HOST_DEVICE_INLINE double powf_(double x, double p) { return pow(x, p); }

// exp(-a) for a >= 0 (NaN stays NaN). float: branch-free (selects only, no
// library call), so that the CPU loops vectorise: n = round(-a / ln 2),
// r = -a - n ln 2 in two parts (Cody-Waite), a degree-7 Taylor polynomial of
// exp(r) (|r| <= ln2 / 2: truncation < 6e-9), times 2^n built from its bits.
// Within 2 ulp of expf; 0 below exp(-87) (expf gives a subnormal there).
TOOD_HOST_DEVICE_INLINE float exp_neg(float a) {
  const float x = -a;
  const float xc = x >= -87.0f ? x : -87.0f;  // NaN -> -87: a clean integer part
  const float xr = x < -87.0f ? -87.0f : x;   // NaN stays NaN; e finite below -87
  const int n = static_cast<int>(xc * 1.44269504f - 0.5f);  // round to nearest (xc <= 0)
  const float nf = static_cast<float>(n);
  const float r = (xr - nf * 0.693145752f) - nf * 1.42860677e-06f;  // ln 2 = hi + lo
  float p = 1.98412698e-04f;  // 1/7!
  p = p * r + 1.38888889e-03f;
  p = p * r + 8.33333333e-03f;
  p = p * r + 4.16666667e-02f;
  p = p * r + 1.66666667e-01f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = __builtin_bit_cast(float, (n + 127) << 23);  // 2^n, n + 127 in [1, 127]
  const float e = p * scale;
  // 0 above 87 by a product, not a select: GCC 12 jump-threads `a > 87 ? 0 : e`
  // with the clamps above into two paths that its AVX2 vectoriser does not
  // if-convert ("control flow in loop"); nor does it vectorise the memcpy form
  // of the bit cast for AVX2. (SSE vectorised both.)
  return e * (a > 87.0f ? 0.0f : 1.0f);
}
TOOD_HOST_DEVICE_INLINE double exp_neg(double a) { return exp(-a); }

// log(1 + e) for e in [0, 1] (NaN stays NaN). float: branch-free as exp_neg:
// 1 + e = 2^k m with m in [1/sqrt 2, sqrt 2], log m = 2 atanh(s),
// s = (m - 1) / (m + 1) in [-0.172, 0.172] computed from e without rounding
// 1 + e, and an odd series to s^9 (truncation < 3e-9 relative).
TOOD_HOST_DEVICE_INLINE float log1p_unit(float e) {
  const bool k = e > 0.414213562f;
  const float s = k ? (e - 1.0f) / (e + 3.0f) : e / (e + 2.0f);
  const float s2 = s * s;
  float p = 0.111111111f;  // 1/9
  p = p * s2 + 0.142857143f;
  p = p * s2 + 0.2f;
  p = p * s2 + 0.333333333f;
  p = p * s2 + 1.0f;
  return (k ? 0.693147181f : 0.0f) + 2.0f * s * p;
}
TOOD_HOST_DEVICE_INLINE double log1p_unit(double e) { return log1p(e); }

// The focusing exponent and the VFL negatives' factor, in the compute type.
// kSquare (a compile-time flag of the functions below, chosen by the host
// when gamma == 2, the default): |d|^gamma as d * d, as PyTorch's pow does;
// no library call, so that the CPU loops vectorise.
template <typename T>
struct ClsLossParams {
  T gamma, alpha;
};

template <bool kSquare, typename T>
TOOD_HOST_DEVICE_INLINE T abs_pow(T a, const ClsLossParams<T>& p) {  // a >= 0
  return kSquare ? a * a : powf_(a, p.gamma);
}

// d/da a^gamma for a >= 0 (0 at a = 0, as PyTorch's pow backward for gamma >= 1).
template <bool kSquare, typename T>
TOOD_HOST_DEVICE_INLINE T abs_pow_deriv(T a, const ClsLossParams<T>& p) {
  if (kSquare) return T(2) * a;
  return a > T(0) ? p.gamma * powf_(a, p.gamma - T(1)) : T(0);
}

// bce-with-logits and sigmoid of x sharing one exp: e = exp(-|x|); sigc =
// 1 - sig = sigmoid(-x), without cancellation (kFocal only; unused: dropped).
template <typename T>
struct LogitTerms {
  T bce, sig, sigc;
};

template <typename T>
TOOD_HOST_DEVICE_INLINE LogitTerms<T> logit_terms(T x, T t) {
  const T ax = x < T(0) ? -x : x;  // NaN x: e, bce and sig are NaN
  const T e = exp_neg(ax);
  const T mn = x < T(0) ? x : T(0);
  LogitTerms<T> r;
  r.bce = (T(1) - t) * x - mn + log1p_unit(e);
  const T inv = T(1) / (T(1) + e);
  r.sig = x >= T(0) ? inv : e * inv;
  r.sigc = x >= T(0) ? e * inv : inv;
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

// The focal loss's class-balance weight alpha t + (1 - alpha)(1 - t) (1 - alpha
// at t = 0) and its pt = (1 - p) t + p (1 - t), from p and q = 1 - p.
template <typename T>
TOOD_HOST_DEVICE_INLINE T focal_alpha(T t, const ClsLossParams<T>& p) {
  return p.alpha * t + (T(1) - p.alpha) * (T(1) - t);
}
template <typename T>
TOOD_HOST_DEVICE_INLINE T focal_pt(T prob, T q, T t) {
  return q * t + prob * (T(1) - t);
}

// Loss of one element (x, t) of kind K.
template <ClsLossKind K, bool kSquare, typename T>
TOOD_HOST_DEVICE_INLINE T element_loss(T x, T t, const ClsLossParams<T>& p) {
  if (K == ClsLossKind::kQFLProb) {
    if (!(x >= T(0) && x <= T(1))) return std::numeric_limits<T>::quiet_NaN();
    const T d = t - x;
    return abs_pow<kSquare>(d < T(0) ? -d : d, p) * prob_bce(x, t);
  }
  if (K == ClsLossKind::kFocalProb) {
    if (!(x >= T(0) && x <= T(1))) return std::numeric_limits<T>::quiet_NaN();
    const T pt = focal_pt(x, T(1) - x, t);
    return focal_alpha(t, p) * abs_pow<kSquare>(pt, p) * prob_bce(x, t);
  }
  const LogitTerms<T> lt = logit_terms(x, t);
  if (K == ClsLossKind::kBCE) return lt.bce;
  if (K == ClsLossKind::kFocal) {
    const T pt = focal_pt(lt.sig, lt.sigc, t);
    return focal_alpha(t, p) * abs_pow<kSquare>(pt, p) * lt.bce;
  }
  const T d = lt.sig - t;
  const T ad = d < T(0) ? -d : d;
  if (K == ClsLossKind::kQFL) return abs_pow<kSquare>(ad, p) * lt.bce;
  // kVFL
  const T w = t > T(0) ? t : p.alpha * abs_pow<kSquare>(ad, p);
  return w * lt.bce;
}

// dL/dx of one element (x, t) of kind K.
template <ClsLossKind K, bool kSquare, typename T>
TOOD_HOST_DEVICE_INLINE T element_grad(T x, T t, const ClsLossParams<T>& p) {
  if (K == ClsLossKind::kQFLProb) {
    if (!(x >= T(0) && x <= T(1))) return std::numeric_limits<T>::quiet_NaN();
    const T d = x - t;  // d|d|^gamma/dx = gamma |d|^(gamma-1) sign(d)
    const T ad = d < T(0) ? -d : d;
    const T sgn = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
    return abs_pow_deriv<kSquare>(ad, p) * sgn * prob_bce(x, t) +
           abs_pow<kSquare>(ad, p) * prob_bce_grad(x, t);
  }
  if (K == ClsLossKind::kFocalProb) {  // dpt/dp = 1 - 2t
    if (!(x >= T(0) && x <= T(1))) return std::numeric_limits<T>::quiet_NaN();
    const T pt = focal_pt(x, T(1) - x, t);
    return focal_alpha(t, p) * (abs_pow_deriv<kSquare>(pt, p) * (T(1) - T(2) * t) *
                                    prob_bce(x, t) +
                                abs_pow<kSquare>(pt, p) * prob_bce_grad(x, t));
  }
  const LogitTerms<T> lt = logit_terms(x, t);
  const T d = lt.sig - t;  // also dbce/dx
  if (K == ClsLossKind::kBCE) return d;
  if (K == ClsLossKind::kFocal) {  // dpt/dx = (1 - 2t) s (1 - s)
    const T pt = focal_pt(lt.sig, lt.sigc, t);
    const T dpt = (T(1) - T(2) * t) * (lt.sig * lt.sigc);
    return focal_alpha(t, p) *
           (abs_pow_deriv<kSquare>(pt, p) * dpt * lt.bce + abs_pow<kSquare>(pt, p) * d);
  }
  const T ad = d < T(0) ? -d : d;
  const T sgn = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
  const T dsig = lt.sig * (T(1) - lt.sig);
  const T dw = abs_pow_deriv<kSquare>(ad, p) * sgn * dsig;  // d|s - t|^gamma / dx
  if (K == ClsLossKind::kQFL) return dw * lt.bce + abs_pow<kSquare>(ad, p) * d;
  // kVFL
  if (t > T(0)) return t * d;
  return p.alpha * (dw * lt.bce + abs_pow<kSquare>(ad, p) * d);
}

// Calls fn(std::integral_constant<ClsLossKind, K>{}, std::bool_constant<kSquare>{})
// for the run-time kind and gamma (kSquare: gamma == 2).
template <typename Fn>
inline void dispatch_cls_loss(ClsLossKind kind, double gamma, Fn&& fn) {
  auto with_square = [&](auto kind_c) {
    if (gamma == 2.0) {
      fn(kind_c, std::true_type{});
    } else {
      fn(kind_c, std::false_type{});
    }
  };
  switch (kind) {
    case ClsLossKind::kBCE:  // gamma unused: one instantiation
      fn(std::integral_constant<ClsLossKind, ClsLossKind::kBCE>{}, std::true_type{});
      break;
    case ClsLossKind::kQFL:
      with_square(std::integral_constant<ClsLossKind, ClsLossKind::kQFL>{});
      break;
    case ClsLossKind::kQFLProb:
      with_square(std::integral_constant<ClsLossKind, ClsLossKind::kQFLProb>{});
      break;
    case ClsLossKind::kVFL:
      with_square(std::integral_constant<ClsLossKind, ClsLossKind::kVFL>{});
      break;
    case ClsLossKind::kFocal:
      with_square(std::integral_constant<ClsLossKind, ClsLossKind::kFocal>{});
      break;
    case ClsLossKind::kFocalProb:
      with_square(std::integral_constant<ClsLossKind, ClsLossKind::kFocalProb>{});
      break;
  }
}

}  // namespace losses
}  // namespace tood_ext
