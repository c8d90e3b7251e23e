"""Benchmark cases of the ProbIoU ops of oriented boxes: probiou (pairwise, aligned) and
probiou_loss.

Implementations: ``kernel`` = tood_ext (C++/CUDA kernels), ``reference`` = tood_ext.reference
(pure PyTorch, broadcast tensors), ``ultralytics`` = ultralytics' own functions where
importable: ``batch_probiou`` for the pairwise rows (upstream's pairwise form: floor 0, no
CIoU), ``probiou`` for the aligned rows, ``RotatedBboxLoss``'s IoU term
``((1 - probiou(pred, target, floor=0.01)) * weight).sum() / target_scores_sum`` for the loss.
Sizes: 1024-px aerial images, A = 21504 anchors (strides 8/16/32).
"""
from __future__ import annotations

import math

import torch

import tood_ext
from tood_ext import reference as ref

from .harness import Case, fwd_bwd, optional_module, register_family

IMG = 1024.0
SEED = 0
FLOOR = 0.01  # RotatedBboxLoss.floor


def _gen(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def rand_obbs(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 5) float32 oriented boxes (cx, cy, w, h, angle): centres uniform in a 1024 x 1024
    image, w, h uniform in [4, 200], angle uniform in [-pi/2, pi/2)."""
    xy = torch.rand(n, 2, generator=gen) * IMG
    wh = 4 + torch.rand(n, 2, generator=gen) * 196
    angle = (torch.rand(n, 1, generator=gen) - 0.5) * math.pi
    return torch.cat([xy, wh, angle], dim=-1)


def jitter_obbs(target: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Predictions near their targets: centres moved by up to 15% of the sides, sides scaled by
    0.8..1.25, angles moved by up to 0.2 rad."""
    n = target.shape[0]
    out = target.clone()
    out[:, :2] += (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.15 * target[:, 2:4]
    out[:, 2:4] *= 0.8 + torch.rand(n, 2, generator=gen) * 0.45
    out[:, 4] += (torch.rand(n, generator=gen) * 2 - 1) * 0.2
    return out


def _ultralytics():
    return optional_module("ultralytics.utils.metrics")


def pairwise_case(device, n, m, passes="fwd"):
    name = f"probiou.pairwise N={n} M={m}" + (" fwd+bwd" if passes == "fwd+bwd" else "")

    def setup():
        g = _gen(1)
        a, b = rand_obbs(n, g).to(device), rand_obbs(m, g).to(device)
        impls = {"kernel": lambda x, y: tood_ext.probiou(x, y),
                 "reference": lambda x, y: ref.probiou(x, y)}
        up = _ultralytics()
        if up is not None:
            impls["ultralytics"] = up.batch_probiou
        if passes == "fwd":
            return {k: (lambda f=f: f(a, b)) for k, f in impls.items()}
        a.requires_grad_(True)
        b.requires_grad_(True)
        grad_out = torch.rand((n, m), generator=_gen(2)).to(device)
        return {k: fwd_bwd(lambda f=f: f(a, b), (a, b), grad_out) for k, f in impls.items()}

    note = "floor 0, no CIoU (batch_probiou's semantics)"
    if passes == "fwd+bwd":
        note += "; gradients w.r.t. both box sets, dense random upstream gradient (N, M)"
    return Case(name=name, family="probiou", op="probiou", passes=passes,
                sizes={"N": n, "M": m}, dtype="float32", setup=setup, note=note,
                impl_repeats={"reference": 3, "ultralytics": 3})


def aligned_case(device, n, passes="fwd", ciou=False):
    name = f"probiou.aligned{'.ciou' if ciou else ''} N={n}"
    name += " fwd+bwd" if passes == "fwd+bwd" else ""

    def setup():
        g = _gen(3)
        target = rand_obbs(n, g)
        pred = jitter_obbs(target, g).to(device)
        target = target.to(device)
        impls = {
            "kernel": lambda p: tood_ext.probiou(p, target, aligned=True, floor=FLOOR, ciou=ciou),
            "reference": lambda p: ref.probiou(p, target, aligned=True, floor=FLOOR, ciou=ciou),
        }
        up = _ultralytics()
        if up is not None:
            impls["ultralytics"] = lambda p: up.probiou(p, target, CIoU=ciou,
                                                        floor=FLOOR).squeeze(-1)
        if passes == "fwd":
            return {k: (lambda f=f: f(pred)) for k, f in impls.items()}
        pred.requires_grad_(True)
        grad_out = torch.rand(n, generator=_gen(4)).to(device)
        return {k: fwd_bwd(lambda f=f: f(pred), (pred,), grad_out) for k, f in impls.items()}

    note = f"floor={FLOOR}; pred = target jittered"
    if passes == "fwd+bwd":
        note += "; gradient w.r.t. pred"
    return Case(name=name, family="probiou", op="probiou", passes=passes, sizes={"N": n},
                dtype="float32", setup=setup, note=note)


def loss_case(device, n, passes):
    name = f"probiou_loss N={n}" + (" fwd+bwd" if passes == "fwd+bwd" else "")

    def setup():
        g = _gen(5)
        target = rand_obbs(n, g)
        pred = jitter_obbs(target, g).to(device)
        target = target.to(device)
        weight = torch.rand(n, generator=g).to(device)
        total = weight.sum()
        impls = {
            "kernel": lambda p: tood_ext.probiou_loss(p, target, weight, avg_factor=total,
                                                      floor=FLOOR),
            "reference": lambda p: ref.probiou_loss(p, target, weight, avg_factor=total,
                                                    floor=FLOOR),
        }
        up = _ultralytics()
        if up is not None:
            impls["ultralytics"] = lambda p: ((1.0 - up.probiou(p, target, floor=FLOOR))
                                              * weight[:, None]).sum() / total
        if passes == "fwd":
            return {k: (lambda f=f: f(pred)) for k, f in impls.items()}
        pred.requires_grad_(True)
        return {k: fwd_bwd(lambda f=f: f(pred), (pred,)) for k, f in impls.items()}

    note = "RotatedBboxLoss's IoU term: weighted sum / target_scores_sum, floor=0.01"
    if passes == "fwd+bwd":
        note += "; gradient w.r.t. pred"
    return Case(name=name, family="probiou", op="probiou_loss", passes=passes, sizes={"N": n},
                dtype="float32", setup=setup, note=note)


@register_family("probiou")
def cases(device: str, quick: bool) -> list:
    cuda = device == "cuda"
    if quick:
        pair, pair_bwd, n_aligned = (16, 300), (8, 200), 1000
    else:
        pair = (1000, 21504)
        pair_bwd = (1000, 21504) if cuda else (200, 21504)
        n_aligned = 1_000_000 if cuda else 100_000
    out = [pairwise_case(device, *pair), pairwise_case(device, *pair_bwd, passes="fwd+bwd")]
    out += [aligned_case(device, n_aligned, p) for p in ("fwd", "fwd+bwd")]
    out.append(aligned_case(device, n_aligned, "fwd+bwd", ciou=True))
    out += [loss_case(device, n_aligned, p) for p in ("fwd", "fwd+bwd")]
    return out
