"""Benchmark cases of the task-aligned assignment (TOOD's TAL): ``task_aligned_assign``.

Implementations: ``kernel`` = :func:`tood_ext.ops.tal.task_aligned_assign` (imported when a case
is set up, so this module imports without it; while it is missing its column reports the import
error), ``reference`` = :func:`tood_ext.reference.tal.task_aligned_assign` (pure PyTorch, dense
(B, G, A) tensors), ``ultralytics`` = ``ultralytics.utils.tal.TaskAlignedAssigner`` where
importable, in the ultralytics-flavour cases only, called with its own input conventions
(gt_labels (B, G, 1) float, mask_gt (B, G, 1) float; it returns its own tuple, so its maxdiff
column stays empty).

Inputs (float32): a square image of side S = 640 * sqrt(A / 8400) with YOLO-style anchor grids
at strides 8, 16, 32 (A = 2100, 8400, 33600 for S = 320, 640, 1280), anchors in level order;
predicted boxes centred within half a stride of their anchor, w, h in [2, 8] strides; scores
uniform in (0, 1); GT w, h uniform in [16, 0.6 S] (no side below ultralytics' 16 px widening
threshold), ~20% of the GT slots padding, labels in [0, C).
"""
from __future__ import annotations

import importlib
import importlib.util
import math

import torch

from tood_ext.reference.tal import task_aligned_assign as ref_tal

from .harness import Case, register_family

SEED = 0
STRIDES = (8, 16, 32)

FLAVOURS = {
    # TOOD / mmdetection: topk 13, alpha 1, beta 6, top-k of all anchors then centre inside, IoU
    "mmdet": dict(topk=13, alpha=1.0, beta=6.0, candidates="topk_then_inside", iou_mode="iou",
                  inside_eps=0.01, norm_eps=1e-7),
    # ultralytics YOLOv8 loss: inside first, CIoU, topk 10, alpha 0.5
    "ultralytics": dict(topk=10, alpha=0.5, beta=6.0, candidates="inside_then_topk",
                        iou_mode="ciou", inside_eps=1e-9, norm_eps=1e-9),
}


def _gen(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def image_side(A: int) -> float:
    """Side S of the square image whose stride-8/16/32 grids hold about A anchors."""
    return 640.0 * math.sqrt(A / 8400)


def anchor_grid(A: int):
    """(points (A', 2), strides (A',)) of the stride-8/16/32 grids of :func:`image_side` (A' = A
    when A is 21 * (S / 32)^2, e.g. 336, 2100, 8400, 33600)."""
    side = image_side(A)
    points, strides = [], []
    for s in STRIDES:
        n = max(1, round(side / s))
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], -1))
        strides.append(torch.full((n * n,), float(s)))
    return torch.cat(points), torch.cat(strides)


def tal_inputs(B: int, G: int, A: int, C: int, gen: torch.Generator):
    """TOOD/YOLO-like inputs of task_aligned_assign (float32, CPU); see the module docstring."""
    points, strides = anchor_grid(A)
    A = points.shape[0]
    side = image_side(A)
    centre = points[None] + (torch.rand(B, A, 2, generator=gen) - 0.5) * strides[None, :, None]
    wh = (2 + 6 * torch.rand(B, A, 2, generator=gen)) * strides[None, :, None]
    pred_boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    scores = torch.rand(B, A, C, generator=gen).clamp_(1e-6, 1 - 1e-6)
    gt_wh = 16 + torch.rand(B, G, 2, generator=gen) * (0.6 * side - 16)
    gt_xy = torch.rand(B, G, 2, generator=gen) * (side - gt_wh)
    gt_boxes = torch.cat([gt_xy, gt_xy + gt_wh], -1)
    labels = torch.randint(0, C, (B, G), generator=gen, dtype=torch.int64)
    gt_mask = torch.rand(B, G, generator=gen) >= 0.2
    return scores, pred_boxes, points, labels, gt_boxes, gt_mask


def _kernel():
    """The kernel op, or a stand-in raising why it cannot be imported (reported per case)."""
    try:
        return importlib.import_module("tood_ext.ops.tal").task_aligned_assign
    except Exception as exc:  # noqa: BLE001 - the op may not exist yet: the column says so
        msg = f"tood_ext.ops.tal.task_aligned_assign unavailable: {type(exc).__name__}: {exc}"

        def missing(*args, **kwargs):
            raise RuntimeError(msg)

        return missing


def _ultralytics_assigner_cls():
    if importlib.util.find_spec("ultralytics") is None:
        return None
    try:
        return importlib.import_module("ultralytics.utils.tal").TaskAlignedAssigner
    except Exception:  # noqa: BLE001 - optional: its column is left out
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def tal_case(device, flavour, B, G, A, C, dtype=torch.float32, repeats=None, warmup=None,
             with_ultralytics=True, with_reference=True):
    kw = FLAVOURS[flavour]
    use_ul = with_ultralytics and flavour == "ultralytics"

    def setup():
        scores, pred_boxes, points, labels, gt_boxes, gt_mask = tal_inputs(B, G, A, C, _gen(11))
        args = (scores.to(device, dtype), pred_boxes.to(device, dtype), points.to(device, dtype),
                labels.to(device), gt_boxes.to(device, dtype), gt_mask.to(device))
        kernel = _kernel()
        impls = {"kernel": lambda: kernel(*args, **kw)}
        if with_reference:
            impls["reference"] = lambda: ref_tal(*args, **kw)
        cls = _ultralytics_assigner_cls() if use_ul else None
        if cls is not None:
            assigner = cls(topk=kw["topk"], num_classes=C, alpha=kw["alpha"], beta=kw["beta"],
                           eps=kw["norm_eps"])
            ul_labels = args[3][..., None].to(args[4].dtype)  # (B, G, 1) float
            ul_mask = args[5][..., None].to(args[4].dtype)  # (B, G, 1) float
            impls["ultralytics"] = lambda: assigner(args[0], args[1], args[2], ul_labels,
                                                    args[4], ul_mask)
        return impls

    name = f"task_aligned_assign.{flavour} B={B} G={G} A={A} C={C}"
    if dtype != torch.float32:
        name += f" {_dtype_name(dtype)}"
    k = kw
    note = (f"topk={k['topk']} alpha={k['alpha']} beta={k['beta']} {k['candidates']} "
            f"{k['iou_mode']}; YOLO-style anchor grids; ~20% padding GTs")
    if not with_reference:
        note += "; reference left out at this size (time)"
    if use_ul:
        note += ("; ultralytics: TaskAlignedAssigner (its CIoU, torch.topk ties, argmax-over-all-"
                 "GTs conflicts; column absent when not importable)")
    return Case(name=name, family="tal", op="task_aligned_assign", passes="fwd",
                sizes={"B": B, "G": G, "A": A, "C": C}, dtype=_dtype_name(dtype), setup=setup,
                repeats=repeats, warmup=warmup, note=note)


DENSE_LIMIT_CPU = 54_000_000  # B * G * A up to G = 400, A = 8400 at B = 16


def _cpu_schedule(B, G, A):
    """(repeats, warmup) on CPU: the dense reference costs ~0.3 us per (b, g, a) there."""
    n = B * G * A
    if n >= 40e6:
        return 2, 1
    if n >= 10e6:
        return 3, 1
    if n >= 3e6:
        return 5, 1
    return None, None  # device defaults


def _cuda_schedule(B, G, A):
    return (10, 2) if B * G * A >= 1e8 else (None, None)


@register_family("tal")
def cases(device: str, quick: bool) -> list:
    out = []
    if quick:
        for flavour in FLAVOURS:
            out.append(tal_case(device, flavour, 2, 8, 336, 8))
        return out
    B, C = 16, 80
    if device == "cuda":
        for flavour in FLAVOURS:
            for A in (2100, 8400, 33600):
                for G in (10, 100, 400, 1000):
                    rep, wu = _cuda_schedule(B, G, A)
                    out.append(tal_case(device, flavour, B, G, A, C, repeats=rep, warmup=wu))
        out.append(tal_case(device, "mmdet", B, 100, 8400, C, dtype=torch.float16))
        out.append(tal_case(device, "ultralytics", B, 100, 8400, C, dtype=torch.bfloat16,
                            with_ultralytics=False))
        return out
    # CPU: the sweep (G x A at B = 16, C = 80) for the TOOD flavour; the ultralytics
    # flavour over G at A = 8400 with ultralytics' assigner. The dense implementations (our
    # reference, ultralytics) hold several (B, G, A) tensors and take ~0.3 us per (b, g, a)
    # here, so our reference runs up to B * G * A = DENSE_LIMIT_CPU only (the kernel runs
    # everywhere; ultralytics' assigner at every G of its sweep, for the memory-vs-G curve).
    for A in (2100, 8400, 33600):
        for G in (10, 100, 400, 1000):
            rep, wu = _cpu_schedule(B, G, A)
            dense = B * G * A <= DENSE_LIMIT_CPU
            out.append(tal_case(device, "mmdet", B, G, A, C, repeats=rep, warmup=wu,
                                with_reference=dense))
    for G in (10, 100, 400, 1000):
        rep, wu = _cpu_schedule(B, G, 8400)
        out.append(tal_case(device, "ultralytics", B, G, 8400, C, repeats=rep, warmup=wu,
                            with_reference=B * G * 8400 <= DENSE_LIMIT_CPU))
    return out
