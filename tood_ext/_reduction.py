"""Loss reduction shared by the kernels' and the references' loss functions."""
from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


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
