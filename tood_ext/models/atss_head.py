"""The baseline of TOOD's ablation: ATSS's conventional parallel two-branch head (with its
centerness branch) on the same backbone and FPN, trainable with ATSS or with TAL.

Follows the semantics of mmdetection 3.x ``ATSSHead`` (``atss_r50_fpn_1x_coco``), written from
them, not copied. ``TOODConfig(head="atss")`` selects it; :func:`tood_ext.models.build_model`
returns the :class:`ATSS` detector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ._ops import get_ops
from .assigners import centerness_target
from .config import TOODConfig
from .detector import TOOD
from .head import (OCTAVE_BASE_SCALE, Scale, _at_least_float32, _norm, _normal_init,
                   _prior_bias, delta2bbox)
from .losses import reduce_mean

__all__ = ["ATSS", "ATSSHead", "quality_focal_loss_with_logits"]


def _decode(raw: torch.Tensor, stride: int, anchor_type: str) -> torch.Tensor:
    """(B, 4, H, W) regression output (already scaled) -> xyxy boxes in stride units, exactly
    as :class:`~tood_ext.models.TOODHead` decodes before its deformable sampling."""
    _, _, h, w = raw.shape
    ys = torch.arange(h, device=raw.device, dtype=raw.dtype).view(1, h, 1).expand(1, h, w)
    xs = torch.arange(w, device=raw.device, dtype=raw.dtype).view(1, 1, w).expand(1, h, w)
    if anchor_type == "anchor_free":  # raw = (l, t, r, b) distances around (j, i)
        return torch.stack([xs - raw[:, 0], ys - raw[:, 1], xs + raw[:, 2], ys + raw[:, 3]], 1)
    half = OCTAVE_BASE_SCALE * stride / 2  # raw = deltas against the prior (pixels)
    prior = torch.stack([xs * stride - half, ys * stride - half, xs * stride + half,
                         ys * stride + half], -1)
    return delta2bbox(prior, raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) / stride


class ATSSHead(nn.Module):
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

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, strides=(8, 16, 32, 64, 128),
                 anchor_type: str = "anchor_free", norm: str | None = "GN", num_groups: int = 32,
                 ops: str = "kernel"):
        super().__init__()
        if anchor_type not in ("anchor_free", "anchor_based"):
            raise ValueError(f"anchor_type must be 'anchor_free' or 'anchor_based', "
                             f"got {anchor_type!r}")
        self.num_classes, self.in_channels, self.feat_channels = (num_classes, in_channels,
                                                                  feat_channels)
        self.stacked_convs, self.strides = stacked_convs, tuple(strides)
        self.anchor_type = anchor_type
        self.set_ops(ops)

        def tower():
            return nn.ModuleList(nn.Sequential(
                nn.Conv2d(in_channels if k == 0 else feat_channels, feat_channels, 3, padding=1,
                          bias=norm is None),
                _norm(norm, feat_channels, num_groups), nn.ReLU(inplace=True))
                for k in range(stacked_convs))

        self.cls_convs = tower()
        self.reg_convs = tower()
        self.atss_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.init_weights()

    def set_ops(self, ops: str) -> None:
        self.ops = get_ops(ops)

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _normal_init(m, 0.01)
        _normal_init(self.atss_cls, 0.01, _prior_bias(0.01))

    def forward_single(self, x: torch.Tensor, level: int):
        """One level: ``(cls logits (B, C, H, W), boxes (B, 4, H, W) xyxy pixels,
        centerness logits (B, 1, H, W))``."""
        stride = self.strides[level]
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        cls_logits = _at_least_float32(self.atss_cls(cls_feat))  # float32 under autocast
        reg = _at_least_float32(self.atss_reg(reg_feat))
        raw = self.scales[level](reg.exp() if self.anchor_type == "anchor_free" else reg)
        boxes = _decode(raw, stride, self.anchor_type) * stride
        centerness = _at_least_float32(self.atss_centerness(reg_feat))
        return cls_logits, boxes, centerness

    def forward(self, feats: list[torch.Tensor]) -> dict:
        if len(feats) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature levels, got {len(feats)}")
        out = {"cls_scores": [], "cls_logits": [], "bbox_preds": [], "centerness": []}
        for level, x in enumerate(feats):
            logits, boxes, ctr = self.forward_single(x, level)
            out["cls_logits"].append(logits)
            out["cls_scores"].append(logits.sigmoid())
            out["bbox_preds"].append(boxes)
            out["centerness"].append(ctr)
        return out


def quality_focal_loss_with_logits(logits: torch.Tensor, labels: torch.Tensor,
                                   score: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Summed quality focal loss on logits (mmdetection's ``QualityFocalLoss(use_sigmoid=True,
    activated=False, beta=gamma)``), unnormalised: every (n, c) contributes
    ``sigmoid(x)^gamma * BCEWithLogits(x, 0)``, the positive entries (n, labels[n]) instead
    ``|score - sigmoid(x)|^gamma * BCEWithLogits(x, score)``. labels: (N,) class or -1."""
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


class ATSS(TOOD):
    """ResNet + FPN (as :class:`~tood_ext.models.TOOD`) + :class:`ATSSHead`.

    Same interface as TOOD (``model(images)``, :meth:`loss`, :meth:`predict`, ``set_ops``) and
    the same assignment switch (:meth:`TOOD.get_targets`: ATSS for ``epoch <
    cfg.initial_epoch``, TAL after); the head outputs carry the extra ``cls_logits`` and
    ``centerness``. See :meth:`loss_by_feat` for the losses of each stage and
    :meth:`predict_by_feat` for the score used at inference.
    """

    HEAD = "atss"

    def _build_head(self, cfg: TOODConfig) -> nn.Module:
        return ATSSHead(cfg.num_classes, cfg.fpn_channels, cfg.feat_channels, cfg.stacked_convs,
                        cfg.strides, cfg.anchor_type, cfg.norm, cfg.num_groups, cfg.ops)

    def _flatten_extra(self, out: dict):
        B, C = out["cls_logits"][0].shape[:2]
        logits = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, C) for s in out["cls_logits"]],
                           1)
        ctr = torch.cat([c.reshape(B, -1) for c in out["centerness"]], 1)
        return logits, ctr

    def loss_by_feat(self, out: dict, targets: list[dict], epoch: int) -> dict:
        """``{"loss_cls", "loss_bbox", "loss_centerness", "loss"}`` of a batch.

        Targets: :meth:`TOOD.get_targets` on ``sigmoid(cls)`` (the classification
        probability; no alignment map) and the decoded boxes. With ``N_pos =
        max(reduce_mean(#positives), 1)`` and ``c_i`` the FCOS centerness of positive i's
        prior centre in its assigned GT:

        * ATSS stage (``epoch < initial_epoch``), mmdetection's ATSSHead:
          ``loss_cls = FocalLoss(logits; gamma, focal_alpha)_sum / N_pos``;
          ``loss_bbox = 2 * sum_pos c_i (1 - GIoU_i) / max(reduce_mean(sum_pos c_i), 1)``;
        * TAL stage (parallel head + TAL): the cls target is TAL's t_hat, exactly as TOOD's
          TAL stage but on ``sigmoid(cls)`` and from logits:
          ``loss_cls = QFL(logits, t_hat; gamma)_sum / F``,
          ``loss_bbox = 2 * sum_pos t_hat_i (1 - GIoU_i) / F``,
          ``F = max(reduce_mean(sum_pos t_hat), 1)``;
        * both stages: ``loss_centerness = sum_pos BCEWithLogits(centerness_i, c_i) / N_pos``
          (weight 1), the centerness branch keeps its ATSS target under TAL (the head is
          unchanged, only the assignment and the cls/box targets change).

        GIoU (eps 1e-6) on boxes in stride units, as TOOD's loss (GIoU is scale invariant up
        to the eps). Without positives loss_bbox and loss_centerness are zeros attached to
        the graph.
        """
        cfg, ops = self.cfg, self.head.ops
        _, boxes, _, stride = self._flatten(out)
        logits, ctr = self._flatten_extra(out)
        B, A, C = logits.shape
        tg = self.get_targets(out, targets, epoch)
        labels, fg, tgt = tg["labels"], tg["fg_mask"], tg["boxes"]
        n_pos = reduce_mean(fg.sum().float()).clamp(min=1)
        ctr_target = centerness_target(tg["anchors"].expand(B, A, 4)[fg], tgt[fg])
        if epoch < cfg.initial_epoch:
            onehot = torch.zeros_like(logits)
            onehot[fg, labels[fg]] = 1.0
            loss_cls = sigmoid_focal_loss(logits, onehot, alpha=cfg.focal_alpha,
                                          gamma=cfg.gamma, reduction="sum")
            cls_factor = n_pos
            weight = ctr_target
        else:
            loss_cls = quality_focal_loss_with_logits(logits.reshape(-1, C), labels.reshape(-1),
                                                      tg["soft_target"].reshape(-1), cfg.gamma)
            cls_factor = reduce_mean(tg["soft_target"].sum()).clamp(min=1)
            weight = tg["weights"][fg]
        bbox_factor = reduce_mean(weight.sum()).clamp(min=1)
        if fg.any():
            s = stride.expand(B, A)[fg][:, None]
            loss_bbox = ops.giou_loss(boxes[fg] / s, tgt[fg].to(boxes.dtype) / s,
                                      weight=weight, reduction="sum", eps=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr[fg], ctr_target, reduction="sum")
        else:
            loss_bbox = boxes.sum() * 0
            loss_ctr = ctr.sum() * 0
        loss_cls = cfg.loss_cls_weight * loss_cls / cls_factor
        loss_bbox = cfg.loss_bbox_weight * loss_bbox / bbox_factor
        loss_ctr = loss_ctr / n_pos
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr,
                "loss": loss_cls + loss_bbox + loss_ctr}

    @torch.no_grad()
    def predict_by_feat(self, out: dict, metas: list[dict]) -> list[dict]:
        """As :meth:`TOOD.predict_by_feat` with mmdetection's ATSS scoring: the
        ``score_thr`` / ``nms_pre`` selection on ``sigmoid(cls)``, then the score
        ``sigmoid(cls) * sigmoid(centerness)`` for NMS and the output."""
        return super().predict_by_feat(
            dict(out, score_factors=[c.sigmoid() for c in out["centerness"]]), metas)
