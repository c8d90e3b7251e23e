"""Task-alignment diagnostics of a dense detector (TOOD, Feng et al. 2021, the analysis behind
its claim that a high score and an accurate box coincide), for any detector.

* :func:`alignment_report` -- the measurement itself, from pre-NMS predictions, the post-NMS
  detections and the ground truth of a set of images (numpy/torch arrays in, a JSON-serialisable
  dict out; the definitions are in its docstring);
* :func:`iter_raw_predictions` / :func:`analyze_model` -- run a tood_ext detector (TOOD or the
  ATSS baseline) over a :class:`~tood_ext.data.CocoDetection` set and feed the report;
* :func:`format_reports`, :func:`plot_score_vs_iou` -- a table and the score-vs-IoU scatter;
* ``python -m tood_ext analyze --checkpoint A.pth [B.pth ...] --data ROOT`` -- all of it
  (:func:`add_analyze_subparser`, :func:`cmd_analyze`).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Iterable

import numpy as np

__all__ = ["alignment_report", "analyze_model", "assign_to_gts", "average_ranks", "box_iou_np",
           "classify_detections", "format_reports", "iter_raw_predictions", "pearson",
           "plot_score_vs_iou", "postprocess", "add_analyze_subparser", "cmd_analyze"]

REPORT_VERSION = 1


# ----------------------------------------------------------------------------- primitives
def _np(x, dtype=np.float64, shape_tail: tuple = ()) -> np.ndarray:
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

    from . import _loader, reference

    ta = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    if _loader.has_ops():
        from .ops import box_iou
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

    from .models.postprocess import postprocess_detections, select_topk

    s = torch.as_tensor(_np(scores, np.float32))
    b = torch.as_tensor(_np(boxes, np.float32, (4,))).reshape(-1, 4)
    if s.ndim == 1:
        lab = torch.as_tensor(_np(labels, np.int64)).reshape(-1)
        sc, loc, _ = select_topk(s[:, None], score_thr, nms_pre)
        cls = lab[loc]
    else:
        sc, loc, cls = select_topk(s, score_thr, nms_pre)
    det = postprocess_detections(b[loc], sc, cls, iou_thr=iou_thr, max_per_img=max_per_img,
                                 min_bbox_size=min_bbox_size)
    return {k: v.numpy() for k, v in det.items()}


# ----------------------------------------------------------------------------- per image
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
    det_boxes = _np(det_boxes, shape_tail=(4,)).reshape(-1, 4)
    det_scores = _np(det_scores).reshape(-1)
    det_labels = _np(det_labels, np.int64).reshape(-1)
    gt_boxes = _np(gt_boxes, shape_tail=(4,)).reshape(-1, 4)
    gt_labels = _np(gt_labels, np.int64).reshape(-1)
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
    return _report(zip(raw_predictions, gts), topk, top_iou_k, correct_iou, error_iou,
                   det_score_thr, nms, per_instance, return_pairs)


def _report(pairs, topk: int = 50, top_iou_k: int = 10, correct_iou: float = 0.5,
            error_iou=(0.1, 0.5), det_score_thr: float = 0.0, nms: dict | None = None,
            per_instance: bool = False, return_pairs: bool = False) -> dict:
    if topk < 1 or top_iou_k < 1:
        raise ValueError(f"topk and top_iou_k must be >= 1, got {topk}, {top_iou_k}")
    lo, hi = (float(v) for v in error_iou)
    nms = dict(nms or {})
    instances, pair_s, pair_u = [], [], []
    counts = np.zeros(4, dtype=np.int64)
    num_images = num_gts = 0
    for i, (raw, gt) in enumerate(pairs):
        num_images += 1
        gt_boxes = _np(gt["boxes"], shape_tail=(4,)).reshape(-1, 4)
        gt_labels = _np(gt["labels"], np.int64).reshape(-1)
        if len(gt_boxes) != len(gt_labels):
            raise ValueError(f"image {i}: {len(gt_boxes)} GT boxes but {len(gt_labels)} labels")
        num_gts += len(gt_boxes)
        scores = _np(raw["scores"])
        boxes = _np(raw["boxes"], shape_tail=(4,)).reshape(-1, 4)
        labels = None
        if scores.ndim == 1:
            if raw.get("labels") is None:
                raise ValueError(f"image {i}: (N,) scores need 'labels' (or give (N, C) scores)")
            labels = _np(raw["labels"], np.int64).reshape(-1)
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
        d_scores = _np(dets["scores"]).reshape(-1)
        keep = d_scores >= det_score_thr
        kinds = classify_detections(_np(dets["boxes"], shape_tail=(4,))[keep],
                                    d_scores[keep], _np(dets["labels"], np.int64)[keep],
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


# ----------------------------------------------------------------------------- models
def _image_gts(dataset, image_id) -> dict:
    from .data import annotations_to_targets

    anns = dataset.coco.anns_by_image.get(image_id, [])
    boxes, labels = annotations_to_targets(anns, dataset.label_of, dataset.min_size)
    return {"boxes": boxes, "labels": labels}


def iter_raw_predictions(model, dataset, device="cpu", batch_size: int = 2,
                         score: str = "nms", max_images: int | None = None):
    """Yield ``(raw_prediction, gt)`` per image of ``dataset`` (a non-training
    :class:`~tood_ext.data.CocoDetection`) for :func:`alignment_report`, in original-image
    pixels, from one forward pass per batch (``model(images)``, eval mode, no gradient):

    * ``raw["scores"]`` (A, C): every anchor's per-class score -- ``score="nms"``: the score
      the detector ranks by in NMS (TOOD: P_align; the ATSS head: sigmoid(cls) *
      sigmoid(centerness)); ``score="cls"``: the classification probability alone
      (``out["cls_scores"]``: TOOD's P_align again, the ATSS head's sigmoid(cls));
    * ``raw["boxes"]`` (A, 4): the decoded (TOOD: aligned) boxes, divided by the scale factor
      and, with ``cfg.clip_to_image``, clipped to the image, as :meth:`TOOD.predict_by_feat`
      does (:func:`tood_ext.models.postprocess.rescale_boxes`); the anchors whose box fails
      the detector's size filter (``cfg.min_bbox_size``: zero-size boxes by default) are left
      out of ``raw`` (A = the anchors that remain), as they never reach NMS;
    * ``raw["detections"]``: the model's own post-NMS output (``model.predict_by_feat``);
    * ``gt``: the image's annotations (crowd and boxes under the dataset's ``min_size``
      dropped), original pixels.

    Nothing is added to the model: this only reads ``model(images)``'s head outputs.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from .data import collate
    from .models.postprocess import meta_scale_and_size, rescale_boxes, valid_size_mask

    if score not in ("nms", "cls"):
        raise ValueError(f"score must be 'nms' or 'cls', got {score!r}")
    model.eval()
    subset = dataset if max_images is None else Subset(dataset, range(min(max_images,
                                                                          len(dataset))))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, _targets, metas in loader:
        with torch.no_grad():
            out = model(images.to(device))
            dets = model.predict_by_feat(out, metas)
        B, C = out["cls_scores"][0].shape[:2]
        scores = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, C).float()
                            for s in out["cls_scores"]], 1)
        if score == "nms" and "centerness" in out:
            ctr = torch.cat([c.reshape(B, -1).float().sigmoid() for c in out["centerness"]], 1)
            scores = scores * ctr[..., None]
        boxes = torch.cat([b.permute(0, 2, 3, 1).reshape(B, -1, 4).float()
                           for b in out["bbox_preds"]], 1)
        cfg = model.cfg
        for b, meta in enumerate(metas):
            sf, size = meta_scale_and_size(meta, b)
            bx = rescale_boxes(boxes[b], sf, size, cfg.clip_to_image)
            ok = valid_size_mask(bx, cfg.min_bbox_size)
            raw = {"scores": scores[b][ok].cpu().numpy(), "boxes": bx[ok].cpu().numpy(),
                   "detections": {k: v.cpu().numpy() for k, v in dets[b].items()},
                   "image_id": meta["image_id"]}
            yield raw, _image_gts(dataset, meta["image_id"])


def analyze_model(model, dataset, device="cpu", batch_size: int = 2, score: str = "nms",
                  max_images: int | None = None, **report_kwargs) -> dict:
    """:func:`alignment_report` of ``model`` on ``dataset`` (see :func:`iter_raw_predictions`),
    streamed image by image; ``report_kwargs`` go to the report (``return_pairs=True`` for the
    scatter plot). ``params["score"]`` records the score used."""
    report = _report(iter_raw_predictions(model, dataset, device, batch_size, score, max_images),
                     **report_kwargs)
    report["params"]["score"] = score
    return report


# ----------------------------------------------------------------------------- output
def format_reports(reports: dict[str, dict], metrics: dict[str, dict] | None = None) -> str:
    """A Markdown table, one row per model (``reports``: name -> :func:`alignment_report`;
    ``metrics``: optional name -> COCO metrics with AP, AP50, AP75 in [0, 1])."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    cols = ["model"]
    if metrics:
        cols += ["AP", "AP50", "AP75"]
    cols += ["PCC top-50", "IoU top-10", "correct", "redundant", "error", "background", "GTs"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in reports.items():
        row = [name]
        if metrics:
            m = metrics.get(name) or {}
            row += [f(None if m.get(k) is None else 100 * m[k], ".1f")
                    for k in ("AP", "AP50", "AP75")]
        pre, post = r["pre_nms"], r["post_nms"]
        row += [f(pre["pcc"], ".3f"), f(pre["top_iou"], ".3f"), str(post["correct"]),
                str(post["redundant"]), str(post["error"]), str(post["background"]),
                str(r["num_gts"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_score_vs_iou(reports: dict[str, dict], path: str, max_points: int = 4000,
                      seed: int = 0) -> str:
    """Scatter of (IoU with the GT, score) of every model's top pre-NMS predictions per GT
    (the ``pairs`` of :func:`alignment_report` with ``return_pairs=True``), one colour per
    model, at most ``max_points`` per model (a seeded random subset). Writes ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    for k, (name, r) in enumerate(reports.items()):
        pairs = r.get("pairs")
        if not pairs:
            raise ValueError(f"report {name!r} has no pairs: use return_pairs=True")
        u, s = np.asarray(pairs["iou"]), np.asarray(pairs["score"])
        if len(u) > max_points:
            sel = rng.choice(len(u), max_points, replace=False)
            u, s = u[sel], s[sel]
        pcc, top = r["pre_nms"]["pcc"], r["pre_nms"]["top_iou"]
        label = (f"{name} (PCC {'-' if pcc is None else f'{pcc:.2f}'}, "
                 f"top-10 IoU {'-' if top is None else f'{top:.2f}'})")
        ax.scatter(u, s, s=5, alpha=0.35, color=f"C{k}", label=label, edgecolors="none")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("IoU with the assigned GT")
    ax.set_ylabel("score")
    ax.set_title("top-50 pre-NMS predictions per GT")
    ax.legend(loc="upper left", fontsize=7, markerscale=3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI
def add_analyze_subparser(subparsers) -> argparse.ArgumentParser:
    """Adds ``analyze`` to an ``argparse`` subparsers object (``python -m tood_ext analyze``)."""
    p = subparsers.add_parser(
        "analyze", help="task-alignment report of checkpoints (PCC, top-10 IoU, NMS counts)",
        description="Alignment report (tood_ext.analysis.alignment_report) of one or more "
                    "checkpoints on a COCO-format set: printed, written as JSON, plus a "
                    "score-vs-IoU scatter coloured by model.")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints")
    p.add_argument("--names", nargs="+",
                   help="a name per checkpoint (default: file stems, or their folders' names)")
    p.add_argument("--data", help="a folder written by `generate` (uses DATA/val)")
    p.add_argument("--val-ann", help="instances JSON (instead of --data)")
    p.add_argument("--val-images", help="image folder (default: next to --val-ann/images)")
    p.add_argument("--out", default="runs/analyze", help="folder of report.json, score_vs_iou.png")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="resize bounds (default: the checkpoint's training scale)")
    p.add_argument("--score", default="nms", choices=("nms", "cls"),
                   help="score ranked: what NMS ranks (default) or the cls probability alone")
    p.add_argument("--topk", type=int, default=50)
    p.add_argument("--top-iou-k", type=int, default=10)
    p.add_argument("--det-score-thr", type=float, default=0.0,
                   help="post-NMS counts over detections with score >= this")
    p.add_argument("--ops", default=None, choices=("kernel", "reference"))
    p.add_argument("--max-points", type=int, default=4000, help="per model, in the plot")
    p.set_defaults(func=cmd_analyze)
    return p


def _val_paths(args) -> tuple[str, str]:
    if args.val_ann:
        return args.val_ann, args.val_images or os.path.join(os.path.dirname(args.val_ann),
                                                               "images")
    if args.data:
        root = os.path.join(args.data, "val")
        return os.path.join(root, "annotations.json"), os.path.join(root, "images")
    raise SystemExit("analyze: give --data ROOT or --val-ann (and --val-images)")


def _default_names(paths: list[str]) -> list[str]:
    """File stems; the parent folder's name when stems repeat (runs/a/latest.pth -> a);
    else the paths."""
    for names in ([os.path.splitext(os.path.basename(p))[0] for p in paths],
                  [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]):
        if len(set(names)) == len(names):
            return names
    return list(paths)


def cmd_analyze(args) -> dict:
    import torch

    from .data import CocoDetection
    from .engine import model_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    names = args.names or _default_names(args.checkpoint)
    if len(names) != len(args.checkpoint) or len(set(names)) != len(names):
        raise SystemExit("analyze: --names needs one distinct name per checkpoint")
    ann, img_dir = _val_paths(args)
    reports = {}
    for name, ckpt in zip(names, args.checkpoint):
        model, state = model_from_checkpoint(ckpt, device, ops=args.ops)
        scale = args.scale or (state.get("classes") or {}).get("scale") or (1333, 800)
        dataset = CocoDetection(ann, img_dir, scale=tuple(scale))
        from .engine.evaluate import check_classes
        problem = check_classes(model, dataset, state.get("classes"))
        if problem:
            raise SystemExit(f"analyze: {ckpt} does not fit {ann}: {problem}")
        reports[name] = analyze_model(model, dataset, device, args.batch_size, args.score,
                                      args.max_images, topk=args.topk, top_iou_k=args.top_iou_k,
                                      det_score_thr=args.det_score_thr, return_pairs=True)
        reports[name]["checkpoint"] = ckpt
        reports[name]["head"] = model.cfg.head
    print(format_reports(reports))
    os.makedirs(args.out, exist_ok=True)
    plot = plot_score_vs_iou(reports, os.path.join(args.out, "score_vs_iou.png"),
                             args.max_points)
    out_json = os.path.join(args.out, "report.json")
    with open(out_json, "w") as f:
        json.dump(reports, f)
    print(f"report -> {out_json}\nplot -> {plot}")
    return reports
