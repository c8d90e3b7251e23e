"""Synthetic inputs of ultralytics' oriented-box loss ``v8OBBLoss`` and of its
``RotatedTaskAlignedAssigner`` (no ultralytics import here), shared by the OBB adapter's tests
and benchmarks.

* :func:`tiny_obb_model`: the minimum ``v8OBBLoss`` reads from a model (YOLOv8-OBB's gains);
* :func:`random_obb_preds`: random raw head outputs (DFL logits, class logits, angles) of a
  ``size x size`` image on the stride 8/16/32 grids;
* :func:`random_obb_targets`: a target batch in ultralytics' OBB format (normalised
  ``(cx, cy, w, h)`` and the angle in radians) of one of several kinds (tiny, crowded, mixed,
  empty);
* :func:`obb_assigner_inputs`: the assigner's inputs at a given scale (the benchmarks');
* :func:`probiou_rounds_to_zero`: which ProbIoU values rounding could turn from 0 to positive.
"""
from __future__ import annotations

import math
import types

import torch

from .ultralytics import STRIDES, random_gt_counts_and_sides

__all__ = ["OBB_KINDS", "obb_assigner_inputs", "probiou_is_zero", "probiou_rounds_to_zero",
           "random_obb_preds",
           "random_obb_targets", "tiny_obb_model"]

OBB_KINDS = ("tiny", "crowded", "mixed", "empty")


def probiou_rounds_to_zero(u_raw: torch.Tensor, dtype=torch.float32, eps: float = 1e-7,
                           ulps: float = 2.0) -> torch.Tensor:
    """Where a ProbIoU, computed in float64 *before* the clamp at 0 (``u_raw``), is 0 or not
    in ``dtype`` by rounding alone.

    u = 1 - sqrt(1 - e^-bd + eps) is a difference of numbers near 1: around u = 0 it carries
    an absolute rounding error of about one epsilon of the dtype (1.2e-7 in float32), so a
    true u in [0, ``ulps`` eps) may come out exactly 0 or a few 1e-8, and t = s^alpha * u^beta
    decides between a tiny positive metric and a zero one. Below 1 - sqrt(1 + 0.75 eps)
    (e^-bd < eps / 4, every pair at the clamp bd = 100 included) 1 - e^-bd + eps rounds to
    >= 1 in float32 and float64 alike: u is exactly 0 everywhere, not ambiguous.
    """
    return ~probiou_is_zero(u_raw, eps) & (u_raw < ulps * torch.finfo(dtype).eps)


def probiou_is_zero(u_raw: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Where a float64 ProbIoU before the clamp (``u_raw``) is exactly 0 after it in float32
    and float64 alike: e^-bd < eps / 4 (see :func:`probiou_rounds_to_zero`)."""
    return u_raw < 1 - math.sqrt(1 + 0.75 * eps)


def tiny_obb_model(nc: int, reg_max: int = 16, device="cpu") -> torch.nn.Module:
    """A stand-in model for ``v8OBBLoss(model)``: box 7.5, cls 0.5, dfl 1.5, angle 1.0."""
    head = torch.nn.Module()
    head.stride, head.nc, head.reg_max = torch.tensor([float(s) for s in STRIDES]), nc, reg_max
    model = torch.nn.Module()
    model.model = torch.nn.ModuleList([torch.nn.Linear(1, 1), head])
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, angle=1.0, epochs=10)
    return model.to(device)


def random_obb_preds(gen: torch.Generator, B: int, nc: int, size: int, reg_max: int = 16,
                     score_shift: float = -2.0, device="cpu") -> dict:
    """``preds`` of ``v8OBBLoss.loss``: ``boxes`` (B, 4 * reg_max, A) DFL logits ~ N(0, 2^2)
    (reg_max 1: the distances themselves, uniform in [0.25, 6) strides: boxes of 0.5-12
    strides, as a head's; N(0, 2^2) distances would make half the boxes inside out and most
    ProbIoUs ~0, where rounding alone picks the candidates), ``scores`` (B, nc, A) logits
    ~ N(score_shift, 1), ``angle`` (B, 1, A) in [-pi/4, 3pi/4) (the OBB head's range), all
    leaves requiring grad, and the zero ``feats`` of the grids."""
    feats = [torch.zeros(B, 1, size // s, size // s, device=device) for s in STRIDES]
    A = sum(f.shape[2] * f.shape[3] for f in feats)
    if reg_max == 1:
        boxes = 0.25 + torch.rand(B, 4, A, generator=gen) * 5.75
    else:
        boxes = torch.randn(B, 4 * reg_max, A, generator=gen) * 2
    boxes = boxes.to(device).requires_grad_()
    scores = (torch.randn(B, nc, A, generator=gen) + score_shift).to(device).requires_grad_()
    angle = ((torch.rand(B, 1, A, generator=gen) - 0.25) * math.pi).to(device).requires_grad_()
    return {"boxes": boxes, "scores": scores, "angle": angle, "feats": feats}


def random_obb_targets(gen: torch.Generator, B: int, nc: int, kind: str) -> dict:
    """A target batch of ``v8OBBLoss`` (``batch_idx``, ``cls``, ``bboxes`` (n, 5): normalised
    cx, cy, w, h and the angle in radians, uniform in [-pi/2, pi): beyond the dataset's
    canonical range, which the loss does not need). ``tiny``: up to 30 GTs of sides 0.3-4% of
    the image (some below ultralytics' 2 px filter, most below stride_val: widened by the
    inside test); ``crowded``: up to 30 GTs of 2-30% clustered in a fifth of the image;
    ``mixed``: 0-24 GTs of 0.5-30%, some thin (aspect up to 1:15); ``empty``: no GT at all. In
    every kind about one image in five has none."""
    batch_idx, wh = random_gt_counts_and_sides(gen, B, kind)
    n = batch_idx.numel()
    if kind == "mixed":  # a third thin: one side a fifteenth to a third of the other
        thin = torch.rand(n, generator=gen) < 0.33
        wh[thin, 1] = wh[thin, 0] * (1 / 15 + torch.rand(int(thin.sum()), generator=gen) * 0.27)
    if kind == "crowded":
        centre = 0.2 + 0.6 * torch.rand(B, 2, generator=gen)
        xy = centre[batch_idx.long()] + (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    elif kind == "tiny":  # anywhere, also at the top-left corner (the tie-order caveat's GTs)
        xy = torch.rand(n, 2, generator=gen)
    else:
        xy = 0.05 + torch.rand(n, 2, generator=gen) * 0.9
    angle = (torch.rand(n, 1, generator=gen) - 1 / 3) * 1.5 * math.pi
    return {"batch_idx": batch_idx, "cls": torch.randint(0, nc, (n, 1), generator=gen).float(),
            "bboxes": torch.cat((xy, wh, angle), -1)}


def obb_assigner_inputs(gen: torch.Generator, B: int, G: int, C: int, size: int = 1024,
                        pad: float = 0.2):
    """Inputs of ``RotatedTaskAlignedAssigner.forward`` as ``v8OBBLoss`` passes them, for a
    ``size`` x ``size`` image (A = 21504 at 1024 px): ``pd_scores`` (B, A, C) probabilities
    uniform in (0, 1), ``pd_bboxes`` (B, A, 5) centred within half a stride of their anchor,
    sides 2-8 strides, angles in [-pi/4, 3pi/4), ``anc_points`` (A, 2), ``gt_labels`` (B, G, 1)
    float, ``gt_bboxes`` (B, G, 5) (sides 8 px to 0.3 size, any angle), ``mask_gt``
    (B, G, 1) float with ~``pad`` of the slots padding (zeros, as ultralytics pads)."""
    points, strides = [], []
    for s in STRIDES:
        n = size // s
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], -1))
        strides.append(torch.full((n * n,), float(s)))
    points, strides = torch.cat(points), torch.cat(strides)
    A = points.shape[0]
    centre = points[None] + (torch.rand(B, A, 2, generator=gen) - 0.5) * strides[None, :, None]
    wh = (2 + 6 * torch.rand(B, A, 2, generator=gen)) * strides[None, :, None]
    ang = (torch.rand(B, A, 1, generator=gen) - 0.25) * math.pi
    pd_bboxes = torch.cat([centre, wh, ang], -1)
    pd_scores = torch.rand(B, A, C, generator=gen).clamp_(1e-6, 1 - 1e-6)
    gt_wh = 8 + torch.rand(B, G, 2, generator=gen) * (0.3 * size - 8)
    gt_xy = torch.rand(B, G, 2, generator=gen) * size
    gt_ang = (torch.rand(B, G, 1, generator=gen) - 0.25) * math.pi
    mask = (torch.rand(B, G, 1, generator=gen) >= pad).float()
    gt_bboxes = torch.cat([gt_xy, gt_wh, gt_ang], -1) * mask
    gt_labels = torch.randint(0, C, (B, G, 1), generator=gen).float() * mask
    return pd_scores, pd_bboxes, points, gt_labels, gt_bboxes, mask
