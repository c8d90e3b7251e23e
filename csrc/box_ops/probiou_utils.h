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

// One box prepared for its pairs: the centre, the covariance entries of its
// Gaussian [[a, cab], [cab, b]], its determinant (raw and clamped at 0) and,
// for CIoU, atan(w / h). Computed once per box by the pairwise loops.
template <typename T>
struct Obb {
  T x, y, a, b, cab, det, det_c, aspect;
};

// What the backward of a box needs beyond Obb: the variances, cos and sin.
template <typename T>
struct ObbTrig {
  T var_w, var_h, c, s, cc, ss;
};

template <typename T>
TOOD_HOST_DEVICE_INLINE Obb<T> prepare_obb(const T* box, T floor, bool ciou, ObbTrig<T>* trig) {
  ObbTrig<T> g;
  g.var_w = box[2] * box[2] / T(12) + floor;
  g.var_h = box[3] * box[3] / T(12) + floor;
  g.c = cos_(box[4]);
  g.s = sin_(box[4]);
  g.cc = g.c * g.c;
  g.ss = g.s * g.s;
  Obb<T> o;
  o.x = box[0];
  o.y = box[1];
  o.a = g.var_w * g.cc + g.var_h * g.ss;
  o.b = g.var_w * g.ss + g.var_h * g.cc;
  o.cab = (g.var_w - g.var_h) * g.c * g.s;
  o.det = o.a * o.b - o.cab * o.cab;
  o.det_c = o.det < T(0) ? T(0) : o.det;  // NaN stays NaN
  o.aspect = ciou ? atan_(box[2] / box[3]) : T(0);
  if (trig) *trig = g;
  return o;
}

// Adjoints of one box's Obb fields from one pair (or summed over its pairs):
// d value / d (x, y, a, b, cab, det_c, aspect).
template <typename T>
struct ObbAdjoint {
  T x, y, a, b, cab, det_c, aspect;
};

template <typename T>
TOOD_HOST_DEVICE_INLINE ObbAdjoint<T> zero_adjoint() {
  return {T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
}

template <typename T>
TOOD_HOST_DEVICE_INLINE void accumulate(ObbAdjoint<T>& acc, const ObbAdjoint<T>& g) {
  acc.x += g.x;
  acc.y += g.y;
  acc.a += g.a;
  acc.b += g.b;
  acc.cab += g.cab;
  acc.det_c += g.det_c;
  acc.aspect += g.aspect;
}

// The gradient of one box (cx, cy, w, h, angle) from its Obb adjoints: the
// clamp of the determinant, the covariance, the variances and (ciou) atan(w/h).
template <typename T>
TOOD_HOST_DEVICE_INLINE void obb_backward(const T* box, T floor, bool ciou, const ObbAdjoint<T>& g,
                                          T* gbox) {
  ObbTrig<T> t;
  const Obb<T> o = prepare_obb(box, floor, false, &t);
  const T g_det = o.det > T(0) ? g.det_c : T(0);  // torch's clamp: no gradient at or below 0
  const T g_a = g.a + g_det * o.b;
  const T g_b = g.b + g_det * o.a;
  const T g_cab = g.cab - g_det * T(2) * o.cab;
  const T g_vw = g_a * t.cc + g_b * t.ss + g_cab * t.c * t.s;
  const T g_vh = g_a * t.ss + g_b * t.cc - g_cab * t.c * t.s;
  const T g_cc = g_a * t.var_w + g_b * t.var_h;
  const T g_ss = g_a * t.var_h + g_b * t.var_w;
  const T dv = t.var_w - t.var_h;
  const T g_c = g_cc * T(2) * t.c + g_cab * dv * t.s;
  const T g_s = g_ss * T(2) * t.s + g_cab * dv * t.c;
  T g_w = g_vw / T(12) * T(2) * box[2];
  T g_h = g_vh / T(12) * T(2) * box[3];
  if (ciou) {  // aspect = atan(u), u = w / h
    const T u = box[2] / box[3];
    const T g_u = g.aspect / (T(1) + u * u);
    g_w += g_u / box[3];
    g_h += -g_u * box[2] / (box[3] * box[3]);
  }
  gbox[0] = g.x;
  gbox[1] = g.y;
  gbox[2] = g_w;
  gbox[3] = g_h;
  gbox[4] = g_s * t.c - g_c * t.s;
}

// The ProbIoU (ciou: minus the aspect term) of two prepared boxes. When
// kGrad, also writes grad * d value / d (Obb fields) of each box into g1, g2.
template <typename T, bool kGrad>
TOOD_HOST_DEVICE_INLINE T probiou_obb(const Obb<T>& p, const Obb<T>& q, T eps, bool ciou, T grad,
                                      ObbAdjoint<T>* g1, ObbAdjoint<T>* g2) {
  const T sa = p.a + q.a, sb = p.b + q.b, sc = p.cab + q.cab;
  const T dx = p.x - q.x, dy = p.y - q.y;
  const T mdx = q.x - p.x;  // x2 - x1, as upstream writes t2
  const T det = sa * sb - sc * sc;
  const T den = det + eps;
  const T n1 = sa * (dy * dy) + sb * (dx * dx);
  const T q1 = n1 / den;
  const T t1 = q1 * T(0.25);
  const T n2 = sc * mdx * dy;
  const T q2 = n2 / den;
  const T t2 = q2 * T(0.5);
  const T prod = p.det_c * q.det_c;
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
  T value = iou, v = T(0), alpha = T(0), diff = T(0);
  const T k_aspect = T(0.40528473456935108577551785283891);  // 4 / pi^2
  if (ciou) {
    diff = q.aspect - p.aspect;
    v = k_aspect * (diff * diff);
    alpha = v / (v - iou + (T(1) + eps));
    value = iou - v * alpha;
  }
  if (kGrad) {
    // reverse mode, op by op as autograd walks upstream's graph
    const T g_hd = -grad;
    const T g_e = -(g_hd / (T(2) * hd));
    const T g_bd = -(g_e * e);
    const bool inside = (sum > eps) & (sum < T(100));  // torch's clamp; false for NaN
    const T g_sum = inside ? g_bd : T(0);
    // t3 = log(r) / 2, r = det / den3 + eps, den3 = 4 sqrt(prod) + eps
    const T g_r = g_sum * T(0.5) / r;
    T g_det = g_r / den3;
    const T g_den3 = -g_r * det / (den3 * den3);
    const T g_sq = g_den3 * T(4);
    const T g_prod = g_sq / (T(2) * sq);
    // t1 = n1 / den / 4, t2 = n2 / den / 2
    const T g_q1 = g_sum * T(0.25), g_q2 = g_sum * T(0.5);
    const T g_n1 = g_q1 / den, g_n2 = g_q2 / den;
    g_det += -g_q1 * n1 / (den * den) - g_q2 * n2 / (den * den);
    const T g_sa = g_n1 * (dy * dy) + g_det * sb;
    const T g_sb = g_n1 * (dx * dx) + g_det * sa;
    const T g_sc = g_n2 * mdx * dy - g_det * T(2) * sc;
    const T g_dx = g_n1 * sb * T(2) * dx;
    const T g_mdx = g_n2 * sc * dy;
    const T g_dy = g_n1 * sa * T(2) * dy + g_n2 * sc * mdx;
    // value = iou - alpha v, alpha constant; v = k diff^2, diff = aspect2 - aspect1
    const T g_diff = ciou ? -alpha * grad * k_aspect * T(2) * diff : T(0);
    *g1 = {g_dx - g_mdx, g_dy, g_sa, g_sb, g_sc, g_prod * q.det_c, -g_diff};
    *g2 = {g_mdx - g_dx, -g_dy, g_sa, g_sb, g_sc, g_prod * p.det_c, g_diff};
  }
  return value;
}

// The ProbIoU (ciou: minus the aspect term) of b1 and b2, each 5 values
// (cx, cy, w, h, angle) in the accumulation type T. When kGrad, also writes
// grad * d value / d b1[k] into g1[k] and grad * d value / d b2[k] into g2[k].
template <typename T, bool kGrad>
TOOD_HOST_DEVICE_INLINE T probiou_pair(const T* b1, const T* b2, T eps, T floor, bool ciou,
                                       T grad, T* g1, T* g2) {
  const Obb<T> p = prepare_obb(b1, floor, ciou, static_cast<ObbTrig<T>*>(nullptr));
  const Obb<T> q = prepare_obb(b2, floor, ciou, static_cast<ObbTrig<T>*>(nullptr));
  ObbAdjoint<T> a1, a2;
  const T value = probiou_obb<T, kGrad>(p, q, eps, ciou, grad, &a1, &a2);
  if (kGrad) {
    obb_backward(b1, floor, ciou, a1, g1);
    obb_backward(b2, floor, ciou, a2, g2);
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
