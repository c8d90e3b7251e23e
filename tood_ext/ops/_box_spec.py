"""The box-metric family's contract in Python: modes, defaults and argument checks, written once.

Used alike by the kernel-backed ops (:mod:`tood_ext.ops.box_ops`), their fake (meta) kernels
and the pure-PyTorch references (:mod:`tood_ext.reference.box_ops`); the C++ side of the same
contract is csrc/box_ops/box_ops.h. Two kinds of checks, following the error policy of
:mod:`tood_ext.ops._checks`:

* ``check_*_args``: every argument's Python type (TypeError) and the values of the non-tensor
  arguments (ValueError). The wrappers, the references and the fake kernels call them.
* ``*_shape``: the tensors' shapes, dtypes and devices (RuntimeError, the messages of the
  C++ checks), returning the output's shape. The references and the fake kernels call them;
  the wrappers leave them to the kernels.
"""
from __future__ import annotations

import torch

from .._reduction import REDUCTIONS, check_reduction
from ._checks import broadcast_leading, check_bool, check_box_shape, check_choice
from ._checks import check_float_dtype, check_number, check_same_device, check_same_dtype
from ._checks import check_tensors

IOU_MODES = ("iou", "giou", "diou", "ciou")
EPS = 1e-7  # the default eps of every op of the family

__all__ = ["EPS", "IOU_MODES", "REDUCTIONS", "alignment_metric_shape", "box_iou_grad_shape",
           "box_iou_shape", "check_alignment_metric_args", "check_box_iou_args", "check_eps",
           "check_iou_loss_args", "check_iou_mode", "check_label_values", "iou_loss_grad_shape",
           "iou_loss_shape"]


# ---- non-tensor arguments (TypeError / ValueError) -------------------------------------------


def check_iou_mode(mode, name: str = "mode") -> None:
    """ValueError unless ``mode`` is one of :data:`IOU_MODES`."""
    check_choice(name, mode, IOU_MODES)


def check_eps(op: str, name: str, value) -> None:
    """An eps: a finite number >= 0 (NaN or a negative eps turns every degenerate pair's 0 / 0
    into NaN; inf makes every overlap 0)."""
    check_number(op, name, value, finite=True, minimum=0.0)


def check_box_iou_args(op: str, boxes1, boxes2, mode, aligned, eps) -> None:
    check_tensors(op, boxes1=boxes1, boxes2=boxes2)
    check_iou_mode(mode)
    check_bool(op, "aligned", aligned)
    check_eps(op, "eps", eps)


def check_iou_loss_args(op: str, pred, target, weight, mode, eps, reduction="none",
                        avg_factor=None) -> None:
    check_tensors(op, optional=("weight",), pred=pred, target=target, weight=weight)
    check_iou_mode(mode)
    check_reduction(reduction, avg_factor, op=op)
    check_eps(op, "eps", eps)


def check_alignment_metric_args(op: str, pred_scores, pred_boxes, anchor_points, gt_labels,
                                gt_boxes, gt_mask, alpha, beta, iou_mode, inside_eps,
                                eps) -> None:
    """Also the first half of task_aligned_assign's checks (:mod:`tood_ext.ops._tal_spec`)."""
    check_tensors(op, pred_scores=pred_scores, pred_boxes=pred_boxes,
                  anchor_points=anchor_points, gt_labels=gt_labels, gt_boxes=gt_boxes,
                  gt_mask=gt_mask)
    check_iou_mode(iou_mode, "iou_mode")
    for name, value in (("alpha", alpha), ("beta", beta)):  # t = s**alpha * u**beta
        check_number(op, name, value, finite=True, minimum=0.0)
    check_number(op, "inside_eps", inside_eps, finite=True)
    check_eps(op, "eps", eps)


# ---- tensors: shape, dtype, device (RuntimeError); label values (IndexError) ------------------


def _float_inputs(ref_name: str, ref: torch.Tensor, half_on_cpu: bool, **others) -> None:
    check_float_dtype(ref_name, ref, half_on_cpu)
    check_same_dtype(ref_name, ref, **others)
    check_same_device("", ref_name, ref, **others)


def pair_shape(op: str, names: tuple[str, str], a: torch.Tensor, b: torch.Tensor,
               aligned: bool, broadcast: bool, box_width: int):
    """The layout checks of a pair op over two box tensors a (..., N, W) and b (..., M, W)
    (box_iou, probiou; the C++ ``set_pair_layout``), once the family has checked their last
    dims, dtypes and devices. Returns ``(shape, a, b)``: aligned (..., N), pairwise
    (..., N, M), a and b expanded to the broadcast leading dims where ``broadcast``."""
    n1, n2 = names
    W = box_width
    if aligned:
        if a.shape != b.shape:
            raise RuntimeError(f"aligned {op} needs {n1} and {n2} of the same shape "
                               f"(..., N, {W}), got {list(a.shape)} and {list(b.shape)}")
        return tuple(a.shape[:-1]), a, b
    if a.dim() < 2 or b.dim() < 2:
        raise RuntimeError(f"pairwise {op} needs {n1} (..., N, {W}) and {n2} (..., M, {W}), "
                           f"got shapes {list(a.shape)} and {list(b.shape)}")
    if broadcast:
        a, b = broadcast_leading(a, b, op, names, W)
    elif a.shape[:-2] != b.shape[:-2]:
        raise RuntimeError(f"pairwise {op} needs the same leading (batch) dims in {n1} "
                           f"{list(a.shape)} and {n2} {list(b.shape)}")
    return (*a.shape[:-1], b.shape[-2]), a, b


def box_iou_shape(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool,
                  broadcast: bool = False, half_on_cpu: bool = False):
    """The output shape of ``box_iou``. ``broadcast``: the wrappers' pairwise form, whose
    leading dims broadcast (the op itself needs them equal). Returns ``(shape, boxes1,
    boxes2)``, the boxes expanded to the broadcast leading dims where ``broadcast``."""
    check_box_shape("boxes1", boxes1)
    check_box_shape("boxes2", boxes2)
    _float_inputs("boxes1", boxes1, half_on_cpu, boxes2=boxes2)
    return pair_shape("box_iou", ("boxes1", "boxes2"), boxes1, boxes2, aligned, broadcast, 4)


def _check_grad(grad: torch.Tensor, ref_name: str, ref: torch.Tensor, shape, what: str) -> None:
    if tuple(grad.shape) != tuple(shape):
        raise RuntimeError(f"grad must have the shape of {what} {list(shape)}, got "
                           f"{list(grad.shape)}")
    check_same_dtype(ref_name, ref, grad=grad)
    check_same_device("", ref_name, ref, grad=grad)


def box_iou_grad_shape(grad, boxes1, boxes2, aligned: bool) -> None:
    """The checks of ``_box_iou_backward``: the forward's, and a grad of the output's shape,
    dtype and device."""
    shape, _, _ = box_iou_shape(boxes1, boxes2, aligned)
    _check_grad(grad, "boxes1", boxes1, shape, "box_iou's output")


def pair_loss_shape(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                    box_width: int) -> tuple:
    """The shape of an unreduced element-wise box-pair loss (iou_loss, probiou_loss): pred's
    without its last dim, once the family has checked the boxes' last dims, dtypes and
    devices; target of pred's shape, weight of the loss's (the C++ ``set_pair_loss_inputs``)."""
    if pred.shape != target.shape:
        raise RuntimeError(f"pred and target must have the same shape (..., {box_width}), got "
                           f"{list(pred.shape)} and {list(target.shape)}")
    shape = tuple(pred.shape[:-1])
    if weight is not None and tuple(weight.shape) != shape:
        raise RuntimeError(f"weight must have the shape of pred without its last dim, "
                           f"{list(shape)}, got {list(weight.shape)}")
    return shape


def iou_loss_shape(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                   half_on_cpu: bool = False) -> tuple:
    """The shape of the unreduced ``iou_loss``: pred's without its last dim."""
    check_box_shape("pred", pred)
    check_box_shape("target", target)
    _float_inputs("pred", pred, half_on_cpu, target=target, weight=weight)
    return pair_loss_shape(pred, target, weight, 4)


def iou_loss_grad_shape(grad, pred, target, weight) -> None:
    shape = iou_loss_shape(pred, target, weight)
    _check_grad(grad, "pred", pred, shape, "the unreduced loss")


def alignment_metric_shape(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask,
                           half_on_cpu: bool = False,
                           box_width: int = 4) -> tuple[int, int, int, int]:
    """(B, A, C, G) of the alignment-metric / TAL inputs (the C++
    ``check_alignment_metric_args``); ``box_width`` 5 for the rotated TAL's boxes."""
    W = box_width
    if pred_scores.dim() != 3:
        raise RuntimeError(f"pred_scores must have shape (B, A, C), got "
                           f"{list(pred_scores.shape)}")
    B, A, C = pred_scores.shape
    if pred_boxes.shape != (B, A, W):
        raise RuntimeError(f"pred_boxes must have shape (B, A, {W}) = ({B}, {A}, {W}) to match "
                           f"pred_scores {list(pred_scores.shape)}, got "
                           f"{list(pred_boxes.shape)}")
    if anchor_points.shape != (A, 2):
        raise RuntimeError(f"anchor_points must have shape (A, 2) = ({A}, 2), got "
                           f"{list(anchor_points.shape)}")
    if gt_labels.dim() != 2 or gt_labels.shape[0] != B:
        raise RuntimeError(f"gt_labels must have shape (B, G) with B = {B}, got "
                           f"{list(gt_labels.shape)}")
    G = gt_labels.shape[1]
    if gt_boxes.shape != (B, G, W):
        raise RuntimeError(f"gt_boxes must have shape (B, G, {W}) = ({B}, {G}, {W}), got "
                           f"{list(gt_boxes.shape)}")
    if gt_mask.shape != (B, G):
        raise RuntimeError(f"gt_mask must have shape (B, G) = ({B}, {G}), got "
                           f"{list(gt_mask.shape)}")
    if gt_labels.dtype != torch.int64:
        raise RuntimeError(f"gt_labels must be int64, got {gt_labels.dtype}")
    if gt_mask.dtype != torch.bool:
        raise RuntimeError(f"gt_mask must be bool, got {gt_mask.dtype}")
    _float_inputs("pred_scores", pred_scores, half_on_cpu, pred_boxes=pred_boxes,
                  anchor_points=anchor_points, gt_boxes=gt_boxes)
    check_same_device("", "pred_scores", pred_scores, gt_labels=gt_labels, gt_mask=gt_mask)
    return B, A, C, G


def check_label_values(gt_labels: torch.Tensor, gt_mask: torch.Tensor, num_classes: int) -> None:
    """IndexError for a valid GT (``gt_mask`` True) whose label is outside [0, C). Reads the
    values (one device sync); the fake kernels cannot run it."""
    if not gt_labels.numel():
        return
    bad = ((gt_labels < 0) | (gt_labels >= num_classes)) & gt_mask
    if bad.any():
        value = int(gt_labels[bad][0])
        raise IndexError(f"gt_labels holds class {value} for a valid GT (gt_mask True), "
                         f"outside [0, {num_classes}) = the classes of pred_scores")
