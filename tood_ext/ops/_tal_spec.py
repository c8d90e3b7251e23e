"""The task-aligned assignment's contract in Python: modes, defaults and argument checks.

Used alike by :func:`tood_ext.ops.task_aligned_assign`, its fake kernel and
:func:`tood_ext.reference.task_aligned_assign` (the C++ side: csrc/tal/tal.h). The tensors are
those of the alignment metric (:mod:`tood_ext.ops._box_spec`).
"""
from __future__ import annotations

from ._box_spec import alignment_metric_shape, check_alignment_metric_args, check_eps
from ._box_spec import check_label_values
from ._checks import check_choice, check_int, check_number, check_tensors

CANDIDATE_MODES = ("topk_then_inside", "inside_then_topk")
CONFLICT_MODES = ("candidates", "all_gts")

__all__ = ["CANDIDATE_MODES", "CONFLICT_MODES", "check_tal_args", "check_tal_rotated_args",
           "check_label_values", "tal_rotated_shape", "tal_shape"]


def check_tal_args(op: str, pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                   gt_mask, topk, alpha, beta, candidates, iou_mode, inside_eps, norm_eps,
                   conflict, min_inside_size) -> None:
    """Argument types (TypeError) and the values of the non-tensor arguments (ValueError)."""
    check_alignment_metric_args(op, pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                                gt_mask, alpha, beta, iou_mode, inside_eps, 0.0)
    _check_tal_modes(op, topk, candidates, norm_eps, conflict, min_inside_size)


def _check_tal_modes(op, topk, candidates, norm_eps, conflict, min_inside_size) -> None:
    check_int(op, "topk", topk, minimum=1)
    check_number(op, "norm_eps", norm_eps, finite=True, minimum=0.0)
    check_number(op, "min_inside_size", min_inside_size)
    check_choice("candidates", candidates, CANDIDATE_MODES)
    check_choice("conflict", conflict, CONFLICT_MODES)
    if not (0.0 <= min_inside_size < float("inf")):
        raise ValueError(f"min_inside_size must be finite and >= 0 (0 = off), got "
                         f"{min_inside_size!r}")


tal_shape = alignment_metric_shape  # (B, A, C, G): the same six tensors


def check_tal_rotated_args(op: str, pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                           gt_mask, topk, alpha, beta, candidates, norm_eps, conflict,
                           min_inside_size, probiou_eps) -> None:
    """task_aligned_assign_rotated's argument types (TypeError) and non-tensor values
    (ValueError): those of task_aligned_assign without iou_mode / inside_eps, plus
    probiou_eps (finite, >= 0)."""
    check_tensors(op, pred_scores=pred_scores, pred_boxes=pred_boxes,
                  anchor_points=anchor_points, gt_labels=gt_labels, gt_boxes=gt_boxes,
                  gt_mask=gt_mask)
    for name, value in (("alpha", alpha), ("beta", beta)):  # t = s**alpha * u**beta
        check_number(op, name, value, finite=True, minimum=0.0)
    check_eps(op, "probiou_eps", probiou_eps)
    _check_tal_modes(op, topk, candidates, norm_eps, conflict, min_inside_size)


def tal_rotated_shape(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask,
                      half_on_cpu: bool = False) -> tuple[int, int, int, int]:
    """(B, A, C, G) of task_aligned_assign_rotated's inputs: boxes (cx, cy, w, h, angle)."""
    return alignment_metric_shape(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                                  gt_mask, half_on_cpu=half_on_cpu, box_width=5)
