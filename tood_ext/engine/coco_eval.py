"""COCO bounding-box AP: pycocotools when installed, else a numpy twin of its algorithm.

Both take the ground truth as an instances JSON (path or dict) and detections as COCO results
(``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``) and return the twelve numbers
of ``COCOeval.summarize()`` by name (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm,
ARl; -1 where a split has no ground truth, pycocotools' convention).

The numpy twin follows pycocotools' ``COCOeval`` step by step (written from its documented
behaviour, not copied): 10 IoU thresholds 0.50:0.05:0.95; 101 recall points; at most 1/10/100
detections per image and category, highest score first (stable sort); greedy matching of each
detection, in score order, to the unmatched ground truth of highest IoU >= threshold, preferring
non-ignored ground truth; crowd boxes (``iscrowd``) are ignored regions whose IoU is
intersection / detection area and which may absorb any number of detections; ground truth whose
``area`` lies outside the split's range is ignored, as are unmatched detections whose box area
lies outside it; precision made monotone from the right and read at each recall threshold.
``tests/test_engine.py`` checks it against hand-computed cases and, when pycocotools is
installed, against pycocotools on random cases.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_RNGS = ((0.0, 1e10), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e10))


def have_pycocotools() -> bool:
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        return False
    return True


def _load_gt(gt) -> dict:
    if isinstance(gt, str):
        with open(gt) as f:
            return json.load(f)
    return gt


def _check_dets(gt: dict, dets: list[dict]) -> None:
    img_ids = {im["id"] for im in gt["images"]}
    bad = {d["image_id"] for d in dets} - img_ids
    if bad:
        raise ValueError(f"detections for image ids not in the ground truth: {sorted(bad)[:5]}")


def coco_bbox_metrics(gt, dets: list[dict], backend: str = "auto") -> dict:
    """COCO bbox metrics of ``dets`` against ``gt`` (path or dict); ``backend`` = auto|pycocotools|numpy.

    The returned dict also has ``"backend"`` (which one ran).
    """
    gt = _load_gt(gt)
    _check_dets(gt, dets)
    if backend == "auto":
        backend = "pycocotools" if have_pycocotools() else "numpy"
    if backend == "pycocotools" and dets:  # loadRes cannot take an empty list
        stats = _pycocotools_stats(gt, dets)
    elif backend in ("pycocotools", "numpy"):
        stats = _numpy_stats(gt, dets)
    else:
        raise ValueError(f"backend must be auto, pycocotools or numpy; got {backend!r}")
    out = {k: float(v) for k, v in zip(METRIC_NAMES, stats)}
    out["backend"] = backend
    return out


def _pycocotools_stats(gt: dict, dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its own progress and table
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def box_iou_xywh(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes; against a crowd box the union is the detection's area."""
    d = np.asarray(d, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(g, dtype=np.float64).reshape(-1, 4)
    iw = (np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2])
          - np.maximum(d[:, None, 0], g[None, :, 0]))
    ih = (np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3])
          - np.maximum(d[:, None, 1], g[None, :, 1]))
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    da = (d[:, 2] * d[:, 3])[:, None]
    ga = (g[:, 2] * g[:, 3])[None, :]
    union = np.where(np.asarray(crowd, dtype=bool)[None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching at every IoU threshold -> (matched (T, D) bool, matched-to-ignored (T, D)).

    Detections are in score order, ground truth sorted with non-ignored first.
    """
    T, (D, G) = len(IOU_THRS), ious.shape
    matched = np.zeros((T, D), dtype=bool)
    dt_ig = np.zeros((T, D), dtype=bool)
    for t, thr in enumerate(IOU_THRS):
        gt_taken = np.zeros(G, dtype=bool)
        for d in range(D):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(G):
                if gt_taken[g] and not gt_crowd[g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break  # the rest are ignored GTs; a match with a real one is better
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m == -1:
                continue
            matched[t, d], dt_ig[t, d], gt_taken[m] = True, gt_ignore[m], True
    return matched, dt_ig


def _numpy_stats(gt: dict, dets: list[dict]) -> np.ndarray:
    img_ids = sorted(im["id"] for im in gt["images"])
    cat_ids = sorted(c["id"] for c in gt["categories"])
    gts: dict[tuple[int, int], list[dict]] = {}
    for a in gt.get("annotations", []):
        gts.setdefault((a["image_id"], a["category_id"]), []).append(a)
    dts: dict[tuple[int, int], list[dict]] = {}
    for d in dets:
        dts.setdefault((d["image_id"], d["category_id"]), []).append(d)

    T, R, K, A, M = len(IOU_THRS), len(REC_THRS), len(cat_ids), len(AREA_RNGS), len(MAX_DETS)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k, cat in enumerate(cat_ids):
        per_area: list[list[dict]] = [[] for _ in AREA_RNGS]
        for img in img_ids:
            g = gts.get((img, cat), [])
            d = dts.get((img, cat), [])
            if not g and not d:
                continue
            order = np.argsort([-x["score"] for x in d], kind="mergesort")[:MAX_DETS[-1]]
            d = [d[i] for i in order]
            d_boxes = np.array([x["bbox"] for x in d], dtype=np.float64).reshape(-1, 4)
            d_area = d_boxes[:, 2] * d_boxes[:, 3]
            d_score = np.array([x["score"] for x in d], dtype=np.float64)
            g_boxes = np.array([x["bbox"] for x in g], dtype=np.float64).reshape(-1, 4)
            g_crowd = np.array([bool(x.get("iscrowd", 0)) for x in g], dtype=bool)
            g_area = np.array([x.get("area", x["bbox"][2] * x["bbox"][3]) for x in g],
                              dtype=np.float64)
            ious_all = box_iou_xywh(d_boxes, g_boxes, g_crowd)
            for a, (lo, hi) in enumerate(AREA_RNGS):
                g_ig = g_crowd | (g_area < lo) | (g_area > hi)
                gi = np.argsort(g_ig, kind="mergesort")
                matched, dt_ig = _match(ious_all[:, gi], g_ig[gi], g_crowd[gi])
                out_of_range = (d_area < lo) | (d_area > hi)
                dt_ig |= ~matched & out_of_range[None, :]
                per_area[a].append({"score": d_score, "matched": matched, "dt_ig": dt_ig,
                                    "g_ig": g_ig})
        for a in range(A):
            evals = per_area[a]
            if not evals:
                continue
            npig = int(sum(np.count_nonzero(~e["g_ig"]) for e in evals))
            if npig == 0:
                continue
            for m, max_det in enumerate(MAX_DETS):
                scores = np.concatenate([e["score"][:max_det] for e in evals])
                inds = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e["matched"][:, :max_det] for e in evals], axis=1)[:, inds]
                dt_ig = np.concatenate([e["dt_ig"][:, :max_det] for e in evals], axis=1)[:, inds]
                tps = np.cumsum(matched & ~dt_ig, axis=1).astype(np.float64)
                fps = np.cumsum(~matched & ~dt_ig, axis=1).astype(np.float64)
                for t in range(T):
                    tp, fp = tps[t], fps[t]
                    nd = len(tp)
                    rc = tp / npig
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if nd else 0.0
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if nd else pr
                    q = np.zeros(R)
                    idx = np.searchsorted(rc, REC_THRS, side="left")
                    valid = idx < nd
                    q[valid] = pr[idx[valid]]
                    precision[t, :, k, a, m] = q

    def ap(t=None, a=0):
        s = precision[:, :, :, a, M - 1] if t is None else precision[t, :, :, a, M - 1]
        s = s[s > -1]
        return float(s.mean()) if s.size else -1.0

    def ar(a=0, m=M - 1):
        s = recall[:, :, a, m]
        s = s[s > -1]
        return float(s.mean()) if s.size else -1.0

    return np.array([ap(), ap(0), ap(5), ap(a=1), ap(a=2), ap(a=3),
                     ar(m=0), ar(m=1), ar(m=2), ar(a=1), ar(a=2), ar(a=3)])


def format_table(metrics: dict, title: str = "COCO bbox") -> str:
    """The metrics as a small text table (percent, one decimal; '-' for splits without GT)."""
    names = METRIC_NAMES[:6]
    cells = ["-" if metrics[n] < 0 else f"{100 * metrics[n]:.1f}" for n in names]
    width = [max(len(n), len(c)) for n, c in zip(names, cells)]
    head = " | ".join(n.rjust(w) for n, w in zip(names, width))
    row = " | ".join(c.rjust(w) for c, w in zip(cells, width))
    rule = "-+-".join("-" * w for w in width)
    return f"{title} ({metrics.get('backend', '')})\n{head}\n{rule}\n{row}"
