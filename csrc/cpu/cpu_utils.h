// CPU-side building blocks shared by the CPU kernel files (box ops, TAL):
// parallel grain, CIoU aspect angles, and the per-(image, GT) row of the
// alignment metric. Host-only: the per-element math they call lives in the
// shared HOST_DEVICE headers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../box_ops/box_iou_utils.h"

namespace tood_ext {
namespace cpu {

using box_ops::IoUMode;

// Iterations per parallel chunk so that a chunk does ~32k element evaluations.
inline int64_t grain_for(int64_t inner) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1));
}

template <IoUMode kMode, typename T>
inline T angle_of(const T box[4]) {
  return kMode == IoUMode::kCIoU ? box_ops::aspect_angle(box[0], box[1], box[2], box[3]) : T(0);
}

// boxes (batch, M, 4) as structure-of-arrays (batch, R, M): rows x1, y1, x2,
// y2 and, for CIoU, the aspect angle of each box (computed once per box
// instead of once per pair). Inner loops over j then read each coordinate
// contiguously and vectorise. Extra memory: R / 4 times the boxes.
template <typename scalar_t, IoUMode kMode>
at::Tensor box_columns(const at::Tensor& boxes, int64_t batch, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t rows = kMode == IoUMode::kCIoU ? 5 : 4;
  at::Tensor soa = at::empty({batch, rows, m}, boxes.options());
  const scalar_t* src = boxes.const_data_ptr<scalar_t>();
  scalar_t* dst = soa.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, batch, grain_for(m), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = 0; j < m; ++j) {
        const scalar_t* box = src + 4 * (b * m + j);
        for (int64_t c = 0; c < 4; ++c) dst[(b * rows + c) * m + j] = box[c];
        if (rows == 5) {
          dst[(b * rows + 4) * m + j] = static_cast<scalar_t>(
              box_ops::aspect_angle<acc_t>(box[0], box[1], box[2], box[3]));
        }
      }
    }
  });
  return soa;
}

// Raw pointers and scalars of the alignment-metric inputs (contiguous).
template <typename scalar_t>
struct MetricInputs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* scores;     // (B, A, C)
  const scalar_t* box_cols;   // (B, R, A): box_columns of the predicted boxes
  const scalar_t* points;     // (A, 2)
  const int64_t* labels;      // (B, G)
  const scalar_t* gt_boxes;   // (B, G, 4)
  const bool* gt_mask;        // (B, G)
  int64_t num_gts, num_anchors, num_classes;
  box_ops::MetricExponents<acc_t> expo;
  acc_t inside_eps, eps;
};

// Overlap u and the centre-inside test of one valid (image, GT) with every
// anchor of its image: a branch-free loop over structure-of-arrays columns
// that the compiler vectorises.
template <typename scalar_t, IoUMode kMode, typename out_t>
void overlap_row(const MetricInputs<scalar_t>& in, int64_t bg, out_t* u_row, bool* in_row) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
  const int64_t A = in.num_anchors;
  acc_t gt[4];
  box_ops::load_box(in.gt_boxes + 4 * bg, gt);
  const acc_t theta_gt = angle_of<kMode>(gt);
  const scalar_t* x1 = in.box_cols + (bg / in.num_gts) * R * A;
  const scalar_t *y1 = x1 + A, *x2 = y1 + A, *y2 = x2 + A;
  const scalar_t* th = R == 5 ? y2 + A : x1;  // read in CIoU mode only
  // locals, not reads through `in` that the stores might alias: the loop vectorises
  const scalar_t* points = in.points;
  const acc_t eps = in.eps, inside_eps = in.inside_eps;
  for (int64_t a = 0; a < A; ++a) {
    const acc_t pred[4] = {x1[a], y1[a], x2[a], y2[a]};
    u_row[a] = static_cast<out_t>(
        box_ops::metric_overlap<acc_t, kMode>(pred, gt, static_cast<acc_t>(th[a]), theta_gt, eps));
    in_row[a] = box_ops::centre_inside(static_cast<acc_t>(points[2 * a]),
                                       static_cast<acc_t>(points[2 * a + 1]), gt, inside_eps);
  }
}

// t of anchor a for the valid (image, GT) bg, given its overlap u.
template <typename scalar_t>
inline at::opmath_type<scalar_t> metric_of(const MetricInputs<scalar_t>& in, int64_t bg,
                                           int64_t a, at::opmath_type<scalar_t> u) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = bg / in.num_gts;
  const scalar_t s = in.scores[(b * in.num_anchors + a) * in.num_classes + in.labels[bg]];
  return box_ops::alignment_metric_value(static_cast<acc_t>(s), u, in.expo);
}

// t, u and the centre-inside test of one valid (image, GT) row over all
// anchors: the dense row of alignment_metric.
template <typename scalar_t, IoUMode kMode, typename out_t>
void metric_row(const MetricInputs<scalar_t>& in, int64_t bg, out_t* t_row, out_t* u_row,
                bool* in_row) {
  overlap_row<scalar_t, kMode>(in, bg, u_row, in_row);
  for (int64_t a = 0; a < in.num_anchors; ++a) {
    t_row[a] = static_cast<out_t>(metric_of(in, bg, a, u_row[a]));
  }
}

}  // namespace cpu
}  // namespace tood_ext
