"""The base of the dense detectors: backbone + FPN + a dense head, the assignment switch
(ATSS, then TAL), training targets and inference. :class:`~tood_ext.models.TOOD` and
:class:`~tood_ext.models.ATSS` (:mod:`tood_ext.models.detector`) are its siblings: each names
its head and writes its losses."""
from __future__ import annotations

import torch
from torch import nn

from .assigners import atss_assign, centerness_target
from .backbone import FPN, ResNetBackbone
from .config import TOODConfig
from .dense_head import grid_priors
from .postprocess import detections_from_levels

__all__ = ["DenseDetector"]


class DenseDetector(nn.Module):
    """torchvision ResNet, FPN P3-P7 and the dense head of ``HEAD`` (built by
    :meth:`_build_head`), with the interface every tood_ext detector has (H, W multiples of
    128, images normalised by the caller):

    * ``model(images)`` -> the head's outputs, ``{"cls_scores": [(B, C, H_l, W_l)],
      "bbox_preds": [(B, 4, H_l, W_l)], ...}``, one entry per level (strides
      ``cfg.strides``): class probabilities and decoded boxes, xyxy in input-image pixels;
    * :meth:`loss` (training: :meth:`get_targets`, then the subclass's :meth:`loss_by_feat`)
      and :meth:`predict` (inference, no gradient).

    ``cfg.ops`` selects our kernels or the pure-PyTorch references for every op the model
    calls; :meth:`set_ops` switches later. A subclass sets ``HEAD`` (the ``cfg.head`` it
    builds) and implements :meth:`_build_head` and :meth:`loss_by_feat`.
    """

    HEAD: str | None = None  # the ``cfg.head`` a subclass builds

    def __init__(self, cfg: TOODConfig):
        super().__init__()
        if cfg.head != self.HEAD:
            raise ValueError(f"{type(self).__name__} builds head {self.HEAD!r}, got "
                             f"head={cfg.head!r} (build_model(cfg) picks the class)")
        self.cfg = cfg
        frozen = cfg.frozen_stages if cfg.frozen_stages is not None else \
            (1 if cfg.weights else -1)
        norm_eval = cfg.norm_eval if cfg.norm_eval is not None else bool(cfg.weights)
        self.backbone = ResNetBackbone(cfg.depth, cfg.weights, frozen, norm_eval)
        if len(cfg.strides) != 5:
            raise ValueError(f"strides must have 5 levels (P3-P7), got {cfg.strides}")
        self.neck = FPN(self.backbone.out_channels, cfg.fpn_channels, num_extra=2)
        self.head = self._build_head(cfg)

    def _build_head(self, cfg: TOODConfig) -> nn.Module:
        raise NotImplementedError

    @property
    def ops(self):
        return self.head.ops

    def set_ops(self, ops: str) -> None:
        self.head.set_ops(ops)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None,
                epoch: int = 0) -> dict:
        """Head outputs of ``images`` (see the class docstring); with ``targets``, the training
        losses instead (``model(images, targets, epoch) == model.loss(images, targets,
        epoch)``), so that a ``DistributedDataParallel`` wrapper sees the loss computation
        through its own forward."""
        out = self.head(self.neck(self.backbone(images)))
        if targets is None:
            return out
        return self.loss_by_feat(out, targets, epoch)

    # -----------------------------------------------------------------------------------------
    # training
    # -----------------------------------------------------------------------------------------

    def loss(self, images: torch.Tensor, targets: list[dict], epoch: int) -> dict:
        """Training losses of a batch: ``{"loss_cls", "loss_bbox", "loss"}`` (scalars).

        targets: B dicts ``{"boxes": (n, 4) xyxy input pixels, "labels": (n,) int64}``.
        ``epoch`` (0-based) < ``cfg.initial_epoch`` selects the ATSS stage, else TAL; see
        :meth:`loss_by_feat`.
        """
        return self.loss_by_feat(self(images), targets, epoch)

    def _flatten(self, out: dict):
        cls_scores, bbox_preds = out["cls_scores"], out["bbox_preds"]
        B, C = cls_scores[0].shape[:2]
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        device = cls_scores[0].device
        priors = grid_priors(sizes, self.head.strides, device=device)
        scores = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, C) for s in cls_scores], 1)
        boxes = torch.cat([b.permute(0, 2, 3, 1).reshape(B, -1, 4) for b in bbox_preds], 1)
        stride = torch.cat([torch.full((h * w,), float(s), device=device)
                            for (h, w), s in zip(sizes, self.head.strides)])
        return scores, boxes, priors, stride

    @torch.no_grad()
    def get_targets(self, out: dict, targets: list[dict], epoch: int) -> dict:
        """Per-anchor training targets of a batch (anchors: levels concatenated, row-major).

        ``epoch < cfg.initial_epoch``: :func:`atss_assign` per image on the priors (boxes of
        side 8 * stride), bbox weights = centerness of the prior centre in its GT.
        Otherwise: TAL through ``task_aligned_assign`` of the chosen ops on the detached
        scores (``cls_scores``: TOOD's P_align) and boxes (pixels), prior centres as anchor
        points, mmdetection's flavour (``topk_then_inside``, IoU, inside eps 0.01, t_hat eps
        1e-7), bbox weights = t_hat.

        Returns a dict of (B, A[, 4]) tensors: ``labels`` (int64, -1 background), ``fg_mask``,
        ``boxes`` (assigned GT, pixels, 0 for background), ``weights`` (bbox-loss weight, 0
        for background), ``soft_target`` (t_hat for TAL, the one-hot target value 1 for ATSS
        positives), ``iou`` (TAL only: IoU of the predicted box with the assigned GT, else
        None), and ``anchors`` (A, 4) the priors.
        """
        cfg, ops = self.cfg, self.head.ops
        scores, boxes, priors, _ = self._flatten(out)
        B, A, C = scores.shape
        if len(targets) != B:
            raise ValueError(f"got {len(targets)} targets for a batch of {B} images")
        num_level = [p.shape[0] for p in priors]
        anchors = torch.cat(priors)
        device = scores.device
        gt_boxes = [t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
                    for t in targets]
        gt_labels = [t["labels"].to(device=device, dtype=torch.long).reshape(-1)
                     for t in targets]
        for b, lab in enumerate(gt_labels):
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= C):
                raise ValueError(f"image {b}: labels must lie in [0, {C}), got "
                                 f"[{int(lab.min())}, {int(lab.max())}]")
        iou = None
        if epoch < cfg.initial_epoch:
            labels = torch.full((B, A), -1, dtype=torch.long, device=device)
            tgt = torch.zeros((B, A, 4), device=device)
            for b in range(B):
                idx = atss_assign(anchors, num_level, gt_boxes[b], cfg.atss_topk, ops.box_iou)
                pos = idx >= 0
                labels[b, pos] = gt_labels[b][idx[pos]]
                tgt[b, pos] = gt_boxes[b][idx[pos]]
            fg = labels >= 0
            weights = torch.zeros((B, A), device=device)
            if fg.any():
                weights[fg] = centerness_target(anchors.expand(B, A, 4)[fg], tgt[fg])
            soft = fg.float()
        else:
            G = max((len(g) for g in gt_boxes), default=0)
            pad_boxes = torch.zeros((B, G, 4), device=device)
            pad_labels = torch.zeros((B, G), dtype=torch.long, device=device)
            mask = torch.zeros((B, G), dtype=torch.bool, device=device)
            for b in range(B):
                n = len(gt_boxes[b])
                pad_boxes[b, :n], pad_labels[b, :n], mask[b, :n] = gt_boxes[b], gt_labels[b], True
            centres = (anchors[:, :2] + anchors[:, 2:]) / 2
            res = ops.task_aligned_assign(scores.detach().float(), boxes.detach().float(),
                                          centres, pad_labels, pad_boxes, mask, topk=cfg.topk,
                                          alpha=cfg.alpha, beta=cfg.beta,
                                          candidates="topk_then_inside", iou_mode="iou",
                                          inside_eps=0.01, norm_eps=1e-7)
            labels, fg, tgt, iou = res.labels, res.fg_mask, res.boxes, res.iou
            soft = weights = res.soft_target.float()
        return {"labels": labels, "fg_mask": fg, "boxes": tgt, "weights": weights,
                "soft_target": soft, "iou": iou, "anchors": anchors}

    def loss_by_feat(self, out: dict, targets: list[dict], epoch: int) -> dict:
        """The losses from the head outputs (the dict of :meth:`forward`): the subclass's."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    # inference
    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor, metas: list[dict]) -> list[dict]:
        """Detections per image: ``{"boxes": (n, 4) xyxy in original-image pixels,
        "scores": (n,), "labels": (n,) int64}``, sorted by score.

        metas: B dicts with ``"scale_factor"`` (resized / original: a float, (w, h) as
        mmdetection 3 writes it, or (w, h, w, h); default 1.0) and the original size ``"orig_size"``
        (h, w) or mmdetection's ``"ori_shape"`` (needed when ``cfg.clip_to_image``). Steps
        (:mod:`tood_ext.models.postprocess`): per level the (location, class) pairs with
        score > ``score_thr``, at most ``nms_pre`` of the highest; boxes divided by the scale
        factor; with ``clip_to_image`` (default) clipped to the original image (mmdetection's
        TOOD does not clip); boxes of width or height ``<= min_bbox_size`` (0: zero-size ones)
        dropped; class-wise NMS (IoU > ``iou_thr`` suppressed); the best ``max_per_img`` kept.
        With ``clip_to_image=False`` this is mmdetection's TOOD post-processing. Does not
        change train/eval mode (call ``model.eval()`` first).
        """
        return self.predict_by_feat(self(images), metas)

    @torch.no_grad()
    def predict_by_feat(self, out: dict, metas: list[dict]) -> list[dict]:
        """Detections from head outputs (see :meth:`predict`). An optional
        ``out["score_factors"]`` ([(B, 1, H_l, W_l)], e.g. the ATSS head's sigmoid centerness)
        multiplies the scores after the ``score_thr`` / ``nms_pre`` selection, before NMS
        (mmdetection's ``with_score_factors``)."""
        cfg = self.cfg
        return detections_from_levels(
            out["cls_scores"], out["bbox_preds"], metas, score_thr=cfg.score_thr,
            nms_pre=cfg.nms_pre, iou_thr=cfg.iou_thr, max_per_img=cfg.max_per_img,
            min_bbox_size=cfg.min_bbox_size, clip_to_image=cfg.clip_to_image,
            score_factors=out.get("score_factors"))

