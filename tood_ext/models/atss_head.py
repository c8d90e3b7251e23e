"""The baseline of TOOD's ablation: ATSS's conventional parallel two-branch head (with its
centerness branch) on the same backbone and FPN, trainable with ATSS or with TAL.

Follows the semantics of mmdetection 3.x ``ATSSHead`` (``atss_r50_fpn_1x_coco``), written from
them, not copied. ``TOODConfig(head="atss")`` selects it; :func:`tood_ext.models.build_model`
returns the :class:`~tood_ext.models.ATSS` detector (:mod:`tood_ext.models.detector`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dense_head import DenseHead, at_least_float32, conv_tower, normal_init, prior_bias

__all__ = ["ATSSHead", "quality_focal_loss_with_logits"]


class ATSSHead(DenseHead):
    """ATSS's parallel head (Zhang et al., CVPR 2020), shared across FPN levels.

    Per level (input X of ``in_channels``):

    * classification branch: ``stacked_convs`` x (3x3 conv + GN + ReLU), then
      ``cls = conv3x3`` (num_classes logits);
    * regression branch: another ``stacked_convs`` x (3x3 conv + GN + ReLU) on X, then
      ``reg = conv3x3`` (4 channels) and ``centerness = conv3x3`` (1 logit), both on the
      regression features (mmdetection's ATSSHead);
    * boxes decoded exactly like :class:`~tood_ext.models.TOODHead` without its deformable
      sampling: ``anchor_free``: ``scale * exp(reg)`` distances around the location (the
      T-head's parametrisation; mmdetection's ATSS is anchor-based); ``anchor_based``:
      ``scale * reg`` deltas against the location's prior (side 8 * stride, stds
      .1 .1 .2 .2, mmdetection's ATSS config); xyxy in input-image pixels.

    No layer attention, no alignment maps (M, O): ``la_down_rate`` and ``offset_init_std``
    of the config are unused. Initialisation (mmdetection): every conv N(0, 0.01), bias 0,
    except the cls conv's bias ``logit(0.01)``; GN weight 1, bias 0; scales 1; the tower
    convs have no bias when normalised.

    ``forward`` returns ``{"cls_scores": [sigmoid(cls)], "cls_logits": [cls], "bbox_preds":
    [boxes], "centerness": [centerness logits]}`` per level, (B, C | 4 | 1, H_l, W_l).
    """

    OUTPUTS = ("cls_logits", "bbox_preds", "centerness")

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, strides=(8, 16, 32, 64, 128),
                 anchor_type: str = "anchor_free", norm: str | None = "GN", num_groups: int = 32,
                 ops: str = "kernel"):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, strides,
                         anchor_type, ops)
        self.cls_convs = conv_tower(in_channels, feat_channels, stacked_convs, norm, num_groups)
        self.reg_convs = conv_tower(in_channels, feat_channels, stacked_convs, norm, num_groups)
        self.atss_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = self.level_scales()
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                normal_init(m, 0.01)
        normal_init(self.atss_cls, 0.01, prior_bias(0.01))

    def forward_single(self, x: torch.Tensor, level: int):
        """One level: ``(cls logits (B, C, H, W), boxes (B, 4, H, W) xyxy pixels,
        centerness logits (B, 1, H, W))``."""
        stride = self.strides[level]
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        cls_logits = at_least_float32(self.atss_cls(cls_feat))  # float32 under autocast
        reg = at_least_float32(self.atss_reg(reg_feat))
        boxes = self.regress(reg, level) * stride
        centerness = at_least_float32(self.atss_centerness(reg_feat))
        return cls_logits, boxes, centerness

    def forward(self, feats: list[torch.Tensor]) -> dict:
        """``{"cls_scores": [sigmoid(cls)], "cls_logits", "bbox_preds", "centerness"}``, one
        entry per level (see the class docstring)."""
        out = super().forward(feats)
        return {"cls_scores": [logits.sigmoid() for logits in out["cls_logits"]], **out}


def quality_focal_loss_with_logits(logits: torch.Tensor, labels: torch.Tensor,
                                   score: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Summed quality focal loss on logits (mmdetection's ``QualityFocalLoss(use_sigmoid=True,
    activated=False, beta=gamma)``), unnormalised: every (n, c) contributes
    ``sigmoid(x)^gamma * BCEWithLogits(x, 0)``, the positive entries (n, labels[n]) instead
    ``|score - sigmoid(x)|^gamma * BCEWithLogits(x, score)``. labels: (N,) class or -1.

    The dense formula (a (N, C) per-element loss and ``index_put``), kept as the tests'
    reference: :class:`~tood_ext.models.ATSS` computes it with the fused op
    (:func:`tood_ext.models.losses.sparse_cls_loss`, ``kind="qfl"``)."""
    logits, score = logits.float(), score.float()
    p = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                              reduction="none") * p.pow(gamma)
    pos = torch.nonzero(labels >= 0).squeeze(1)
    if pos.numel():
        cls = labels[pos]
        s = score[pos]
        pos_loss = (F.binary_cross_entropy_with_logits(logits[pos, cls], s, reduction="none")
                    * (s - p[pos, cls]).abs().pow(gamma))
        loss = loss.index_put((pos, cls), pos_loss)
    return loss.sum()
