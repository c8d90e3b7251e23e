"""The switch between our compiled ops and their pure-PyTorch twins (A/B comparison).

Every op the detector calls goes through :func:`get_ops`: ``"kernel"`` gives the
dispatcher ops of :mod:`tood_ext.ops` (C++/CUDA kernels, with their registered autograd),
``"reference"`` the functions of :mod:`tood_ext.reference` with the same signatures and
semantics. Nothing else in :mod:`tood_ext.models` imports an op directly.
"""
from __future__ import annotations

from types import SimpleNamespace

OPS_MODES = ("kernel", "reference")

__all__ = ["OPS_MODES", "get_ops"]


def get_ops(mode: str) -> SimpleNamespace:
    """Namespace with ``box_iou``, ``giou_loss``, ``deform_sampling``, ``task_aligned_assign``,
    ``sparse_target_cls_loss``."""
    if mode == "kernel":
        from .. import _loader
        from .. import ops as impl

        _loader.require_ops()
    elif mode == "reference":
        from .. import reference as impl
    else:
        raise ValueError(f"ops must be one of {OPS_MODES}, got {mode!r}")
    return SimpleNamespace(mode=mode, box_iou=impl.box_iou, giou_loss=impl.giou_loss,
                           deform_sampling=impl.deform_sampling,
                           task_aligned_assign=impl.task_aligned_assign,
                           sparse_target_cls_loss=impl.sparse_target_cls_loss)
