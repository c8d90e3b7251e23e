"""Pure-PyTorch references of the box-metric ops, same signatures as :mod:`tood_ext.ops`.

Written from the semantics in :mod:`tood_ext.ops.box_ops` (not from the kernels), with
broadcast tensors: pairwise forms materialise every (N, M) intermediate, the alignment metric
every (B, G, A) one. Half inputs are computed in float32. Used by the tests, the benchmarks and
as a fallback where the compiled kernels are unavailable.
"""
from __future__ import annotations

import math

import torch

from .._reduction import check_reduction, reduce_loss
from ..ops._checks import broadcast_leading, check_box_shape, check_choice, check_number
from ..ops._checks import check_float_like, check_tensors

IOU_MODES = ("iou", "giou", "diou", "ciou")

__all__ = ["box_iou", "iou_loss", "giou_loss", "alignment_metric"]


def _check_mode(mode: str, name: str = "mode") -> None:
    check_choice(name, mode, IOU_MODES)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _pair_value(a: torch.Tensor, b: torch.Tensor, mode: str, eps: float) -> torch.Tensor:
    """IoU-family value of broadcastable box tensors a (..., 4) and b (..., 4)."""
    a, b = _upcast(a), _upcast(b)
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    aw, ah = (ax2 - ax1).clamp(min=0), (ay2 - ay1).clamp(min=0)
    bw, bh = (bx2 - bx1).clamp(min=0), (by2 - by1).clamp(min=0)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (aw * ah + bw * bh - inter).clamp(min=eps)
    iou = inter / union
    value = iou
    if mode != "iou":
        cw = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
        ch = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
        if mode == "giou":
            enclose = (cw * ch).clamp(min=eps)
            value = iou - (enclose - union) / enclose
        else:
            rho2 = ((ax1 + ax2 - bx1 - bx2) ** 2 + (ay1 + ay2 - by1 - by2) ** 2) / 4
            value = iou - rho2 / (cw ** 2 + ch ** 2 + eps)
            if mode == "ciou":
                v = (4 / math.pi ** 2) * (torch.atan2(bw, bh) - torch.atan2(aw, ah)) ** 2
                with torch.no_grad():
                    alpha = v / (1 - iou + v + eps)
                value = value - alpha * v
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    return torch.where(finite, value, torch.full_like(value, float("nan")))


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, mode: str = "iou", aligned: bool = False,
            eps: float = 1e-7) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.box_iou` (materialises (..., N, M) intermediates)."""
    check_tensors("reference.box_iou", boxes1=boxes1, boxes2=boxes2)
    _check_mode(mode)
    check_number("reference.box_iou", "eps", eps)
    check_box_shape("boxes1", boxes1)
    check_box_shape("boxes2", boxes2)
    check_float_like("boxes1", boxes1, boxes2=boxes2)
    if aligned:
        if boxes1.shape != boxes2.shape:
            raise ValueError(f"aligned box_iou needs boxes1 and boxes2 of the same shape, got "
                             f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
        out = _pair_value(boxes1, boxes2, mode, eps)
    else:
        if boxes1.dim() < 2 or boxes2.dim() < 2:
            raise RuntimeError(f"pairwise box_iou needs boxes1 (..., N, 4) and boxes2 (..., M, 4),"
                               f" got shapes {list(boxes1.shape)} and {list(boxes2.shape)}")
        boxes1, boxes2 = broadcast_leading(boxes1, boxes2)
        out = _pair_value(boxes1[..., :, None, :], boxes2[..., None, :, :], mode, eps)
    return out.to(boxes1.dtype)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             mode: str = "giou", reduction: str = "mean",
             avg_factor: float | torch.Tensor | None = None, eps: float = 1e-7) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.iou_loss`."""
    check_tensors("reference.iou_loss", optional=("weight",), pred=pred, target=target,
                  weight=weight)
    _check_mode(mode)
    check_reduction(reduction, avg_factor, op="reference.iou_loss")
    check_number("reference.iou_loss", "eps", eps)
    check_box_shape("pred", pred)
    check_box_shape("target", target)
    check_float_like("pred", pred, target=target, weight=weight)
    if pred.shape != target.shape:
        raise RuntimeError(f"pred and target must have the same shape (..., 4), got "
                           f"{list(pred.shape)} and {list(target.shape)}")
    if weight is not None and weight.shape != pred.shape[:-1]:
        raise RuntimeError(f"weight must have the shape of pred without its last dim, "
                           f"{list(pred.shape[:-1])}, got {list(weight.shape)}")
    loss = 1 - _pair_value(pred, target, mode, eps)
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss.to(pred.dtype), reduction, avg_factor)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
              reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
              eps: float = 1e-7) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.giou_loss`."""
    return iou_loss(pred, target, weight, mode="giou", reduction=reduction,
                    avg_factor=avg_factor, eps=eps)


def _check_shapes(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask) -> None:
    """Shapes, dtypes, devices and label values (RuntimeError / IndexError, the kernels'
    messages)."""
    if pred_scores.dim() != 3:
        raise RuntimeError(f"pred_scores must have shape (B, A, C), got {tuple(pred_scores.shape)}")
    B, A, C = pred_scores.shape
    if pred_boxes.shape != (B, A, 4):
        raise RuntimeError(f"pred_boxes must have shape (B, A, 4) = ({B}, {A}, 4) to match "
                           f"pred_scores {tuple(pred_scores.shape)}, got {tuple(pred_boxes.shape)}")
    if anchor_points.shape != (A, 2):
        raise RuntimeError(f"anchor_points must have shape (A, 2) = ({A}, 2), got "
                           f"{tuple(anchor_points.shape)}")
    if gt_labels.dim() != 2 or gt_labels.shape[0] != B:
        raise RuntimeError(f"gt_labels must have shape (B, G) with B = {B}, got "
                           f"{tuple(gt_labels.shape)}")
    G = gt_labels.shape[1]
    if gt_boxes.shape != (B, G, 4):
        raise RuntimeError(f"gt_boxes must have shape (B, G, 4) = ({B}, {G}, 4), got "
                           f"{tuple(gt_boxes.shape)}")
    if gt_mask.shape != (B, G):
        raise RuntimeError(f"gt_mask must have shape (B, G) = ({B}, {G}), got "
                           f"{tuple(gt_mask.shape)}")
    if gt_labels.dtype != torch.int64:
        raise RuntimeError(f"gt_labels must be int64, got {gt_labels.dtype}")
    if gt_mask.dtype != torch.bool:
        raise RuntimeError(f"gt_mask must be bool, got {gt_mask.dtype}")
    if not pred_scores.is_floating_point():
        raise RuntimeError(f"pred_scores must be float32 or float64, got {pred_scores.dtype}")
    for name, t in (("pred_boxes", pred_boxes), ("anchor_points", anchor_points),
                    ("gt_boxes", gt_boxes)):
        if t.dtype != pred_scores.dtype:
            raise RuntimeError(f"{name} has dtype {t.dtype} but pred_scores has dtype "
                               f"{pred_scores.dtype}; they must have the same floating dtype")
    for name, t in (("pred_boxes", pred_boxes), ("anchor_points", anchor_points),
                    ("gt_labels", gt_labels), ("gt_boxes", gt_boxes), ("gt_mask", gt_mask)):
        if t.device != pred_scores.device:
            raise RuntimeError(f"{name} is on {t.device} but pred_scores is on "
                               f"{pred_scores.device}; all inputs must be on the same device")
    if gt_labels.numel():
        bad = ((gt_labels < 0) | (gt_labels >= C)) & gt_mask
        if bad.any():
            value = int(gt_labels[bad][0])
            raise IndexError(f"gt_labels holds class {value} for a valid GT (gt_mask True), "
                             f"outside [0, {C}) = the classes of pred_scores")


def alignment_metric(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                     anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                     gt_boxes: torch.Tensor, gt_mask: torch.Tensor, alpha: float = 1.0,
                     beta: float = 6.0, iou_mode: str = "iou", inside_eps: float = 0.01,
                     eps: float = 1e-7):
    """Reference of :func:`tood_ext.ops.alignment_metric`: dense (B, G, A) tensors throughout."""
    op = "reference.alignment_metric"
    check_tensors(op, pred_scores=pred_scores, pred_boxes=pred_boxes,
                  anchor_points=anchor_points, gt_labels=gt_labels, gt_boxes=gt_boxes,
                  gt_mask=gt_mask)
    _check_mode(iou_mode, "iou_mode")
    for name, value in (("alpha", alpha), ("beta", beta), ("inside_eps", inside_eps),
                        ("eps", eps)):
        check_number(op, name, value)
    _check_shapes(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask)
    B, A, C = pred_scores.shape
    G = gt_labels.shape[1]
    valid_labels = gt_labels[gt_mask]
    if valid_labels.numel() and (valid_labels.min() < 0 or valid_labels.max() >= C):
        raise IndexError(f"gt_labels holds a class outside [0, {C}) for a valid GT")
    with torch.no_grad():
        mask = gt_mask[:, :, None]  # (B, G, 1)
        overlaps = _pair_value(pred_boxes[:, None, :, :], gt_boxes[:, :, None, :], iou_mode, eps)
        overlaps = overlaps.clamp(min=0)  # NaN stays NaN
        labels = torch.where(gt_mask, gt_labels, torch.zeros_like(gt_labels))
        scores = _upcast(pred_scores).transpose(1, 2).gather(
            1, labels[:, :, None].expand(B, G, A))  # (B, G, A)
        metric = scores.pow(alpha) * overlaps.pow(beta)
        points = _upcast(anchor_points)[None, None]  # (1, 1, A, 2)
        boxes = _upcast(gt_boxes)[:, :, None, :]  # (B, G, 1, 4)
        deltas = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
        inside = (deltas.amin(-1) > inside_eps) & mask
        zero = torch.zeros((), dtype=metric.dtype, device=metric.device)
        metric = torch.where(mask, metric, zero)
        overlaps = torch.where(mask, overlaps, zero)
    return metric.to(pred_scores.dtype), overlaps.to(pred_scores.dtype), inside
