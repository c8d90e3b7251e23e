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

from ..ops._deform_spec import check_deform_args, deform_shape

__all__ = ["deform_sampling"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def deform_sampling(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None,
                    groups: int | None = None) -> torch.Tensor:
    """Reference of :func:`tood_ext.ops.deform_sampling` (via ``grid_sample``)."""
    check_deform_args("reference.deform_sampling", input, offset, mask, groups)
    B, C, G, H, W = deform_shape(input, offset, mask, half_on_cpu=True)
    if input.numel() == 0:
        return input.new_zeros(input.shape)
    x, off = _upcast(input), _upcast(offset)
    off = off.reshape(B, G, 2, H, W)
    rows = torch.arange(H, dtype=off.dtype, device=off.device).view(1, 1, H, 1)
    cols = torch.arange(W, dtype=off.dtype, device=off.device).view(1, 1, 1, W)
    # (B, G, H, W) sample positions in pixels; clamped to one cell beyond the map (where
    # every corner is outside: a sample of 0, gradient 0), so that +-inf samples 0 as the
    # semantics say (grid_sample gives NaN for an infinite grid); NaN stays NaN
    y = (rows + off[:, :, 0]).clamp(-2, H + 1)
    xx = (cols + off[:, :, 1]).clamp(-2, W + 1)
    # align_corners=False: pixel x sits at normalised (2 x + 1) / W - 1 (W = 1 included)
    grid = torch.stack([(2 * xx + 1) / W - 1, (2 * y + 1) / H - 1], dim=-1)
    out = F.grid_sample(x.reshape(B * G, C // G, H, W), grid.reshape(B * G, H, W, 2),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(B, G, C // G, H, W)
    if mask is not None:
        out = out * _upcast(mask).reshape(B, G, 1, H, W)
    return out.reshape(B, C, H, W).to(input.dtype)
