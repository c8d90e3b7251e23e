"""Backbone (torchvision ResNet) and neck (FPN P3-P7) of the TOOD detector."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNetBackbone", "FPN"]

_RESNET_CHANNELS = {18: (128, 256, 512), 34: (128, 256, 512), 50: (512, 1024, 2048)}


class ResNetBackbone(nn.Module):
    """torchvision ResNet-{18,34,50} trunk returning C3, C4, C5 (strides 8, 16, 32).

    Args:
        depth: 18, 34 or 50.
        weights: None (torchvision's random initialisation) or the path of a local state dict
            with torchvision ResNet keys (``fc.*`` ignored; ``{"state_dict": ...}`` or
            ``{"model": ...}`` unwrapped; a ``"backbone."`` prefix is stripped). Missing or
            unexpected trunk keys raise. Nothing is downloaded.
        frozen_stages: -1 none; 0 the stem (conv1 + bn1); k >= 1 the stem and layer1..layerk
            (no gradients, BatchNorm in eval mode), as mmdetection's ResNet.
        norm_eval: keep every BatchNorm in eval mode while training (frozen statistics).
    """

    def __init__(self, depth: int = 50, weights: str | None = None, frozen_stages: int = -1,
                 norm_eval: bool = False):
        super().__init__()
        import torchvision

        if depth not in _RESNET_CHANNELS:
            raise ValueError(f"depth must be one of {sorted(_RESNET_CHANNELS)}, got {depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if weights is not None:
            _load_weights(net, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (net.layer1, net.layer2,
                                                              net.layer3, net.layer4)
        self.out_channels = _RESNET_CHANNELS[depth]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()

    def _stages(self):
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def _freeze(self):
        for stage in self._stages()[:self.frozen_stages + 1]:
            stage.eval()
            for p in stage.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.stem(x))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def _load_weights(net: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path!r} (nothing is "
                                f"downloaded; pass a local torchvision ResNet state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, EOF, zip errors: a corrupt or foreign file
        raise RuntimeError(f"backbone weights {path!r} are not a readable torch state dict "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {(k[len("backbone."):] if k.startswith("backbone.") else k): v
             for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise RuntimeError(f"backbone weights {path!r} do not match resnet: {exc}") from exc
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise RuntimeError(f"backbone weights {path!r} do not match resnet: missing "
                           f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                           f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


class FPN(nn.Module):
    """Feature pyramid P3-P7 as mmdetection's ``FPN(start_level=1, add_extra_convs="on_output",
    num_outs=5)``: 1x1 laterals on C3-C5, top-down nearest upsampling to the lower level's
    size and addition, a 3x3 conv per level, then P6 = conv3x3/2(P5) and P7 = conv3x3/2(P6)
    (no ReLU between: ``relu_before_extra_convs=False``). Xavier-uniform weights, zero biases.
    """

    def __init__(self, in_channels, out_channels: int = 256, num_extra: int = 2):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in in_channels)
        self.extra = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
                                   for _ in range(num_extra))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:],
                                                    mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, lat)]
        for conv in self.extra:
            outs.append(conv(outs[-1]))
        return outs
