"""Pure-PyTorch reference of the fused losses, same signature as :mod:`tood_ext.ops.losses`.

Written from the semantics in :mod:`tood_ext.ops.losses` (not from the kernels): it builds the
dense (..., C) target and applies PyTorch's own ``binary_cross_entropy_with_logits`` /
``binary_cross_entropy`` and the focal factors element-wise, so autograd gives the gradient.
Half inputs are computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops._loss_checks import (check_cls_loss_args, check_cls_loss_tensors, loss_dtype,
                                reduce_sum)

__all__ = ["sparse_target_cls_loss", "dense_cls_target"]


def dense_cls_target(labels: torch.Tensor, scores: torch.Tensor, num_classes: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """(..., C) target: ``scores`` at ``labels``, 0 elsewhere and on background (-1) rows."""
    fg = labels >= 0
    onehot = F.one_hot(labels.long().clamp(min=0), num_classes).to(dtype)
    s = torch.where(fg, scores.to(dtype), torch.zeros((), dtype=dtype, device=scores.device))
    return onehot * s[..., None]


def sparse_target_cls_loss(pred: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                           kind: str = "bce", *, gamma: float = 2.0, alpha: float = 0.75,
                           activated: bool = False, class_weight: torch.Tensor | None = None,
                           reduction: str = "sum",
                           avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.sparse_target_cls_loss`: materialises the (..., C)
    target and per-element loss."""
    check_cls_loss_args(pred, labels, scores, kind, gamma, alpha, activated, class_weight,
                        reduction, avg_factor)
    check_cls_loss_tensors(pred, labels, scores, kind, class_weight)
    if pred.is_cuda is False and pred.dtype in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"pred must be float32 or float64 on CPU (float16/bfloat16 are "
                           f"CUDA-only), got {pred.dtype}")
    work = loss_dtype(pred.dtype)
    x = pred.to(work)
    t = dense_cls_target(labels, scores, pred.shape[-1], work)
    if kind == "qfl" and activated:
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
    return reduce_sum(loss.sum(), pred.numel(), reduction, avg_factor)
