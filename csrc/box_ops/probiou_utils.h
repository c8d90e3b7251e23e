// Per-pair math of the ProbIoU op family: the probabilistic IoU of two
// oriented boxes (cx, cy, w, h, angle) (Gaussian Bhattacharyya similarity,
// arXiv 2106.06072) and its analytic gradient w.r.t. both boxes.
//
// Written once, called by the CPU loops (csrc/cpu/probiou_cpu.cpp), the CUDA
// kernels (csrc/cuda/probiou_cuda.cu) and the rotated assignment kernels. No
// #ifdef __CUDACC__ below this line.
//
// Semantics: those of ultralytics' `probiou` / `_get_covariance_matrix`
// (ultralytics/utils/metrics.py), in its order of operations:
//   var_w = w^2 / 12 + floor, var_h = h^2 / 12 + floor
//   A = var_w cos^2 + var_h sin^2, B = var_w sin^2 + var_h cos^2,
//   C = (var_w - var_h) cos sin                         (each box)
//   S = (A1 + A2, B1 + B2, C1 + C2), det = SA SB - SC^2
//   t1 = (SA dy^2 + SB dx^2) / (det + eps) / 4          (dx = x1 - x2, dy = y1 - y2)
//   t2 = SC (x2 - x1) dy / (det + eps) / 2
//   t3 = log(det / (4 sqrt(max(A1 B1 - C1^2, 0) max(A2 B2 - C2^2, 0)) + eps) + eps) / 2
//   bd = clamp(t1 + t2 + t3, eps, 100), iou = 1 - sqrt(1 - exp(-bd) + eps)
//   ciou: v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2, alpha = v / (v - iou + 1 + eps),
//         value = iou - alpha v, alpha a constant of the gradient (no_grad upstream).
// Non-finite inputs are computed through like any other (IEEE arithmetic, as
// ultralytics does): a NaN anywhere, or an infinite angle, gives NaN.
//
// The gradient is torch autograd's of that graph, written out by hand: the
// clamps pass the gradient only where the clamped value lies strictly inside
// the range (torch's clamp backward: clamp_(0) of the determinants where > 0,
// bd where in (eps, 100); a value at a bound or NaN passes none); sqrt(0) has an infinite derivative
// (a zero-area box at floor = 0 gets non-finite gradients there, as upstream).
#pragma once

#include "../macros.h"

#include <cmath>

namespace tood_ext {
namespace probiou {

TOOD_HOST_DEVICE_INLINE float cos_(float x) { return cosf(x); }
TOOD_HOST_DEVICE_INLINE double cos_(double x) { return cos(x); }
TOOD_HOST_DEVICE_INLINE float sin_(float x) { return sinf(x); }
TOOD_HOST_DEVICE_INLINE double sin_(double x) { return sin(x); }
TOOD_HOST_DEVICE_INLINE float log_(float x) { return logf(x); }
TOOD_HOST_DEVICE_INLINE double log_(double x) { return log(x); }
TOOD_HOST_DEVICE_INLINE float exp_(float x) { return expf(x); }
TOOD_HOST_DEVICE_INLINE double exp_(double x) { return exp(x); }
TOOD_HOST_DEVICE_INLINE float sqrt_(float x) { return sqrtf(x); }
TOOD_HOST_DEVICE_INLINE double sqrt_(double x) { return sqrt(x); }
TOOD_HOST_DEVICE_INLINE float atan_(float x) { return atanf(x); }
TOOD_HOST_DEVICE_INLINE double atan_(double x) { return atan(x); }

// Covariance entries (A, B, C) of one box's Gaussian, and what the backward needs.
template <typename T>
struct Gaussian {
  T var_w, var_h, c, s, cc, ss;  // variances, cos, sin, cos^2, sin^2
  T a, b, cab;                   // [[a, cab], [cab, b]]
};

template <typename T>
TOOD_HOST_DEVICE_INLINE Gaussian<T> gaussian(const T* box, T floor) {
  Gaussian<T> g;
  g.var_w = box[2] * box[2] / T(12) + floor;
  g.var_h = box[3] * box[3] / T(12) + floor;
  g.c = cos_(box[4]);
  g.s = sin_(box[4]);
  g.cc = g.c * g.c;
  g.ss = g.s * g.s;
  g.a = g.var_w * g.cc + g.var_h * g.ss;
  g.b = g.var_w * g.ss + g.var_h * g.cc;
  g.cab = (g.var_w - g.var_h) * g.c * g.s;
  return g;
}

// d/d(w, h, angle) of one box from the adjoints of its (a, b, cab); writes
// gbox[2..4] (the centre's adjoints are the caller's).
template <typename T>
TOOD_HOST_DEVICE_INLINE void gaussian_backward(const Gaussian<T>& g, const T* box, T g_a, T g_b,
                                               T g_cab, T* gbox) {
  const T g_vw = g_a * g.cc + g_b * g.ss + g_cab * g.c * g.s;
  const T g_vh = g_a * g.ss + g_b * g.cc - g_cab * g.c * g.s;
  const T g_cc = g_a * g.var_w + g_b * g.var_h;
  const T g_ss = g_a * g.var_h + g_b * g.var_w;
  const T dv = g.var_w - g.var_h;
  const T g_c = g_cc * T(2) * g.c + g_cab * dv * g.s;
  const T g_s = g_ss * T(2) * g.s + g_cab * dv * g.c;
  gbox[2] = g_vw / T(12) * T(2) * box[2];
  gbox[3] = g_vh / T(12) * T(2) * box[3];
  gbox[4] = g_s * g.c - g_c * g.s;
}

// The ProbIoU (ciou: minus the aspect term) of b1 and b2, each 5 values
// (cx, cy, w, h, angle) in the accumulation type T. When kGrad, also writes
// d value / d b1[k] * grad into g1[k] and d value / d b2[k] * grad into g2[k].
template <typename T, bool kGrad>
TOOD_HOST_DEVICE_INLINE T probiou_pair(const T* b1, const T* b2, T eps, T floor, bool ciou,
                                       T grad, T* g1, T* g2) {
  const Gaussian<T> p = gaussian(b1, floor);
  const Gaussian<T> q = gaussian(b2, floor);
  const T sa = p.a + q.a, sb = p.b + q.b, sc = p.cab + q.cab;
  const T dx = b1[0] - b2[0], dy = b1[1] - b2[1];
  const T mdx = b2[0] - b1[0];  // x2 - x1, as upstream writes t2
  const T det = sa * sb - sc * sc;
  const T den = det + eps;
  const T n1 = sa * (dy * dy) + sb * (dx * dx);
  const T q1 = n1 / den;
  const T t1 = q1 * T(0.25);
  const T n2 = sc * mdx * dy;
  const T q2 = n2 / den;
  const T t2 = q2 * T(0.5);
  const T d1 = p.a * p.b - p.cab * p.cab, d2 = q.a * q.b - q.cab * q.cab;
  const T d1c = d1 < T(0) ? T(0) : d1, d2c = d2 < T(0) ? T(0) : d2;  // NaN stays NaN
  const T prod = d1c * d2c;
  const T sq = sqrt_(prod);
  const T den3 = T(4) * sq + eps;
  const T ratio = det / den3;
  const T r = ratio + eps;
  const T t3 = log_(r) * T(0.5);
  const T sum = t1 + t2 + t3;
  // clamp(sum, eps, 100); NaN passes through (both comparisons false)
  const T bd = sum < eps ? eps : (sum > T(100) ? T(100) : sum);
  const T e = exp_(-bd);
  const T hd = sqrt_(T(1) - e + eps);
  const T iou = T(1) - hd;
  T value = iou;
  T v = T(0), alpha = T(0), diff = T(0), u1 = T(0), u2 = T(0);
  const T k_aspect = T(0.40528473456935108577551785283891);  // 4 / pi^2
  if (ciou) {
    u1 = b1[2] / b1[3];
    u2 = b2[2] / b2[3];
    diff = atan_(u2) - atan_(u1);
    v = k_aspect * (diff * diff);
    alpha = v / (v - iou + (T(1) + eps));
    value = iou - v * alpha;
  }
  if (kGrad) {
    // reverse mode, op by op as autograd walks upstream's graph
    const T g_hd = -grad;
    const T g_e = -(g_hd / (T(2) * hd));
    const T g_bd = -(g_e * e);
    const bool inside = (sum > eps) & (sum < T(100));  // false for NaN
    const T g_sum = inside ? g_bd : T(0);
    // t3 = log(r) / 2, r = det / den3 + eps, den3 = 4 sqrt(prod) + eps
    const T g_r = g_sum * T(0.5) / r;
    T g_det = g_r / den3;
    const T g_den3 = -g_r * det / (den3 * den3);
    const T g_sq = g_den3 * T(4);
    const T g_prod = g_sq / (T(2) * sq);
    const T g_d1 = d1 > T(0) ? g_prod * d2c : T(0);
    const T g_d2 = d2 > T(0) ? g_prod * d1c : T(0);
    // t1 = n1 / den / 4, t2 = n2 / den / 2
    const T g_q1 = g_sum * T(0.25), g_q2 = g_sum * T(0.5);
    const T g_n1 = g_q1 / den, g_n2 = g_q2 / den;
    g_det += -g_q1 * n1 / (den * den) - g_q2 * n2 / (den * den);
    T g_sa = g_n1 * (dy * dy) + g_det * sb;
    T g_sb = g_n1 * (dx * dx) + g_det * sa;
    T g_sc = g_n2 * mdx * dy - g_det * T(2) * sc;
    const T g_dx = g_n1 * sb * T(2) * dx;
    const T g_mdx = g_n2 * sc * dy;
    const T g_dy = g_n1 * sa * T(2) * dy + g_n2 * sc * mdx;
    // each box's determinant A B - C^2
    const T g_a1 = g_sa + g_d1 * p.b, g_b1 = g_sb + g_d1 * p.a;
    const T g_c1 = g_sc - g_d1 * T(2) * p.cab;
    const T g_a2 = g_sa + g_d2 * q.b, g_b2 = g_sb + g_d2 * q.a;
    const T g_c2 = g_sc - g_d2 * T(2) * q.cab;
    gaussian_backward(p, b1, g_a1, g_b1, g_c1, g1);
    gaussian_backward(q, b2, g_a2, g_b2, g_c2, g2);
    g1[0] = g_dx - g_mdx;
    g2[0] = g_mdx - g_dx;
    g1[1] = g_dy;
    g2[1] = -g_dy;
    if (ciou) {
      // value = iou - alpha v, alpha constant; v = k diff^2, diff = atan(u2) - atan(u1)
      const T g_diff = -alpha * grad * k_aspect * T(2) * diff;
      const T g_u2 = g_diff / (T(1) + u2 * u2);
      const T g_u1 = -g_diff / (T(1) + u1 * u1);
      g1[2] += g_u1 / b1[3];
      g1[3] += -g_u1 * b1[2] / (b1[3] * b1[3]);
      g2[2] += g_u2 / b2[3];
      g2[3] += -g_u2 * b2[2] / (b2[3] * b2[3]);
    }
  }
  return value;
}

// The forward value alone (the assignment kernels' overlap before its clamp
// at 0): b1, b2 point to 5 values (cx, cy, w, h, angle) each.
template <typename T>
TOOD_HOST_DEVICE_INLINE T probiou_value(const T* b1, const T* b2, T eps, T floor, bool ciou) {
  return probiou_pair<T, false>(b1, b2, eps, floor, ciou, T(0), nullptr, nullptr);
}

// Loads 5 values of any storage type as the accumulation type T.
template <typename T, typename scalar_t>
TOOD_HOST_DEVICE_INLINE void load_obb(const scalar_t* p, T out[5]) {
  out[0] = static_cast<T>(p[0]);
  out[1] = static_cast<T>(p[1]);
  out[2] = static_cast<T>(p[2]);
  out[3] = static_cast<T>(p[3]);
  out[4] = static_cast<T>(p[4]);
}

}  // namespace probiou
}  // namespace tood_ext
