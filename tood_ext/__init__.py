"""tood-ext: hand-written CUDA/C++ kernels for TOOD (task-aligned one-stage object detection).

``tood_ext.ops`` holds the kernel-backed ops, ``tood_ext.reference`` their pure-PyTorch twins
with the same signatures (for tests, benchmarks and as a fallback), and :func:`build_info`
says what this installation was compiled with. Imported on first use (they need torchvision
and more): ``models`` (the TOOD detector), ``data``, ``engine`` (train / evaluate / predict),
``compat`` (drop-in assigners for ultralytics and mmdetection), ``analysis``, ``export``.
"""
import importlib
from . import reference
from ._loader import build_info, has_ops
from ._types import TALResult
from .ops import (IOU_MODES, alignment_metric, box_iou, deform_sampling, giou_loss, iou_loss,
                  task_aligned_assign)
from .ops.losses import CLS_LOSS_KINDS, dfl_loss, sparse_target_cls_loss
from .ops.tal import task_aligned_assign_rotated
from .ops.probiou import probiou, probiou_loss

__version__ = "0.1.0"

_LAZY = ("models", "data", "engine", "compat", "analysis", "export")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IOU_MODES", "TALResult", "alignment_metric", "box_iou", "build_info",
           "deform_sampling", "giou_loss", "has_ops", "iou_loss", "reference",
           "sparse_target_cls_loss", "task_aligned_assign", "CLS_LOSS_KINDS", "dfl_loss",
           "task_aligned_assign_rotated", "probiou", "probiou_loss"]
