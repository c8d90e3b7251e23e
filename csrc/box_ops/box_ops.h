// Host-side declarations and argument checks of the box-metric op family,
// shared by the CPU and CUDA implementations (csrc/cpu/box_ops_cpu.cpp,
// csrc/cuda/box_ops_cuda.cu). Schemas live in csrc/ops.cpp.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>
#include <vector>

#include "../host_utils.h"
#include "box_iou_utils.h"

namespace tood_ext {
namespace box_ops {

inline IoUMode parse_iou_mode(c10::string_view mode, const char* arg = "mode") {
  if (mode == "iou") return IoUMode::kIoU;
  if (mode == "giou") return IoUMode::kGIoU;
  if (mode == "diou") return IoUMode::kDIoU;
  if (mode == "ciou") return IoUMode::kCIoU;
  TORCH_CHECK(false, arg, " must be one of 'iou', 'giou', 'diou', 'ciou', got '",
              std::string(mode), "'");
}

inline void check_boxes(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == 4, name,
              " must have shape (..., 4) holding xyxy boxes, got shape ", t.sizes());
}

// Leading ("batch") dims of a (..., N, 4) tensor.
inline std::vector<int64_t> leading_dims(const at::Tensor& t, int64_t trailing) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - trailing);
}

// A gradient that arrives as a broadcast scalar (all strides 0, e.g. from
// loss.sum()) is read through stride 0 instead of being materialised.
inline std::pair<at::Tensor, int64_t> grad_with_stride(const at::Tensor& grad) {
  bool all_zero = grad.numel() > 0;
  for (int64_t s : grad.strides()) all_zero = all_zero && s == 0;
  if (all_zero) return {grad, 0};
  return {grad.contiguous(), 1};
}

// --- argument checking shared by both backends ---------------------------

struct PairwiseShape {
  int64_t batch, n, m;
  std::vector<int64_t> out_sizes;
};

inline PairwiseShape check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                        bool aligned) {
  check_boxes(boxes1, "boxes1");
  check_boxes(boxes2, "boxes2");
  check_float_dtype(boxes1, "boxes1");
  check_same_dtype(boxes2, boxes1, "boxes2", "boxes1");
  check_same_device(boxes2, boxes1, "boxes2", "boxes1");
  PairwiseShape s;
  if (aligned) {
    TORCH_CHECK(boxes1.sizes() == boxes2.sizes(), "aligned box_iou needs boxes1 and boxes2 of "
                "the same shape (..., N, 4), got ", boxes1.sizes(), " and ", boxes2.sizes());
    s.out_sizes = leading_dims(boxes1, 1);
    s.batch = 1;
    s.n = boxes1.numel() / 4;
    s.m = 1;
    return s;
  }
  TORCH_CHECK(boxes1.dim() >= 2 && boxes2.dim() >= 2,
              "pairwise box_iou needs boxes1 (..., N, 4) and boxes2 (..., M, 4), got shapes ",
              boxes1.sizes(), " and ", boxes2.sizes());
  auto lead1 = leading_dims(boxes1, 2), lead2 = leading_dims(boxes2, 2);
  TORCH_CHECK(lead1 == lead2, "pairwise box_iou needs the same leading (batch) dims in boxes1 ",
              boxes1.sizes(), " and boxes2 ", boxes2.sizes());
  s.batch = 1;
  for (int64_t d : lead1) s.batch *= d;
  s.n = boxes1.size(-2);
  s.m = boxes2.size(-2);
  s.out_sizes = lead1;
  s.out_sizes.push_back(s.n);
  s.out_sizes.push_back(s.m);
  return s;
}

inline void check_iou_loss_args(const at::Tensor& pred, const at::Tensor& target,
                                const c10::optional<at::Tensor>& weight) {
  check_boxes(pred, "pred");
  check_boxes(target, "target");
  check_float_dtype(pred, "pred");
  check_same_dtype(target, pred, "target", "pred");
  check_same_device(target, pred, "target", "pred");
  TORCH_CHECK(pred.sizes() == target.sizes(), "pred and target must have the same shape "
              "(..., 4), got ", pred.sizes(), " and ", target.sizes());
  if (weight.has_value() && weight->defined()) {
    check_same_dtype(*weight, pred, "weight", "pred");
    check_same_device(*weight, pred, "weight", "pred");
    TORCH_CHECK(weight->sizes() == pred.sizes().slice(0, pred.dim() - 1),
                "weight must have the shape of pred without its last dim, ",
                pred.sizes().slice(0, pred.dim() - 1), ", got ", weight->sizes());
  }
}

struct MetricShape {
  int64_t batch, num_gts, num_anchors, num_classes;
};

// Checks every argument of alignment_metric except label values (which need
// the data; see check_label_values).
inline MetricShape check_alignment_metric_args(const at::Tensor& pred_scores,
                                               const at::Tensor& pred_boxes,
                                               const at::Tensor& anchor_points,
                                               const at::Tensor& gt_labels,
                                               const at::Tensor& gt_boxes,
                                               const at::Tensor& gt_mask) {
  TORCH_CHECK(pred_scores.dim() == 3, "pred_scores must have shape (B, A, C), got ",
              pred_scores.sizes());
  MetricShape s{pred_scores.size(0), gt_labels.dim() == 2 ? gt_labels.size(1) : -1,
                pred_scores.size(1), pred_scores.size(2)};
  TORCH_CHECK(pred_boxes.dim() == 3 && pred_boxes.size(0) == s.batch &&
                  pred_boxes.size(1) == s.num_anchors && pred_boxes.size(2) == 4,
              "pred_boxes must have shape (B, A, 4) = (", s.batch, ", ", s.num_anchors,
              ", 4) to match pred_scores ", pred_scores.sizes(), ", got ", pred_boxes.sizes());
  TORCH_CHECK(anchor_points.dim() == 2 && anchor_points.size(0) == s.num_anchors &&
                  anchor_points.size(1) == 2,
              "anchor_points must have shape (A, 2) = (", s.num_anchors, ", 2), got ",
              anchor_points.sizes());
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == s.batch,
              "gt_labels must have shape (B, G) with B = ", s.batch, ", got ",
              gt_labels.sizes());
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(0) == s.batch &&
                  gt_boxes.size(1) == s.num_gts && gt_boxes.size(2) == 4,
              "gt_boxes must have shape (B, G, 4) = (", s.batch, ", ", s.num_gts, ", 4), got ",
              gt_boxes.sizes());
  TORCH_CHECK(gt_mask.dim() == 2 && gt_mask.size(0) == s.batch && gt_mask.size(1) == s.num_gts,
              "gt_mask must have shape (B, G) = (", s.batch, ", ", s.num_gts, "), got ",
              gt_mask.sizes());
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong, "gt_labels must be int64, got ",
              gt_labels.scalar_type());
  TORCH_CHECK(gt_mask.scalar_type() == at::kBool, "gt_mask must be bool, got ",
              gt_mask.scalar_type());
  check_float_dtype(pred_scores, "pred_scores");
  check_same_dtype(pred_boxes, pred_scores, "pred_boxes", "pred_scores");
  check_same_dtype(anchor_points, pred_scores, "anchor_points", "pred_scores");
  check_same_dtype(gt_boxes, pred_scores, "gt_boxes", "pred_scores");
  check_same_device(pred_boxes, pred_scores, "pred_boxes", "pred_scores");
  check_same_device(anchor_points, pred_scores, "anchor_points", "pred_scores");
  check_same_device(gt_labels, pred_scores, "gt_labels", "pred_scores");
  check_same_device(gt_boxes, pred_scores, "gt_boxes", "pred_scores");
  check_same_device(gt_mask, pred_scores, "gt_mask", "pred_scores");
  return s;
}

// Labels of valid (mask == true) GTs must index a class of pred_scores.
// Reads the data (one device sync on CUDA); padding GTs may hold anything.
inline void check_label_values(const at::Tensor& gt_labels, const at::Tensor& gt_mask,
                               int64_t num_classes) {
  if (gt_labels.numel() == 0) return;
  const at::Tensor bad = ((gt_labels < 0) | (gt_labels >= num_classes)) & gt_mask;
  if (!bad.any().item<bool>()) return;
  const int64_t value = gt_labels.masked_select(bad).flatten()[0].item<int64_t>();
  TORCH_CHECK_INDEX(false, "gt_labels holds class ", value, " for a valid GT (gt_mask True), "
                    "outside [0, ", num_classes, ") = the classes of pred_scores");
}

}  // namespace box_ops
}  // namespace tood_ext
