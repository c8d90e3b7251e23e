"""The alignment report: per-GT pre-NMS statistics, the post-NMS kinds of the detections and
their dataset summary (:func:`alignment_report`)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .primitives import assign_to_gts, average_ranks, box_iou_np, pearson, postprocess, to_numpy

__all__ = ["REPORT_VERSION", "alignment_report", "classify_detections", "report_from_pairs"]

REPORT_VERSION = 1


def _instance_stats(scores: np.ndarray, labels: np.ndarray | None, boxes: np.ndarray,
                    gt_boxes: np.ndarray, gt_labels: np.ndarray, topk: int, top_iou_k: int,
                    want_pairs: bool):
    """Per-GT pre-NMS statistics of one image (see :func:`alignment_report`)."""
    gt_of, iou_of = assign_to_gts(boxes, gt_boxes)
    stats, pair_s, pair_u = [], [], []
    for g in range(len(gt_boxes)):
        k = int(gt_labels[g])
        cand = gt_of == g
        if scores.ndim == 2:
            s_all = scores[:, k] if 0 <= k < scores.shape[1] else np.zeros(len(scores))
        else:
            s_all = scores
            cand &= labels == k
        idx = np.nonzero(cand)[0]  # ascending prediction index
        s, u = s_all[idx], iou_of[idx]
        order = np.argsort(-s, kind="stable")[:topk]  # ties: lower prediction index first
        s, u = s[order], u[order]
        n = len(s)
        pcc = pearson(average_ranks(s), average_ranks(u)) if n >= 2 else None
        top = float(u[:top_iou_k].mean()) if n else None
        stats.append({"gt": g, "label": k, "num_assigned": int(cand.sum()), "num_used": n,
                      "pcc": pcc, "top_iou": top})
        if want_pairs:
            pair_s.append(s)
            pair_u.append(u)
    return stats, pair_s, pair_u


def classify_detections(det_boxes, det_scores, det_labels, gt_boxes, gt_labels,
                        correct_iou: float = 0.5, error_iou: tuple = (0.1, 0.5)) -> np.ndarray:
    """Post-NMS kind of each detection of one image: 0 correct, 1 redundant, 2 error,
    3 background (see :func:`alignment_report`), in the input order."""
    det_boxes = to_numpy(det_boxes, shape_tail=(4,)).reshape(-1, 4)
    det_scores = to_numpy(det_scores).reshape(-1)
    det_labels = to_numpy(det_labels, np.int64).reshape(-1)
    gt_boxes = to_numpy(gt_boxes, shape_tail=(4,)).reshape(-1, 4)
    gt_labels = to_numpy(gt_labels, np.int64).reshape(-1)
    kinds = np.full(len(det_boxes), 3, dtype=np.int64)
    if len(det_boxes) == 0:
        return kinds
    iou = box_iou_np(det_boxes, gt_boxes)
    iou = np.where(det_labels[:, None] == gt_labels[None, :], iou, 0.0)  # same class only
    matched = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.argsort(-det_scores, kind="stable"):
        row = iou[d]
        free = np.where(~matched & (row >= correct_iou), row, -1.0)
        if len(row) and free.max() >= 0:
            g = int(free.argmax())  # highest IoU among the unmatched, ties: lowest index
            matched[g] = True
            kinds[d] = 0
        elif len(row) and row.max() >= correct_iou:
            kinds[d] = 1
        elif len(row) and error_iou[0] < row.max() < error_iou[1]:
            kinds[d] = 2
    return kinds


# ----------------------------------------------------------------------------- the report
def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def alignment_report(raw_predictions: Iterable[dict], gts: Iterable[dict], topk: int = 50,
                     top_iou_k: int = 10, correct_iou: float = 0.5, error_iou=(0.1, 0.5),
                     det_score_thr: float = 0.0, nms: dict | None = None,
                     per_instance: bool = False, return_pairs: bool = False) -> dict:
    """Task-alignment report of a detector on a set of images (TOOD's analysis, made exact).

    Inputs, one entry per image, in the same order (lists, or any iterables: they are zipped
    and consumed once, so generators of large sets work); arrays may be numpy or torch, all
    coordinates xyxy in the same frame (e.g. original-image pixels):

    * ``raw_predictions[i]``: ``{"scores": (N, C) per-class scores or (N,) scores, "boxes":
      (N, 4)}`` -- the pre-NMS predictions (every anchor, or any pre-NMS subset); with (N,)
      scores also ``"labels": (N,)`` (each prediction's class). Optional ``"detections":
      {"boxes", "scores", "labels"}``, the post-NMS output; when absent,
      :func:`postprocess` (``**nms``) makes it from the raw predictions.
    * ``gts[i]``: ``{"boxes": (G, 4), "labels": (G,)}`` (crowd regions left out by the caller).

    **Before NMS** (per GT instance g of class k):

    1. *assignment*: a prediction belongs to the GT its box overlaps most (IoU, ties: lowest GT
       index), if that IoU is > 0; geometry only, so a box is never counted for two GTs;
    2. *score* of a prediction for g: ``scores[i, k]`` with (N, C) scores; with (N,) scores its
       score, and it counts for g only if ``labels[i] == k``;
    3. g's *top predictions*: its assigned predictions sorted by score, descending (ties: lower
       prediction index first), the first ``topk`` (50); n_g of them (n_g may be < topk);
    4. ``pcc``: the Pearson correlation between the classification ranks (of the scores) and
       the localisation ranks (of the IoUs with g) of those n_g predictions; ranks 1 = highest,
       ties share their mean rank (i.e. Spearman's rho of score and IoU). Undefined (None) when
       n_g < 2 or all their scores, or all their IoUs, are equal;
    5. ``top_iou``: the mean IoU with g of the first ``min(top_iou_k, n_g)`` (10) of them;
       undefined when n_g = 0.

    Dataset values: ``pcc`` and ``top_iou`` are the means over the GTs where they are defined
    (``pcc_count``, ``top_iou_count`` GTs); ``gts_without_predictions`` counts the GTs with
    n_g = 0; ``mean_num_used`` is the mean n_g over all GTs.

    **After NMS** (per image; detections with score >= ``det_score_thr`` only), each detection's
    IoU with the GTs *of its own class*; detections in descending score order (ties: input
    order):

    * **correct**: IoU >= ``correct_iou`` (0.5) with a GT not matched yet; it matches the
      unmatched one of highest IoU (ties: lowest index) -- so each GT has at most one correct
      detection, its highest-scoring one (COCO's greedy matching);
    * **redundant**: otherwise, IoU >= ``correct_iou`` with an already matched GT (a duplicate
      NMS left);
    * **error**: otherwise, ``error_iou[0] < max IoU < error_iou[1]`` (0.1 < IoU < 0.5): a
      poorly localised box;
    * **background**: the rest (max IoU <= 0.1 with every GT of its class, or no such GT).

    Dataset values: the totals, their means per image (``*_per_image``), ``num_dets`` and
    ``recall`` = correct / number of GTs.

    Returns a JSON-serialisable dict::

        {"version": 1, "params": {...}, "num_images": int, "num_gts": int,
         "pre_nms": {"pcc", "pcc_count", "top_iou", "top_iou_count",
                     "gts_without_predictions", "mean_num_used"},
         "post_nms": {"correct", "redundant", "error", "background", "num_dets",
                      "correct_per_image", "redundant_per_image", "error_per_image",
                      "background_per_image", "recall"},
         "instances": [{"image", "gt", "label", "num_assigned", "num_used", "pcc",
                        "top_iou"}],          # with per_instance=True
         "pairs": {"score": [...], "iou": [...]}}   # with return_pairs=True: every
                                                    # (score, IoU) of the top predictions

    Undefined means (e.g. no GT at all) are None.
    """
    return report_from_pairs(zip(raw_predictions, gts), topk, top_iou_k, correct_iou,
                             error_iou, det_score_thr, nms, per_instance, return_pairs)


def report_from_pairs(pairs, topk: int = 50, top_iou_k: int = 10, correct_iou: float = 0.5,
                      error_iou=(0.1, 0.5), det_score_thr: float = 0.0, nms: dict | None = None,
                      per_instance: bool = False, return_pairs: bool = False) -> dict:
    """:func:`alignment_report` of an iterable of ``(raw_prediction, gt)`` pairs (consumed
    once; :func:`tood_ext.analysis.iter_raw_predictions` yields them)."""
    if topk < 1 or top_iou_k < 1:
        raise ValueError(f"topk and top_iou_k must be >= 1, got {topk}, {top_iou_k}")
    lo, hi = (float(v) for v in error_iou)
    nms = dict(nms or {})
    instances, pair_s, pair_u = [], [], []
    counts = np.zeros(4, dtype=np.int64)
    num_images = num_gts = 0
    for i, (raw, gt) in enumerate(pairs):
        num_images += 1
        gt_boxes = to_numpy(gt["boxes"], shape_tail=(4,)).reshape(-1, 4)
        gt_labels = to_numpy(gt["labels"], np.int64).reshape(-1)
        if len(gt_boxes) != len(gt_labels):
            raise ValueError(f"image {i}: {len(gt_boxes)} GT boxes but {len(gt_labels)} labels")
        num_gts += len(gt_boxes)
        scores = to_numpy(raw["scores"])
        boxes = to_numpy(raw["boxes"], shape_tail=(4,)).reshape(-1, 4)
        labels = None
        if scores.ndim == 1:
            if raw.get("labels") is None:
                raise ValueError(f"image {i}: (N,) scores need 'labels' (or give (N, C) scores)")
            labels = to_numpy(raw["labels"], np.int64).reshape(-1)
        elif scores.ndim != 2:
            raise ValueError(f"image {i}: scores must be (N,) or (N, C), got {scores.shape}")
        if len(scores) != len(boxes):
            raise ValueError(f"image {i}: {len(scores)} scores but {len(boxes)} boxes")
        stats, ps, pu = _instance_stats(scores, labels, boxes, gt_boxes, gt_labels, topk,
                                        top_iou_k, return_pairs)
        for st in stats:
            st["image"] = i
        instances += stats
        pair_s += ps
        pair_u += pu

        dets = raw.get("detections")
        if dets is None:
            dets = postprocess(scores, boxes, labels, **nms)
        d_scores = to_numpy(dets["scores"]).reshape(-1)
        keep = d_scores >= det_score_thr
        kinds = classify_detections(to_numpy(dets["boxes"], shape_tail=(4,))[keep],
                                    d_scores[keep], to_numpy(dets["labels"], np.int64)[keep],
                                    gt_boxes, gt_labels, correct_iou, (lo, hi))
        counts += np.bincount(kinds, minlength=4)

    per_image = max(num_images, 1)
    c, r, e, bg = (int(v) for v in counts)
    report = {
        "version": REPORT_VERSION,
        "params": {"topk": topk, "top_iou_k": top_iou_k, "correct_iou": correct_iou,
                   "error_iou": [lo, hi], "det_score_thr": det_score_thr, "nms": nms or None},
        "num_images": num_images, "num_gts": num_gts,
        "pre_nms": {
            "pcc": _mean(s["pcc"] for s in instances),
            "pcc_count": sum(s["pcc"] is not None for s in instances),
            "top_iou": _mean(s["top_iou"] for s in instances),
            "top_iou_count": sum(s["top_iou"] is not None for s in instances),
            "gts_without_predictions": sum(s["num_used"] == 0 for s in instances),
            "mean_num_used": _mean(s["num_used"] for s in instances),
        },
        "post_nms": {
            "correct": c, "redundant": r, "error": e, "background": bg,
            "num_dets": c + r + e + bg,
            "correct_per_image": c / per_image if num_images else None,
            "redundant_per_image": r / per_image if num_images else None,
            "error_per_image": e / per_image if num_images else None,
            "background_per_image": bg / per_image if num_images else None,
            "recall": c / num_gts if num_gts else None,
        },
    }
    if per_instance:
        report["instances"] = [{k: s[k] for k in ("image", "gt", "label", "num_assigned",
                                                  "num_used", "pcc", "top_iou")}
                               for s in instances]
    if return_pairs:
        report["pairs"] = {
            "score": [float(v) for v in np.concatenate(pair_s)] if pair_s else [],
            "iou": [float(v) for v in np.concatenate(pair_u)] if pair_u else []}
    return report
