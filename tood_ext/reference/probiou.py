"""Pure-PyTorch references of the ProbIoU ops, same signatures as :mod:`tood_ext.ops.probiou`.

Written from the semantics stated in :mod:`tood_ext.ops.probiou` (ultralytics' ``probiou``,
its order of operations, eps placements and clamps), with broadcast tensors: the pairwise
form materialises every (N, M) intermediate. Autograd differentiates it (the CIoU aspect
term's alpha under ``no_grad``). Half inputs are computed in float32.
"""
from __future__ import annotations

import math

import torch

from .._reduction import reduce_loss
from ..ops import _probiou_spec as spec

__all__ = ["probiou", "probiou_loss", "probiou_pair"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _covariance(w, h, angle, floor):
    var_w = w.pow(2) / 12 + floor
    var_h = h.pow(2) / 12 + floor
    c, s = angle.cos(), angle.sin()
    cc, ss = c.pow(2), s.pow(2)
    return var_w * cc + var_h * ss, var_w * ss + var_h * cc, (var_w - var_h) * c * s


def probiou_pair(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7, floor: float = 0.0,
                 ciou: bool = False) -> torch.Tensor:
    """ProbIoU of broadcastable oriented boxes b1 (..., 5) and b2 (..., 5) -> (...).

    No argument checks (the building block of :func:`probiou` and of the rotated assignment's
    reference); half inputs are computed in float32 and returned as such.
    """
    b1, b2 = _upcast(b1), _upcast(b2)
    x1, y1, w1, h1, r1 = b1.unbind(-1)
    x2, y2, w2, h2, r2 = b2.unbind(-1)
    a1, bb1, c1 = _covariance(w1, h1, r1, floor)
    a2, bb2, c2 = _covariance(w2, h2, r2, floor)
    sa, sb, sc = a1 + a2, bb1 + bb2, c1 + c2
    det = sa * sb - sc.pow(2)
    t1 = ((sa * (y1 - y2).pow(2) + sb * (x1 - x2).pow(2)) / (det + eps)) * 0.25
    t2 = ((sc * (x2 - x1) * (y1 - y2)) / (det + eps)) * 0.5
    d1 = (a1 * bb1 - c1.pow(2)).clamp(min=0)
    d2 = (a2 * bb2 - c2.pow(2)).clamp(min=0)
    t3 = (det / (4 * (d1 * d2).sqrt() + eps) + eps).log() * 0.5
    bd = (t1 + t2 + t3).clamp(eps, 100.0)
    iou = 1 - (1.0 - (-bd).exp() + eps).sqrt()
    if not ciou:
        return iou
    v = (4 / math.pi ** 2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - v * alpha


def probiou(b1: torch.Tensor, b2: torch.Tensor, aligned: bool = False, eps: float = 1e-7,
            floor: float = 0.0, ciou: bool = False) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.probiou`: pairwise (..., N, 5) x (..., M, 5) ->
    (..., N, M) (materialises (..., N, M) intermediates), aligned (..., N, 5) x (..., N, 5)
    -> (..., N)."""
    spec.check_probiou_args("reference.probiou", b1, b2, aligned, eps, floor, ciou)
    _, b1, b2 = spec.probiou_shape(b1, b2, aligned, broadcast=True, half_on_cpu=True)
    if aligned:
        out = probiou_pair(b1, b2, eps, floor, ciou)
    else:
        out = probiou_pair(b1[..., :, None, :], b2[..., None, :, :], eps, floor, ciou)
    return out.to(b1.dtype)


def probiou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
                 eps: float = 1e-7, floor: float = 0.0, ciou: bool = False) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.probiou_loss`: ``weight * (1 - probiou(pred, target))``
    of aligned boxes, reduced."""
    spec.check_probiou_loss_args("reference.probiou_loss", pred, target, weight, eps, floor,
                                 ciou, reduction, avg_factor)
    spec.probiou_loss_shape(pred, target, weight, half_on_cpu=True)
    loss = 1 - probiou_pair(pred, target, eps, floor, ciou)
    if weight is not None:
        loss = loss * _upcast(weight)
    return reduce_loss(loss.to(pred.dtype), reduction, avg_factor)
