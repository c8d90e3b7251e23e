"""Pure-PyTorch references of every tood_ext op, with the same signatures as :mod:`tood_ext.ops`.

Straightforward broadcast implementations written from each op's documented semantics: the
ground truth of the tests, the baseline of the benchmarks, and a fallback without compiled
kernels.
"""
from .box_ops import alignment_metric, box_iou, giou_loss, iou_loss
from .deform_ops import deform_sampling
from .losses import dfl_loss, sparse_target_cls_loss
from .probiou import probiou, probiou_loss
from .tal import task_aligned_assign, task_aligned_assign_rotated

__all__ = ["alignment_metric", "box_iou", "deform_sampling", "dfl_loss", "giou_loss", "iou_loss",
           "probiou", "probiou_loss", "sparse_target_cls_loss", "task_aligned_assign",
           "task_aligned_assign_rotated"]
