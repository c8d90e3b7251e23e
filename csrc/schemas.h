// The schemas of tood_ext's ops, written once: registered by csrc/ops.cpp for
// the library tood_ext, and by the CUDA emulator's test library tood_ext_emu
// (csrc/tools/cuda_emu_ops.cpp), whose ops take the same arguments.
#pragma once

#include <torch/library.h>

namespace tood_ext {

inline void define_op_schemas(torch::Library& m) {
  // --- box metrics (csrc/box_ops) ---
  m.def("box_iou(Tensor boxes1, Tensor boxes2, str mode=\"iou\", bool aligned=False, "
        "float eps=1e-07) -> Tensor");
  m.def("_box_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str mode, bool aligned, "
        "float eps) -> (Tensor, Tensor)");
  m.def("iou_loss(Tensor pred, Tensor target, Tensor? weight=None, str mode=\"giou\", "
        "float eps=1e-07) -> Tensor");
  m.def("_iou_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, str mode, "
        "float eps) -> (Tensor, Tensor, Tensor)");
  m.def("alignment_metric(Tensor pred_scores, Tensor pred_boxes, Tensor anchor_points, "
        "Tensor gt_labels, Tensor gt_boxes, Tensor gt_mask, float alpha=1.0, float beta=6.0, "
        "str iou_mode=\"iou\", float inside_eps=0.01, float eps=1e-07) "
        "-> (Tensor, Tensor, Tensor)");
  // --- deformable sampling (csrc/deform) ---
  m.def("deform_sampling(Tensor input, Tensor offset, Tensor? mask=None) -> Tensor");
  m.def("_deform_sampling_backward(Tensor grad, Tensor input, Tensor offset, Tensor? mask) "
        "-> (Tensor, Tensor, Tensor)");
  // --- task-aligned assignment (csrc/tal) ---
  m.def("task_aligned_assign(Tensor pred_scores, Tensor pred_boxes, Tensor anchor_points, "
        "Tensor gt_labels, Tensor gt_boxes, Tensor gt_mask, int topk=13, float alpha=1.0, "
        "float beta=6.0, str candidates=\"topk_then_inside\", str iou_mode=\"iou\", "
        "float inside_eps=0.01, float norm_eps=1e-07, str conflict=\"candidates\", "
        "float min_inside_size=0.0) "
        "-> (Tensor assigned_gt, Tensor fg_mask, Tensor labels, Tensor boxes, Tensor iou, "
        "Tensor metric, Tensor soft_target)");
  // --- losses (csrc/losses) ---
  m.def("sparse_target_cls_loss(Tensor pred, Tensor labels, Tensor scores, str kind=\"bce\", "
        "float gamma=2.0, float? alpha=None, bool activated=False, Tensor? class_weight=None, "
        "Tensor? weight=None) -> Tensor");
  m.def("_sparse_target_cls_loss_backward(Tensor grad, Tensor pred, Tensor labels, "
        "Tensor scores, str kind, float gamma, float? alpha, bool activated, "
        "Tensor? class_weight, Tensor? weight) -> Tensor");
  m.def("dfl_loss(Tensor pred_dist, Tensor target, Tensor? weight=None) -> Tensor");
  m.def("_dfl_loss_backward(Tensor grad, Tensor pred_dist, Tensor target, Tensor? weight) "
        "-> Tensor");
}

}  // namespace tood_ext
