"""tood-ext: hand-written CUDA/C++ kernels for TOOD (task-aligned one-stage object detection).

``tood_ext.ops`` holds the kernel-backed ops, ``tood_ext.reference`` their pure-PyTorch twins
with the same signatures (for tests, benchmarks and as a fallback), and :func:`build_info`
says what this installation was compiled with.
"""
from . import reference
from ._loader import build_info, has_ops
from ._types import TALResult
from .ops import (IOU_MODES, alignment_metric, box_iou, deform_sampling, giou_loss, iou_loss,
                  task_aligned_assign)

__version__ = "0.1.0"

__all__ = ["IOU_MODES", "TALResult", "alignment_metric", "box_iou", "build_info",
           "deform_sampling", "giou_loss", "has_ops", "iou_loss", "reference",
           "task_aligned_assign"]
