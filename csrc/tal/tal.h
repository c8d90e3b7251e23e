// Host contract of task_aligned_assign and task_aligned_assign_rotated,
// written once for the CPU and CUDA implementations (csrc/cpu/tal_cpu.cpp,
// csrc/cuda/tal_cuda.cu), which keep only their passes / launches: every
// argument check, the contiguous inputs, the parsed modes and the
// background-filled outputs, and the registered host functions
// (task_aligned_assign_op, task_aligned_assign_rotated_op). One contract for
// both ops: `rotated` picks the box geometry (tal_geometry.h) the kernels are
// instantiated with. See csrc/box_ops/box_ops.h for the contract pattern and
// the error policy.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>

#include "../box_ops/box_ops.h"
#include "tal_geometry.h"
#include "tal_utils.h"

namespace tood_ext {
namespace tal {

// eps of the overlap u inside TAL: box_iou's and alignment_metric's default.
constexpr double kOverlapEps = 1e-7;

// No backend limit on topk (the CPU kernel's); CUDA's is kMaxTopkCuda.
constexpr int64_t kNoTopkLimit = std::numeric_limits<int64_t>::max();

using TALOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor>;

inline Candidates parse_candidates(c10::string_view candidates) {
  if (candidates == "topk_then_inside") return Candidates::kTopkThenInside;
  if (candidates == "inside_then_topk") return Candidates::kInsideThenTopk;
  TORCH_CHECK_VALUE(false, "candidates must be 'topk_then_inside' or 'inside_then_topk', got '",
                    std::string(candidates), "'");
}

inline Conflict parse_conflict(c10::string_view conflict) {
  if (conflict == "candidates") return Conflict::kCandidates;
  if (conflict == "all_gts") return Conflict::kAllGts;
  TORCH_CHECK_VALUE(false, "conflict must be 'candidates' or 'all_gts', got '",
                    std::string(conflict), "'");
}

// The contract: alignment_metric's inputs (eps = kOverlapEps; rotated: eps =
// probiou_eps, mode and inside_eps unused), the TAL arguments, and the seven
// outputs with every anchor background (assigned_gt -1, fg_mask false,
// labels -1, boxes 0, iou 0, metric 0, soft_target 0): the kernels then write
// the positives only.
struct TALContract : box_ops::MetricArgs {
  bool rotated;        // boxes (cx, cy, w, h, angle), ProbIoU: RotatedGeometry
  int64_t box_width;   // 4, or 5 when rotated
  int64_t topk;
  int64_t K;  // min(topk, A): candidate slots per (image, GT)
  Candidates candidates;
  Conflict conflict;
  double norm_eps, min_inside_size;
  TALOutputs out;
};

// Every check of alignment_metric (shapes, dtypes, devices, label values;
// boxes of 5 values when rotated) plus topk (>= 1, <= max_topk: the
// backend's limit), the candidate and conflict modes and min_inside_size.
inline TALContract prepare_task_aligned_assign(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& anchor_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
    int64_t topk, double alpha, double beta, c10::string_view candidates,
    c10::string_view iou_mode, double inside_eps, double norm_eps, c10::string_view conflict,
    double min_inside_size, int64_t max_topk, const char* backend, bool rotated = false,
    double overlap_eps = kOverlapEps) {
  const char* op = rotated ? "task_aligned_assign_rotated" : "task_aligned_assign";
  TORCH_CHECK_VALUE(topk >= 1, "topk must be >= 1, got ", topk);
  TORCH_CHECK_VALUE(topk <= max_topk, op, " on ", backend, " supports topk <= ", max_topk,
                    ", got ", topk);
  TORCH_CHECK_VALUE(
      min_inside_size >= 0.0 && min_inside_size < std::numeric_limits<double>::infinity(),
      "min_inside_size must be finite and >= 0 (0 = off), got ", min_inside_size);
  const Candidates cand = parse_candidates(candidates);
  const Conflict conf = parse_conflict(conflict);
  TORCH_CHECK_VALUE(overlap_eps >= 0.0 && overlap_eps < std::numeric_limits<double>::infinity(),
                    "probiou_eps must be finite and >= 0, got ", overlap_eps);
  const int64_t W = rotated ? 5 : 4;
  TALContract c{box_ops::metric_args(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                                     gt_mask, alpha, beta, iou_mode, inside_eps, overlap_eps,
                                     /*check_labels=*/false, W)};
  const int64_t B = c.shape.batch, A = c.shape.num_anchors;
  TORCH_CHECK(A < (int64_t(1) << 31) && c.shape.num_gts < (int64_t(1) << 31),
              op, " supports fewer than 2^31 anchors and GTs per image");
  c.rotated = rotated;
  c.box_width = W;
  box_ops::check_label_values(gt_labels, gt_mask, c.shape.num_classes);
  c.topk = topk;
  c.K = std::min<int64_t>(topk, A);
  c.candidates = cand;
  c.conflict = conf;
  c.norm_eps = norm_eps;
  c.min_inside_size = min_inside_size;
  const auto opts = c.pred_scores.options();
  c.out = {at::full({B, A}, -1, opts.dtype(at::kLong)),
           at::zeros({B, A}, opts.dtype(at::kBool)),
           at::full({B, A}, -1, opts.dtype(at::kLong)),
           at::zeros({B, A, W}, c.gt_boxes.options()),
           at::zeros({B, A}, opts),
           at::zeros({B, A}, opts),
           at::zeros({B, A}, opts)};
  return c;
}

// The registered host function of both backends: the contract, the
// all-background early return (no image, anchor or GT), then Kernel (the
// backend's passes), which writes the positives into c.out.
template <void (*Kernel)(const TALContract&), int64_t kMaxTopk>
TALOutputs task_aligned_assign_op(const at::Tensor& pred_scores, const at::Tensor& pred_boxes,
                                  const at::Tensor& anchor_points, const at::Tensor& gt_labels,
                                  const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
                                  int64_t topk, double alpha, double beta,
                                  c10::string_view candidates, c10::string_view iou_mode,
                                  double inside_eps, double norm_eps, c10::string_view conflict,
                                  double min_inside_size) {
  const TALContract c = prepare_task_aligned_assign(
      pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask, topk, alpha, beta,
      candidates, iou_mode, inside_eps, norm_eps, conflict, min_inside_size, kMaxTopk,
      kMaxTopk == kNoTopkLimit ? "CPU" : "CUDA");
  if (c.shape.batch > 0 && c.shape.num_anchors > 0 && c.shape.num_gts > 0) Kernel(c);
  return c.out;
}

// task_aligned_assign_rotated's registered host function: the same contract
// (rotated: boxes (B, *, 5), eps = probiou_eps) and the same Kernel.
template <void (*Kernel)(const TALContract&), int64_t kMaxTopk>
TALOutputs task_aligned_assign_rotated_op(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& anchor_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
    int64_t topk, double alpha, double beta, c10::string_view candidates, double norm_eps,
    c10::string_view conflict, double min_inside_size, double probiou_eps) {
  const TALContract c = prepare_task_aligned_assign(
      pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask, topk, alpha, beta,
      candidates, "iou", /*inside_eps=*/0.0, norm_eps, conflict, min_inside_size, kMaxTopk,
      kMaxTopk == kNoTopkLimit ? "CPU" : "CUDA", /*rotated=*/true, probiou_eps);
  if (c.shape.batch > 0 && c.shape.num_anchors > 0 && c.shape.num_gts > 0) Kernel(c);
  return c.out;
}

}  // namespace tal
}  // namespace tood_ext
