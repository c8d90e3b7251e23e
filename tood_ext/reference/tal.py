"""Pure-PyTorch reference of the task-aligned assignment (TOOD's TAL), same signature as
:func:`tood_ext.ops.tal.task_aligned_assign`.

Written from the op's contract (not from the kernels), with dense (B, G, A) tensors
throughout: the metric of every (image, GT, anchor) comes from
:func:`tood_ext.reference.box_ops.alignment_metric`, the top-k selection from a per-row k-th
value plus a cumulative count of the ties. Half inputs are computed in float32. Used by the
tests, the benchmarks and as a fallback where the compiled kernels are unavailable.
"""
from __future__ import annotations

import torch

from .._types import TALResult
from ..ops._checks import sanitize_gts
from ..ops._tal_spec import CANDIDATE_MODES, CONFLICT_MODES, check_label_values, check_tal_args
from ..ops._tal_spec import check_tal_rotated_args, tal_rotated_shape, tal_shape
from .box_ops import alignment_metric
from .probiou import probiou_pair

__all__ = ["CANDIDATE_MODES", "CONFLICT_MODES", "TALResult", "inside_boxes",
           "inside_rotated", "task_aligned_assign", "task_aligned_assign_rotated"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def inside_boxes(gt_boxes: torch.Tensor, min_inside_size: float) -> torch.Tensor:
    """The boxes of the centre test: ``gt_boxes`` itself when ``min_inside_size`` is 0, else
    ultralytics' ``select_candidates_in_gts`` arithmetic: xyxy -> (centre, size), each side
    below ``min_inside_size`` set to it, -> xyxy (in the dtype of ``gt_boxes``)."""
    if not min_inside_size > 0:
        return gt_boxes
    x1, y1, x2, y2 = gt_boxes.unbind(-1)
    c = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2), -1)
    wh = torch.stack((x2 - x1, y2 - y1), -1)
    wh = torch.where(wh < min_inside_size, torch.full_like(wh, min_inside_size), wh)
    return torch.cat((c - wh / 2, c + wh / 2), -1)


def _positive_candidates(metric: torch.Tensor, inside: torch.Tensor, gt_mask: torch.Tensor,
                         topk: int, candidates: str) -> torch.Tensor:
    """(B, G, A) bool: anchor a is a positive candidate of GT g (before conflicts).

    Ranking per GT: t descending, ties by lower anchor index (a stable descending sort), NaN t
    never ranked. ``topk_then_inside``: the first k over all anchors, kept when t > 0 and the
    centre is inside; ``inside_then_topk``: the first k over all anchors of t masked to 0
    outside the GT (so t = 0 ties go to the lowest anchor indices, inside or not), kept when
    the centre is inside (t = 0 included). Padding GTs have none.
    """
    A = metric.shape[-1]
    if candidates == "inside_then_topk":
        metric = torch.where(inside, metric, torch.zeros_like(metric))
    eligible = ~torch.isnan(metric) & gt_mask[:, :, None]
    k = min(int(topk), A)
    # t is never -inf (s >= 0, u >= 0), so -inf marks the anchors that are not ranked; they
    # may fill the k slots of a row with fewer than k ranked anchors, and are dropped below.
    key = torch.where(eligible, metric, torch.full_like(metric, float("-inf")))
    kth = key.topk(k, dim=-1).values[..., -1:]  # (B, G, 1) the k-th largest key
    above = key > kth
    tied = key == kth
    need = k - above.sum(-1, keepdim=True, dtype=torch.int32)  # slots left for the ties
    take = tied & (tied.cumsum(-1, dtype=torch.int32) <= need)  # lowest anchor indices first
    selected = (above | take) & eligible & inside
    if candidates == "topk_then_inside":
        selected = selected & (metric > 0)
    return selected


def _background(pred_scores, gt_boxes, B, A) -> TALResult:
    W = gt_boxes.shape[-1]
    dev = pred_scores.device
    zeros = torch.zeros((B, A), dtype=pred_scores.dtype, device=dev)
    return TALResult(
        assigned_gt=torch.full((B, A), -1, dtype=torch.int64, device=dev),
        fg_mask=torch.zeros((B, A), dtype=torch.bool, device=dev),
        labels=torch.full((B, A), -1, dtype=torch.int64, device=dev),
        boxes=torch.zeros((B, A, W), dtype=gt_boxes.dtype, device=gt_boxes.device),
        iou=zeros, metric=zeros.clone(), soft_target=zeros.clone())


def task_aligned_assign(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                        anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                        gt_boxes: torch.Tensor, gt_mask: torch.Tensor, topk: int = 13,
                        alpha: float = 1.0, beta: float = 6.0,
                        candidates: str = "topk_then_inside", iou_mode: str = "iou",
                        inside_eps: float = 0.01, norm_eps: float = 1e-7,
                        conflict: str = "candidates", min_inside_size: float = 0.0) -> TALResult:
    """Reference of :func:`tood_ext.ops.tal.task_aligned_assign` (dense (B, G, A) tensors).

    Args:
        pred_scores: (B, A, C) class probabilities. pred_boxes: (B, A, 4) xyxy.
        anchor_points: (A, 2) anchor centres (x, y).
        gt_labels: (B, G) int64, in [0, C) where ``gt_mask`` (padding GTs may hold anything).
        gt_boxes: (B, G, 4) xyxy. gt_mask: (B, G) bool, False for padding GTs.
        topk: candidates per GT (>= 1). alpha, beta: exponents of the metric.
        candidates: ``"topk_then_inside"`` (TOOD / mmdetection) or ``"inside_then_topk"``
            (ultralytics, PP-YOLOE).
        iou_mode: the overlap u (``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"``), clamped at 0.
        inside_eps: centre inside when min(cx - x1, cy - y1, x2 - cx, y2 - cy) > inside_eps.
        norm_eps: eps of the soft-target normalisation.
        conflict: ``"candidates"`` (mmdetection) or ``"all_gts"`` (ultralytics), step 3.
        min_inside_size: 0 or ultralytics' ``stride_val``: the centre test runs against
            :func:`inside_boxes` of the GTs.
        (mmdetection: the defaults; ultralytics: ``candidates="inside_then_topk"``,
        ``iou_mode="ciou"``, ``inside_eps=1e-9``, ``norm_eps=1e-9``, ``conflict="all_gts"``,
        ``min_inside_size=stride_val``.)

    Semantics:
        1. Per (image, valid GT g, anchor a): s = pred_scores[b, a, label_g], u = IoU-family
           value of (pred box, GT) clamped at 0, t = s**alpha * u**beta, and the centre test
           (see :func:`tood_ext.reference.box_ops.alignment_metric`), the latter against
           ``inside_boxes(gt_boxes, min_inside_size)``; "inside" below includes "GT valid".
        2. Ranking of the anchors per GT: t descending, ties by lower anchor index (a stable
           descending sort, not ``torch.topk``); an anchor of NaN t is never ranked, never a
           candidate.
           ``topk_then_inside``: the first k of all anchors; the positive candidates are those
           with t > 0 and the centre inside. ``inside_then_topk`` (ultralytics' top-k of the
           masked metric): the first k of all anchors ranked by t masked to 0 outside the
           inside pairs (equal -> lower index, so a GT with fewer than k inside anchors of
           t > 0 gets the lowest-index anchors of masked t = 0 next); the positive candidates
           are those inside, t = 0 included. Fewer ranked anchors than k (A < k) give fewer
           candidates.
        3. Conflicts: an anchor that is a positive candidate of several GTs goes
           (``"candidates"``) to the claimant of highest u compared at float32 precision
           (``u.float()``), ties to the lower GT index; (``"all_gts"``) to ``argmax`` over all G
           GTs of ``where(inside, u, 0)`` at compute precision (first maximum, so all zeros ->
           GT 0; NaN above all), which becomes the anchor's GT even if it did not pick it.
        4. For each final positive, with t and u masked to 0 outside the inside pairs:
           ``t_hat = t * max_u / (max_t + norm_eps)``, maxima over the final positives (after
           step 3) of its GT.
        Empty inputs (B, A or G = 0) and images whose GTs are all padding give background.

    Returns:
        :class:`tood_ext._types.TALResult`; integer fields -1 and float fields 0 for
        background; ``boxes`` in the dtype of ``gt_boxes``, float fields in the dtype of
        ``pred_scores``. No output carries a gradient.
    """
    check_tal_args("reference.task_aligned_assign", pred_scores, pred_boxes, anchor_points,
                   gt_labels, gt_boxes, gt_mask, topk, alpha, beta, candidates, iou_mode,
                   inside_eps, norm_eps, conflict, min_inside_size)
    B, A, C, G = tal_shape(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask,
                           half_on_cpu=True)
    gt_boxes, gt_mask = sanitize_gts(gt_boxes.detach(), gt_mask)  # non-finite GT = padding
    check_label_values(gt_labels, gt_mask, C)  # after: a non-finite GT's label is not read
    if B == 0 or A == 0 or G == 0:
        return _background(pred_scores, gt_boxes, B, A)
    with torch.no_grad():
        # half inputs: computed in float32 (alignment_metric would round t and u to half)
        metric, overlaps, inside = alignment_metric(
            _upcast(pred_scores.detach()), _upcast(pred_boxes.detach()),
            _upcast(anchor_points.detach()), gt_labels, _upcast(gt_boxes.detach()), gt_mask,
            alpha=alpha, beta=beta, iou_mode=iou_mode, inside_eps=inside_eps)
        if min_inside_size > 0:  # the centre test against the widened boxes
            points = _upcast(anchor_points.detach())[None, None]  # (1, 1, A, 2)
            boxes = inside_boxes(_upcast(gt_boxes.detach()), min_inside_size)[:, :, None, :]
            deltas = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
            inside = (deltas.amin(-1) > inside_eps) & gt_mask[:, :, None]
        return _assign(metric, overlaps, inside, gt_labels, gt_boxes.detach(), gt_mask, topk,
                       candidates, conflict, norm_eps, pred_scores.dtype)


def _assign(metric: torch.Tensor, overlaps: torch.Tensor, inside: torch.Tensor,
            gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor, topk: int,
            candidates: str, conflict: str, norm_eps: float, out_dtype) -> TALResult:
    """Steps 2-4 of the assignment from the dense (B, G, A) t, u and centre test ("inside"
    includes "GT valid"): the axis-aligned and the rotated reference share them. gt_boxes
    (B, G, W) of any box width W."""
    B, G, A = metric.shape
    pos = _positive_candidates(metric, inside, gt_mask, topk, candidates)  # (B, G, A)
    # from here t and u masked to 0 outside the inside pairs (ultralytics' tensors); the
    # positive candidates are inside pairs, so only "all_gts" sees the difference
    zero = torch.zeros((), dtype=metric.dtype, device=metric.device)
    metric = torch.where(inside, metric, zero)
    overlaps = torch.where(inside, overlaps, zero)

    # conflicts: highest u.float() among the GTs that picked the anchor, first on ties;
    # a NaN u (only possible with beta = 0) ranks below every number
    u32 = overlaps.float()
    rank_u = torch.where(pos, u32.nan_to_num(nan=-1.0), torch.full_like(u32, -2.0))
    fg = pos.any(dim=1)  # (B, A)
    best = rank_u.argmax(dim=1)  # (B, A); torch.argmax returns the first maximum
    if conflict == "all_gts":  # >= 2 claims: argmax of the masked u over all GTs
        many = pos.sum(dim=1) >= 2
        best = torch.where(many, overlaps.argmax(dim=1), best)
    assigned = torch.where(fg, best, torch.full_like(best, -1))
    gt_ids = torch.arange(G, device=assigned.device)[None, :, None]
    final = gt_ids == assigned[:, None, :]  # (B, G, A); a subset of pos for "candidates"

    ninf = torch.full_like(metric, float("-inf"))
    max_t = torch.where(final, metric, ninf).amax(dim=-1)  # (B, G), -inf without positives
    max_u = torch.where(final, overlaps, ninf).amax(dim=-1)

    idx = best.where(fg, torch.zeros_like(best))  # (B, A) a valid GT index everywhere
    t_a = metric.gather(1, idx[:, None, :]).squeeze(1)
    u_a = overlaps.gather(1, idx[:, None, :]).squeeze(1)
    soft = t_a * max_u.gather(1, idx) / (max_t.gather(1, idx) + norm_eps)

    labels = gt_labels.gather(1, idx).where(fg, torch.full_like(idx, -1))
    boxes = gt_boxes.gather(1, idx[:, :, None].expand(B, A, gt_boxes.shape[-1]))
    boxes = boxes.where(fg[:, :, None], torch.zeros((), dtype=boxes.dtype,
                                                    device=boxes.device))
    return TALResult(
        assigned_gt=assigned,
        fg_mask=fg,
        labels=labels,
        boxes=boxes,
        iou=torch.where(fg, u_a, zero).to(out_dtype),
        metric=torch.where(fg, t_a, zero).to(out_dtype),
        soft_target=torch.where(fg, soft, zero).to(out_dtype),
    )


# ---------------------------------------------------------------------------------------------
# oriented boxes (cx, cy, w, h, angle)
# ---------------------------------------------------------------------------------------------


def inside_rotated(anchor_points: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
                   min_inside_size: float = 0.0) -> torch.Tensor:
    """(B, G, A) bool: the centre test of ultralytics' ``RotatedTaskAlignedAssigner`` (8.4),
    in its arithmetic. The sides (w, h) of *valid* GTs shorter than ``min_inside_size`` are set
    to it; the corners p1 = c + v1 + v2, p2 = c + v1 - v2, p4 = c - v1 + v2 with
    v1 = (w / 2 * cos r, w / 2 * sin r), v2 = (-h / 2 * sin r, h / 2 * cos r) (ultralytics'
    ``xywhr2xyxyxyxy``); with ab = p2 - p1, ad = p4 - p1 and ap = point - p1 the anchor is
    inside when 0 <= ap.ab <= ab.ab and 0 <= ap.ad <= ad.ad (inclusive; NaN: outside), and
    the GT valid."""
    boxes = gt_boxes
    if min_inside_size > 0:
        wh = boxes[..., 2:4]
        small = (wh < min_inside_size) & gt_mask[..., None]
        wh = torch.where(small, torch.full_like(wh, min_inside_size), wh)
        boxes = torch.cat((boxes[..., :2], wh, boxes[..., 4:]), -1)
    cx, cy, w, h, r = (boxes[..., i:i + 1] for i in range(5))  # (B, G, 1) each
    cos, sin = torch.cos(r), torch.sin(r)
    v1x, v1y = w / 2 * cos, w / 2 * sin
    v2x, v2y = -h / 2 * sin, h / 2 * cos
    p1x, p1y = cx + v1x + v2x, cy + v1y + v2y
    p2x, p2y = cx + v1x - v2x, cy + v1y - v2y
    p4x, p4y = cx - v1x + v2x, cy - v1y + v2y
    abx, aby = p2x - p1x, p2y - p1y
    adx, ady = p4x - p1x, p4y - p1y
    apx = anchor_points[:, 0] - p1x  # (B, G, A)
    apy = anchor_points[:, 1] - p1y
    norm_ab = abx * abx + aby * aby
    norm_ad = adx * adx + ady * ady
    ap_ab = apx * abx + apy * aby
    ap_ad = apx * adx + apy * ady
    inside = (ap_ab >= 0) & (ap_ab <= norm_ab) & (ap_ad >= 0) & (ap_ad <= norm_ad)
    return inside & gt_mask[:, :, None]


def task_aligned_assign_rotated(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                                anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                                gt_boxes: torch.Tensor, gt_mask: torch.Tensor, topk: int = 13,
                                alpha: float = 1.0, beta: float = 6.0,
                                candidates: str = "inside_then_topk", norm_eps: float = 1e-9,
                                conflict: str = "all_gts", min_inside_size: float = 0.0,
                                probiou_eps: float = 1e-7) -> TALResult:
    """Reference of :func:`tood_ext.ops.tal.task_aligned_assign_rotated` (dense (B, G, A)
    tensors): the task-aligned assignment of oriented boxes (cx, cy, w, h, angle in radians).

    The same steps as :func:`task_aligned_assign` with, per (image, valid GT, anchor):
    u = ProbIoU(GT, predicted box) clamped at 0 (ultralytics' ``probiou`` with ``eps =
    probiou_eps``), t = s**alpha * u**beta, and the centre test :func:`inside_rotated` (with
    ``min_inside_size``). ultralytics' ``RotatedTaskAlignedAssigner``: the defaults with
    ``min_inside_size=stride_val``. Returns a :class:`TALResult` whose ``boxes`` are (B, A, 5).
    Half inputs are computed in float32. A GT with a non-finite coordinate or angle is padding.
    """
    check_tal_rotated_args("reference.task_aligned_assign_rotated", pred_scores, pred_boxes,
                           anchor_points, gt_labels, gt_boxes, gt_mask, topk, alpha, beta,
                           candidates, norm_eps, conflict, min_inside_size, probiou_eps)
    B, A, C, G = tal_rotated_shape(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                                   gt_mask, half_on_cpu=True)
    gt_boxes, gt_mask = sanitize_gts(gt_boxes.detach(), gt_mask)  # non-finite GT = padding
    check_label_values(gt_labels, gt_mask, C)
    if B == 0 or A == 0 or G == 0:
        return _background(pred_scores, gt_boxes, B, A)
    with torch.no_grad():
        scores = _upcast(pred_scores.detach())
        pred = _upcast(pred_boxes.detach())
        points = _upcast(anchor_points.detach())
        gts = _upcast(gt_boxes)
        inside = inside_rotated(points, gts, gt_mask, min_inside_size)
        # ultralytics' probiou(gt, pred) of every pair
        overlaps = probiou_pair(gts[:, :, None, :], pred[:, None, :, :], probiou_eps).clamp(min=0)
        labels = torch.where(gt_mask, gt_labels, torch.zeros_like(gt_labels))
        s = scores.gather(2, labels[:, None, :].expand(B, A, G)).transpose(1, 2)  # (B, G, A)
        metric = s.pow(alpha) * overlaps.pow(beta)
        return _assign(metric, overlaps, inside, gt_labels, gt_boxes, gt_mask, topk,
                       candidates, conflict, norm_eps, pred_scores.dtype)
