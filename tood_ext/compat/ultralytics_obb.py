"""Oriented boxes in ultralytics (8.4): the rotated assigner's op call, the OBB patch and the fused
OBB loss.

``tood_ext.compat.ultralytics.RotatedTaskAlignedAssigner`` (defined there, next to the
axis-aligned adapter it subclasses; this module imports nothing from that one: the adapter
class is passed in, so the imports stay one-way) takes ultralytics' constructor
arguments (``topk=13, num_classes=80, alpha=1.0, beta=6.0, stride=None, eps=1e-9,
topk2=None``; ``v8OBBLoss`` builds it with topk 10, alpha 0.5, beta 6) and has its forward and
outputs, for oriented boxes ``(cx, cy, w, h, angle)`` in pixels / radians, but runs the
assignment with tood-ext's fused op :func:`tood_ext.task_aligned_assign_rotated`
(``candidates="inside_then_topk"``, ``conflict="all_gts"``, ``min_inside_size=stride_val``,
``probiou_eps=1e-7``): no (B, G, A) tensor. It is a subclass of the axis-aligned adapter
:class:`tood_ext.compat.ultralytics.TaskAlignedAssigner` and shares all of its code after the
op (``forward`` / ``forward_sparse``, the argument checks, the non-finite-GT rule, the ``topk2``
filter under the lowest-index order, t_hat, the gathers of GT 0 on background rows, G = 0);
only the op and the box width (5 columns) differ.

What is reproduced (ultralytics 8.4.190, ``utils/tal.py`` ``RotatedTaskAlignedAssigner``,
``utils/metrics.py`` ``probiou``), by the op:

* the inside test ``select_candidates_in_gts``: the anchor centre projected on the two edges
  of the rotated GT from its first corner, inside when both projections lie in ``[0, |edge|^2]``
  (inclusive), with GT sides shorter than ``stride_val`` widened to it (for this test only);
* u = ProbIoU(gt, pred) (``probiou(gt_bboxes, pd_bboxes)``, eps 1e-7, no floor) clamped at 0;
  t = s**alpha * u**beta on inside & valid pairs, 0 elsewhere;
* the rest as in the axis-aligned adapter (see :mod:`tood_ext.compat.ultralytics`): per GT
  ``torch.topk`` of the masked t over all anchors, equal values in anchor-index order (the
  documented tie caveat: ultralytics' own result under a lowest-index ``torch.topk``, see
  :func:`tood_ext.compat.ultralytics.lowest_index_topk`), the argmax-of-u-over-all-GTs conflict
  rule, the optional ``topk2`` filter, ``t_hat = t * max u / (max t + eps)``, targets gathered
  with GT index 0 on background anchors.

Known differences: u agrees with ultralytics' ``probiou`` to float rounding (the op's
arithmetic order is its own), so a near-tie of two GTs' u or of a GT's k-th and (k+1)-th t may
resolve differently; a GT with a non-finite coordinate or angle is padding (it claims no anchor
and its box is never gathered; ultralytics' inside test is False on NaN too, but it gathers GT
0's box onto background rows); ``**extra`` inputs are not supported; no CUDA out-of-memory
fallback is needed.

The patch: :func:`tood_ext.compat.ultralytics.patch_ultralytics` also swaps the class into
``ultralytics.utils.tal`` and ``ultralytics.utils.loss`` (``v8OBBLoss`` builds its assigner from
the latter name), and the assigner of ``v8OBBLoss`` objects passed to it.
``patch_ultralytics(fused_loss=True)`` also replaces ``v8OBBLoss.loss`` by :func:`fused_obb_loss`
(the loss on the assignment's sparse output, see there).
"""
from __future__ import annotations

import torch

__all__ = ["fused_obb_loss", "patch_classes", "patch_fused", "replacement", "rotated_call",
           "unpatch_classes"]

_PROBIOU_EPS = 1e-7  # ultralytics' probiou default, used by RotatedTaskAlignedAssigner
_HYPER = ("topk", "topk2", "num_classes", "alpha", "beta", "stride", "eps")
_MODULES = ("ultralytics.utils.tal", "ultralytics.utils.loss")
_ORIGINAL: dict = {}  # module name -> ultralytics' RotatedTaskAlignedAssigner


def rotated_call(op):
    """The axis-aligned adapter's op call, translated for the rotated op: u is ProbIoU (the
    call's ``iou_mode``, "ciou", does not apply) and the rotated inside test is ultralytics'
    inclusive projection test (the call's ``inside_eps`` does not apply)."""

    def call(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask, *,
             iou_mode=None, inside_eps=None, **kwargs):
        del iou_mode, inside_eps
        return op(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask,
                  probiou_eps=_PROBIOU_EPS, **kwargs)

    return call


# ---------------------------------------------------------------------------------------------
# the patch (called by tood_ext.compat.ultralytics.patch_ultralytics / unpatch_ultralytics)
# ---------------------------------------------------------------------------------------------


def patch_classes(adapter: type) -> None:
    """Swap ``adapter`` (the rotated adapter class) into ``ultralytics.utils.tal`` and ``ultralytics.utils.loss``."""
    import importlib

    if _ORIGINAL:
        return
    for name in _MODULES:
        _ORIGINAL[name] = importlib.import_module(name).RotatedTaskAlignedAssigner
    for name in _MODULES:
        importlib.import_module(name).RotatedTaskAlignedAssigner = adapter


def unpatch_classes() -> None:
    import importlib

    for name, cls in _ORIGINAL.items():
        importlib.import_module(name).RotatedTaskAlignedAssigner = cls
    _ORIGINAL.clear()


def replacement(assigner, adapter: type):
    """An ``adapter`` (the rotated adapter class) with ``assigner``'s settings when ``assigner`` is
    exactly ultralytics' rotated assigner, else None (ultralytics' other subclasses are left
    alone)."""
    original = _ORIGINAL.get("ultralytics.utils.tal")
    if original is None or type(assigner) is not original:
        return None
    return adapter(**{k: getattr(assigner, k) for k in _HYPER})


def patch_fused(adapter: type) -> dict:
    """Replace ``v8OBBLoss.loss`` by :func:`fused_obb_loss` (for losses whose assigner is exactly
    ``adapter``, the rotated adapter class); returns {"v8OBBLoss.loss":
    ultralytics' method} for ``tood_ext.compat.ultralytics``'s restore."""
    import importlib

    cls = importlib.import_module("ultralytics.utils.loss").v8OBBLoss
    original = cls.loss
    cls.loss = fused_obb_loss(original, adapter)
    return {"v8OBBLoss.loss": original}


# ---------------------------------------------------------------------------------------------
# the fused OBB loss
# ---------------------------------------------------------------------------------------------


def fused_obb_loss(original, adapter: type):
    """``v8OBBLoss.loss`` on the assignment's sparse output, for a loss whose assigner is exactly
    ``adapter`` (:class:`tood_ext.compat.ultralytics.RotatedTaskAlignedAssigner`); else
    ``original`` (ultralytics' method).

    The same steps as ultralytics' ``v8OBBLoss.loss`` (8.4.190), on ``target_labels`` and
    ``norm`` (t_hat per anchor) instead of the (B, A, C) one-hot ``target_scores``:

    * cls: :func:`tood_ext.sparse_target_cls_loss` (``kind="bce"``, ``class_weights`` as
      ``class_weight``), normalised by ``max(norm.sum(), 1)``;
    * box and DFL (reg_max > 1, YOLOv8/11-OBB): on the positive rows only, ``w = norm``, the
      fused :func:`tood_ext.probiou_loss` (ultralytics' ``RotatedBboxLoss``: ProbIoU of floor
      0.01) and :func:`tood_ext.dfl_loss` (the mean over the 4 sides: weight ``w / 4`` per
      side), each normalised by the same sum; reg_max 1 (L1): ultralytics' ``RotatedBboxLoss``
      given ``norm[..., None]`` for ``target_scores`` (its row sums are the same weights);
    * angle: ultralytics' ``calculate_angle_loss`` with weight ``norm[fg]``.
    """

    def loss(self, preds: dict, batch: dict):
        if type(self.assigner) is not adapter:
            return original(self, preds, batch)
        return _sparse_obb_loss(self, preds, batch)

    loss.__doc__ = fused_obb_loss.__doc__
    return loss


def _sparse_obb_loss(self, preds: dict, batch: dict):
    from ultralytics.utils.tal import make_anchors

    from ..ops.losses import sparse_target_cls_loss

    loss = torch.zeros(4, device=self.device)  # box, cls, dfl, angle
    pred_distri = preds["boxes"].permute(0, 2, 1).contiguous()
    pred_scores = preds["scores"].permute(0, 2, 1).contiguous()
    pred_angle = preds["angle"].permute(0, 2, 1).contiguous()
    anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
    batch_size = pred_angle.shape[0]
    dtype = pred_scores.dtype
    imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=dtype) * self.stride[0]

    # targets: ultralytics' filtering of rboxes below 2 px and its preprocess
    try:
        batch_idx = batch["batch_idx"].view(-1, 1)
        targets = torch.cat((batch_idx, batch["cls"].view(-1, 1), batch["bboxes"].view(-1, 5)), 1)
        rw, rh = targets[:, 4] * float(imgsz[1]), targets[:, 5] * float(imgsz[0])
        targets = targets[(rw >= 2) & (rh >= 2)]
        targets = self.preprocess(targets.to(self.device), batch_size,
                                  scale_tensor=imgsz[[1, 0, 1, 0]])
        gt_labels, gt_bboxes = targets.split((1, 5), 2)  # cls, xywhr
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
    except RuntimeError as e:  # ultralytics' error for a detection dataset given to an OBB model
        raise TypeError("OBB dataset incorrectly formatted or not an OBB dataset (batch['bboxes'] "
                        "must hold (cx, cy, w, h, angle) rows)") from e

    pred_bboxes = self.bbox_decode(anchor_points, pred_distri, pred_angle)  # xywhr, (B, A, 5)
    bboxes_for_assigner = pred_bboxes.clone().detach()
    bboxes_for_assigner[..., :4] *= stride_tensor
    target_labels, target_bboxes, norm, fg_mask, _ = self.assigner.forward_sparse(
        pred_scores.detach().sigmoid(), bboxes_for_assigner.type(gt_bboxes.dtype),
        anchor_points * stride_tensor, gt_labels, gt_bboxes, mask_gt)
    target_scores_sum = norm.sum().clamp_(min=1)  # ultralytics: max(target_scores.sum(), 1)

    # cls: the target is norm at target_labels on the positives, 0 everywhere else
    labels = torch.where(fg_mask, target_labels.long(), torch.full_like(target_labels.long(), -1))
    class_weight = None if self.class_weights is None else self.class_weights.reshape(-1)
    loss[1] = sparse_target_cls_loss(pred_scores, labels, norm.to(dtype), kind="bce",
                                     class_weight=class_weight) / target_scores_sum

    if fg_mask.sum():
        target_bboxes[..., :4] /= stride_tensor
        if self.bbox_loss.dfl_loss is not None:  # ProbIoU and DFL, each one fused op
            loss[0], loss[2] = _rotated_box_and_dfl(self, pred_distri, pred_bboxes,
                                                    anchor_points, target_bboxes, norm, fg_mask,
                                                    target_scores_sum)
        else:  # reg_max 1: ultralytics' ProbIoU + L1 on the positive rows
            loss[0], loss[2] = self.bbox_loss(
                pred_distri, pred_bboxes, anchor_points, target_bboxes,
                norm[..., None],  # target_scores[fg].sum(-1) is norm[fg]
                target_scores_sum, fg_mask, imgsz, stride_tensor)
        loss[3] = self.calculate_angle_loss(pred_bboxes, target_bboxes, fg_mask, norm[fg_mask],
                                            target_scores_sum)
    else:
        loss[0] += (pred_angle * 0).sum() + pred_distri[..., :0].sum()

    loss[0] *= self.hyp.box
    loss[1] *= self.hyp.cls
    loss[2] *= self.hyp.dfl
    loss[3] *= self.hyp.angle
    return loss * batch_size, dict(zip(self.loss_names, loss.detach()))


def _rotated_box_and_dfl(self, pred_distri, pred_bboxes, anchor_points, target_bboxes, norm,
                         fg_mask, target_scores_sum):
    """ultralytics' ``RotatedBboxLoss`` (reg_max > 1) on the positives, weights ``w = norm``:
    ``sum(w (1 - ProbIoU(pred, target; floor 0.01))) / tss`` through the fused
    :func:`tood_ext.probiou_loss`, and ``sum(w mean_sides(DFL)) / tss`` through
    :func:`tood_ext.dfl_loss` (targets: ``rbox2dist`` of the positive rows only)."""
    from ultralytics.utils.tal import rbox2dist

    from ..ops.losses import dfl_loss
    from ..ops.probiou import probiou_loss

    fg = fg_mask.nonzero(as_tuple=True)
    weight = norm[fg].to(pred_bboxes.dtype)
    target = target_bboxes[fg].to(pred_bboxes.dtype)
    loss_iou = probiou_loss(pred_bboxes[fg], target, weight, reduction="sum",
                            floor=self.bbox_loss.floor) / target_scores_sum
    reg_max = self.bbox_loss.dfl_loss.reg_max
    target_ltrb = rbox2dist(target[:, :4], anchor_points[fg[1]], target[:, 4:5],
                            reg_max=reg_max - 1)
    n = target_ltrb.shape[0]
    loss_dfl = dfl_loss(pred_distri[fg].view(n, 4, reg_max), target_ltrb.to(pred_distri.dtype),
                        (weight / 4)[:, None].expand(n, 4), reduction="sum") / target_scores_sum
    return loss_iou, loss_dfl
