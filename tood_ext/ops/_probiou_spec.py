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
from ._checks import check_bool, check_float_dtype, check_number, check_same_device
from ._checks import check_same_dtype, check_tensors

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


def _float_inputs(ref_name: str, ref: torch.Tensor, half_on_cpu: bool, **others) -> None:
    check_float_dtype(ref_name, ref, half_on_cpu)
    check_same_dtype(ref_name, ref, **others)
    check_same_device("", ref_name, ref, **others)


def broadcast_obb_leading(b1: torch.Tensor, b2: torch.Tensor):
    """Pairwise probiou: b1 (..., N, 5) and b2 (..., M, 5) expanded to the broadcast of their
    leading (batch) dims; RuntimeError naming both shapes when they do not broadcast."""
    lead1, lead2 = b1.shape[:-2], b2.shape[:-2]
    try:
        lead = torch.broadcast_shapes(lead1, lead2)
    except RuntimeError:
        raise RuntimeError(f"pairwise probiou: the leading (batch) dims of b1 {tuple(lead1)} and "
                           f"b2 {tuple(lead2)} do not broadcast (b1 has shape {tuple(b1.shape)}, "
                           f"b2 {tuple(b2.shape)}; expected (..., N, 5) and (..., M, 5) with "
                           "broadcastable '...')") from None
    return b1.expand(*lead, *b1.shape[-2:]), b2.expand(*lead, *b2.shape[-2:])


def probiou_shape(b1: torch.Tensor, b2: torch.Tensor, aligned: bool, broadcast: bool = False,
                  half_on_cpu: bool = False):
    """The output shape of ``probiou``: aligned (..., N), pairwise (..., N, M). ``broadcast``:
    the wrappers' pairwise form, whose leading dims broadcast (the op needs them equal).
    Returns ``(shape, b1, b2)``, the boxes expanded where ``broadcast``."""
    check_obb_shape("b1", b1)
    check_obb_shape("b2", b2)
    _float_inputs("b1", b1, half_on_cpu, b2=b2)
    if aligned:
        if b1.shape != b2.shape:
            raise RuntimeError(f"aligned probiou needs b1 and b2 of the same shape (..., N, 5), "
                               f"got {list(b1.shape)} and {list(b2.shape)}")
        return tuple(b1.shape[:-1]), b1, b2
    if b1.dim() < 2 or b2.dim() < 2:
        raise RuntimeError(f"pairwise probiou needs b1 (..., N, 5) and b2 (..., M, 5), got "
                           f"shapes {list(b1.shape)} and {list(b2.shape)}")
    if broadcast:
        b1, b2 = broadcast_obb_leading(b1, b2)
    elif b1.shape[:-2] != b2.shape[:-2]:
        raise RuntimeError(f"pairwise probiou needs the same leading (batch) dims in b1 "
                           f"{list(b1.shape)} and b2 {list(b2.shape)}")
    return (*b1.shape[:-1], b2.shape[-2]), b1, b2


def _check_grad(grad: torch.Tensor, ref_name: str, ref: torch.Tensor, shape, what: str) -> None:
    if tuple(grad.shape) != tuple(shape):
        raise RuntimeError(f"grad must have the shape of {what} {list(shape)}, got "
                           f"{list(grad.shape)}")
    check_same_dtype(ref_name, ref, grad=grad)
    check_same_device("", ref_name, ref, grad=grad)


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
    if pred.shape != target.shape:
        raise RuntimeError(f"pred and target must have the same shape (..., 5), got "
                           f"{list(pred.shape)} and {list(target.shape)}")
    shape = tuple(pred.shape[:-1])
    if weight is not None and tuple(weight.shape) != shape:
        raise RuntimeError(f"weight must have the shape of pred without its last dim, "
                           f"{list(shape)}, got {list(weight.shape)}")
    return shape


def probiou_loss_grad_shape(grad, pred, target, weight) -> None:
    shape = probiou_loss_shape(pred, target, weight)
    _check_grad(grad, "pred", pred, shape, "the unreduced loss")
