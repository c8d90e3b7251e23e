"""TOOD's task-aligned head (T-head), a :class:`~tood_ext.models.dense_head.DenseHead`.

Follows mmdetection 3.x ``TOODHead`` (see /work/shared/TOOD.md for the paper-vs-mmdetection
details); written from those semantics, not copied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dense_head import (DenseHead, at_least_float32, conv_tower, make_norm, normal_init,
                         prior_bias)

__all__ = ["TOODHead", "TaskDecomposition", "sigmoid_geometric_mean"]


def sigmoid_geometric_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sqrt(sigmoid(x) * sigmoid(y))``, computed as ``exp((logsigmoid(x) + logsigmoid(y)) / 2)``.

    Its autograd gradient is the analytic ``z * (1 - sigmoid(x)) / 2`` (resp. y) with no
    division by a vanishing square root, the fix mmdetection PR #7090 made with a custom
    autograd Function (the naive form gave inf/NaN gradients).
    """
    return torch.exp(0.5 * (F.logsigmoid(x) + F.logsigmoid(y)))


class TaskDecomposition(nn.Module):
    """Task-aligned predictor's layer attention: per-image weights of the N stacked features.

    ``w = sigmoid(conv1x1(relu(conv1x1(GAP(concat(X_1..X_N))))))`` in R^N (hidden width
    ``N*C // (N*la_down_rate)`` = ``C // la_down_rate``, as mmdetection which passes
    ``stacked_convs * 8`` to its TaskDecomposition), then the 1x1 reduction conv
    (N*C -> C) applied to ``concat(w_k X_k)``, then GN and ReLU. The scaling is folded into a
    per-image reduction weight (one bmm), which is the same linear map without materialising
    the scaled features.
    """

    def __init__(self, feat_channels: int, stacked_convs: int, la_down_rate: int = 8,
                 norm: str | None = "GN", num_groups: int = 32):
        super().__init__()
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        in_ch = feat_channels * stacked_convs
        hidden = max(in_ch // (stacked_convs * la_down_rate), 1)
        self.attn1 = nn.Conv2d(in_ch, hidden, 1)
        self.attn2 = nn.Conv2d(hidden, stacked_convs, 1)
        self.reduction = nn.Conv2d(in_ch, feat_channels, 1, bias=norm is None)
        self.norm = make_norm(norm, feat_channels, num_groups)

    def init_weights(self) -> None:
        normal_init(self.attn1, 0.001)
        normal_init(self.attn2, 0.001)
        normal_init(self.reduction, 0.01)

    def forward(self, feat: torch.Tensor, avg_feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        n, c = self.stacked_convs, self.feat_channels
        weight = torch.sigmoid(self.attn2(F.relu(self.attn1(avg_feat))))  # (b, n, 1, 1)
        conv_w = weight.reshape(b, 1, n, 1) * self.reduction.weight.reshape(1, c, n, c)
        out = torch.bmm(conv_w.reshape(b, c, n * c), feat.reshape(b, n * c, h * w))
        out = out.reshape(b, c, h, w)
        if self.reduction.bias is not None:
            out = out + self.reduction.bias.reshape(1, c, 1, 1)
        return F.relu(self.norm(out))


class TOODHead(DenseHead):
    """TOOD's task-aligned head (T-head), shared across FPN levels.

    Per level (input X of ``in_channels``):

    * task-interactive features: ``stacked_convs`` x (3x3 conv + GN + ReLU), X_1..X_N, and
      their concat ``X_inter`` (N * feat_channels channels);
    * one :class:`TaskDecomposition` per task (cls, reg) on ``X_inter``;
    * ``P = sigmoid(conv3x3(cls_feat))`` (num_classes channels) and the class-probability map
      ``M = sigmoid(conv3x3(relu(conv1x1(X_inter))))`` (1 channel);
      ``P_align = sqrt(P * M)`` (:func:`sigmoid_geometric_mean`);
    * boxes B from ``conv3x3(reg_feat)`` times the level's learnable ``Scale``, decoded
      in units of the level's stride (:meth:`DenseHead.regress`):

      - ``anchor_free``: ``(l, t, r, b) = scale * exp(conv)``, box
        ``(j - l, i - t, j + r, i + b)`` around the location's centre ``(j, i)`` (stride units,
        i.e. the prior centre ``(j s, i s)`` divided by s);
      - ``anchor_based``: ``(dx, dy, dw, dh) = scale * conv`` decoded by ``delta2bbox``
        against the location's prior (square of side 8 s centred at ``(j s, i s)``), divided
        by s;

    * the offset map ``O = conv3x3(relu(conv1x1(X_inter)))`` (8 channels: (dy, dx) for the
      sides x1, y1, x2, y2 in that order) and ``B_align[c](i, j) = B[c](i + dy_c, j + dx_c)``
      bilinearly (zeros outside), i.e. ``deform_sampling(B, O)`` with 4 groups of one channel
      each, mmdetection's depthwise 1x1 deformable conv of weight 1 with ``deform_groups=4``;
    * a sampled box with x1 > x2 or y1 > y2 falls back to the unsampled B (mmdetection PR
      #7567), then boxes are multiplied by the stride: xyxy in input-image pixels.

    Initialisation (mmdetection): interactive convs N(0, 0.01); layer attention N(0, 0.001);
    reduction convs N(0, 0.01); cls conv N(0, 0.01) with bias ``logit(0.01)``; M branch
    N(0, 0.01) with last bias ``logit(0.01)``; O branch N(0, ``offset_init_std``=0.001), bias 0;
    reg conv N(0, 0.01); scales 1; GN weight 1, bias 0.

    ``cls_prior`` / ``m_prior``: the prior probabilities that set the biases of P's conv and of
    M's last conv (``logit(prior)``); mmdetection uses 0.01 for both (our defaults), so P_align
    starts at 0.01. Which factor rises first matters: both get the gradient
    ``z (1 - factor) / 2`` through ``z = sqrt(P * M)``, so a factor that saturates stops
    learning. With equal priors, P (one conv on normalised features) outruns M (two convs of
    std 0.01 in series); trained from scratch at small scale we measured P saturating near 1
    for *every* class at objects, after which the class-agnostic M cannot tell classes apart
    and negatives hold M at the focal-loss balance (benchmarks/results/ablation.md,
    "T-head diagnosis"). ``cls_prior=2e-4, m_prior=0.5`` keeps the initial P_align at 0.01
    and lets M saturate instead, leaving P free to classify.

    ``ops``: ``"kernel"`` or ``"reference"`` (see :func:`tood_ext.models._ops.get_ops`),
    switchable later with :meth:`set_ops`.
    """

    OUTPUTS = ("cls_scores", "bbox_preds")

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 6, la_down_rate: int = 8,
                 strides=(8, 16, 32, 64, 128), anchor_type: str = "anchor_free",
                 norm: str | None = "GN", num_groups: int = 32, offset_init_std: float = 0.001,
                 ops: str = "kernel", cls_prior: float = 0.01, m_prior: float = 0.01):
        for name, v in (("cls_prior", cls_prior), ("m_prior", m_prior)):
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {v}")
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, strides,
                         anchor_type, ops)
        self.cls_prior, self.m_prior = float(cls_prior), float(m_prior)
        self.offset_init_std = offset_init_std

        self.inter_convs = conv_tower(in_channels, feat_channels, stacked_convs, norm, num_groups)
        self.cls_decomp = TaskDecomposition(feat_channels, stacked_convs, la_down_rate, norm,
                                            num_groups)
        self.reg_decomp = TaskDecomposition(feat_channels, stacked_convs, la_down_rate, norm,
                                            num_groups)
        self.tood_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.tood_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        inter_ch, mid = feat_channels * stacked_convs, max(feat_channels // 4, 1)
        self.cls_prob_module = nn.Sequential(nn.Conv2d(inter_ch, mid, 1), nn.ReLU(inplace=True),
                                             nn.Conv2d(mid, 1, 3, padding=1))
        self.reg_offset_module = nn.Sequential(nn.Conv2d(inter_ch, mid, 1),
                                               nn.ReLU(inplace=True),
                                               nn.Conv2d(mid, 4 * 2, 3, padding=1))
        self.scales = self.level_scales()
        self.init_weights()

    def init_weights(self) -> None:
        for block in self.inter_convs:
            normal_init(block[0], 0.01)
        for m in self.cls_prob_module:
            if isinstance(m, nn.Conv2d):
                normal_init(m, 0.01)
        normal_init(self.cls_prob_module[-1], 0.01, prior_bias(self.m_prior))
        for m in self.reg_offset_module:
            if isinstance(m, nn.Conv2d):
                normal_init(m, self.offset_init_std)
        self.cls_decomp.init_weights()
        self.reg_decomp.init_weights()
        normal_init(self.tood_cls, 0.01, prior_bias(self.cls_prior))
        normal_init(self.tood_reg, 0.01)

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: ``(P_align (B, C, H, W), boxes (B, 4, H, W) xyxy in pixels)``;
        ``forward(feats)`` gives ``{"cls_scores": [per level], "bbox_preds": [per level]}``."""
        stride = self.strides[level]
        inter = []
        for conv in self.inter_convs:
            x = conv(x)
            inter.append(x)
        feat = torch.cat(inter, 1)
        avg_feat = F.adaptive_avg_pool2d(feat, (1, 1))
        cls_feat = self.cls_decomp(feat, avg_feat)
        reg_feat = self.reg_decomp(feat, avg_feat)

        # in float32 under autocast: scores near 0 or 1 matter to the focal losses
        cls_score = sigmoid_geometric_mean(at_least_float32(self.tood_cls(cls_feat)),
                                           at_least_float32(self.cls_prob_module(feat)))

        reg = at_least_float32(self.tood_reg(reg_feat))  # boxes in float32 under autocast
        reg_bbox = self.regress(reg, level)  # stride units

        offset = self.reg_offset_module(feat).to(reg_bbox.dtype)
        bbox = self.ops.deform_sampling(reg_bbox.contiguous(), offset.contiguous())
        invalid = (bbox[:, 0:1] > bbox[:, 2:3]) | (bbox[:, 1:2] > bbox[:, 3:4])
        bbox = torch.where(invalid, reg_bbox, bbox)
        return cls_score, bbox * stride
