// Host-side pieces of task_aligned_assign shared by the CPU and CUDA
// implementations: argument checks and the background-filled outputs.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <limits>
#include <string>
#include <tuple>

#include "../box_ops/box_ops.h"
#include "tal_utils.h"

namespace tood_ext {
namespace tal {

// eps of the overlap u inside TAL: box_iou's and alignment_metric's default.
constexpr double kOverlapEps = 1e-7;

using TALOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor>;

inline Candidates parse_candidates(c10::string_view candidates) {
  if (candidates == "topk_then_inside") return Candidates::kTopkThenInside;
  if (candidates == "inside_then_topk") return Candidates::kInsideThenTopk;
  TORCH_CHECK(false, "candidates must be 'topk_then_inside' or 'inside_then_topk', got '",
              std::string(candidates), "'");
}

inline Conflict parse_conflict(c10::string_view conflict) {
  if (conflict == "candidates") return Conflict::kCandidates;
  if (conflict == "all_gts") return Conflict::kAllGts;
  TORCH_CHECK(false, "conflict must be 'candidates' or 'all_gts', got '", std::string(conflict),
              "'");
}

struct TALArgs {
  box_ops::MetricShape shape;
  box_ops::IoUMode mode;
  Candidates candidates;
  Conflict conflict;
};

// Every check of alignment_metric (shapes, dtypes, devices, label values)
// plus topk, the candidate and conflict modes and min_inside_size.
inline TALArgs check_tal_args(const at::Tensor& pred_scores, const at::Tensor& pred_boxes,
                              const at::Tensor& anchor_points, const at::Tensor& gt_labels,
                              const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
                              int64_t topk, c10::string_view candidates,
                              c10::string_view iou_mode, c10::string_view conflict,
                              double min_inside_size) {
  TORCH_CHECK(topk >= 1, "topk must be >= 1, got ", topk);
  TORCH_CHECK(min_inside_size >= 0.0 && min_inside_size < std::numeric_limits<double>::infinity(),
              "min_inside_size must be finite and >= 0 (0 = off), got ", min_inside_size);
  TALArgs args{box_ops::check_alignment_metric_args(pred_scores, pred_boxes, anchor_points,
                                                    gt_labels, gt_boxes, gt_mask),
               box_ops::parse_iou_mode(iou_mode, "iou_mode"), parse_candidates(candidates),
               parse_conflict(conflict)};
  TORCH_CHECK(args.shape.num_anchors < (int64_t(1) << 31) && args.shape.num_gts < (int64_t(1) << 31),
              "task_aligned_assign supports fewer than 2^31 anchors and GTs per image");
  box_ops::check_label_values(gt_labels, gt_mask, args.shape.num_classes);
  return args;
}

// The seven outputs, every anchor background: assigned_gt -1, fg_mask false,
// labels -1, boxes 0, iou 0, metric 0, soft_target 0. Kernels then write the
// positives only.
inline TALOutputs background_outputs(const at::Tensor& pred_scores, const at::Tensor& gt_boxes,
                                     int64_t batch, int64_t num_anchors) {
  const auto index_opts = pred_scores.options().dtype(at::kLong);
  return {at::full({batch, num_anchors}, -1, index_opts),
          at::zeros({batch, num_anchors}, pred_scores.options().dtype(at::kBool)),
          at::full({batch, num_anchors}, -1, index_opts),
          at::zeros({batch, num_anchors, 4}, gt_boxes.options()),
          at::zeros({batch, num_anchors}, pred_scores.options()),
          at::zeros({batch, num_anchors}, pred_scores.options()),
          at::zeros({batch, num_anchors}, pred_scores.options())};
}

}  // namespace tal
}  // namespace tood_ext
