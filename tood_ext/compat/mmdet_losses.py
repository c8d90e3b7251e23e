"""mmdetection 3.x's classification losses ``QualityFocalLoss``, ``VarifocalLoss`` and
``FocalLoss`` on tood-ext's fused :func:`tood_ext.sparse_target_cls_loss` (exported by
:mod:`tood_ext.compat.mmdet`). mmdet is not imported: the modules take mmdet's constructor
arguments and its ``forward(pred, target, weight=None, avg_factor=None,
reduction_override=None)``, and give mmdet's values and gradients (to float rounding) without
building mmdet's (N, C) target, per-element loss or their autograd buffers.

The fused path (one op call, memory: the gradient plus O(N)) is taken when the target is sparse:

* ``QualityFocalLoss``: ``target = (labels, scores)``, mmdet's tuple (GFL, TOOD);
* ``VarifocalLoss``: ``target = (labels, scores)`` (the form TAL hands over; mmdet's own
  ``VarifocalLoss`` takes only the dense (N, C) target, which is ``scores`` at ``labels`` and 0
  elsewhere), with ``iou_weighted=True``;
* ``FocalLoss``: ``target = labels`` (N,), mmdet's hard-label form;

with ``weight`` None, (N,) or (N, 1) (one weight per anchor, mmdet's ``label_weights``) and
``reduction`` ``"sum"`` or ``"mean"``. ``labels`` are integers in [0, C) for the foreground;
the background is ``C`` (mmdet 3.x's convention) or -1; any other value raises an IndexError.

Everything else is computed by the dense formula in pure PyTorch (this module's
``_dense_*`` functions, mmdet's semantics; as much memory as mmdet): a dense (N, C) target
tensor (mmdet's ``VarifocalLoss`` form, QFL's one-hot-with-soft-weights form, ``FocalLoss``'s
one-hot form), a per-element weight ((N, C), or ``FocalLoss``'s flattened (N * C,)),
``reduction="none"`` (its output is per anchor (QFL) or per element (VFL, focal)), and
``VarifocalLoss(iou_weighted=False)``.

Reductions as mmdet's ``weight_reduce_loss``: ``"sum"``; ``"mean"`` with ``avg_factor``:
``sum / (avg_factor + eps)``, eps the float32 machine epsilon; ``"mean"`` without it: the mean
over anchors (QFL, whose loss is per anchor) or over elements (VFL, focal), NaN for an empty
input as in mmdet; ``avg_factor`` with ``"sum"`` raises a ValueError (as mmdet does). The result
is multiplied by ``loss_weight``. ``pred`` is (N, C): logits, or probabilities with
``activated=True`` (QFL, focal). Bad arguments raise tood_ext's errors (TypeError, ValueError,
RuntimeError naming the argument, IndexError for a label) instead of mmdet's assertions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FocalLoss", "QualityFocalLoss", "VarifocalLoss"]

REDUCTIONS = ("none", "mean", "sum")
_EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss: sum / (avg_factor + eps)


class _SparseClsLoss(nn.Module):
    """The shared forward: argument checks, the choice of the fused or the dense path, the
    mmdet reductions and ``loss_weight``."""

    NAME = ""
    KIND = ""
    PER_ANCHOR = False  # True: mmdet's loss is per anchor (QFL), its "mean" is over N

    def __init__(self, use_sigmoid: bool, reduction: str, loss_weight: float, gamma: float,
                 activated: bool):
        from ..ops._checks import check_bool, check_choice, check_number

        super().__init__()
        op = f"compat.mmdet.{self.NAME}"
        if use_sigmoid is not True:
            raise ValueError(f"{op}: only use_sigmoid=True is supported (as in mmdetection), got "
                             f"{use_sigmoid!r}")
        check_choice("reduction", reduction, REDUCTIONS)
        check_number(op, "loss_weight", loss_weight)
        check_number(op, "gamma" if self.KIND != "qfl" else "beta", gamma, finite=True,
                     minimum=0.0)
        self.use_sigmoid = use_sigmoid
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.activated = check_bool(op, "activated", activated)

    # ---- per class: the sparse form of the target, the kernel's keywords, the dense formula --
    def _sparse_target(self, pred, target):
        """(labels, scores) of a sparse target, or None for a dense one."""
        raise NotImplementedError

    def _op_kwargs(self) -> dict:
        raise NotImplementedError

    def _fusable(self) -> bool:
        return True

    def _dense(self, pred, target):
        """The per-element (N, C) loss of a dense target (pure PyTorch)."""
        raise NotImplementedError

    # ---- the shared forward -------------------------------------------------------------------
    def forward(self, pred: torch.Tensor, target, weight: torch.Tensor | None = None,
                avg_factor=None, reduction_override: str | None = None) -> torch.Tensor:
        """mmdet's forward: ``pred`` (N, C); ``target`` as the module docstring; ``weight``
        per anchor (N,) / (N, 1) or per element; ``avg_factor`` a number or a one-element
        tensor; ``reduction_override`` None, ``"none"``, ``"mean"`` or ``"sum"``."""
        from ..ops._checks import check_choice, check_number, check_tensor

        op = f"compat.mmdet.{self.NAME}"
        check_tensor(op, "pred", pred)
        check_tensor(op, "weight", weight, optional=True)
        if reduction_override is not None:
            check_choice("reduction_override", reduction_override, REDUCTIONS)
        reduction = reduction_override or self.reduction
        if avg_factor is not None:
            check_number(op, "avg_factor", avg_factor, tensor_ok=True)
            if reduction == "sum":
                raise ValueError(f'{op}: avg_factor can not be used with reduction="sum" (as '
                                 "in mmdetection)")
        if pred.dim() != 2:
            raise RuntimeError(f"{op}: pred must have shape (N, C), got {tuple(pred.shape)}")
        N, C = pred.shape
        sparse = self._sparse_target(pred, target)
        anchor_weight = None
        if weight is not None:
            if tuple(weight.shape) in ((N,), (N, 1)):
                anchor_weight = weight.reshape(N)
            elif self.PER_ANCHOR:
                raise RuntimeError(f"{op}: weight must have shape (N,) = ({N},) (one weight per "
                                   f"anchor), got {tuple(weight.shape)}")
        fused = sparse is not None and reduction != "none" and self._fusable() and \
            (weight is None or anchor_weight is not None)
        if fused:
            from ..ops.losses import sparse_target_cls_loss

            labels, scores = sparse
            kw = self._op_kwargs()
            if anchor_weight is not None:
                kw["weight"] = anchor_weight.to(pred.dtype)
            loss = sparse_target_cls_loss(pred, labels, scores.to(pred.dtype), self.KIND,
                                          activated=self.activated, **kw)
            if reduction == "mean":
                if avg_factor is not None:
                    loss = loss / (avg_factor + _EPS)
                else:  # mmdet's mean over anchors (QFL) or elements: 0 / 0 = NaN when empty
                    loss = loss / float(N if self.PER_ANCHOR else N * C)
            return self.loss_weight * loss
        if sparse is not None:
            from ..reference.losses import dense_cls_target

            target = dense_cls_target(sparse[0], sparse[1], C, pred.dtype)
        loss = self._dense(pred, target)
        if self.PER_ANCHOR:
            loss = loss.sum(dim=1)
        if weight is not None:
            loss = loss * self._dense_weight(weight, loss, op)
        if reduction == "none":
            pass
        elif avg_factor is not None:
            loss = loss.sum() / (avg_factor + _EPS)
        else:
            loss = loss.mean() if reduction == "mean" else loss.sum()
        return self.loss_weight * loss

    def _dense_weight(self, weight, loss, op):
        """mmdet's weight handling: per anchor (N,) / (N, 1), else per element (the flattened
        (N * C,) form of ``FocalLoss`` included)."""
        if loss.dim() == 1:
            return weight.reshape(-1)
        N = loss.shape[0]
        if tuple(weight.shape) in ((N,), (N, 1)):
            return weight.reshape(N, 1)
        if weight.numel() != loss.numel():
            raise RuntimeError(f"{op}: weight must have shape (N,), (N, 1) or (N, C) = "
                               f"{tuple(loss.shape)}, got {tuple(weight.shape)}")
        return weight.reshape(loss.shape)

    # ---- helpers --------------------------------------------------------------------------
    def _labels(self, labels, N: int, C: int, where: str):
        """mmdet's labels (N,) in [0, C] (C: background), or -1 -> the op's labels (-1: bg)."""
        from ..ops._checks import check_tensor

        op = f"compat.mmdet.{self.NAME}"
        check_tensor(op, where, labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise RuntimeError(f"{op}: {where} must be an integer tensor of class indices, got "
                               f"{labels.dtype}")
        if tuple(labels.shape) != (N,):
            raise RuntimeError(f"{op}: {where} must have shape (N,) = ({N},), got "
                               f"{tuple(labels.shape)}")
        labels = labels.long()
        bad = (labels < -1) | (labels > C)
        if labels.numel() and bool(bad.any()):
            raise IndexError(f"{op}: {where} holds class {int(labels[bad][0])}, outside "
                             f"[0, {C}) (foreground) and {{{C}, -1}} (background), C = "
                             f"pred.size(1) = {C}")
        return torch.where(labels == C, torch.full_like(labels, -1), labels)

    def _tuple_target(self, pred, target):
        from ..ops._checks import check_tensor

        op = f"compat.mmdet.{self.NAME}"
        if len(target) != 2:
            raise TypeError(f"{op}: target must be a (labels, scores) pair or a tensor, got a "
                            f"{type(target).__name__} of {len(target)} items")
        labels, scores = target
        N, C = pred.shape
        labels = self._labels(labels, N, C, "target[0] (labels)")
        check_tensor(op, "target[1] (scores)", scores)
        if tuple(scores.shape) != (N,):
            raise RuntimeError(f"{op}: target[1] (scores) must have shape (N,) = ({N},), got "
                               f"{tuple(scores.shape)}")
        return labels, scores

    def _dense_tensor_target(self, pred, target, what: str):
        op = f"compat.mmdet.{self.NAME}"
        if tuple(target.shape) != tuple(pred.shape):
            raise RuntimeError(f"{op}: a tensor target must have pred's shape (N, C) = "
                               f"{tuple(pred.shape)} ({what}), got {tuple(target.shape)}")
        return target.to(pred.dtype)


def _bce(pred, target, activated: bool):
    if activated:
        return F.binary_cross_entropy(pred, target, reduction="none")
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none")


class QualityFocalLoss(_SparseClsLoss):
    """mmdetection 3.x ``QualityFocalLoss(use_sigmoid=True, beta=2.0, reduction='mean',
    loss_weight=1.0, activated=False)``: per element ``|t - s|^beta * BCE(pred, t)`` (``s``
    the probability), summed per anchor. Fused for ``target = (labels, scores)``."""

    NAME = "QualityFocalLoss"
    KIND = "qfl"
    PER_ANCHOR = True

    def __init__(self, use_sigmoid: bool = True, beta: float = 2.0, reduction: str = "mean",
                 loss_weight: float = 1.0, activated: bool = False):
        super().__init__(use_sigmoid, reduction, loss_weight, beta, activated)
        self.beta = beta

    def _sparse_target(self, pred, target):
        if isinstance(target, torch.Tensor):
            return None
        return self._tuple_target(pred, target)

    def _op_kwargs(self) -> dict:
        return {"gamma": float(self.beta)}

    def _dense(self, pred, target):
        t = self._dense_tensor_target(pred, target, "the one-hot target with soft weights")
        prob = pred if self.activated else pred.sigmoid()
        return _bce(pred, t, self.activated) * (t - prob).abs().pow(self.beta)


class VarifocalLoss(_SparseClsLoss):
    """mmdetection 3.x ``VarifocalLoss(use_sigmoid=True, alpha=0.75, gamma=2.0,
    iou_weighted=True, reduction='mean', loss_weight=1.0)``: per element ``w * BCE(x, t)``,
    ``w = t`` (``iou_weighted``; else 1) where ``t > 0``, ``alpha |s - t|^gamma`` elsewhere.
    Fused for ``target = (labels, scores)`` with ``iou_weighted=True``; mmdet's dense (N, C)
    target goes to the dense formula."""

    NAME = "VarifocalLoss"
    KIND = "vfl"

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.75, gamma: float = 2.0,
                 iou_weighted: bool = True, reduction: str = "mean", loss_weight: float = 1.0):
        from ..ops._checks import check_bool, check_number

        super().__init__(use_sigmoid, reduction, loss_weight, gamma, False)
        check_number(f"compat.mmdet.{self.NAME}", "alpha", alpha, finite=True, minimum=0.0)
        self.alpha, self.gamma = alpha, gamma
        self.iou_weighted = check_bool(f"compat.mmdet.{self.NAME}", "iou_weighted", iou_weighted)

    def _sparse_target(self, pred, target):
        if isinstance(target, torch.Tensor):
            return None
        return self._tuple_target(pred, target)

    def _fusable(self) -> bool:
        return self.iou_weighted  # the op's vfl weighs positives by t

    def _op_kwargs(self) -> dict:
        return {"gamma": float(self.gamma), "alpha": float(self.alpha)}

    def _dense(self, pred, target):
        t = self._dense_tensor_target(pred, target, "the IoU-aware classification target")
        pos = t > 0
        focal = self.alpha * (pred.sigmoid() - t).abs().pow(self.gamma)
        w = torch.where(pos, t if self.iou_weighted else torch.ones_like(t), focal)
        return _bce(pred, t, False) * w


class FocalLoss(_SparseClsLoss):
    """mmdetection 3.x ``FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, reduction='mean',
    loss_weight=1.0, activated=False)``: per element ``(alpha y + (1 - alpha)(1 - y)) pt^gamma
    BCE(pred, y)``, ``pt = (1 - s) y + s (1 - y)``, on the one-hot target y of ``target``
    (labels (N,), C = background; or mmdet's one-hot (N, C) form, the dense formula)."""

    NAME = "FocalLoss"
    KIND = "focal"

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = "mean", loss_weight: float = 1.0, activated: bool = False):
        from ..ops._checks import check_number

        super().__init__(use_sigmoid, reduction, loss_weight, gamma, activated)
        check_number(f"compat.mmdet.{self.NAME}", "alpha", alpha, finite=True, minimum=0.0)
        self.gamma, self.alpha = gamma, alpha

    def _sparse_target(self, pred, target):
        from ..ops._checks import check_tensor

        check_tensor(f"compat.mmdet.{self.NAME}", "target", target)
        if target.dim() == pred.dim():
            return None  # one-hot (N, C)
        labels = self._labels(target, pred.shape[0], pred.shape[1], "target")
        return labels, torch.ones(labels.shape, dtype=pred.dtype, device=pred.device)

    def _op_kwargs(self) -> dict:
        return {"gamma": float(self.gamma), "alpha": float(self.alpha)}

    def _dense(self, pred, target):
        y = self._dense_tensor_target(pred, target, "the one-hot target")
        prob = pred if self.activated else pred.sigmoid()
        pt = (1 - prob) * y + prob * (1 - y)
        w = (self.alpha * y + (1 - self.alpha) * (1 - y)) * pt.pow(self.gamma)
        return _bce(pred, y, self.activated) * w
