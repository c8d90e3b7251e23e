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

// Aspect angle atan2(w, h) of a box (w, h clamped at 0), the CIoU term's
// input. Callers that meet a box many times compute it once and pass it to
// pair_iou_angles (atan2 dominates CIoU's cost).
template <typename T>
TOOD_HOST_DEVICE_INLINE T aspect_angle(T x1, T y1, T x2, T y2) {
  return atan2_(clamp0(x2 - x1), clamp0(y2 - y1));
}

// Returns the IoU-family value of boxes a and b (xyxy). When kGrad, also
// writes d value / d a[k] into ga[k] and d value / d b[k] into gb[k]
// (reverse mode written out by hand; one body for forward and backward).
// theta_a, theta_b: aspect_angle of a and b, read only in CIoU mode.
//
// Branch-free, every coordinate in a register first, gradients routed with
// selects: the CPU loops vectorise it. Non-finite pairs are computed through
// like any other and replaced by NaN at the end.
template <typename T, IoUMode kMode, bool kGrad>
TOOD_HOST_DEVICE_INLINE T pair_iou_angles(const T a[4], const T b[4], T theta_a, T theta_b,
                                          T eps, T ga[4], T gb[4]) {
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
      theta_diff = theta_b - theta_a;
      v = four_over_pi2 * theta_diff * theta_diff;
      alpha = v / (T(1) - iou + v + eps);
      value -= alpha * v;
    }
  }

  if (kGrad) {
    // adjoints of the intermediates, starting from d value = 1
    T g_uni = T(0), g_cw = T(0), g_ch = T(0);
    T g_aw = T(0), g_ah = T(0), g_bw = T(0), g_bh = T(0);
    T ga0 = T(0), ga1 = T(0), ga2 = T(0), ga3 = T(0);
    T gb0 = T(0), gb1 = T(0), gb2 = T(0), gb3 = T(0);

    if (kMode == IoUMode::kGIoU) {
      g_uni += T(1) / c_area;
      const T g_c = c_area_clamped ? T(0) : -uni / (c_area * c_area);
      g_cw += g_c * ch;
      g_ch += g_c * cw;
    }
    if (kMode == IoUMode::kDIoU || kMode == IoUMode::kCIoU) {
      const T g_rho2 = -T(1) / c2;
      const T g_c2 = rho2 / (c2 * c2);
      g_cw += g_c2 * T(2) * cw;
      g_ch += g_c2 * T(2) * ch;
      // rho2 = (dx^2 + dy^2) / 4, d dx / d a0 = d dx / d a2 = 1
      const T gx = g_rho2 * T(0.5) * dx, gy = g_rho2 * T(0.5) * dy;
      ga0 += gx; ga2 += gx; gb0 -= gx; gb2 -= gx;
      ga1 += gy; ga3 += gy; gb1 -= gy; gb3 -= gy;
      if (kMode == IoUMode::kCIoU) {
        // value -= alpha * v with alpha constant: d/d theta_b = -alpha * 2k (tb - ta)
        const T g_tb = -alpha * T(2) * four_over_pi2 * theta_diff;
        const T g_ta = -g_tb;
        // theta = atan2(w, h): d/dw = h / (w^2 + h^2), d/dh = -w / (w^2 + h^2)
        const T ra = aw * aw + ah * ah, rb = bw * bw + bh * bh;
        const T ka = ra > T(0) ? g_ta / ra : T(0);
        const T kb = rb > T(0) ? g_tb / rb : T(0);
        g_aw += ka * ah; g_ah -= ka * aw;
        g_bw += kb * bh; g_bh -= kb * bw;
      }
    }

    // iou = inter / uni
    T g_inter = T(1) / uni;
    g_uni -= iou / uni;
    // uni = area_a + area_b - inter (no gradient where clamped)
    const T gu = union_clamped ? T(0) : g_uni;
    g_aw += gu * ah; g_ah += gu * aw;
    g_bw += gu * bh; g_bh += gu * bw;
    g_inter -= gu;
    // inter = iw * ih, iw = clamp0(ix2 - ix1); each side goes to the box it came from
    const T g_iw = iw_raw > T(0) ? g_inter * ih : T(0);
    const T g_ih = ih_raw > T(0) ? g_inter * iw : T(0);
    ga2 += ix2_a ? g_iw : T(0); gb2 += ix2_a ? T(0) : g_iw;
    ga0 -= ix1_a ? g_iw : T(0); gb0 -= ix1_a ? T(0) : g_iw;
    ga3 += iy2_a ? g_ih : T(0); gb3 += iy2_a ? T(0) : g_ih;
    ga1 -= iy1_a ? g_ih : T(0); gb1 -= iy1_a ? T(0) : g_ih;
    // enclosing sides
    if (kMode != IoUMode::kIoU) {
      const T gcw = cw_raw > T(0) ? g_cw : T(0);
      const T gch = ch_raw > T(0) ? g_ch : T(0);
      ga2 += ex2_a ? gcw : T(0); gb2 += ex2_a ? T(0) : gcw;
      ga0 -= ex1_a ? gcw : T(0); gb0 -= ex1_a ? T(0) : gcw;
      ga3 += ey2_a ? gch : T(0); gb3 += ey2_a ? T(0) : gch;
      ga1 -= ey1_a ? gch : T(0); gb1 -= ey1_a ? T(0) : gch;
    }
    // box sides w = clamp0(x2 - x1)
    const T gaw = aw_raw > T(0) ? g_aw : T(0), gah = ah_raw > T(0) ? g_ah : T(0);
    const T gbw = bw_raw > T(0) ? g_bw : T(0), gbh = bh_raw > T(0) ? g_bh : T(0);
    ga2 += gaw; ga0 -= gaw; ga3 += gah; ga1 -= gah;
    gb2 += gbw; gb0 -= gbw; gb3 += gbh; gb1 -= gbh;

    const T nan = std::numeric_limits<T>::quiet_NaN();
    ga[0] = finite ? ga0 : nan; ga[1] = finite ? ga1 : nan;
    ga[2] = finite ? ga2 : nan; ga[3] = finite ? ga3 : nan;
    gb[0] = finite ? gb0 : nan; gb[1] = finite ? gb1 : nan;
    gb[2] = finite ? gb2 : nan; gb[3] = finite ? gb3 : nan;
  }
  return finite ? value : std::numeric_limits<T>::quiet_NaN();
}

// pair_iou_angles computing the aspect angles itself (CIoU) when needed.
template <typename T, IoUMode kMode, bool kGrad>
TOOD_HOST_DEVICE_INLINE T pair_iou(const T a[4], const T b[4], T eps, T ga[4], T gb[4]) {
  T theta_a = T(0), theta_b = T(0);
  if (kMode == IoUMode::kCIoU) {
    theta_a = aspect_angle(a[0], a[1], a[2], a[3]);
    theta_b = aspect_angle(b[0], b[1], b[2], b[3]);
  }
  return pair_iou_angles<T, kMode, kGrad>(a, b, theta_a, theta_b, eps, ga, gb);
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
// Written as four comparisons, each false for a NaN difference: a NaN in any
// coordinate of the GT or the point gives "not inside", as torch.amin (which
// propagates NaN) followed by "> eps" does in mmdetection and ultralytics. (A
// running min "d1 < d ? d1 : d" would drop a NaN that is not its first term.)
// For finite values the result is that of the min: min > eps iff all > eps.
template <typename T>
TOOD_HOST_DEVICE_INLINE bool centre_inside(T px, T py, const T gt[4], T inside_eps) {
  const bool in_x1 = px - gt[0] > inside_eps, in_y1 = py - gt[1] > inside_eps;
  const bool in_x2 = gt[2] - px > inside_eps, in_y2 = gt[3] - py > inside_eps;
  return in_x1 & in_y1 & in_x2 & in_y2;
}

// Overlap u used by the metric: the IoU-family value of (pred, gt), clamped
// at 0 (ultralytics clamps CIoU the same way; plain IoU is already >= 0).
// The aspect angles are read in CIoU mode only.
template <typename T, IoUMode kMode>
TOOD_HOST_DEVICE_INLINE T metric_overlap(const T pred[4], const T gt[4], T theta_pred,
                                         T theta_gt, T eps) {
  return clamp0(
      pair_iou_angles<T, kMode, false>(pred, gt, theta_pred, theta_gt, eps, nullptr, nullptr));
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
