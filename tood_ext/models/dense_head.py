"""What the dense heads of tood_ext share: the priors and the box decoding of an FPN level's
grid, the building blocks (conv tower, GroupNorm, learnable scale, initialisation) and the
:class:`DenseHead` base of :class:`~tood_ext.models.TOODHead` (the T-head) and
:class:`~tood_ext.models.ATSSHead` (ATSS's parallel head), which are siblings.

Conventions (mmdetection 3.x): one square prior of side ``8 * stride`` per location, centred
at ``(j * stride, i * stride)``; boxes xyxy.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._ops import get_ops

__all__ = ["ANCHOR_TYPES", "DELTA_STDS", "DenseHead", "OCTAVE_BASE_SCALE", "Scale",
           "WH_RATIO_CLIP", "at_least_float32", "conv_tower", "decode_boxes", "delta2bbox",
           "grid_priors", "make_norm", "normal_init", "prior_bias"]

OCTAVE_BASE_SCALE = 8  # one square prior of side 8 * stride per location (mmdetection config)
DELTA_STDS = (0.1, 0.1, 0.2, 0.2)  # anchor-based coder: means 0, these stds
WH_RATIO_CLIP = 16 / 1000
ANCHOR_TYPES = ("anchor_free", "anchor_based")


# ----------------------------------------------------------------------------- building blocks
def normal_init(conv: nn.Conv2d, std: float, bias: float = 0.0) -> None:
    """``conv``'s weight ~ N(0, std^2), its bias (if any) = ``bias``."""
    nn.init.normal_(conv.weight, 0.0, std)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)


def prior_bias(prob: float) -> float:
    """Bias b with sigmoid(b) = prob (mmdetection's ``bias_init_with_prob``)."""
    return -math.log((1 - prob) / prob)


def make_norm(norm: str | None, channels: int, num_groups: int) -> nn.Module:
    """``"GN"``: GroupNorm of ``num_groups`` groups; None: identity."""
    if norm is None:
        return nn.Identity()
    if norm != "GN":
        raise ValueError(f"norm must be 'GN' or None, got {norm!r}")
    if channels % num_groups:
        raise ValueError(f"GroupNorm: num_groups={num_groups} must divide {channels} channels")
    return nn.GroupNorm(num_groups, channels)


def conv_tower(in_channels: int, feat_channels: int, stacked_convs: int, norm: str | None,
               num_groups: int) -> nn.ModuleList:
    """``stacked_convs`` x (3x3 conv + norm + ReLU); the convs have no bias when normalised."""
    return nn.ModuleList(nn.Sequential(
        nn.Conv2d(in_channels if k == 0 else feat_channels, feat_channels, 3, padding=1,
                  bias=norm is None),
        make_norm(norm, feat_channels, num_groups), nn.ReLU(inplace=True))
        for k in range(stacked_convs))


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32 (scores and boxes stay float32 under autocast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Scale(nn.Module):
    """A learnable scalar factor (one per FPN level), initialised to ``value``."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


# ----------------------------------------------------------------------------- priors, decoding
def grid_priors(featmap_sizes, strides, device=None, dtype=torch.float32):
    """Per level, the (H_l * W_l, 4) xyxy priors, row-major over (i, j).

    The prior of location (i, j) of a level of stride s is the square of side
    ``8 * s`` centred at ``(j * s, i * s)`` (mmdetection's AnchorGenerator with
    octave_base_scale=8, ratio 1, center_offset 0). Anchor-free TOOD uses only its centre
    (and, in the ATSS epochs, the box as a virtual anchor).
    """
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s
        xs = torch.arange(w, device=device, dtype=dtype) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half = OCTAVE_BASE_SCALE * s / 2
        out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], -1).reshape(-1, 4))
    return out


def delta2bbox(anchors: torch.Tensor, deltas: torch.Tensor,
               stds=DELTA_STDS) -> torch.Tensor:
    """mmdetection's ``DeltaXYWHBBoxCoder.decode`` (means 0, no clipping to the image).

    ``(dx, dy, dw, dh) = deltas * stds``; ``dw, dh`` clamped to ``+-|log(16/1000)|``;
    centre ``(px + pw dx, py + ph dy)``, size ``(pw exp(dw), ph exp(dh))``, with
    ``(px, py, pw, ph)`` the anchor's centre and size. anchors, deltas: (..., 4).
    """
    d = deltas * deltas.new_tensor(stds)
    max_ratio = abs(math.log(WH_RATIO_CLIP))
    pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
    pwh = anchors[..., 2:] - anchors[..., :2]
    gxy = pxy + pwh * d[..., :2]
    gwh = pwh * d[..., 2:].clamp(-max_ratio, max_ratio).exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def decode_boxes(raw: torch.Tensor, stride: int, anchor_type: str) -> torch.Tensor:
    """(B, 4, H, W) regression output of one level (already scaled) -> xyxy boxes in stride
    units:

    - ``anchor_free``: ``raw = (l, t, r, b)`` distances in stride units, box
      ``(j - l, i - t, j + r, i + b)`` around the location's centre ``(j, i)`` (the prior
      centre ``(j s, i s)`` divided by s);
    - ``anchor_based``: ``raw = (dx, dy, dw, dh)`` deltas decoded by :func:`delta2bbox`
      against the location's prior (square of side 8 s centred at ``(j s, i s)``, pixels),
      divided by s.
    """
    _, _, h, w = raw.shape
    ys = torch.arange(h, device=raw.device, dtype=raw.dtype).view(1, h, 1).expand(1, h, w)
    xs = torch.arange(w, device=raw.device, dtype=raw.dtype).view(1, 1, w).expand(1, h, w)
    if anchor_type == "anchor_free":
        return torch.stack([xs - raw[:, 0], ys - raw[:, 1], xs + raw[:, 2], ys + raw[:, 3]], 1)
    half = OCTAVE_BASE_SCALE * stride / 2
    prior = torch.stack([xs * stride - half, ys * stride - half, xs * stride + half,
                         ys * stride + half], -1)  # (1, h, w, 4)
    return delta2bbox(prior, raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) / stride


# ----------------------------------------------------------------------------- the base
class DenseHead(nn.Module):
    """Base of the dense heads, shared across FPN levels: the sizes, the ops switch, the
    per-level box regression and the loop over levels.

    A subclass builds its layers (ending with ``self.scales = self.level_scales()``, one
    :class:`Scale` per level), implements ``forward_single(x, level)`` returning one tensor per
    name of ``OUTPUTS``, and gets ``forward(feats) -> {name: [one (B, ., H_l, W_l) per
    level]}``. :meth:`regress` turns a level's 4-channel regression conv output into xyxy
    boxes in stride units (``anchor_free``: ``scale * exp(conv)`` distances; ``anchor_based``:
    ``scale * conv`` deltas; see :func:`decode_boxes`).

    ``ops``: ``"kernel"`` or ``"reference"`` (see :func:`tood_ext.models._ops.get_ops`),
    switchable later with :meth:`set_ops`.
    """

    OUTPUTS: tuple[str, ...] = ()

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int,
                 stacked_convs: int, strides, anchor_type: str, ops: str):
        super().__init__()
        if anchor_type not in ANCHOR_TYPES:
            raise ValueError(f"anchor_type must be 'anchor_free' or 'anchor_based', "
                             f"got {anchor_type!r}")
        self.num_classes, self.in_channels, self.feat_channels = (num_classes, in_channels,
                                                                  feat_channels)
        self.stacked_convs, self.strides = stacked_convs, tuple(strides)
        self.anchor_type = anchor_type
        self.set_ops(ops)

    def set_ops(self, ops: str) -> None:
        self.ops = get_ops(ops)

    def level_scales(self) -> nn.ModuleList:
        """One learnable :class:`Scale` (initialised to 1) per level."""
        return nn.ModuleList(Scale(1.0) for _ in self.strides)

    def regress(self, reg: torch.Tensor, level: int) -> torch.Tensor:
        """(B, 4, H, W) regression conv output of ``level`` -> xyxy boxes in stride units."""
        raw = self.scales[level](reg.exp() if self.anchor_type == "anchor_free" else reg)
        return decode_boxes(raw, self.strides[level], self.anchor_type)

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def forward(self, feats: list[torch.Tensor]) -> dict:
        """``feats``: one map per stride. Returns ``{name: [per level]}`` for the names of
        ``OUTPUTS``."""
        if len(feats) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature levels, got {len(feats)}")
        per_level = [self.forward_single(x, level) for level, x in enumerate(feats)]
        return {name: [out[i] for out in per_level] for i, name in enumerate(self.OUTPUTS)}
