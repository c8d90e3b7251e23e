"""Pure-PyTorch reference of deformable sampling, same signature as :mod:`tood_ext.ops`.

Written from the semantics in :mod:`tood_ext.ops.deform_ops` with
``torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``:
pixel positions are converted to grid_sample's normalised coordinates by hand, the offset
groups become batch entries ((B, C, H, W) -> (B * G, C / G, H, W)). Gradients come from
autograd through grid_sample. Half inputs are computed in float32. Materialises the (B * G, H,
W, 2) sampling grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops._checks import check_int, check_tensors

__all__ = ["deform_sampling"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def deform_sampling(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None,
                    groups: int | None = None) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.deform_sampling` (via ``grid_sample``)."""
    check_tensors("reference.deform_sampling", optional=("mask",), input=input, offset=offset,
                  mask=mask)
    if groups is not None:
        check_int("reference.deform_sampling", "groups", groups, minimum=0)
    if input.dim() != 4:
        raise RuntimeError(f"input must be 4-D (B, C, H, W), got shape {list(input.shape)}")
    if offset.dim() != 4:
        raise RuntimeError(f"offset must be 4-D (B, 2*G, H, W), got shape {list(offset.shape)}")
    B, C, H, W = input.shape
    if offset.shape[1] % 2 or offset.shape[0] != B or offset.shape[2:] != (H, W):
        raise RuntimeError(f"offset must have shape (B, 2*G, H, W) with (B, H, W) = "
                           f"{(B, H, W)}, got {tuple(offset.shape)}")
    G = offset.shape[1] // 2
    if groups is not None and groups != G:
        raise ValueError(f"groups={groups} but offset has {offset.shape[1]} channels")
    if (G == 0 and C != 0) or (G > 0 and C % G):
        raise RuntimeError(f"the channels C = {C} of input must be divisible by G = {G}")
    if mask is not None and tuple(mask.shape) != (B, G, H, W):
        raise RuntimeError(f"mask must have shape (B, G, H, W) = {(B, G, H, W)}, "
                           f"got {tuple(mask.shape)}")
    for name, t in (("offset", offset), ("mask", mask)):
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"{name} has dtype {t.dtype} but input has dtype {input.dtype}; "
                               "they must have the same floating dtype")
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{name} is on {t.device} but input is on {input.device}; all "
                               "inputs must be on the same device")
    if not input.is_floating_point():
        raise RuntimeError(f"input must be a floating tensor, got {input.dtype}")
    if input.numel() == 0:
        return input.new_zeros(input.shape)
    x, off = _upcast(input), _upcast(offset)
    off = off.reshape(B, G, 2, H, W)
    rows = torch.arange(H, dtype=off.dtype, device=off.device).view(1, 1, H, 1)
    cols = torch.arange(W, dtype=off.dtype, device=off.device).view(1, 1, 1, W)
    y = rows + off[:, :, 0]  # (B, G, H, W) sample positions in pixels
    xx = cols + off[:, :, 1]
    # align_corners=False: pixel x sits at normalised (2 x + 1) / W - 1 (W = 1 included)
    grid = torch.stack([(2 * xx + 1) / W - 1, (2 * y + 1) / H - 1], dim=-1)
    out = F.grid_sample(x.reshape(B * G, C // G, H, W), grid.reshape(B * G, H, W, 2),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(B, G, C // G, H, W)
    if mask is not None:
        out = out * _upcast(mask).reshape(B, G, 1, H, W)
    return out.reshape(B, C, H, W).to(input.dtype)
