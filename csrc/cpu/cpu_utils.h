// CPU-side building blocks shared by the CPU kernel files (box ops, TAL):
// parallel grain, CIoU aspect angles, and the per-(image, GT) row of the
// alignment metric. Host-only: the per-element math they call lives in the
// shared HOST_DEVICE headers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

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

// The centre-inside test of every anchor against box (a GT, or the GT as
// widened for this test): a vectorisable loop.
template <typename scalar_t, typename acc_t>
void inside_row(const MetricInputs<scalar_t>& in, const acc_t box[4], bool* in_row) {
  const scalar_t* points = in.points;
  const acc_t inside_eps = in.inside_eps;
  const acc_t b[4] = {box[0], box[1], box[2], box[3]};
  for (int64_t a = 0; a < in.num_anchors; ++a) {
    in_row[a] = box_ops::centre_inside(static_cast<acc_t>(points[2 * a]),
                                       static_cast<acc_t>(points[2 * a + 1]), b, inside_eps);
  }
}

// Overlap u of the predicted boxes of anchors [begin, end) with GT gt (angle
// theta_gt) into u_out[begin, end); cols: the box_columns of the anchors'
// image. overlap_row's vectorised loop, for the spans of anchors inside a GT.
template <typename scalar_t, IoUMode kMode, typename acc_t>
void overlap_span(const MetricInputs<scalar_t>& in, const scalar_t* cols, const acc_t gt[4],
                  acc_t theta_gt, int64_t begin, int64_t end, scalar_t* u_out) {
  constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
  const int64_t A = in.num_anchors;
  const scalar_t *x1 = cols, *y1 = x1 + A, *x2 = y1 + A, *y2 = x2 + A;
  const scalar_t* th = R == 5 ? y2 + A : x1;  // read in CIoU mode only
  const acc_t g[4] = {gt[0], gt[1], gt[2], gt[3]}, eps = in.eps;
  for (int64_t a = begin; a < end; ++a) {
    const acc_t pred[4] = {x1[a], y1[a], x2[a], y2[a]};
    u_out[a] = static_cast<scalar_t>(
        box_ops::metric_overlap<acc_t, kMode>(pred, g, static_cast<acc_t>(th[a]), theta_gt, eps));
  }
}

// Calls fn(begin, end) for each maximal span of true entries of flags[0, n),
// in order, skipping all-false 8-byte words (most anchors lie outside a GT).
template <typename Fn>
void for_each_true_span(const bool* flags, int64_t n, Fn&& fn) {
  int64_t a = 0;
  while (a < n) {
    if (a + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, flags + a, sizeof(word));
      if (word == 0) {
        a += 8;
        continue;
      }
    }
    if (!flags[a]) {
      ++a;
      continue;
    }
    const int64_t begin = a;
    while (a < n && flags[a]) ++a;
    fn(begin, a);
  }
}

// Overlap u and the centre-inside test of one valid (image, GT) with every
// anchor of its image: overlap_span over all anchors, then inside_row.
template <typename scalar_t, IoUMode kMode>
void overlap_row(const MetricInputs<scalar_t>& in, int64_t bg, scalar_t* u_row, bool* in_row) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
  const int64_t A = in.num_anchors;
  acc_t gt[4];
  box_ops::load_box(in.gt_boxes + 4 * bg, gt);
  overlap_span<scalar_t, kMode>(in, in.box_cols + (bg / in.num_gts) * R * A, gt,
                                angle_of<kMode>(gt), 0, A, u_row);
  inside_row(in, gt, in_row);
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

// The same t for sparse use: class_scores = the scores of the anchors' image
// offset by the GT's label (score of anchor a at class_scores[a * C]).
template <typename scalar_t>
inline at::opmath_type<scalar_t> metric_at(const MetricInputs<scalar_t>& in,
                                           const scalar_t* class_scores, int64_t a,
                                           at::opmath_type<scalar_t> u) {
  using acc_t = at::opmath_type<scalar_t>;
  return box_ops::alignment_metric_value(static_cast<acc_t>(class_scores[a * in.num_classes]),
                                         u, in.expo);
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
