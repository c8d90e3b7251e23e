"""The ProbIoU family's contract in Python: defaults and argument checks, written once.

Used alike by the kernel-backed ops (:mod:`tood_ext.ops.probiou`), their fake (meta) kernels
and the pure-PyTorch references (:mod:`tood_ext.reference.probiou`); the C++ side of the same
contract is ``prepare_probiou*`` in csrc/box_ops/probiou.h. As in :mod:`._box_spec`:

* ``check_*_args``: Python types (TypeError) and values of the non-tensor arguments
  (ValueError).
* ``*_shape``: the tensors' shapes, dtypes and devices (RuntimeError, the messages of the C++
  checks), returning the output's shape.
"""
from __future__ import annotations

import torch

from .._reduction import check_reduction
from ._box_spec import _check_grad, _float_inputs, pair_loss_shape, pair_shape  # shared with box_iou
from ._checks import broadcast_leading, check_bool, check_number, check_tensors

EPS = 1e-7  # ultralytics' default eps of probiou
FLOOR = 0.0  # ultralytics' default floor (RotatedBboxLoss passes 0.01)

__all__ = ["EPS", "FLOOR", "broadcast_obb_leading", "check_obb_shape", "check_probiou_args",
           "check_probiou_loss_args", "probiou_grad_shape", "probiou_loss_grad_shape",
           "probiou_loss_shape", "probiou_shape"]


# ---- non-tensor arguments (TypeError / ValueError) -------------------------------------------


def _check_scalars(op: str, eps, floor, ciou) -> None:
    check_number(op, "eps", eps, finite=True, minimum=0.0)
    check_number(op, "floor", floor, finite=True, minimum=0.0)
    check_bool(op, "ciou", ciou)


def check_probiou_args(op: str, b1, b2, aligned, eps, floor, ciou) -> None:
    check_tensors(op, b1=b1, b2=b2)
    check_bool(op, "aligned", aligned)
    _check_scalars(op, eps, floor, ciou)


def check_probiou_loss_args(op: str, pred, target, weight, eps, floor, ciou, reduction="none",
                            avg_factor=None) -> None:
    check_tensors(op, optional=("weight",), pred=pred, target=target, weight=weight)
    check_reduction(reduction, avg_factor, op=op)
    _check_scalars(op, eps, floor, ciou)


# ---- tensors: shape, dtype, device (RuntimeError) --------------------------------------------


def check_obb_shape(name: str, t: torch.Tensor) -> None:
    """RuntimeError unless ``t`` has shape (..., 5) (the C++ ``check_obbs`` message)."""
    if t.dim() < 1 or t.shape[-1] != 5:
        raise RuntimeError(f"{name} must have shape (..., 5) holding oriented boxes (cx, cy, w, "
                           f"h, angle), got shape {list(t.shape)}")


def broadcast_obb_leading(b1: torch.Tensor, b2: torch.Tensor):
    """Pairwise probiou: b1 (..., N, 5) and b2 (..., M, 5) expanded to the broadcast of their
    leading (batch) dims; RuntimeError naming both shapes when they do not broadcast."""
    return broadcast_leading(b1, b2, "probiou", ("b1", "b2"), 5)


def probiou_shape(b1: torch.Tensor, b2: torch.Tensor, aligned: bool, broadcast: bool = False,
                  half_on_cpu: bool = False):
    """The output shape of ``probiou``: aligned (..., N), pairwise (..., N, M). ``broadcast``:
    the wrappers' pairwise form, whose leading dims broadcast (the op needs them equal).
    Returns ``(shape, b1, b2)``, the boxes expanded where ``broadcast``."""
    check_obb_shape("b1", b1)
    check_obb_shape("b2", b2)
    _float_inputs("b1", b1, half_on_cpu, b2=b2)
    return pair_shape("probiou", ("b1", "b2"), b1, b2, aligned, broadcast, 5)


def probiou_grad_shape(grad, b1, b2, aligned: bool) -> None:
    """The checks of ``_probiou_backward``: the forward's, and a grad of the output's shape,
    dtype and device."""
    shape, _, _ = probiou_shape(b1, b2, aligned)
    _check_grad(grad, "b1", b1, shape, "probiou's output")


def probiou_loss_shape(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       half_on_cpu: bool = False) -> tuple:
    """The shape of the unreduced ``probiou_loss``: pred's without its last dim."""
    check_obb_shape("pred", pred)
    check_obb_shape("target", target)
    _float_inputs("pred", pred, half_on_cpu, target=target, weight=weight)
    return pair_loss_shape(pred, target, weight, 5)


def probiou_loss_grad_shape(grad, pred, target, weight) -> None:
    shape = probiou_loss_shape(pred, target, weight)
    _check_grad(grad, "pred", pred, shape, "the unreduced loss")
