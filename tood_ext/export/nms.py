"""``tood_ext_export::multiclass_nms``: fixed-size multi-class NMS as a custom op (eager:
:func:`tood_ext.models.postprocess.batched_nms`; ONNX: ``NonMaxSuppression``, see
:func:`tood_ext.export.onnx_translation_table`). Registered when this module is imported
(``import tood_ext.export`` does)."""
from __future__ import annotations

import torch

__all__ = ["multiclass_nms"]


@torch.library.custom_op("tood_ext_export::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                   num_classes: int, iou_threshold: float, score_threshold: float,
                   max_det: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-wise NMS of a batch of candidates, with fixed-size (padded) outputs.

    boxes (B, K, 4) xyxy, scores (B, K), labels (B, K) int64 in [0, num_classes). Candidates
    with ``score > score_threshold`` go through class-wise NMS
    (:func:`tood_ext.models.postprocess.batched_nms`: a box is suppressed by a higher-scoring
    box of its class with IoU > ``iou_threshold``); the best
    ``max_det`` survivors are kept. Returns ``(boxes (B, max_det, 4), scores (B, max_det),
    labels (B, max_det) int64, num_dets (B,) int64)``, sorted by score; padding rows are
    boxes 0, score 0, label -1.
    """
    from ..models.postprocess import batched_nms

    B = scores.shape[0]
    out_boxes = boxes.new_zeros((B, max_det, 4))
    out_scores = scores.new_zeros((B, max_det))
    out_labels = torch.full((B, max_det), -1, dtype=torch.int64, device=scores.device)
    num = torch.zeros((B,), dtype=torch.int64, device=scores.device)
    for b in range(B):
        idx = (scores[b] > score_threshold).nonzero()[:, 0]
        keep = batched_nms(boxes[b, idx], scores[b, idx], labels[b, idx], iou_threshold)
        sel = idx[keep[:max_det]]
        n = sel.numel()
        out_boxes[b, :n], out_scores[b, :n] = boxes[b, sel], scores[b, sel]
        out_labels[b, :n], num[b] = labels[b, sel], n
    return out_boxes, out_scores, out_labels, num


@multiclass_nms.register_fake
def _multiclass_nms_fake(boxes, scores, labels, num_classes, iou_threshold, score_threshold,
                         max_det):
    B = scores.shape[0]
    return (boxes.new_empty((B, max_det, 4)), scores.new_empty((B, max_det)),
            scores.new_empty((B, max_det), dtype=torch.int64),
            scores.new_empty((B,), dtype=torch.int64))
