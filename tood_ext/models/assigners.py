"""ATSS assignment (TOOD's first epochs) and the centerness weights of those epochs.

The task-aligned assignment of the later epochs is our op ``task_aligned_assign``
(:mod:`tood_ext.ops.tal`), called from :meth:`tood_ext.models.TOODHead`'s loss.
"""
from __future__ import annotations

import torch

__all__ = ["atss_assign", "centerness_target"]


def atss_assign(anchors: torch.Tensor, num_level_anchors, gt_boxes: torch.Tensor,
                topk: int = 9, box_iou=None, inside_eps: float = 0.01) -> torch.Tensor:
    """ATSS (Zhang et al. 2020) as mmdetection's ``ATSSAssigner`` for one image.

    Args:
        anchors: (A, 4) xyxy prior boxes, levels concatenated in ``num_level_anchors`` order
            (anchor-free TOOD: the virtual anchors of side 8 * stride).
        num_level_anchors: anchors per level.
        gt_boxes: (G, 4) xyxy.
        topk: candidates per level and GT (the ``min(topk, level size)`` anchors of smallest
            centre distance to the GT centre; ties in ``torch.topk``'s order).
        box_iou: ``box_iou(boxes1, boxes2, eps=...)`` of the chosen ops (kernel or reference).

    Rule: with the IoUs (anchor box vs GT, eps 1e-6) of a GT's candidates, threshold
    ``mean + std`` (unbiased std, as ``Tensor.std``); a candidate is positive when its IoU
    >= threshold and its centre lies inside the GT (min of the four centre-to-side distances
    > ``inside_eps``); an anchor positive for several GTs goes to the one of highest IoU
    (equal IoU: lower GT index).

    Returns:
        (A,) int64 assigned GT index, -1 for background.
    """
    if box_iou is None:
        from ..reference import box_iou
    A, G = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((A,), -1, dtype=torch.long, device=anchors.device)
    if A == 0 or G == 0:
        return assigned
    overlaps = box_iou(anchors, gt_boxes, eps=1e-6)  # (A, G)
    acx = (anchors[:, 0] + anchors[:, 2]) / 2
    acy = (anchors[:, 1] + anchors[:, 3]) / 2
    gcx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    gcy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    dist = ((acx[:, None] - gcx[None]) ** 2 + (acy[:, None] - gcy[None]) ** 2).sqrt()
    cands, start = [], 0
    for n in num_level_anchors:
        n = int(n)
        if n:
            _, idx = dist[start:start + n].topk(min(topk, n), dim=0, largest=False)
            cands.append(idx + start)
        start += n
    cand = torch.cat(cands, 0)  # (K, G)
    cand_iou = overlaps.gather(0, cand)
    thr = cand_iou.mean(0) + cand_iou.std(0)
    cx, cy = acx[cand], acy[cand]
    inside = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx,
                          gt_boxes[:, 3] - cy], 0).amin(0) > inside_eps
    is_pos = (cand_iou >= thr[None]) & inside
    gt_col = torch.arange(G, device=anchors.device).expand_as(cand)
    masked = torch.full_like(overlaps, -1.0)  # IoU >= 0, so -1 marks "not a positive"
    masked[cand[is_pos], gt_col[is_pos]] = overlaps[cand[is_pos], gt_col[is_pos]]
    # highest IoU, ties to the lowest GT index: argmax of IoU * G - index is not exact in
    # float, so take the max then the first column reaching it
    best = masked.amax(1)
    first = (masked == best[:, None]).float().argmax(1)
    return torch.where(best >= 0, first, assigned)


def centerness_target(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of each anchor centre in its GT box (aligned rows):
    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` (mmdetection's ATSS head)."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], 1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], 1)
    return torch.sqrt(lr.amin(1) / lr.amax(1) * (tb.amin(1) / tb.amax(1)))
