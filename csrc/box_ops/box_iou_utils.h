// Per-element box math of tood_ext: IoU / GIoU / DIoU / CIoU of one pair of
// xyxy boxes, its analytic gradient, the anchor-centre-inside test and the
// task-alignment metric t = s^alpha * u^beta.
//
// Written once, called by the CPU kernels (csrc/cpu, under at::parallel_for)
// and the CUDA kernels (csrc/cuda). No #ifdef __CUDACC__ below this line.
//
// Semantics (documented in tood_ext/ops/box_ops.py as well):
// * width/height of a box are clamped at 0: a degenerate box (x2 < x1 or
//   y2 < y1) has area 0 and IoU 0 with everything; no NaN comes from it.
// * union and the GIoU enclosing area are clamped below at eps (mmdetection's
//   convention); the DIoU diagonal gets + eps (torchvision's convention).
// * CIoU: v = 4/pi^2 (atan2(w_b, h_b) - atan2(w_a, h_a))^2 and
//   alpha = v / (1 - iou + v + eps) is treated as a constant in the gradient,
//   as torchvision, ultralytics and the CIoU paper do.
// * a pair with any non-finite coordinate gives NaN (value and gradient).
// * sub-gradients at ties: max/min pick the first box (a) on a tie; clamps at
//   exactly 0 pass no gradient.
#pragma once

#include "../macros.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace tood_ext {
namespace box_ops {

enum class IoUMode : int { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

// ---- small scalar helpers (templated on the accumulation type T) ----------

template <typename T>
TOOD_HOST_DEVICE_INLINE T clamp0(T x) {
  // NaN-propagating max(x, 0): NaN < 0 is false, so NaN is returned as is.
  return x < T(0) ? T(0) : x;
}

template <typename T>
TOOD_HOST_DEVICE_INLINE bool is_finite(T x) {
  // x - x is 0 for finite x and NaN for +-inf and NaN.
  return (x - x) == T(0);
}

TOOD_HOST_DEVICE_INLINE float atan2_(float y, float x) { return atan2f(y, x); }
TOOD_HOST_DEVICE_INLINE double atan2_(double y, double x) { return atan2(y, x); }
TOOD_HOST_DEVICE_INLINE float pow_(float x, float p) { return powf(x, p); }
TOOD_HOST_DEVICE_INLINE double pow_(double x, double p) { return pow(x, p); }

TOOD_HOST_DEVICE_INLINE float sqrt_(float x) { return sqrtf(x); }
TOOD_HOST_DEVICE_INLINE double sqrt_(double x) { return sqrt(x); }

// x^p for a run-time exponent p. When the host found 2p to be a small
// non-negative integer (twice_p >= 0: beta = 6, alpha = 1 or 0.5 as in TOOD
// and YOLOv8) we multiply by squaring and take one sqrt for the half: far
// cheaper than pow() in the hot loop of the metric, and within a few ulps.
template <typename T>
TOOD_HOST_DEVICE_INLINE T pow_fast(T x, T p, int twice_p) {
  if (twice_p < 0) return pow_(x, p);
  T result = (twice_p & 1) ? sqrt_(x) : T(1);
  T base = x;
  for (int n = twice_p >> 1; n > 0; n >>= 1) {
    if (n & 1) result *= base;
    base *= base;
  }
  return result;
}

// Host-side helper: 2p when it is an integer in [0, 128], else -1.
inline int twice_exponent(double p) {
  const double twice = 2.0 * p;
  if (twice >= 0.0 && twice <= 128.0 && twice == static_cast<double>(static_cast<int>(twice))) {
    return static_cast<int>(twice);
  }
  return -1;
}

// Loads 4 coordinates of any storage type as the accumulation type T.
template <typename T, typename scalar_t>
TOOD_HOST_DEVICE_INLINE void load_box(const scalar_t* p, T out[4]) {
  out[0] = static_cast<T>(p[0]);
  out[1] = static_cast<T>(p[1]);
  out[2] = static_cast<T>(p[2]);
  out[3] = static_cast<T>(p[3]);
}

// ---- the pair function ------------------------------------------------------

// Returns the IoU-family value of boxes a and b (xyxy). When kGrad, also
// writes d value / d a[k] into ga[k] and d value / d b[k] into gb[k]
// (reverse mode written out by hand; one body for forward and backward).
template <typename T, IoUMode kMode, bool kGrad>
TOOD_HOST_DEVICE_INLINE T pair_iou(const T a[4], const T b[4], T eps, T ga[4], T gb[4]) {
  // Branch-free with every coordinate in a register first (the CPU loops
  // vectorise it): non-finite pairs are computed through like any other and
  // replaced by NaN at the end.
  const T ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
  const T bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  const bool finite = is_finite(ax1) & is_finite(ay1) & is_finite(ax2) & is_finite(ay2) &
                      is_finite(bx1) & is_finite(by1) & is_finite(bx2) & is_finite(by2);

  // sides, clamped at zero
  const T aw_raw = ax2 - ax1, ah_raw = ay2 - ay1;
  const T bw_raw = bx2 - bx1, bh_raw = by2 - by1;
  const T aw = clamp0(aw_raw), ah = clamp0(ah_raw);
  const T bw = clamp0(bw_raw), bh = clamp0(bh_raw);
  const T area_a = aw * ah, area_b = bw * bh;

  // intersection: ix1 = max(a0, b0), ix2 = min(a2, b2), ... (ties -> a)
  const bool ix1_a = ax1 >= bx1, iy1_a = ay1 >= by1;
  const bool ix2_a = ax2 <= bx2, iy2_a = ay2 <= by2;
  const T ix1 = ix1_a ? ax1 : bx1, iy1 = iy1_a ? ay1 : by1;
  const T ix2 = ix2_a ? ax2 : bx2, iy2 = iy2_a ? ay2 : by2;
  const T iw_raw = ix2 - ix1, ih_raw = iy2 - iy1;
  const T iw = clamp0(iw_raw), ih = clamp0(ih_raw);
  const T inter = iw * ih;

  const T union_raw = area_a + area_b - inter;
  const bool union_clamped = union_raw < eps;
  const T uni = union_clamped ? eps : union_raw;
  const T iou = inter / uni;
  T value = iou;

  // enclosing box (GIoU, DIoU, CIoU): ex1 = min(a0, b0), ex2 = max(a2, b2)
  bool ex1_a = false, ey1_a = false, ex2_a = false, ey2_a = false;
  T cw_raw = T(0), ch_raw = T(0), cw = T(0), ch = T(0);
  if (kMode != IoUMode::kIoU) {
    ex1_a = ax1 <= bx1;
    ey1_a = ay1 <= by1;
    ex2_a = ax2 >= bx2;
    ey2_a = ay2 >= by2;
    cw_raw = (ex2_a ? ax2 : bx2) - (ex1_a ? ax1 : bx1);
    ch_raw = (ey2_a ? ay2 : by2) - (ey1_a ? ay1 : by1);
    cw = clamp0(cw_raw);
    ch = clamp0(ch_raw);
  }

  // GIoU: iou - (C - U) / C = iou - 1 + U / C, C clamped below at eps
  T c_area = T(1);
  bool c_area_clamped = false;
  if (kMode == IoUMode::kGIoU) {
    const T c_raw = cw * ch;
    c_area_clamped = c_raw < eps;
    c_area = c_area_clamped ? eps : c_raw;
    value = iou - T(1) + uni / c_area;
  }

  // DIoU / CIoU: iou - rho^2 / c^2 (- alpha v)
  T dx = T(0), dy = T(0), rho2 = T(0), c2 = T(1), v = T(0), alpha = T(0);
  T theta_diff = T(0);
  const T four_over_pi2 = T(0.40528473456935108577551785283891);  // 4 / pi^2
  if (kMode == IoUMode::kDIoU || kMode == IoUMode::kCIoU) {
    dx = (ax1 + ax2) - (bx1 + bx2);  // twice the centre offset
    dy = (ay1 + ay2) - (by1 + by2);
    rho2 = T(0.25) * (dx * dx + dy * dy);
    c2 = cw * cw + ch * ch + eps;
    value = iou - rho2 / c2;
    if (kMode == IoUMode::kCIoU) {
      theta_diff = atan2_(bw, bh) - atan2_(aw, ah);
      v = four_over_pi2 * theta_diff * theta_diff;
      alpha = v / (T(1) - iou + v + eps);
      value -= alpha * v;
    }
  }

  if (kGrad) {
    // adjoints of the intermediates, starting from d value = 1
    T g_iou = T(1), g_uni = T(0), g_cw = T(0), g_ch = T(0);
    T g_aw = T(0), g_ah = T(0), g_bw = T(0), g_bh = T(0);
TOOD_UNROLL
    for (int k = 0; k < 4; ++k) ga[k] = gb[k] = T(0);

    if (kMode == IoUMode::kGIoU) {
      g_uni += T(1) / c_area;
      if (!c_area_clamped) {
        const T g_c = -uni / (c_area * c_area);
        g_cw += g_c * ch;
        g_ch += g_c * cw;
      }
    }
    if (kMode == IoUMode::kDIoU || kMode == IoUMode::kCIoU) {
      const T g_rho2 = -T(1) / c2;
      const T g_c2 = rho2 / (c2 * c2);
      g_cw += g_c2 * T(2) * cw;
      g_ch += g_c2 * T(2) * ch;
      // rho2 = (dx^2 + dy^2) / 4, d dx / d a0 = d dx / d a2 = 1
      const T gx = g_rho2 * T(0.5) * dx, gy = g_rho2 * T(0.5) * dy;
      ga[0] += gx; ga[2] += gx; gb[0] -= gx; gb[2] -= gx;
      ga[1] += gy; ga[3] += gy; gb[1] -= gy; gb[3] -= gy;
      if (kMode == IoUMode::kCIoU) {
        // value -= alpha * v with alpha constant: d/d theta_b = -alpha * 2k (tb - ta)
        const T g_tb = -alpha * T(2) * four_over_pi2 * theta_diff;
        const T g_ta = -g_tb;
        // theta = atan2(w, h): d/dw = h / (w^2 + h^2), d/dh = -w / (w^2 + h^2)
        const T ra = aw * aw + ah * ah, rb = bw * bw + bh * bh;
        if (ra > T(0)) { g_aw += g_ta * ah / ra; g_ah -= g_ta * aw / ra; }
        if (rb > T(0)) { g_bw += g_tb * bh / rb; g_bh -= g_tb * bw / rb; }
      }
    }

    // iou = inter / uni
    T g_inter = g_iou / uni;
    g_uni -= g_iou * iou / uni;
    if (!union_clamped) {
      // uni = area_a + area_b - inter
      g_aw += g_uni * ah; g_ah += g_uni * aw;
      g_bw += g_uni * bh; g_bh += g_uni * bw;
      g_inter -= g_uni;
    }
    // inter = iw * ih, iw = clamp0(ix2 - ix1)
    const T g_iw = iw_raw > T(0) ? g_inter * ih : T(0);
    const T g_ih = ih_raw > T(0) ? g_inter * iw : T(0);
    (ix2_a ? ga[2] : gb[2]) += g_iw;
    (ix1_a ? ga[0] : gb[0]) -= g_iw;
    (iy2_a ? ga[3] : gb[3]) += g_ih;
    (iy1_a ? ga[1] : gb[1]) -= g_ih;
    // enclosing sides
    if (kMode != IoUMode::kIoU) {
      const T gcw = cw_raw > T(0) ? g_cw : T(0);
      const T gch = ch_raw > T(0) ? g_ch : T(0);
      (ex2_a ? ga[2] : gb[2]) += gcw;
      (ex1_a ? ga[0] : gb[0]) -= gcw;
      (ey2_a ? ga[3] : gb[3]) += gch;
      (ey1_a ? ga[1] : gb[1]) -= gch;
    }
    // box sides w = clamp0(x2 - x1)
    if (aw_raw > T(0)) { ga[2] += g_aw; ga[0] -= g_aw; }
    if (ah_raw > T(0)) { ga[3] += g_ah; ga[1] -= g_ah; }
    if (bw_raw > T(0)) { gb[2] += g_bw; gb[0] -= g_bw; }
    if (bh_raw > T(0)) { gb[3] += g_bh; gb[1] -= g_bh; }
    if (!finite) {
      TOOD_UNROLL
      for (int k = 0; k < 4; ++k) ga[k] = gb[k] = std::numeric_limits<T>::quiet_NaN();
    }
  }
  return finite ? value : std::numeric_limits<T>::quiet_NaN();
}

// Calls fn.template operator()<kMode>() for a run-time mode: host code picks
// the compile-time specialisation once per launch, not per element.
template <typename Fn>
inline void dispatch_iou_mode(IoUMode mode, Fn&& fn) {
  switch (mode) {
    case IoUMode::kIoU: fn(std::integral_constant<IoUMode, IoUMode::kIoU>{}); break;
    case IoUMode::kGIoU: fn(std::integral_constant<IoUMode, IoUMode::kGIoU>{}); break;
    case IoUMode::kDIoU: fn(std::integral_constant<IoUMode, IoUMode::kDIoU>{}); break;
    case IoUMode::kCIoU: fn(std::integral_constant<IoUMode, IoUMode::kCIoU>{}); break;
  }
}

// ---- task alignment ---------------------------------------------------------

// Anchor centre (px, py) strictly inside the GT by more than inside_eps:
// min(px - x1, py - y1, x2 - px, y2 - py) > inside_eps (mmdetection's test).
template <typename T>
TOOD_HOST_DEVICE_INLINE bool centre_inside(T px, T py, const T gt[4], T inside_eps) {
  T d = px - gt[0];
  const T d1 = py - gt[1], d2 = gt[2] - px, d3 = gt[3] - py;
  d = d1 < d ? d1 : d;
  d = d2 < d ? d2 : d;
  d = d3 < d ? d3 : d;
  return d > inside_eps;
}

// Overlap u used by the metric: the IoU-family value of (pred, gt), clamped
// at 0 (ultralytics clamps CIoU the same way; plain IoU is already >= 0).
template <typename T, IoUMode kMode>
TOOD_HOST_DEVICE_INLINE T metric_overlap(const T pred[4], const T gt[4], T eps) {
  return clamp0(pair_iou<T, kMode, false>(pred, gt, eps, nullptr, nullptr));
}

// Exponents of the metric, prepared once on the host.
template <typename T>
struct MetricExponents {
  T alpha, beta;
  int twice_alpha, twice_beta;  // >= 0 when 2 * exponent is a small integer
};

template <typename T>
inline MetricExponents<T> make_metric_exponents(double alpha, double beta) {
  return {static_cast<T>(alpha), static_cast<T>(beta), twice_exponent(alpha),
          twice_exponent(beta)};
}

// t = s^alpha * u^beta
template <typename T>
TOOD_HOST_DEVICE_INLINE T alignment_metric_value(T score, T overlap, const MetricExponents<T>& e) {
  return pow_fast(score, e.alpha, e.twice_alpha) * pow_fast(overlap, e.beta, e.twice_beta);
}

}  // namespace box_ops
}  // namespace tood_ext
