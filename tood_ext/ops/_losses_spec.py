"""The loss family's modes and argument checks, shared by the op (:mod:`tood_ext.ops.losses`),
its fake kernel and its pure-PyTorch reference (:mod:`tood_ext.reference.losses`).

The same error policy as the kernels (csrc/losses/losses.h) and :mod:`tood_ext.ops._checks`:
TypeError for a wrong Python type, ValueError for a bad non-tensor value (kind, reduction, gamma,
alpha, ``activated`` with a kind other than ``qfl`` / ``focal``, ``focal``'s alpha outside
[0, 1]) and for a foreground score outside [0, 1] where the kind needs a quality target
(``qfl``, ``vfl``, ``focal``), RuntimeError for a tensor of the wrong shape, dtype or device
(``class_weight``, ``weight`` included), IndexError for a label outside [-1, C).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_number, check_tensors

CLS_LOSS_KINDS = ("bce", "qfl", "vfl", "focal")
CLS_LOSS_REDUCTIONS = ("sum", "mean")
UNIT_SCORE_KINDS = ("qfl", "vfl", "focal")  # the target is a quality in [0, 1]
ACTIVATED_KINDS = ("qfl", "focal")  # kinds that take probabilities (activated=True)
# alpha=None: the kind's own default (mmdetection's FocalLoss: 0.25; VarifocalLoss / PP-YOLOE:
# 0.75; bce and qfl do not use alpha). csrc/losses/losses.h's default_alpha is the same table.
DEFAULT_ALPHA = {"focal": 0.25}
DEFAULT_ALPHA_OTHER = 0.75

OP = "sparse_target_cls_loss"

__all__ = ["ACTIVATED_KINDS", "CLS_LOSS_KINDS", "CLS_LOSS_REDUCTIONS", "DEFAULT_ALPHA",
           "UNIT_SCORE_KINDS", "check_cls_loss_args", "check_cls_loss_tensors", "check_dfl_args",
           "check_dfl_tensors", "loss_dtype", "reduce_sum", "resolve_alpha"]


def resolve_alpha(kind: str, alpha) -> float:
    """``alpha``, or for ``alpha=None`` the kind's default (:data:`DEFAULT_ALPHA`)."""
    if alpha is None:
        return DEFAULT_ALPHA.get(kind, DEFAULT_ALPHA_OTHER)
    return alpha


def check_cls_loss_args(pred, labels, scores, kind, gamma, alpha, activated, class_weight,
                        reduction, avg_factor, weight=None) -> None:
    """The non-tensor arguments and the Python types of the tensors (before any dispatch);
    ``alpha`` may be None (the kind's default)."""
    check_tensors(OP, optional=("class_weight", "weight"), pred=pred, labels=labels,
                  scores=scores, class_weight=class_weight, weight=weight)
    check_choice("kind", kind, CLS_LOSS_KINDS)
    check_choice("reduction", reduction, CLS_LOSS_REDUCTIONS)
    if avg_factor is not None:
        check_number(OP, "avg_factor", avg_factor, tensor_ok=True)
    if not isinstance(activated, bool):
        raise TypeError(f"tood_ext.{OP}: activated must be a bool, got {activated!r}")
    for name, value in (("gamma", gamma), ("alpha", resolve_alpha(kind, alpha))):
        check_number(OP, name, value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if kind == "focal" and resolve_alpha(kind, alpha) > 1:
        raise ValueError(f"alpha must be in [0, 1] for kind='focal' (the positives' share), got "
                         f"{alpha}")
    if activated and kind not in ACTIVATED_KINDS:
        raise ValueError("activated=True (pred holds probabilities) is supported by kind='qfl' "
                         f"and kind='focal' only, got kind={kind!r}")


def check_cls_loss_tensors(pred, labels, scores, kind, class_weight, values: bool = True,
                           weight=None) -> None:
    """The tensor checks of the kernels (csrc/losses/losses.h), for the reference and, with
    ``values=False`` (shapes, dtypes, devices only), the fake kernel."""
    if pred.dim() < 1:
        raise RuntimeError("pred must have shape (..., C) with C classes, got a 0-d tensor")
    if not pred.is_floating_point():
        raise RuntimeError(f"pred must be float32 or float64, got {pred.dtype}")
    lead = tuple(pred.shape[:-1])
    if tuple(labels.shape) != lead:
        raise RuntimeError(f"labels must have shape pred.shape[:-1] = {list(lead)} (one class "
                           f"per anchor, -1 for background), got {list(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise RuntimeError("labels must be an integer tensor (int64 class indices, -1 for "
                           f"background), got {labels.dtype}")
    if tuple(scores.shape) != lead:
        raise RuntimeError(f"scores must have shape pred.shape[:-1] = {list(lead)} (the target "
                           f"score of each anchor's label), got {list(scores.shape)}")
    _same(scores, "scores", pred)
    if labels.device != pred.device:
        raise RuntimeError(f"labels is on {labels.device} but pred is on {pred.device}; all "
                           "inputs must be on the same device")
    C = pred.shape[-1]
    if class_weight is not None:
        if class_weight.dim() != 1 or class_weight.shape[0] != C:
            raise RuntimeError(f"class_weight must have shape (C,) = ({C},) (one weight per "
                               f"class of pred), got {list(class_weight.shape)}")
        _same(class_weight, "class_weight", pred)
    if weight is not None:
        if tuple(weight.shape) != lead:
            raise RuntimeError(f"weight must have shape pred.shape[:-1] = {list(lead)} (one "
                               f"weight per anchor), got {list(weight.shape)}")
        _same(weight, "weight", pred)
    if not values or labels.numel() == 0:
        return
    bad = (labels < -1) | (labels >= C)
    if bool(bad.any()):
        value = int(labels[bad].flatten()[0])
        raise IndexError(f"labels holds class {value}, outside [-1, {C}) (-1: background; "
                         f"C = pred.size(-1) = {C})")
    if kind in UNIT_SCORE_KINDS:
        out = ((scores < 0) | (scores > 1)) & (labels >= 0)
        if bool(out.any()):
            value = float(scores[out].flatten()[0])
            raise ValueError(f"scores holds {value} for a foreground anchor: kind='{kind}' "
                             "needs scores (target qualities) in [0, 1]")


def _same(t, name, pred):
    if t.dtype != pred.dtype:
        raise RuntimeError(f"{name} has dtype {t.dtype} but pred has dtype {pred.dtype}; they "
                           "must have the same floating dtype")
    if t.device != pred.device:
        raise RuntimeError(f"{name} is on {t.device} but pred is on {pred.device}; all inputs "
                           "must be on the same device")


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the loss: float32 for float16/bfloat16 inputs (a sum over B * A * C terms
    overflows float16), else pred's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce_sum(total: torch.Tensor, numel: int, reduction: str, avg_factor):
    """``sum``: the sum; ``mean``: the sum / ``avg_factor`` when given, else / the number of
    elements of pred (1 at least: an empty pred gives 0)."""
    if reduction == "sum":
        return total
    if avg_factor is not None:
        return total / avg_factor
    return total / max(numel, 1)


# ---- dfl_loss -----------------------------------------------------------------------------------


def check_dfl_args(pred_dist, target, weight, reduction, avg_factor) -> None:
    """dfl_loss's non-tensor arguments and the Python types of its tensors."""
    check_tensors("dfl_loss", optional=("weight",), pred_dist=pred_dist, target=target,
                  weight=weight)
    check_choice("reduction", reduction, CLS_LOSS_REDUCTIONS)
    if avg_factor is not None:
        check_number("dfl_loss", "avg_factor", avg_factor, tensor_ok=True)


def check_dfl_tensors(pred_dist, target, weight) -> None:
    """The kernels' tensor checks of dfl_loss (csrc/losses/losses.h, prepare_dfl_loss)."""
    if pred_dist.dim() < 1 or pred_dist.shape[-1] < 2:
        raise RuntimeError("pred_dist must have shape (..., reg_max) with reg_max >= 2 bins, "
                           f"got {list(pred_dist.shape)}")
    if not pred_dist.is_floating_point():
        raise RuntimeError(f"pred_dist must be float32 or float64, got {pred_dist.dtype}")
    lead = tuple(pred_dist.shape[:-1])
    for name, t in (("target", target), ("weight", weight)):
        if t is None:
            continue
        if tuple(t.shape) != lead:
            extra = " (one distance per row of bins)" if name == "target" else ""
            raise RuntimeError(f"{name} must have shape pred_dist.shape[:-1] = {list(lead)}"
                               f"{extra}, got {list(t.shape)}")
        if t.dtype != pred_dist.dtype:
            raise RuntimeError(f"{name} has dtype {t.dtype} but pred_dist has dtype "
                               f"{pred_dist.dtype}; they must have the same floating dtype")
        if t.device != pred_dist.device:
            raise RuntimeError(f"{name} is on {t.device} but pred_dist is on "
                               f"{pred_dist.device}; all inputs must be on the same device")
