"""Result types shared by the kernel-backed ops and their pure-PyTorch references."""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TALResult"]


class TALResult(NamedTuple):
    """Per-anchor result of the task-aligned assignment (``task_aligned_assign``).

    B images, A anchors. Background anchors hold -1 in the integer fields and 0 elsewhere.

    Fields:
        assigned_gt: (B, A) int64, index of the GT assigned to the anchor in ``[0, G)``, -1 for
            background.
        fg_mask: (B, A) bool, True for foreground (assigned) anchors: ``assigned_gt >= 0``.
        labels: (B, A) int64, class of the assigned GT (``gt_labels[b, assigned_gt]``), -1 for
            background.
        boxes: (B, A, 4) xyxy box of the assigned GT, zeros for background; dtype of
            ``gt_boxes``.
        iou: (B, A) overlap u (``iou_mode``, clamped at 0) of the anchor's predicted box with
            its assigned GT, 0 for background; dtype of ``pred_scores``.
        metric: (B, A) raw alignment metric ``t = s**alpha * u**beta`` with the assigned GT,
            0 for background; dtype of ``pred_scores``.
        soft_target: (B, A) the normalised metric ``t_hat = t * max_u / (max_t + norm_eps)``
            (maxima over the final positives of the assigned GT), 0 for background; dtype of
            ``pred_scores``. TOOD's classification target of the anchor's assigned class.
    """

    assigned_gt: torch.Tensor
    fg_mask: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    iou: torch.Tensor
    metric: torch.Tensor
    soft_target: torch.Tensor
