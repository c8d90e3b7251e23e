"""Ops backed by the compiled kernels (``torch.ops.tood_ext``), with autograd and fake kernels.

Every function here has a pure-PyTorch twin of the same signature in :mod:`tood_ext.reference`.
"""
from .box_ops import IOU_MODES, alignment_metric, box_iou, giou_loss, iou_loss
from .deform_ops import deform_sampling
from .losses import CLS_LOSS_KINDS, dfl_loss, sparse_target_cls_loss
from .probiou import probiou, probiou_loss
from .tal import task_aligned_assign, task_aligned_assign_rotated

__all__ = ["CLS_LOSS_KINDS", "IOU_MODES", "alignment_metric", "box_iou", "deform_sampling",
           "dfl_loss", "giou_loss", "iou_loss", "probiou", "probiou_loss", "sparse_target_cls_loss",
           "task_aligned_assign", "task_aligned_assign_rotated"]
