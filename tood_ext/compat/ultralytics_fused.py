"""ultralytics' detection loss on the assignment's sparse output: ``patch_ultralytics(fused_loss=True)``.

``v8DetectionLoss.get_assigned_targets_and_loss`` (ultralytics 8.4) assigns, then builds the
(B, A, C) one-hot ``target_scores`` (label x t_hat) only to feed three reductions: BCE-with-logits
of the scores against it summed over (B, A, C), its sum (the normaliser), and per positive its
row sum (the box / DFL weight). Each needs only the one non-zero per anchor that the assignment
already has: ``target_labels`` and ``norm`` (t_hat, 0 off the positives). The method that
:func:`fused_method` makes runs the same steps on those:

* the assignment: the adapter's :meth:`TaskAlignedAssigner.forward_sparse` (no target_scores)
  on only the scores it reads: per GT the column of its class, gathered from the head's
  (B, C, A) logits and passed through the sigmoid, (B, A, G) instead of ultralytics' (B, A, C)
  sigmoid (when G < C; else the whole sigmoid, as ultralytics);
* cls: :func:`tood_ext.sparse_target_cls_loss` (``kind="bce"``, ultralytics' ``class_weights``
  as ``class_weight``), one pass forward and backward, no (B, A, C) target, loss or buffer;
  it reads the head's class-major (B, C, A) scores in place through the (B, A, C) view
  ``permute(0, 2, 1)`` and writes their gradient in that layout (ultralytics copies them
  with ``.contiguous()`` first);
* the normaliser: ``norm.sum().clamp(min=1)`` (the sum of target_scores, summed in another order:
  equal to float rounding);
* box and DFL (reg_max > 1: YOLOv8 / 11): on the positive rows only, ``w = norm``, the fused
  :func:`tood_ext.iou_loss` (``mode="ciou"``; without ultralytics' ``+ eps`` on the heights and
  the union: equal to float rounding) and :func:`tood_ext.dfl_loss` (the mean over the 4 sides:
  weight ``w / 4`` per side), each normalised by the same sum; reg_max 1 (YOLO26: CIoU + L1):
  ultralytics' own ``BboxLoss`` given ``norm[..., None]`` for target_scores (its row sums are
  the same weights).

Everything else (decoding, target preprocessing, gains, the returned tuple of fg_mask,
target_gt_idx, target_bboxes, anchor_points and stride_tensor that the segmentation and pose
losses use) is ultralytics' code path unchanged. The method falls back to ultralytics' original
for a loss whose assigner is not the adapter (a subclass such as YOLO26's segmentation /
pose assigners, or a loss object built before the patch) and for calls with extra assigner
inputs (``pair_overlaps``).
"""
from __future__ import annotations

import torch

__all__ = ["fused_method"]


def fused_method(original, adapter: type):
    """``v8DetectionLoss.get_assigned_targets_and_loss`` on the sparse targets (module docstring)
    for a loss whose assigner is exactly ``adapter`` (tood-ext's ``TaskAlignedAssigner``), else
    ``original`` (ultralytics' method); same return value, ``((fg_mask, target_gt_idx,
    target_bboxes, anchor_points, stride_tensor), loss (box, cls, dfl) x gains, detached loss
    dict)``."""

    def get_assigned_targets_and_loss(self, preds: dict, batch: dict, **assign_kwargs) -> tuple:
        if assign_kwargs or type(self.assigner) is not adapter:
            return original(self, preds, batch, **assign_kwargs)
        return _sparse_targets_and_loss(self, preds, batch)

    get_assigned_targets_and_loss.__doc__ = fused_method.__doc__
    return get_assigned_targets_and_loss


def _sparse_targets_and_loss(self, preds: dict, batch: dict) -> tuple:
    from ultralytics.utils.tal import make_anchors

    from ..ops.losses import sparse_target_cls_loss

    loss = torch.zeros(3, device=self.device)  # box, cls, dfl
    pred_distri = preds["boxes"].permute(0, 2, 1).contiguous()
    pred_scores = preds["scores"].permute(0, 2, 1)  # (B, A, C) view: the op reads it in place
    anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)

    dtype = pred_scores.dtype
    batch_size = pred_scores.shape[0]
    imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=dtype) * self.stride[0]
    targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
    targets = self.preprocess(targets.to(self.device), batch_size, scale_tensor=imgsz[[1, 0, 1, 0]])
    gt_labels, gt_bboxes = targets.split((1, 4), 2)
    mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)

    pred_bboxes = self.bbox_decode(anchor_points, pred_distri)
    gt_scores = _gt_class_scores(preds["scores"].detach(), gt_labels, mask_gt)
    assign_args = ((pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
                   anchor_points * stride_tensor, gt_labels, gt_bboxes, mask_gt)
    if gt_scores is not None:
        target_labels, target_bboxes, norm, fg_mask, target_gt_idx = \
            self.assigner._forward_sparse_gt_scores(gt_scores, *assign_args)
    else:
        target_labels, target_bboxes, norm, fg_mask, target_gt_idx = \
            self.assigner.forward_sparse(pred_scores.detach().sigmoid(), *assign_args)
    target_scores_sum = norm.sum().clamp_(min=1)

    # cls: the target is norm at target_labels on the positives, 0 everywhere else
    labels = torch.where(fg_mask, target_labels.long(), torch.full_like(target_labels.long(), -1))
    class_weight = None if self.class_weights is None else self.class_weights.reshape(-1)
    loss[1] = sparse_target_cls_loss(pred_scores, labels, norm.to(dtype), kind="bce",
                                     class_weight=class_weight) / target_scores_sum

    if self.use_dfl:  # YOLOv8 / 11: CIoU and DFL on the positive rows, each one fused op
        loss[0], loss[2] = _box_and_dfl(self, pred_distri, pred_bboxes, anchor_points,
                                        target_bboxes / stride_tensor, norm, fg_mask,
                                        target_scores_sum)
    else:  # reg_max 1 (YOLO26): ultralytics' CIoU + L1 on the positive rows
        loss[0], loss[2] = self.bbox_loss(
            pred_distri, pred_bboxes, anchor_points, target_bboxes / stride_tensor,
            norm[..., None],  # target_scores[fg].sum(-1) is norm[fg]
            target_scores_sum, fg_mask, imgsz, stride_tensor)
    loss[0] *= self.hyp.box
    loss[1] *= self.hyp.cls
    loss[2] *= self.hyp.dfl
    return (
        (fg_mask, target_gt_idx, target_bboxes, anchor_points, stride_tensor),
        loss,
        dict(zip(self.loss_names, loss.detach())),
    )


def _gt_class_scores(scores: torch.Tensor, gt_labels: torch.Tensor, mask_gt: torch.Tensor):
    """The assigner's probabilities of the GTs' classes only: (B, A, G) with ``[b, a, g] =
    sigmoid(scores[b, gt_labels[b, g], a])`` from the head's (B, C, A) logits ``scores``
    (padding GTs: class 0), or None where that is not smaller than the (B, A, C) sigmoid
    (G >= C) or a valid GT's label lies outside [0, C) (the adapter's own checks then raise
    on the whole scores, as without this shortcut)."""
    B, C, A = scores.shape
    G = gt_labels.shape[1]
    if G >= C:
        return None
    labels = gt_labels.reshape(B, G)
    valid = mask_gt.reshape(B, G).bool()
    if bool(((valid & ((labels < 0) | (labels >= C) | (labels != labels.floor()))).any())):
        return None
    index = torch.where(valid, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    cols = scores.gather(1, index[:, :, None].expand(B, G, A))  # (B, G, A)
    return cols.sigmoid_().transpose(1, 2)  # (B, A, G) view


def _box_and_dfl(self, pred_distri, pred_bboxes, anchor_points, target_bboxes, norm, fg_mask,
                 target_scores_sum):
    """ultralytics' ``BboxLoss`` (reg_max > 1) on the positives: ``sum(w (1 - CIoU)) / tss`` and
    ``sum(w mean_sides(DFL)) / tss`` with ``w = norm``, through the fused ``iou_loss`` (CIoU)
    and ``dfl_loss``."""
    from ultralytics.utils.tal import bbox2dist

    from ..ops.box_ops import iou_loss
    from ..ops.losses import dfl_loss

    fg = fg_mask.nonzero(as_tuple=True)
    weight = norm[fg].to(pred_bboxes.dtype)
    loss_iou = iou_loss(pred_bboxes[fg], target_bboxes[fg].to(pred_bboxes.dtype), weight,
                        mode="ciou", reduction="sum") / target_scores_sum
    reg_max = self.bbox_loss.dfl_loss.reg_max
    target_ltrb = bbox2dist(anchor_points, target_bboxes, reg_max - 1)[fg]
    n = target_ltrb.shape[0]
    loss_dfl = dfl_loss(pred_distri[fg].view(n, 4, reg_max), target_ltrb.to(pred_distri.dtype),
                        (weight / 4)[:, None].expand(n, 4), reduction="sum") / target_scores_sum
    return loss_iou, loss_dfl
