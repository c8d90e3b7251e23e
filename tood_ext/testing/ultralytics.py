"""Synthetic inputs of ultralytics' ``v8DetectionLoss`` (no ultralytics import here), shared by
the adapter's tests and benchmarks and usable to check a patched loss in your own setup.

* :func:`tiny_v8_model`: the minimum ``v8DetectionLoss`` reads from a model (a parameter for the
  device, ``args`` with the loss gains, ``model[-1]`` with ``stride``, ``nc``, ``reg_max``);
* :func:`random_v8_batch`: random raw head outputs of a ``size x size`` image on the stride
  8/16/32 grids and a random target batch in ultralytics' format (normalised xywh).
"""
from __future__ import annotations

import types

import torch

__all__ = ["STRIDES", "random_gt_counts_and_sides", "random_v8_batch", "random_v8_preds",
           "tiny_v8_model"]

STRIDES = (8, 16, 32)


def random_gt_counts_and_sides(gen: torch.Generator, B: int, kind: str):
    """The GT counts and sides of a random target batch (v8 and OBB alike) of one ``kind``:
    ``tiny``: up to 30 GTs of sides 0.3-4% of the image; ``crowded``: up to 30 of 2-30%;
    ``mixed``: 0-24 of 0.5-30%; ``empty``: none. About one image in five has none. Returns
    ``(batch_idx, wh)``: the float image index of each GT (n,) and its normalised sides (n, 2)."""
    lo, hi, most = {"tiny": (0.003, 0.04, 30), "crowded": (0.02, 0.3, 30),
                    "mixed": (0.005, 0.3, 24), "empty": (0.01, 0.1, 0)}[kind]
    counts = torch.randint(0, most + 1, (B,), generator=gen)
    counts[torch.rand(B, generator=gen) < 0.2] = 0
    batch_idx = torch.repeat_interleave(torch.arange(B), counts).float()
    wh = lo + torch.rand(batch_idx.numel(), 2, generator=gen) * (hi - lo)
    return batch_idx, wh


def tiny_v8_model(nc: int, reg_max: int = 16, device="cpu") -> torch.nn.Module:
    """A stand-in model for ``v8DetectionLoss(model)``: box 7.5, cls 0.5, dfl 1.5 (YOLOv8's)."""
    head = torch.nn.Module()
    head.stride, head.nc, head.reg_max = torch.tensor([float(s) for s in STRIDES]), nc, reg_max
    model = torch.nn.Module()
    model.model = torch.nn.ModuleList([torch.nn.Linear(1, 1), head])
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    return model.to(device)


def random_v8_batch(gen: torch.Generator, B: int, nc: int, size: int, reg_max: int = 16,
                    max_gt: int = 8, max_wh: float = 0.4, score_shift: float = -2.0,
                    device="cpu"):
    """``(preds, batch)`` for ``v8DetectionLoss(preds, batch)``.

    preds: ``boxes`` (B, 4 * reg_max, A) DFL logits ~ N(0, 2^2) and ``scores`` (B, nc, A) logits
    ~ N(score_shift, 1), both leaves requiring grad, and the ``feats`` (zeros) that give the
    grids. batch: 1..max_gt GTs per image (sides uniform in [0.02, 0.02 + max_wh] of the image,
    inside it), labels uniform in [0, nc). Drawn on the CPU from ``gen``, then moved to device.
    """
    preds = random_v8_preds(gen, B, nc, size, reg_max, score_shift, device)
    counts = torch.randint(1, max_gt + 1, (B,), generator=gen)
    batch_idx = torch.cat([torch.full((int(k),), i, dtype=torch.float32)
                           for i, k in enumerate(counts)])
    N = batch_idx.numel()
    wh = 0.02 + torch.rand(N, 2, generator=gen) * max_wh
    xy = wh / 2 + torch.rand(N, 2, generator=gen) * (1 - wh)
    batch = {"batch_idx": batch_idx.to(device),
             "cls": torch.randint(0, nc, (N, 1), generator=gen).float().to(device),
             "bboxes": torch.cat((xy, wh), -1).to(device)}
    return preds, batch


def random_v8_preds(gen: torch.Generator, B: int, nc: int, size: int, reg_max: int = 16,
                    score_shift: float = -2.0, device="cpu") -> dict:
    """The ``preds`` of :func:`random_v8_batch` alone: ``boxes`` (B, 4 * reg_max, A) DFL logits
    ~ N(0, 2^2), ``scores`` (B, nc, A) logits ~ N(score_shift, 1) (leaves requiring grad) and
    the zero ``feats`` of the stride 8/16/32 grids of a ``size`` x ``size`` image."""
    feats = [torch.zeros(B, 1, size // s, size // s, device=device) for s in STRIDES]
    A = sum(f.shape[2] * f.shape[3] for f in feats)
    boxes = (torch.randn(B, 4 * reg_max, A, generator=gen) * 2).to(device).requires_grad_()
    scores = (torch.randn(B, nc, A, generator=gen) + score_shift).to(device).requires_grad_()
    return {"boxes": boxes, "scores": scores, "feats": feats}
