// The box geometries of the task-aligned assignment: what the one body of
// TAL phase code (csrc/cpu/tal_cpu.cpp, csrc/cuda/tal_cuda.cu, all_gts_argmax
// in tal_utils.h) needs to know about a box, as a template parameter:
//   T                       the accumulation type
//   kWidth                  values per stored box (4: x1 y1 x2 y2; 5: cx cy w h angle)
//   Gt                      a GT prepared for the centre test (load_gt, with
//                           min_inside_size) and, after finish_gt, for the overlap
//   Pred                    a predicted box prepared for the overlap (load_pred)
//   inside(gt, px, py, e)   the centre test of an anchor point
//   overlap(pred, gt, eps)  the overlap u (clamped at 0)
// AxisAlignedGeometry<T, kMode>: task_aligned_assign (IoU family, xyxy).
// RotatedGeometry<T>: task_aligned_assign_rotated (ProbIoU, ultralytics'
// RotatedTaskAlignedAssigner). Both HOST_DEVICE, no #ifdef below this line
// (mul_rn: csrc/macros.h).
#pragma once

#include <type_traits>
#include <utility>

#include "../box_ops/box_iou_utils.h"
#include "../box_ops/probiou_utils.h"
#include "../macros.h"
#include "tal_utils.h"

namespace tood_ext {
namespace tal {

template <typename T, box_ops::IoUMode kMode>
struct AxisAlignedGeometry {
  static constexpr int kWidth = 4;
  struct Gt {
    T box[4];  // the GT (overlap)
    T ib[4];   // the box of the centre test (inside_box: widened by min_size)
    T theta;   // aspect angle (CIoU), set by finish_gt
  };
  struct Pred {
    T box[4];
    T theta;
  };
  template <typename scalar_t>
  static TOOD_HOST_DEVICE_INLINE Gt load_gt(const scalar_t* p, T min_size) {
    Gt g;
    box_ops::load_box(p, g.box);
    inside_box(g.box, min_size, g.ib);
    g.theta = T(0);
    return g;
  }
  static TOOD_HOST_DEVICE_INLINE void finish_gt(Gt& g) {
    if (kMode == box_ops::IoUMode::kCIoU) {
      g.theta = box_ops::aspect_angle(g.box[0], g.box[1], g.box[2], g.box[3]);
    }
  }
  template <typename scalar_t>
  static TOOD_HOST_DEVICE_INLINE Pred load_pred(const scalar_t* p) {
    Pred q;
    box_ops::load_box(p, q.box);
    q.theta = kMode == box_ops::IoUMode::kCIoU
                  ? box_ops::aspect_angle(q.box[0], q.box[1], q.box[2], q.box[3])
                  : T(0);
    return q;
  }
  static TOOD_HOST_DEVICE_INLINE bool inside(const Gt& g, T px, T py, T inside_eps) {
    return box_ops::centre_inside(px, py, g.ib, inside_eps);
  }
  static TOOD_HOST_DEVICE_INLINE T overlap(const Pred& q, const Gt& g, T eps) {
    return box_ops::metric_overlap<T, kMode>(q.box, g.box, q.theta, g.theta, eps);
  }
};

// ultralytics' RotatedTaskAlignedAssigner.select_candidates_in_gts for one GT:
// corner p1 and edges ab = p2 - p1, ad = p4 - p1 of the box (sides shorter
// than min_size set to it when min_size > 0), with their squared lengths.
template <typename T>
struct RotatedFrame {
  T ax, ay, abx, aby, adx, ady, nab, nad;
};

// The corners in xywhr2xyxyxyxy's order of operations (ultralytics/utils/
// ops.py): v1 = (w / 2 * cos, w / 2 * sin), v2 = (-h / 2 * sin, h / 2 * cos),
// p1 = c + v1 + v2, p2 = c + v1 - v2, p4 = c - v1 + v2. Products rounded on
// their own (mul_rn), as torch's separate elementwise ops round them.
template <typename T>
TOOD_HOST_DEVICE_INLINE RotatedFrame<T> rotated_frame(const T box[5], T min_size) {
  T w = box[2], h = box[3];
  if (min_size > T(0)) {
    w = w < min_size ? min_size : w;
    h = h < min_size ? min_size : h;
  }
  const T c = probiou::cos_(box[4]), s = probiou::sin_(box[4]);
  const T hw = w / T(2), hh = h / T(2);
  const T v1x = mul_rn(hw, c), v1y = mul_rn(hw, s);
  const T v2x = mul_rn(-hh, s), v2y = mul_rn(hh, c);  // (-h) / 2 == -(h / 2) exactly
  const T p1x = box[0] + v1x + v2x, p1y = box[1] + v1y + v2y;
  const T p2x = box[0] + v1x - v2x, p2y = box[1] + v1y - v2y;
  const T p4x = box[0] - v1x + v2x, p4y = box[1] - v1y + v2y;
  RotatedFrame<T> f;
  f.ax = p1x;
  f.ay = p1y;
  f.abx = p2x - p1x;
  f.aby = p2y - p1y;
  f.adx = p4x - p1x;
  f.ady = p4y - p1y;
  f.nab = mul_rn(f.abx, f.abx) + mul_rn(f.aby, f.aby);
  f.nad = mul_rn(f.adx, f.adx) + mul_rn(f.ady, f.ady);
  return f;
}

// Anchor point (px, py) projected on both edges: inside when
// 0 <= ap.ab <= |ab|^2 and 0 <= ap.ad <= |ad|^2 (inclusive; NaN: outside).
template <typename T>
TOOD_HOST_DEVICE_INLINE bool rotated_inside(const RotatedFrame<T>& f, T px, T py) {
  const T apx = px - f.ax, apy = py - f.ay;
  const T ap_ab = mul_rn(apx, f.abx) + mul_rn(apy, f.aby);
  const T ap_ad = mul_rn(apx, f.adx) + mul_rn(apy, f.ady);
  return (ap_ab >= T(0)) & (ap_ab <= f.nab) & (ap_ad >= T(0)) & (ap_ad <= f.nad);
}

template <typename T>
struct RotatedGeometry {
  static constexpr int kWidth = 5;
  struct Gt {
    T box[5];
    RotatedFrame<T> frame;  // the centre test
    probiou::Obb<T> obb;    // the overlap, set by finish_gt
  };
  struct Pred {
    probiou::Obb<T> obb;
  };
  template <typename scalar_t>
  static TOOD_HOST_DEVICE_INLINE Gt load_gt(const scalar_t* p, T min_size) {
    Gt g;
    probiou::load_obb(p, g.box);
    g.frame = rotated_frame(g.box, min_size);
    g.obb = {};
    return g;
  }
  static TOOD_HOST_DEVICE_INLINE void finish_gt(Gt& g) {
    g.obb = probiou::prepare_obb(g.box, T(0), false, static_cast<probiou::ObbTrig<T>*>(nullptr));
  }
  template <typename scalar_t>
  static TOOD_HOST_DEVICE_INLINE Pred load_pred(const scalar_t* p) {
    T box[5];
    probiou::load_obb(p, box);
    return {probiou::prepare_obb(box, T(0), false, static_cast<probiou::ObbTrig<T>*>(nullptr))};
  }
  static TOOD_HOST_DEVICE_INLINE bool inside(const Gt& g, T px, T py, T /*inside_eps*/) {
    return rotated_inside(g.frame, px, py);
  }
  // ultralytics' probiou(gt, pred) (floor 0, no CIoU term) clamped at 0
  static TOOD_HOST_DEVICE_INLINE T overlap(const Pred& q, const Gt& g, T eps) {
    return box_ops::clamp0(probiou::probiou_obb<T, false>(
        g.obb, q.obb, eps, false, T(0), static_cast<probiou::ObbAdjoint<T>*>(nullptr),
        static_cast<probiou::ObbAdjoint<T>*>(nullptr)));
  }
};

// Calls fn(Geometry{}) with the geometry of the op: RotatedGeometry<T> for
// task_aligned_assign_rotated, else AxisAlignedGeometry<T, mode>.
template <typename T, typename Fn>
inline void dispatch_geometry(bool rotated, box_ops::IoUMode mode, Fn&& fn) {
  if (rotated) {
    fn(RotatedGeometry<T>{});
    return;
  }
  box_ops::dispatch_iou_mode(mode, [&](auto mode_c) {
    fn(AxisAlignedGeometry<T, decltype(mode_c)::value>{});
  });
}

}  // namespace tal
}  // namespace tood_ext
