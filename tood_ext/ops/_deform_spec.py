"""Deformable sampling's contract in Python: argument checks, written once.

Used alike by :func:`tood_ext.ops.deform_sampling`, its fake kernels and
:func:`tood_ext.reference.deform_sampling` (the C++ side: csrc/deform/deform_sampling.h).
"""
from __future__ import annotations

import torch

from ._checks import check_float_dtype, check_int, check_same_device, check_same_dtype
from ._checks import check_tensors

__all__ = ["check_deform_args", "deform_grad_shape", "deform_shape"]


def check_deform_args(op: str, input, offset, mask, groups) -> None:
    """Argument types (TypeError) and ``groups`` (ValueError unless it is
    ``offset.size(1) // 2``)."""
    check_tensors(op, optional=("mask",), input=input, offset=offset, mask=mask)
    if groups is None:
        return
    check_int(op, "groups", groups, minimum=0)
    if offset.dim() != 4:
        return  # the shape checks report malformed offsets
    if groups != offset.shape[1] // 2 or offset.shape[1] % 2:
        raise ValueError(f"groups={groups} but offset has {offset.shape[1]} channels; offset "
                         f"must have 2*groups = {2 * groups} channels (dy, dx per group)")


def deform_shape(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None,
                 half_on_cpu: bool = False) -> tuple[int, int, int, int, int]:
    """(B, C, G, H, W); RuntimeError (the C++ ``prepare`` messages) for a tensor of the wrong
    shape, dtype or device."""
    if input.dim() != 4:
        raise RuntimeError(f"input must be 4-D (B, C, H, W), got shape {list(input.shape)}")
    if offset.dim() != 4:
        raise RuntimeError(f"offset must be 4-D (B, 2*G, H, W), got shape "
                           f"{list(offset.shape)}")
    B, C, H, W = input.shape
    G = offset.shape[1] // 2
    if offset.shape[1] % 2:
        raise RuntimeError(f"offset must have an even number of channels 2*G ((dy, dx) per "
                           f"offset group), got shape {list(offset.shape)}")
    if offset.shape[0] != B:
        raise RuntimeError(f"offset must have the batch size B = {B} of input "
                           f"{list(input.shape)}, got shape {list(offset.shape)}")
    if offset.shape[2:] != (H, W):
        raise RuntimeError(f"offset must have the spatial size (H, W) = ({H}, {W}) of input "
                           f"{list(input.shape)}, got shape {list(offset.shape)}")
    if (C % G if G > 0 else C != 0):
        raise RuntimeError(f"the channels C = {C} of input must be divisible by the offset "
                           f"groups G = {G} (offset has 2*G = {offset.shape[1]} channels)")
    check_float_dtype("input", input, half_on_cpu)
    check_same_dtype("input", input, offset=offset, mask=mask)
    check_same_device("", "input", input, offset=offset, mask=mask)
    if mask is not None and tuple(mask.shape) != (B, G, H, W):
        raise RuntimeError(f"mask must have shape (B, G, H, W) = ({B}, {G}, {H}, {W}), got "
                           f"shape {list(mask.shape)}")
    return B, C, G, H, W


def deform_grad_shape(grad, input, offset, mask) -> None:
    """The checks of ``_deform_sampling_backward``: the forward's, and a grad of the output's
    shape, dtype and device."""
    deform_shape(input, offset, mask)
    if grad.shape != input.shape:
        raise RuntimeError(f"grad must have the shape of deform_sampling's output "
                           f"{list(input.shape)}, got {list(grad.shape)}")
    check_same_dtype("input", input, grad=grad)
    check_same_device("", "input", input, grad=grad)
