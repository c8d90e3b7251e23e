"""Pure-PyTorch reference of the fused losses, same signature as :mod:`tood_ext.ops.losses`.

Written from the semantics in :mod:`tood_ext.ops.losses` (not from the kernels): it builds the
dense (..., C) target and applies PyTorch's own ``binary_cross_entropy_with_logits`` /
``binary_cross_entropy`` and the focal factors element-wise, so autograd gives the gradient.
Half inputs are computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops._losses_spec import (check_cls_loss_args, check_cls_loss_tensors, check_dfl_args,
                                check_dfl_tensors, loss_dtype, reduce_sum, resolve_alpha)

__all__ = ["dense_cls_target", "dfl_loss", "sparse_target_cls_loss"]


def dense_cls_target(labels: torch.Tensor, scores: torch.Tensor, num_classes: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """(..., C) target: ``scores`` at ``labels``, 0 elsewhere and on background (-1) rows."""
    fg = labels >= 0
    onehot = F.one_hot(labels.long().clamp(min=0), num_classes).to(dtype)
    s = torch.where(fg, scores.to(dtype), torch.zeros((), dtype=dtype, device=scores.device))
    return onehot * s[..., None]


def sparse_target_cls_loss(pred: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                           kind: str = "bce", *, gamma: float = 2.0, alpha: float | None = None,
                           activated: bool = False, class_weight: torch.Tensor | None = None,
                           weight: torch.Tensor | None = None, reduction: str = "sum",
                           avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.sparse_target_cls_loss`: materialises the (..., C)
    target and per-element loss."""
    check_cls_loss_args(pred, labels, scores, kind, gamma, alpha, activated, class_weight,
                        reduction, avg_factor, weight)
    check_cls_loss_tensors(pred, labels, scores, kind, class_weight, weight=weight)
    alpha = resolve_alpha(kind, alpha)
    if pred.is_cuda is False and pred.dtype in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"pred must be float32 or float64 on CPU (float16/bfloat16 are "
                           f"CUDA-only), got {pred.dtype}")
    work = loss_dtype(pred.dtype)
    x = pred.to(work)
    t = dense_cls_target(labels, scores, pred.shape[-1], work)
    if kind == "focal":  # mmdetection's py_sigmoid_focal_loss / py_focal_loss_with_prob
        if activated:
            inside = (x >= 0) & (x <= 1)
            p = torch.where(inside, x, 0.5)
            bce = F.binary_cross_entropy(p, t, reduction="none")
            q = 1 - p
        else:
            bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            p, q = x.sigmoid(), (-x).sigmoid()
        pt = q * t + p * (1 - t)
        loss = bce * ((alpha * t + (1 - alpha) * (1 - t)) * pt.pow(gamma))
        if activated:
            loss = torch.where(inside, loss, torch.full_like(loss, float("nan")))
    elif kind == "qfl" and activated:
        inside = (x >= 0) & (x <= 1)
        p = torch.where(inside, x, 0.5)  # F.binary_cross_entropy refuses them: NaN below
        loss = F.binary_cross_entropy(p, t, reduction="none") * (t - p).abs().pow(gamma)
        loss = torch.where(inside, loss, torch.full_like(loss, float("nan")))
    else:
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if kind == "bce":
            loss = bce
        elif kind == "qfl":
            loss = bce * (t - x.sigmoid()).abs().pow(gamma)
        else:  # vfl
            focal = alpha * (x.sigmoid() - t).abs().pow(gamma)
            loss = bce * torch.where(t > 0, t, focal)
    if class_weight is not None:
        loss = loss * class_weight.to(work)
    if weight is not None:
        loss = loss * weight.to(work)[..., None]
    return reduce_sum(loss.sum(), pred.numel(), reduction, avg_factor)


def dfl_loss(pred_dist: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             *, reduction: str = "sum",
             avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.dfl_loss`: log_softmax over the bins and two gathers
    (ultralytics' DFLoss), the target clamped out of place."""
    check_dfl_args(pred_dist, target, weight, reduction, avg_factor)
    check_dfl_tensors(pred_dist, target, weight)
    work = loss_dtype(pred_dist.dtype)
    R = pred_dist.shape[-1]
    x = pred_dist.to(work)
    y = target.to(work).clamp(0, R - 1 - 0.01)
    finite = ~torch.isnan(y)
    y = torch.where(finite, y, torch.zeros((), dtype=work, device=y.device))
    left = y.long()
    wl = (left + 1).to(work) - y
    wl = torch.where(finite, wl, torch.full_like(wl, float("nan")))
    logp = F.log_softmax(x, dim=-1)
    lp = logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    rp = logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    loss = -(lp * wl + rp * (1 - wl))
    if weight is not None:
        loss = loss * weight.to(work)
    return reduce_sum(loss.sum(), loss.numel(), reduction, avg_factor)
