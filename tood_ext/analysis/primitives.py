"""The analysis' primitives: numpy conversion, IoU (the library's ``box_iou``), ranks with
ties, Pearson correlation, the assignment of predictions to GTs and the post-processing of
raw predictions (:mod:`tood_ext.models.postprocess`)."""
from __future__ import annotations

import numpy as np

__all__ = ["assign_to_gts", "average_ranks", "box_iou_np", "pearson", "postprocess", "to_numpy"]


def to_numpy(x, dtype=np.float64, shape_tail: tuple = ()) -> np.ndarray:
    """torch tensor / numpy array / list -> numpy array (float64 by default)."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=dtype)
    if shape_tail and a.size == 0:
        a = a.reshape((0,) + shape_tail)
    return a


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU in float64, by the library's ``box_iou`` (the compiled
    op when built, else its pure-PyTorch reference): widths/heights clamped at 0,
    ``inter / max(union, 1e-7)``, so a pair whose union is 0 has IoU 0."""
    import torch

    from .. import _loader, reference

    ta = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    if _loader.has_ops():
        from ..ops import box_iou
    else:
        box_iou = reference.box_iou
    return box_iou(ta, tb).numpy()


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Descending ranks, 1 = largest; tied values share the mean of their ranks (so the Pearson
    correlation of two such rank vectors is Spearman's rho with tie correction)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(-x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two equal-length vectors; None when it is undefined (fewer than
    2 values, or either vector constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    if sxx <= 0 or syy <= 0:
        return None
    return float(np.clip((dx * dy).sum() / np.sqrt(sxx * syy), -1.0, 1.0))


def assign_to_gts(boxes: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each predicted box's GT: the one of highest IoU (ties: lowest GT index) when that IoU
    is > 0, else -1. Returns (gt index (N,) int64, that IoU (N,) float64; 0 when -1)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0 or len(gt_boxes) == 0:
        return np.full(n, -1, dtype=np.int64), np.zeros(n)
    iou = box_iou_np(boxes, gt_boxes)
    best = iou.argmax(1)  # first maximum
    best_iou = iou[np.arange(n), best]
    return np.where(best_iou > 0, best, -1).astype(np.int64), np.where(best_iou > 0, best_iou, 0.0)


def postprocess(scores, boxes, labels=None, score_thr: float = 0.05, nms_pre: int = 1000,
                iou_thr: float = 0.6, max_per_img: int = 100, min_bbox_size: float = 0.0) -> dict:
    """Detections of one image from pre-NMS predictions, for inputs that come without their
    own, by the detector's post-processing (:mod:`tood_ext.models.postprocess`, no rescaling
    or clipping): the (prediction, class) pairs with score > ``score_thr``, the best
    ``nms_pre``, boxes of width or height ``<= min_bbox_size`` dropped (negative: none),
    class-wise NMS (IoU > ``iou_thr`` suppressed), the best ``max_per_img``. (tood_ext's
    detectors apply ``nms_pre`` per FPN level; pass their own detections to
    :func:`alignment_report` to count exactly what they output.)"""
    import torch

    from ..models.postprocess import postprocess_detections, select_topk

    s = torch.as_tensor(to_numpy(scores, np.float32))
    b = torch.as_tensor(to_numpy(boxes, np.float32, (4,))).reshape(-1, 4)
    if s.ndim == 1:
        lab = torch.as_tensor(to_numpy(labels, np.int64)).reshape(-1)
        sc, loc, _ = select_topk(s[:, None], score_thr, nms_pre)
        cls = lab[loc]
    else:
        sc, loc, cls = select_topk(s, score_thr, nms_pre)
    det = postprocess_detections(b[loc], sc, cls, iou_thr=iou_thr, max_per_img=max_per_img,
                                 min_bbox_size=min_bbox_size)
    return {k: v.numpy() for k, v in det.items()}
