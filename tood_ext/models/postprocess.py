"""Post-processing of dense detections: the one path of ``TOOD.predict``, the export with NMS
(:class:`tood_ext.export.ExportableTOOD`) and :mod:`tood_ext.analysis`.

Per image, in mmdetection's order (3.3: ``TOODHead._predict_by_feat_single`` then
``BaseDenseHead._bbox_post_process``):

1. per FPN level, the (location, class) pairs with score > ``score_thr``, sorted by score
   (descending), the first ``nms_pre`` (:func:`select_topk`, mmdetection's
   ``filter_scores_and_topk``); the levels concatenated in order;
2. optional score factors multiply those scores (the ATSS head's centerness);
3. boxes divided by the image's scale factor (:func:`rescale_boxes`; mmdetection multiplies by
   the reciprocal: the same up to one float32 rounding);
4. ``clip_to_image=True``: each coordinate clamped to ``[0, W]`` / ``[0, H]`` of the original
   image (a departure from mmdetection, whose TOOD never clips; ``False`` is its behaviour);
5. ``min_bbox_size >= 0``: boxes whose width or height is ``<= min_bbox_size`` dropped
   (mmdetection's filter; its TOOD config sets 0, which removes zero-size boxes); negative
   disables the filter;
6. class-wise NMS (:func:`batched_nms`: a box is suppressed by a higher-scoring box of its class
   with IoU > ``iou_thr``), the best ``max_per_img`` kept, sorted by score.

The export runs the same steps on fixed-size tensors (:func:`dense_candidates`: ``topk`` per
level instead of the filter and sort; invalid candidates get score ``-inf``), so it equals the
eager path up to the order of equal scores.
"""
from __future__ import annotations

import math

import torch

__all__ = ["batched_nms", "dense_candidates", "detections_from_levels", "meta_scale_and_size",
           "postprocess_detections", "rescale_boxes", "select_topk", "valid_size_mask"]


def select_topk(scores: torch.Tensor, score_thr: float, nms_pre: int):
    """mmdetection's ``filter_scores_and_topk`` on one level of one image.

    scores: (N, C). The pairs with ``score > score_thr`` in row-major (location, class) order,
    sorted by ``torch.sort(descending=True)`` (the very call mmdetection makes, so ties come in
    the same order on the same device), the first ``nms_pre`` (all when ``nms_pre <= 0``;
    mmdetection's ``-1`` drops the last one, an off-by-one we do not copy).
    Returns (scores (k,), location index (k,) int64, class (k,) int64).
    """
    valid = scores > score_thr
    sc = scores[valid]
    idx = valid.nonzero()
    sc, order = sc.sort(descending=True)
    if nms_pre > 0:
        sc, order = sc[:nms_pre], order[:nms_pre]
    loc, cls = idx[order].unbind(1)
    return sc, loc, cls


def meta_scale_and_size(meta: dict, index: int = 0):
    """(scale factor as 1, 2 or 4 floats, original (h, w) or None) of one image's meta.

    Keys: ``"scale_factor"`` (resized / original; a float, (w, h) as mmdetection 3 writes it,
    or (w, h, w, h) as mmdetection 2 did; default 1.0), and the original size as ``"orig_size"``
    (h, w) or mmdetection's ``"ori_shape"`` ((h, w) or (h, w, channels)); both may be given
    when they agree.
    """
    name = f"metas[{index}]"
    if not isinstance(meta, dict):
        raise TypeError(f"{name} must be a dict, got {type(meta).__name__}")
    sf = meta.get("scale_factor", 1.0)
    if isinstance(sf, torch.Tensor):
        sf = sf.detach().cpu().reshape(-1).tolist()
    elif hasattr(sf, "tolist"):  # numpy
        sf = sf.tolist()
    sf = [float(v) for v in (sf if isinstance(sf, (list, tuple)) else [sf])]
    if len(sf) not in (1, 2, 4) or not all(math.isfinite(v) and v > 0 for v in sf):
        raise ValueError(f"{name}['scale_factor'] must be a positive finite float, (w, h) or "
                         f"(w, h, w, h), got {meta.get('scale_factor')!r}")
    sizes = []
    for key in ("orig_size", "ori_shape"):
        if meta.get(key) is not None:
            v = meta[key]
            v = v.tolist() if hasattr(v, "tolist") else list(v)
            if len(v) not in (2, 3) or not all(float(x) >= 0 for x in v[:2]):
                form = "(h, w) or (h, w, c)" if key == "ori_shape" else "(h, w)"
                raise ValueError(f"{name}['{key}'] must be {form} of the original image, got "
                                 f"{meta[key]!r}")
            sizes.append((key, (float(v[0]), float(v[1]))))
    if len(sizes) == 2 and sizes[0][1] != sizes[1][1]:
        raise ValueError(f"{name}: 'orig_size' {sizes[0][1]} and 'ori_shape' {sizes[1][1]} "
                         "disagree")
    return sf, (sizes[0][1] if sizes else None)


def rescale_boxes(boxes: torch.Tensor, scale_factor, size=None, clip: bool = False):
    """(n, 4) xyxy boxes divided by ``scale_factor`` (1, 2 (w, h) or 4 floats), then, with
    ``clip``, clamped to ``[0, w]`` x ``[0, h]`` of ``size`` = (h, w)."""
    sf = torch.as_tensor(scale_factor, dtype=boxes.dtype, device=boxes.device).reshape(-1)
    if sf.numel() == 2:
        sf = sf.repeat(2)
    boxes = boxes / sf
    if clip:
        if size is None:
            raise ValueError("clipping needs the original image size")
        h, w = (float(v) for v in size)
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1)
    return boxes


def valid_size_mask(boxes: torch.Tensor, min_bbox_size: float) -> torch.Tensor:
    """(..., 4) xyxy -> (...) bool: width and height both > ``min_bbox_size`` (all True when
    ``min_bbox_size < 0``, mmdetection's "no filter")."""
    if min_bbox_size < 0:
        return torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w > min_bbox_size) & (h > min_bbox_size)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                iou_thr: float) -> torch.Tensor:
    """Class-wise NMS: indices of the kept boxes, by decreasing score.

    mmcv's ``batched_nms`` arithmetic (what mmdetection runs): each class is moved away by
    ``label * (max coordinate + 1)`` and one ``nms`` runs on the moved boxes
    (``torchvision.ops.nms``: IoU = inter / (area1 + area2 - inter), suppressed when > iou_thr).
    That offset keeps the classes apart only when no coordinate is below -1; unclipped boxes
    can be, and then mmcv (and torchvision's ``batched_nms``) may suppress across classes. We
    use ``label * (max - min + 1)`` in that case, which always separates them.
    """
    from torchvision.ops import nms

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    hi, lo = boxes.max(), boxes.min()
    span = torch.where(lo >= -1, hi + torch.tensor(1).to(boxes), hi - lo + 1)
    moved = boxes + (labels.to(boxes) * span)[:, None]
    return nms(moved, scores, float(iou_thr))


def postprocess_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *,
                           iou_thr: float, max_per_img: int, min_bbox_size: float = 0.0,
                           clip_to_image: bool = False, scale_factor=1.0, size=None) -> dict:
    """Steps 3-6 of the module docstring on one image's candidates (boxes in input pixels):
    ``{"boxes", "scores", "labels"}`` sorted by score."""
    boxes = rescale_boxes(boxes, scale_factor, size, clip_to_image)
    keep = valid_size_mask(boxes, min_bbox_size)
    if not bool(keep.all()):
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, iou_thr)
    if max_per_img >= 0:
        keep = keep[:max_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def detections_from_levels(cls_scores, bbox_preds, metas, *, score_thr: float, nms_pre: int,
                           iou_thr: float, max_per_img: int, min_bbox_size: float = 0.0,
                           clip_to_image: bool = True, score_factors=None) -> list[dict]:
    """Detections of a batch from per-level head maps (cls_scores [(B, C, H_l, W_l)]
    probabilities, bbox_preds [(B, 4, H_l, W_l)] xyxy input pixels, optional score_factors
    [(B, 1, H_l, W_l)]): the module docstring's steps, per image. ``clip_to_image`` needs the
    original size in every meta."""
    B, C = cls_scores[0].shape[:2]
    if not isinstance(metas, (list, tuple)) or len(metas) != B:
        got = len(metas) if isinstance(metas, (list, tuple)) else type(metas).__name__
        raise ValueError(f"metas must be a list of {B} dicts (one per image), got {got}")
    parsed = [meta_scale_and_size(m, b) for b, m in enumerate(metas)]
    if clip_to_image:
        for b, (_, size) in enumerate(parsed):
            if size is None:
                raise ValueError(f"metas[{b}] has no 'orig_size' (or 'ori_shape'): "
                                 "clip_to_image=True needs the original image size")
    results = []
    for b, (sf, size) in enumerate(parsed):
        all_boxes, all_scores, all_labels = [], [], []
        for level, (s_map, b_map) in enumerate(zip(cls_scores, bbox_preds)):
            scores = s_map[b].permute(1, 2, 0).reshape(-1, C).float()
            sc, loc, cls = select_topk(scores, score_thr, nms_pre)
            if score_factors is not None:
                sc = sc * score_factors[level][b].reshape(-1).float()[loc]
            all_boxes.append(b_map[b].permute(1, 2, 0).reshape(-1, 4).float()[loc])
            all_scores.append(sc)
            all_labels.append(cls)
        results.append(postprocess_detections(
            torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels), iou_thr=iou_thr,
            max_per_img=max_per_img, min_bbox_size=min_bbox_size, clip_to_image=clip_to_image,
            scale_factor=sf, size=size))
    return results


def dense_candidates(cls_scores, bbox_preds, nms_pre: int, height=None, width=None, *,
                     clip_to_image: bool = False, min_bbox_size: float = -1.0):
    """The candidates of :func:`detections_from_levels` as fixed-size tensors (traceable):
    per level the ``nms_pre`` best (location, class) pairs by ``topk`` (all when
    ``nms_pre <= 0``), levels concatenated; boxes clipped to ``height`` x ``width`` with
    ``clip_to_image``; candidates failing the size filter get score ``-inf``. Scores at or below
    the score threshold are left for the NMS to drop. Returns (boxes (B, K, 4), scores (B, K),
    labels (B, K) int64)."""
    all_boxes, all_scores, all_labels = [], [], []
    for s_map, b_map in zip(cls_scores, bbox_preds):
        B, C = s_map.shape[:2]
        scores = s_map.permute(0, 2, 3, 1).reshape(B, -1).float()  # index = loc * C + cls
        boxes = b_map.permute(0, 2, 3, 1).reshape(B, -1, 4).float()
        k = scores.shape[1] if nms_pre <= 0 else torch.sym_min(nms_pre, scores.shape[1])
        top, idx = scores.topk(k, dim=1)
        loc = torch.div(idx, C, rounding_mode="floor")
        all_boxes.append(boxes.gather(1, loc[..., None].expand(-1, -1, 4)))
        all_scores.append(top)
        all_labels.append(idx - loc * C)
    boxes, scores = torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
    if clip_to_image:
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width),
                             y2.clamp(0, height)], -1)
    if min_bbox_size >= 0:
        scores = torch.where(valid_size_mask(boxes, min_bbox_size), scores,
                             torch.full_like(scores, float("-inf")))
    return boxes, scores, torch.cat(all_labels, 1)
