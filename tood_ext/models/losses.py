"""TOOD's classification losses and the cross-process average of the normalisers.

The detectors compute their classification losses with :func:`sparse_cls_loss`: the fused op
``sparse_target_cls_loss`` (or its reference, per the head's ``ops`` switch) on the
assignment's sparse output (a label and a score per anchor), without a dense (N, C) target.
:func:`quality_focal_loss` and :func:`focal_loss` are the dense formulas the detectors used
before (a (N, C) target, per-element BCE, ``index_put``), kept as the tests' reference of the
detectors' losses.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["quality_focal_loss", "focal_loss", "reduce_mean", "sparse_cls_loss"]


def _no_autocast(device_type: str):
    # F.binary_cross_entropy refuses autocast; the losses are computed in float32 anyway
    return torch.autocast(device_type=device_type, enabled=False)


def sparse_cls_loss(ops, pred: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                    kind: str, **kw) -> torch.Tensor:
    """Summed classification loss of a sparse target through ``ops.sparse_target_cls_loss``
    (``ops``: the namespace of :func:`tood_ext.models._ops.get_ops`), unnormalised.

    pred: (..., C) logits or probabilities (``activated=True``); labels: (...) int64 class in
    [0, C) or -1 (background); scores: (...) the target score of the labelled class (t_hat, or
    1 for a hard label), cast to pred's dtype. float16 / bfloat16 predictions are computed in
    float32 (as the dense formulas did), float64 stays float64; autocast is off inside (the
    reference's ``binary_cross_entropy`` refuses it). ``kw``: the op's keywords (gamma, alpha,
    activated, ...).
    """
    with _no_autocast(pred.device.type):
        if pred.dtype != torch.float64:
            pred = pred.float()
        return ops.sparse_target_cls_loss(pred, labels, scores.to(pred.dtype), kind, **kw)


def quality_focal_loss(pred: torch.Tensor, labels: torch.Tensor, score: torch.Tensor,
                       gamma: float = 2.0) -> torch.Tensor:
    """Summed quality focal loss of probabilities (mmdetection's ``QualityFocalLoss(
    use_sigmoid=True, activated=True, beta=gamma)``), unnormalised; the dense formula (the
    detector calls :func:`sparse_cls_loss` with ``kind="qfl", activated=True``).

    pred: (N, C) probabilities; labels: (N,) int64 class in [0, C) or -1 (background);
    score: (N,) soft target of the labelled class (t_hat). Every (n, c) contributes
    ``p^gamma * BCE(p, 0)`` except the positive entries (n, labels[n]), which contribute
    ``|score - p|^gamma * BCE(p, score)``. BCE is PyTorch's (log clamped at -100).
    """
    with _no_autocast(pred.device.type):
        pred, score = pred.float(), score.float()
        loss = F.binary_cross_entropy(pred, torch.zeros_like(pred), reduction="none") \
            * pred.pow(gamma)
        pos = torch.nonzero(labels >= 0).squeeze(1)
        if pos.numel():
            cls = labels[pos]
            p = pred[pos, cls]
            s = score[pos]
            pos_loss = F.binary_cross_entropy(p, s, reduction="none") * (s - p).abs().pow(gamma)
            loss = loss.index_put((pos, cls), pos_loss)
        return loss.sum()


def focal_loss(pred: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               alpha: float = 0.25) -> torch.Tensor:
    """Summed sigmoid focal loss of probabilities (mmdetection's ``FocalLoss(activated=True)``,
    TOOD's loss of the ATSS epochs), unnormalised; the dense formula (the detector calls
    :func:`sparse_cls_loss` with ``kind="focal", activated=True``).

    pred: (N, C) probabilities; labels: (N,) class in [0, C) or -1. With one-hot target y:
    ``(alpha y + (1 - alpha)(1 - y)) * pt^gamma * BCE(p, y)``, ``pt = (1 - p) y + p (1 - y)``.
    """
    with _no_autocast(pred.device.type):
        pred = pred.float()
        target = torch.zeros_like(pred)
        pos = torch.nonzero(labels >= 0).squeeze(1)
        target[pos, labels[pos]] = 1.0
        pt = (1 - pred) * target + pred * (1 - target)
        weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
        return (F.binary_cross_entropy(pred, target, reduction="none") * weight).sum()


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over the processes of the default group (``all_reduce``), or ``t`` when no
    process group is initialised (mmdetection's ``reduce_mean``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.detach().clone()
    dist.all_reduce(t.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return t
