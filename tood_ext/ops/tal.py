"""Task-aligned assignment (TAL) as one fused op, without the (B, G, A) blow-up.

``task_aligned_assign`` runs TOOD's assignment for a whole batch: the alignment metric of every
(image, GT, anchor) is computed on the fly (the device functions of ``alignment_metric``), each
GT keeps its top-k candidates, conflicts go to the GT of highest IoU (among the claimants, or
ultralytics' argmax over all GTs), and the soft targets are normalised per GT. See
:func:`task_aligned_assign` for the exact semantics.
"""
from __future__ import annotations

import torch

from .. import _loader
from .._types import TALResult
from ._checks import sanitize_gts
from ._tal_spec import CANDIDATE_MODES, CONFLICT_MODES, check_tal_args, tal_shape
from ._tal_spec import check_tal_rotated_args, tal_rotated_shape

__all__ = ["CANDIDATE_MODES", "CONFLICT_MODES", "TALResult", "task_aligned_assign",
           "task_aligned_assign_rotated"]


def task_aligned_assign(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                        anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                        gt_boxes: torch.Tensor, gt_mask: torch.Tensor, topk: int = 13,
                        alpha: float = 1.0, beta: float = 6.0,
                        candidates: str = "topk_then_inside", iou_mode: str = "iou",
                        inside_eps: float = 0.01, norm_eps: float = 1e-7,
                        conflict: str = "candidates", min_inside_size: float = 0.0) -> TALResult:
    """TOOD's task-aligned assignment of anchors to GTs, for a batch, in one op.

    Args:
        pred_scores: (B, A, C) class probabilities. pred_boxes: (B, A, 4) predicted xyxy boxes.
        anchor_points: (A, 2) anchor centres. gt_labels: (B, G) int64 (in [0, C) where valid).
        gt_boxes: (B, G, 4) xyxy. gt_mask: (B, G) bool, False for padding GTs.
        topk: candidates per GT (13 in TOOD / mmdetection, 10 in YOLOv8; at most 64 on CUDA).
        alpha, beta: the metric ``t = s**alpha * u**beta`` (s: score of the GT's class, u: overlap
            of the predicted box with the GT, ``iou_mode`` clamped at 0).
        candidates: ``"topk_then_inside"`` (paper, mmdetection): per GT the top-k anchors by t
            over all anchors; positives are those with t > 0 whose centre is inside the GT.
            ``"inside_then_topk"`` (ultralytics, PP-YOLOE): per GT the top-k over all anchors
            of t masked to 0 where the centre is outside (``torch.topk(t * inside, k)``);
            positives are those of them inside, t = 0 included. Equal values rank by lower
            anchor index, so a GT with fewer than k inside anchors of t > 0 fills its top-k
            with the lowest-index anchors of masked t = 0, mostly outside it (no candidates);
            an inside one among them is a positive of t = 0. ultralytics and PP-YOLOE take
            ``torch.topk``'s order there, which is unspecified: the result is theirs under
            the lowest-index order (see :mod:`tood_ext.compat.ultralytics`).
        iou_mode: ``"iou"`` (TOOD) or ``"ciou"`` (ultralytics), also ``"giou"``, ``"diou"``.
        inside_eps: the centre is inside when min(cx - x1, cy - y1, x2 - cx, y2 - cy) >
            inside_eps (0.01 in mmdetection, 1e-9 in ultralytics).
        norm_eps: ``t_hat = t * max_u / (max_t + norm_eps)``.
        conflict: who wins an anchor that is a positive candidate of several GTs.
            ``"candidates"`` (paper, mmdetection): the claimant of largest u. ``"all_gts"``
            (ultralytics 8.4): the argmax over *all* G GTs of the overlap masked to 0 outside
            (centre inside, GT valid) pairs: the winner may be a GT that did not pick the anchor,
            which then becomes that GT's positive (its t and u, masked the same way, enter the
            GT's max t / max u).
        min_inside_size: 0 (off) or ultralytics' ``stride_val`` (16): for the centre test only,
            each GT box is converted xyxy -> (centre, size) -> xyxy with sides shorter than
            ``min_inside_size`` set to it, in ultralytics' arithmetic (``c = (x1 + x2) / 2``,
            ``w = x2 - x1``, ``x1' = c - w / 2``, ``x2' = c + w / 2``: bit for bit in float32).
            u, t and the output boxes use the GT box itself.

    Semantics (kernels and :func:`tood_ext.reference.task_aligned_assign` agree exactly):
        * ranking of one GT's candidates: larger t first (``"inside_then_topk"``: t masked to
          0 outside the GT), equal t -> lower anchor index first; a NaN t is never a candidate;
          fewer than k anchors -> fewer candidates;
        * an anchor that is a positive of several GTs: ``conflict="candidates"``: the claimant
          of largest u compared at float32 precision, equal -> lower GT index.
          ``conflict="all_gts"``: ``torch.argmax`` over all G GTs (compute precision: float32
          for float32 / half inputs, float64 for float64) of u where the centre is inside the
          (widened) GT and the GT is valid, 0 elsewhere: the first maximum wins (equal -> lower
          GT index; a column of zeros -> GT 0, even when GT 0 is padding or does not contain
          the anchor; its label and box are then GT 0's as given, u = 0, and t = 0 unless GT 0 is
          valid and contains it), a NaN u above every number. A GT may so hold more than topk
          positives. Anchors of a single claim keep it;
        * ``t_hat`` of a positive: its t times the largest u over its GT's final positives,
          divided by the largest t over them plus ``norm_eps``;
        * padding GTs claim nothing (only the ``"all_gts"`` zero column above can give an
          anchor to GT 0 when it is padding); G = 0, A = 0 or B = 0: all anchors background;
        * a GT with a non-finite coordinate (NaN, +-inf) is padding: this wrapper (and the
          reference) clears its mask and zeroes its box before the kernel runs, so it claims
          nothing and no NaN box or target comes from it (also not through the zero column).
          The kernels' centre test is False for a NaN coordinate of the GT or the anchor
          point, so even the raw ``torch.ops.tood_ext.task_aligned_assign`` gives a NaN GT no
          positive; an anchor point with a NaN coordinate is inside no GT (background).

    Returns:
        :class:`TALResult` ``(assigned_gt, fg_mask, labels, boxes, iou, metric, soft_target)``:
        (B, A) int64 GT index (-1 background), (B, A) bool, (B, A) int64 class (-1), (B, A, 4)
        the assigned GT box (0), and (B, A) u, t and t_hat with the assigned GT (0), the float
        outputs in the dtype of the scores. No gradient flows (the outputs are constants).

    Extra memory: O(B*A + B*G*topk) on both devices, never a (B, G, A) tensor: the candidates
    (B, G, k) x (index, t, u, flag); on CUDA (B, A) claim keys, final t and u, for ``"all_gts"``
    claim counts, and (B, G) maxima; on CPU scratch rows of A anchors and of G GTs per thread.
    ``"all_gts"`` recomputes u and the centre test against all G GTs only for anchors claimed
    >= 2 times (O(G) each). Deterministic on both devices (every CUDA atomic is a max or a
    count). One device sync on CUDA (label validation).
    """
    check_tal_args("task_aligned_assign", pred_scores, pred_boxes, anchor_points, gt_labels,
                   gt_boxes, gt_mask, topk, alpha, beta, candidates, iou_mode, inside_eps,
                   norm_eps, conflict, min_inside_size)
    _loader.check_inputs("task_aligned_assign", pred_scores=pred_scores, pred_boxes=pred_boxes,
                         anchor_points=anchor_points, gt_labels=gt_labels, gt_boxes=gt_boxes,
                         gt_mask=gt_mask)
    gt_boxes, gt_mask = sanitize_gts(gt_boxes.detach(), gt_mask)  # non-finite GT = padding
    out = torch.ops.tood_ext.task_aligned_assign(
        pred_scores.detach(), pred_boxes.detach(), anchor_points.detach(), gt_labels,
        gt_boxes, gt_mask, int(topk), alpha, beta, candidates, iou_mode, inside_eps,
        norm_eps, conflict, float(min_inside_size))
    return TALResult(*out)


def task_aligned_assign_rotated(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                                anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                                gt_boxes: torch.Tensor, gt_mask: torch.Tensor, topk: int = 13,
                                alpha: float = 1.0, beta: float = 6.0,
                                candidates: str = "inside_then_topk", norm_eps: float = 1e-9,
                                conflict: str = "all_gts", min_inside_size: float = 0.0,
                                probiou_eps: float = 1e-7) -> TALResult:
    """The task-aligned assignment of oriented boxes, in one op (ultralytics'
    ``RotatedTaskAlignedAssigner`` without its (B, G, A) tensors).

    Args:
        pred_scores: (B, A, C) class probabilities. pred_boxes: (B, A, 5) predicted boxes
            (cx, cy, w, h, angle in radians). anchor_points: (A, 2) anchor centres (x, y).
        gt_labels: (B, G) int64 (in [0, C) where valid). gt_boxes: (B, G, 5) (cx, cy, w, h,
            angle). gt_mask: (B, G) bool, False for padding GTs.
        topk: candidates per GT (10 in ultralytics' ``v8OBBLoss``; at most 64 on CUDA).
        alpha, beta: the metric ``t = s**alpha * u**beta`` (s: score of the GT's class;
            ``v8OBBLoss``: 0.5, 6.0).
        candidates, conflict, norm_eps: as in :func:`task_aligned_assign`; the defaults
            (``"inside_then_topk"``, ``"all_gts"``, 1e-9) are ultralytics'.
        min_inside_size: 0 (off) or ultralytics' ``stride_val`` (16): for the centre test only,
            a *valid* GT's w and h below it are set to it.
        probiou_eps: the ``eps`` of ultralytics' ``probiou``.

    Semantics (kernels and :func:`tood_ext.reference.task_aligned_assign_rotated` agree;
    ultralytics 8.4.190's ``RotatedTaskAlignedAssigner`` under the lowest-index order of equal
    values, see :func:`task_aligned_assign` for the ranking, tie and conflict rules, all
    shared):
        * u = ``probiou(gt, pred)`` clamped at 0 (ultralytics' formula and order of operations,
          floor 0, no CIoU term: :func:`tood_ext.probiou`); t as above, both computed only
          for the pairs that need them;
        * the centre test is ultralytics' ``select_candidates_in_gts`` of the rotated
          assigner: the GT's corners p1 = c + v1 + v2, p2 = c + v1 - v2, p4 = c - v1 + v2
          (v1 = (w/2 cos r, w/2 sin r), v2 = (-h/2 sin r, h/2 cos r), ``xywhr2xyxyxyxy``),
          the anchor point ap = point - p1 projected on ab = p2 - p1 and ad = p4 - p1: inside
          when ``0 <= ap.ab <= ab.ab`` and ``0 <= ap.ad <= ad.ad`` (inclusive, in
          ultralytics' arithmetic: same bits in float32 up to the last bit of ``cos`` / ``sin``,
          which torch's CPU vector code may round differently from the C library);
        * a GT with a non-finite coordinate or angle is padding (this wrapper clears its mask);
          a predicted box with a non-finite value has u = NaN (t NaN): never a candidate, and
          u = NaN wins the ``"all_gts"`` argmax as in ``torch.argmax``;
        * no ``topk2``: ultralytics' second filter runs after the op (the adapter's
          ``_topk2_keep``, :mod:`tood_ext.compat.ultralytics`).

    Returns:
        :class:`TALResult` with ``boxes`` (B, A, 5), the assigned GT's (cx, cy, w, h, angle);
        the other fields as for :func:`task_aligned_assign` (``iou`` holds the ProbIoU).

    Extra memory: as :func:`task_aligned_assign`, O(B*A + B*G*topk), never a (B, G, A) tensor:
    the candidates (B, G, k) x (index, t, u, flag); on CPU (B, 7, A) columns of the predicted
    boxes' prepared Gaussians, scratch rows of A anchors and of G GTs (and G prepared GTs for
    ``"all_gts"``) per thread; on CUDA (B, A) claim keys, final t and u, claim counts and
    (B, G) maxima. Deterministic; one device sync on CUDA (label validation).
    """
    check_tal_rotated_args("task_aligned_assign_rotated", pred_scores, pred_boxes,
                           anchor_points, gt_labels, gt_boxes, gt_mask, topk, alpha, beta,
                           candidates, norm_eps, conflict, min_inside_size, probiou_eps)
    _loader.check_inputs("task_aligned_assign_rotated", pred_scores=pred_scores,
                         pred_boxes=pred_boxes, anchor_points=anchor_points, gt_labels=gt_labels,
                         gt_boxes=gt_boxes, gt_mask=gt_mask)
    gt_boxes, gt_mask = sanitize_gts(gt_boxes.detach(), gt_mask)  # non-finite GT = padding
    out = torch.ops.tood_ext.task_aligned_assign_rotated(
        pred_scores.detach(), pred_boxes.detach(), anchor_points.detach(), gt_labels,
        gt_boxes, gt_mask, int(topk), alpha, beta, candidates, norm_eps, conflict,
        float(min_inside_size), probiou_eps)
    return TALResult(*out)


def _register():
    @torch.library.register_fake("tood_ext::task_aligned_assign")
    def _fake(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask, topk=13,
              alpha=1.0, beta=6.0, candidates="topk_then_inside", iou_mode="iou",
              inside_eps=0.01, norm_eps=1e-7, conflict="candidates", min_inside_size=0.0):
        check_tal_args("task_aligned_assign", pred_scores, pred_boxes, anchor_points, gt_labels,
                       gt_boxes, gt_mask, topk, alpha, beta, candidates, iou_mode, inside_eps,
                       norm_eps, conflict, min_inside_size)
        B, A, _, _ = tal_shape(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                               gt_mask)
        idx = pred_scores.new_empty((B, A), dtype=torch.int64)
        return (idx, pred_scores.new_empty((B, A), dtype=torch.bool), torch.empty_like(idx),
                gt_boxes.new_empty((B, A, 4)), pred_scores.new_empty((B, A)),
                pred_scores.new_empty((B, A)), pred_scores.new_empty((B, A)))

    def _setup(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    def _backward(ctx, *grads):
        return (None,) * 15

    torch.library.register_autograd("tood_ext::task_aligned_assign", _backward,
                                    setup_context=_setup)

    @torch.library.register_fake("tood_ext::task_aligned_assign_rotated")
    def _fake_rotated(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask,
                      topk=13, alpha=1.0, beta=6.0, candidates="inside_then_topk",
                      norm_eps=1e-9, conflict="all_gts", min_inside_size=0.0,
                      probiou_eps=1e-7):
        check_tal_rotated_args("task_aligned_assign_rotated", pred_scores, pred_boxes,
                               anchor_points, gt_labels, gt_boxes, gt_mask, topk, alpha, beta,
                               candidates, norm_eps, conflict, min_inside_size, probiou_eps)
        B, A, _, _ = tal_rotated_shape(pred_scores, pred_boxes, anchor_points, gt_labels,
                                       gt_boxes, gt_mask)
        idx = pred_scores.new_empty((B, A), dtype=torch.int64)
        return (idx, pred_scores.new_empty((B, A), dtype=torch.bool), torch.empty_like(idx),
                gt_boxes.new_empty((B, A, 5)), pred_scores.new_empty((B, A)),
                pred_scores.new_empty((B, A)), pred_scores.new_empty((B, A)))

    def _backward_rotated(ctx, *grads):
        return (None,) * 14

    torch.library.register_autograd("tood_ext::task_aligned_assign_rotated", _backward_rotated,
                                    setup_context=_setup)


if _loader.has_ops():
    _register()
