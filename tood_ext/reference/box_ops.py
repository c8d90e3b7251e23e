"""Pure-PyTorch references of the box-metric ops, same signatures as :mod:`tood_ext.ops`.

Written from the semantics in :mod:`tood_ext.ops.box_ops` (not from the kernels), with
broadcast tensors: pairwise forms materialise every (N, M) intermediate, the alignment metric
every (B, G, A) one. Half inputs are computed in float32. Used by the tests, the benchmarks and
as a fallback where the compiled kernels are unavailable.
"""
from __future__ import annotations

import math

import torch

from .._reduction import reduce_loss
from ..ops import _box_spec as spec

__all__ = ["box_iou", "iou_loss", "giou_loss", "alignment_metric"]


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
    spec.check_box_iou_args("reference.box_iou", boxes1, boxes2, mode, aligned, eps)
    _, boxes1, boxes2 = spec.box_iou_shape(boxes1, boxes2, aligned, broadcast=True,
                                           half_on_cpu=True)
    if aligned:
        out = _pair_value(boxes1, boxes2, mode, eps)
    else:
        out = _pair_value(boxes1[..., :, None, :], boxes2[..., None, :, :], mode, eps)
    return out.to(boxes1.dtype)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             mode: str = "giou", reduction: str = "mean",
             avg_factor: float | torch.Tensor | None = None, eps: float = 1e-7) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.iou_loss`."""
    spec.check_iou_loss_args("reference.iou_loss", pred, target, weight, mode, eps, reduction,
                             avg_factor)
    spec.iou_loss_shape(pred, target, weight, half_on_cpu=True)
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


def alignment_metric(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                     anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                     gt_boxes: torch.Tensor, gt_mask: torch.Tensor, alpha: float = 1.0,
                     beta: float = 6.0, iou_mode: str = "iou", inside_eps: float = 0.01,
                     eps: float = 1e-7):
    """Reference of :func:`tood_ext.ops.alignment_metric`: dense (B, G, A) tensors throughout."""
    spec.check_alignment_metric_args("reference.alignment_metric", pred_scores, pred_boxes,
                                     anchor_points, gt_labels, gt_boxes, gt_mask, alpha, beta,
                                     iou_mode, inside_eps, eps)
    B, A, C, G = spec.alignment_metric_shape(pred_scores, pred_boxes, anchor_points, gt_labels,
                                             gt_boxes, gt_mask, half_on_cpu=True)
    spec.check_label_values(gt_labels, gt_mask, C)
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
