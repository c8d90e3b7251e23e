"""The detectors: :class:`TOOD` (the T-head) and :class:`ATSS` (ATSS's parallel head, the
baseline of TOOD's ablation), siblings on :class:`~tood_ext.models.dense_detector.DenseDetector`
(ResNet + FPN, the ATSS-then-TAL assignment switch, inference); each builds its head and
computes its losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .assigners import centerness_target
from .atss_head import ATSSHead
from .config import TOODConfig
from .dense_detector import DenseDetector
from .losses import reduce_mean, sparse_cls_loss
from .tood_head import TOODHead

__all__ = ["ATSS", "TOOD"]


class TOOD(DenseDetector):
    """TOOD (Feng et al., ICCV 2021): torchvision ResNet, FPN P3-P7, :class:`TOODHead`.

    Interface (H, W multiples of 128, images normalised by the caller):

    * ``model(images)`` -> ``{"cls_scores": [(B, C, H_l, W_l)], "bbox_preds": [(B, 4, H_l,
      W_l)]}``, one entry per level (strides ``cfg.strides``): P_align probabilities and
      the aligned decoded boxes, xyxy in input-image pixels.
    * :meth:`loss` (training) and :meth:`predict` (inference, no gradient).

    ``cfg.ops`` selects our kernels or the pure-PyTorch references for every op the model
    calls (deformable sampling, TAL, IoU, GIoU loss, the classification loss);
    :meth:`set_ops` switches later.
    """

    HEAD = "tood"

    def _build_head(self, cfg: TOODConfig) -> nn.Module:
        return TOODHead(cfg.num_classes, cfg.fpn_channels, cfg.feat_channels,
                        cfg.stacked_convs, cfg.la_down_rate, cfg.strides, cfg.anchor_type,
                        cfg.norm, cfg.num_groups, cfg.offset_init_std, cfg.ops,
                        cfg.cls_prior, cfg.m_prior)

    def loss_by_feat(self, out: dict, targets: list[dict], epoch: int) -> dict:
        """Losses from the head outputs (the dict of :meth:`forward`).

        Normalisation, exactly mmdetection's ``TOODHead.loss_by_feat`` (one image-batch sum,
        which equals its per-level sums):

        * TAL stage (``epoch >= initial_epoch``): ``loss_cls = QFL_sum / F`` and
          ``loss_bbox = 2 * sum_pos t_hat_i * (1 - GIoU_i) / F`` with
          ``F = max(reduce_mean(sum of t_hat over the batch's positives), 1)`` for both
          (mmdetection computes the two factors separately, but both are the sum of the
          normalised alignment metrics of the positives);
        * ATSS stage: ``loss_cls = focal_sum / max(reduce_mean(num positives), 1)`` and
          ``loss_bbox = 2 * sum_pos c_i (1 - GIoU_i) / max(reduce_mean(sum_pos c_i), 1)``
          with c the centerness of the anchor centre in its GT;

        ``reduce_mean`` averages over the processes (all_reduce) when a process group is
        initialised, so every process divides by the same global mean. Every anchor has label
        weight 1 (all priors are valid). GIoU (eps 1e-6, as mmdetection's GIoULoss) is
        computed on boxes divided by their level's stride, as mmdetection does. The weighted
        sums are not divided by ``1 + float32 eps`` as mmdetection's ``avg_factor=1.0``
        reduction does (relative 1.2e-7). Without positives loss_bbox is
        ``0 * sum(bbox_preds)``: zero, still attached to the graph.

        Both classification losses are one call of ``sparse_target_cls_loss`` on the (B, A)
        labels and targets (``kind="qfl"`` on t_hat, ``kind="focal"`` on the ATSS epochs'
        hard labels, score 1; ``activated=True``: P_align holds probabilities): no
        (B * A, C) target or loss tensor. The dense formulas they replace
        (:func:`tood_ext.models.losses.quality_focal_loss`, ``focal_loss``) agree to float
        rounding (tests/test_model_cls_loss.py).
        """
        cfg, ops = self.cfg, self.head.ops
        scores, boxes, _, stride = self._flatten(out)
        B, A, C = scores.shape
        tg = self.get_targets(out, targets, epoch)
        labels, fg, tgt, weight = tg["labels"], tg["fg_mask"], tg["boxes"], tg["weights"]
        if epoch < cfg.initial_epoch:
            loss_cls = sparse_cls_loss(ops, scores, labels, tg["soft_target"], "focal",
                                       gamma=cfg.gamma, alpha=cfg.focal_alpha, activated=True)
            cls_factor = reduce_mean(fg.sum().float()).clamp(min=1)
        else:
            loss_cls = sparse_cls_loss(ops, scores, labels, tg["soft_target"], "qfl",
                                       gamma=cfg.gamma, activated=True)
            cls_factor = reduce_mean(tg["soft_target"].sum()).clamp(min=1)
        weight = weight[fg]
        bbox_factor = reduce_mean(weight.sum()).clamp(min=1)
        if fg.any():
            s = stride.expand(B, A)[fg][:, None]
            loss_bbox = ops.giou_loss(boxes[fg] / s, tgt[fg].to(boxes.dtype) / s,
                                      weight=weight, reduction="sum", eps=1e-6)
        else:
            loss_bbox = boxes.sum() * 0
        loss_cls = cfg.loss_cls_weight * loss_cls / cls_factor
        loss_bbox = cfg.loss_bbox_weight * loss_bbox / bbox_factor
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss": loss_cls + loss_bbox}


class ATSS(DenseDetector):
    """ResNet + FPN (as :class:`TOOD`) + :class:`~tood_ext.models.ATSSHead`.

    Same interface as TOOD (``model(images)``, :meth:`loss`, :meth:`predict`, ``set_ops``) and
    the same assignment switch (:meth:`DenseDetector.get_targets`: ATSS for ``epoch <
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

        Targets: :meth:`DenseDetector.get_targets` on ``sigmoid(cls)`` (the classification
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
            loss_cls = sparse_cls_loss(ops, logits, labels, tg["soft_target"], "focal",
                                       gamma=cfg.gamma, alpha=cfg.focal_alpha)
            cls_factor = n_pos
            weight = ctr_target
        else:
            loss_cls = sparse_cls_loss(ops, logits, labels, tg["soft_target"], "qfl",
                                       gamma=cfg.gamma)
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
        """As :meth:`DenseDetector.predict_by_feat` with mmdetection's ATSS scoring: the
        ``score_thr`` / ``nms_pre`` selection on ``sigmoid(cls)``, then the score
        ``sigmoid(cls) * sigmoid(centerness)`` for NMS and the output."""
        return super().predict_by_feat(
            dict(out, score_factors=[c.sigmoid() for c in out["centerness"]]), metas)
