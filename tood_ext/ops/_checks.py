"""Python-side argument checks shared by the ops, their references and their fake kernels.

The error policy of tood_ext (README, "Reliability"), followed alike by the C++ checks
(``TORCH_CHECK``), the fake (meta) kernels and these helpers:

* ``TypeError``: an argument of the wrong Python type (a list, a numpy array or None where a
  tensor is expected; a string where a number is; a float where an int is).
* ``ValueError``: a non-tensor argument of the right type but a bad value (an unknown mode, a
  ``topk`` below 1, ``groups`` that do not match the offset, a negative size, a NaN, infinite
  or negative eps / exponent).
* ``RuntimeError``: a tensor argument of the wrong shape, dtype or device (the kernels'
  ``TORCH_CHECK`` messages; the fake kernels and the references raise the same type).
* ``IndexError``: a label value outside ``[0, C)`` for a valid GT.

Every message names the argument, what was expected and what was given. The checks run
before anything is computed or written. These are the generic helpers; each op family's
contract (its modes, defaults, argument and shape checks), used alike by the op wrapper, the
reference and the fake kernel, is one module built on them: ``_box_spec`` (box_iou, iou_loss,
alignment_metric), ``_tal_spec`` (task_aligned_assign), ``_deform_spec`` (deform_sampling).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["broadcast_leading", "check_batched_gts", "check_bool", "check_box_shape",
           "check_choice", "check_float_dtype", "check_int", "check_num_classes", "check_number",
           "check_same_device", "check_same_dtype", "check_tensor", "check_tensors",
           "finite_gt_rows", "sanitize_gts"]


def _type_name(value) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def check_tensor(op: str, name: str, value, optional: bool = False) -> None:
    """TypeError unless ``value`` is a tensor (or None when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        hint = " (convert it with torch.as_tensor)" if value is not None else ""
        raise TypeError(f"tood_ext.{op}: {name} must be a torch.Tensor"
                        f"{' or None' if optional else ''}, got {_type_name(value)}{hint}")


def check_tensors(op: str, optional: tuple[str, ...] = (), **tensors) -> None:
    """:func:`check_tensor` for every keyword argument; names in ``optional`` may be None."""
    for name, value in tensors.items():
        check_tensor(op, name, value, optional=name in optional)


INT64_MAX = 2 ** 63 - 1


def check_int(op: str, name: str, value, minimum: int | None = None,
              maximum: int = INT64_MAX) -> int:
    """TypeError unless ``value`` is an integer (not a bool); ValueError below ``minimum`` or
    above ``maximum`` (by default the largest int64, what the op schemas' ``int`` holds)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"tood_ext.{op}: {name} must be an int, got {value!r} "
                        f"({_type_name(value)})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_bool(op: str, name: str, value) -> bool:
    """TypeError unless ``value`` is a bool (Python or numpy): ``aligned=1`` or ``None`` would
    otherwise be read as True / False without a word."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"tood_ext.{op}: {name} must be a bool, got {value!r} "
                        f"({_type_name(value)})")
    return bool(value)


def check_number(op: str, name: str, value, tensor_ok: bool = False, finite: bool = False,
                 minimum: float | None = None) -> None:
    """TypeError unless ``value`` is a real number (int or float, not a bool or a string), or,
    with ``tensor_ok``, a one-element tensor. ValueError for a number that is not finite
    (with ``finite``) or below ``minimum`` (a tensor's value is not read: no device sync)."""
    if tensor_ok and isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise RuntimeError(f"tood_ext.{op}: {name} must be a number or a one-element "
                               f"tensor, got a tensor of shape {tuple(value.shape)}")
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        what = "a number or a one-element tensor" if tensor_ok else "a number (int or float)"
        raise TypeError(f"tood_ext.{op}: {name} must be {what}, got {value!r} "
                        f"({_type_name(value)})")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_choice(name: str, value, choices: tuple) -> None:
    """ValueError unless ``value`` is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_same_device(op: str, ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """RuntimeError (the message of the C++ ``check_same_device``) unless every tensor in
    ``tensors`` (None skipped) is on ``ref``'s device. Used by the fake kernels, which see
    the tensors' devices only."""
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                               "all inputs must be on the same device")


def check_same_dtype(ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """RuntimeError (the C++ ``check_same_dtype`` message) unless every tensor in ``tensors``
    (None skipped) has ``ref``'s dtype."""
    for name, t in tensors.items():
        if t is not None and t.dtype != ref.dtype:
            raise RuntimeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype "
                               f"{ref.dtype}; they must have the same floating dtype")


def check_float_dtype(name: str, t: torch.Tensor, half_on_cpu: bool = False) -> None:
    """RuntimeError (the C++ ``check_float_dtype`` message) unless ``t`` has a dtype the kernels
    implement: float32/float64 on CPU, also float16/bfloat16 elsewhere (CUDA; meta, where
    the fake kernels cannot know the backend). ``half_on_cpu``: the references, which compute
    half inputs in float32 on any device."""
    if t.dtype in (torch.float32, torch.float64):
        return
    if t.dtype in (torch.float16, torch.bfloat16) and (half_on_cpu or t.device.type != "cpu"):
        return
    what = ("float32 or float64 on CPU (float16/bfloat16 are CUDA-only)"
            if t.device.type == "cpu" and not half_on_cpu else
            "float32 or float64 (or float16/bfloat16)")
    raise RuntimeError(f"{name} must be {what}, got {t.dtype}")


def check_box_shape(name: str, t: torch.Tensor) -> None:
    """RuntimeError unless ``t`` has shape (..., 4) (the C++ ``check_boxes`` message)."""
    if t.dim() < 1 or t.shape[-1] != 4:
        raise RuntimeError(f"{name} must have shape (..., 4) holding xyxy boxes, got shape "
                           f"{list(t.shape)}")


def broadcast_leading(boxes1: torch.Tensor, boxes2: torch.Tensor, op: str = "box_iou",
                      names: tuple[str, str] = ("boxes1", "boxes2"), box_width: int = 4):
    """Pairwise ``op`` (box_iou; probiou with its names and width 5): boxes1 (..., N, W) and
    boxes2 (..., M, W) expanded to the broadcast of their leading (batch) dims; RuntimeError
    naming both shapes when they do not broadcast."""
    n1, n2 = names
    W = box_width
    lead1, lead2 = boxes1.shape[:-2], boxes2.shape[:-2]
    try:
        lead = torch.broadcast_shapes(lead1, lead2)
    except RuntimeError:
        raise RuntimeError(f"pairwise {op}: the leading (batch) dims of {n1} {tuple(lead1)} "
                           f"and {n2} {tuple(lead2)} do not broadcast ({n1} has shape "
                           f"{tuple(boxes1.shape)}, {n2} {tuple(boxes2.shape)}; expected "
                           f"(..., N, {W}) and (..., M, {W}) with broadcastable '...')") from None
    return boxes1.expand(*lead, *boxes1.shape[-2:]), boxes2.expand(*lead, *boxes2.shape[-2:])


# ---- non-finite GTs ---------------------------------------------------------------------------


def finite_gt_rows(gt_boxes: torch.Tensor) -> torch.Tensor:
    """(..., G) bool: the GT box has four finite coordinates."""
    return torch.isfinite(gt_boxes).all(-1)


def sanitize_gts(gt_boxes: torch.Tensor, gt_mask: torch.Tensor):
    """The assignment's rule for a GT with a non-finite coordinate (NaN, +-inf; the angle of
    a rotated (..., 5) box included): it is padding. Returns ``(gt_boxes, gt_mask)`` with such GTs' mask False and their box zeros,
    so that they claim no anchor and no NaN box can reach a target (not even through the
    ``conflict="all_gts"`` rule that hands an all-zero column to GT 0 as given). Costs one
    elementwise pass over (B, G, 4); no device sync. The inputs are returned as they are
    when they are not tensors of the expected kinds (the op's checks report those)."""
    if (not isinstance(gt_boxes, torch.Tensor) or not isinstance(gt_mask, torch.Tensor)
            or gt_boxes.dim() < 1 or gt_boxes.shape[-1] not in (4, 5)
            or not gt_boxes.is_floating_point() or gt_mask.dtype != torch.bool
            or gt_mask.shape != gt_boxes.shape[:-1] or gt_mask.device != gt_boxes.device):
        return gt_boxes, gt_mask
    finite = finite_gt_rows(gt_boxes)
    boxes = torch.where(finite[..., None], gt_boxes, torch.zeros((), dtype=gt_boxes.dtype,
                                                                 device=gt_boxes.device))
    return boxes, gt_mask & finite



def check_batched_gts(op: str, scores_name: str, scores: torch.Tensor, gt_boxes_name: str,
                      gt_boxes: torch.Tensor, columns: int = 4) -> tuple[int, int, int, int]:
    """The batched assigners' shapes: scores (B, A, C) and GT boxes (B, G, columns) of the same
    B (4: xyxy; 5: rotated xywhr). RuntimeError naming the tensor otherwise; returns (B, A, C, G)."""
    if scores.dim() != 3:
        raise RuntimeError(f"{op}: {scores_name} must have shape (B, A, C), got "
                           f"{tuple(scores.shape)}")
    B, A, C = scores.shape
    if gt_boxes.dim() != 3 or gt_boxes.shape[0] != B or gt_boxes.shape[2] != columns:
        raise RuntimeError(f"{op}: {gt_boxes_name} must have shape (B, G, {columns}) with B = {B} (the "
                           f"batch of {scores_name} {tuple(scores.shape)}), got "
                           f"{tuple(gt_boxes.shape)}")
    return B, A, C, gt_boxes.shape[1]


def check_num_classes(op: str, num_classes, scores_name: str, scores: torch.Tensor) -> int:
    """An adapter's ``num_classes``: an int >= 1 (TypeError / ValueError) that is the class
    dim C of its (B, A, C) scores (RuntimeError naming both; the one-hot targets have
    ``num_classes`` columns, the label checks use C)."""
    n = check_int(op, "num_classes", num_classes, minimum=1)
    if scores.shape[-1] != n:
        raise RuntimeError(f"{op}: {scores_name} has {scores.shape[-1]} classes (shape "
                           f"{tuple(scores.shape)}) but num_classes is {n}")
    return n
