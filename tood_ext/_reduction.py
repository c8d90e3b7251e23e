"""Loss reduction shared by the kernels' and the references' loss functions."""
from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str, avg_factor=None, op: str = "iou_loss") -> None:
    """ValueError for an unknown ``reduction``; TypeError for an ``avg_factor`` that is not
    None, a number or a one-element tensor (a string would otherwise divide into a
    confusing error, or not at all); ValueError for a number ``avg_factor`` that is not
    finite and > 0 (0 divides a zero loss into NaN). A tensor's value is not read (no device
    sync)."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if avg_factor is not None:
        from .ops._checks import check_number

        check_number(op, "avg_factor", avg_factor, tensor_ok=True)
        if not isinstance(avg_factor, torch.Tensor) and not 0 < avg_factor < float("inf"):
            raise ValueError(f"avg_factor must be a finite number > 0 (or None: the number of "
                             f"elements), got {avg_factor!r}")


def reduce_loss(loss: torch.Tensor, reduction: str, avg_factor: float | torch.Tensor | None):
    """mmdetection's ``weight_reduce_loss`` semantics.

    ``none``: the element-wise loss. ``sum``: its sum. ``mean``: the sum divided by
    ``avg_factor`` when given (TOOD divides by the sum of soft targets), else by the number
    of elements. The mean of zero elements is 0 (a step without positives has a zero loss,
    not NaN), still connected to the graph.
    """
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if avg_factor is not None:
        return total / avg_factor
    return total / max(loss.numel(), 1)
