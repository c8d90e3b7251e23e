"""Benchmark cases of the box-metric ops: box_iou (pairwise, batched), giou_loss, alignment_metric.

Implementations: ``kernel`` = tood_ext (C++/CUDA kernels), ``reference`` = tood_ext.reference
(pure PyTorch, broadcast tensors), ``torchvision`` = the matching torchvision.ops function where
one exists (2-D pairwise IoU family, aligned GIoU loss).
"""
from __future__ import annotations

import torch

import tood_ext
from tood_ext import reference as ref

from .harness import Case, fwd_bwd, register_family

IMG_H, IMG_W = 800.0, 1333.0
MIN_WH, MAX_WH = 8.0, 300.0
SEED = 0

try:
    import torchvision.ops as tvo
except Exception:  # noqa: BLE001 - torchvision is optional: its column is left out
    tvo = None

TV_PAIRWISE = {
    "iou": "box_iou",
    "giou": "generalized_box_iou",
    "diou": "distance_box_iou",
    "ciou": "complete_box_iou",
}


def _gen(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def rand_boxes(shape, gen: torch.Generator) -> torch.Tensor:
    """(*shape, 4) float32 xyxy boxes on the CPU: x1, y1 uniform in the 1333x800 image, w, h
    uniform in [8, 300] (x2 = x1 + w may leave the image, as predictions do)."""
    shape = tuple(shape)
    x1 = torch.rand(shape, generator=gen) * IMG_W
    y1 = torch.rand(shape, generator=gen) * IMG_H
    w = MIN_WH + torch.rand(shape, generator=gen) * (MAX_WH - MIN_WH)
    h = MIN_WH + torch.rand(shape, generator=gen) * (MAX_WH - MIN_WH)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=-1)


def jitter_boxes(target: torch.Tensor, gen: torch.Generator, scale: float = 0.15) -> torch.Tensor:
    """Predictions near their targets: each side moved by up to +-scale of the box size, kept
    valid (x2 >= x1 + 1)."""
    wh = (target[..., 2:] - target[..., :2]).repeat_interleave(2, dim=-1)
    wh = wh[..., [0, 2, 1, 3]]  # (w, h, w, h)
    noise = (torch.rand(target.shape, generator=gen) * 2 - 1) * scale * wh
    pred = target + noise
    pred[..., 2:] = torch.maximum(pred[..., 2:], pred[..., :2] + 1)
    return pred


def metric_inputs(B: int, G: int, A: int, C: int, gen: torch.Generator):
    """TOOD-like inputs of alignment_metric (float32, CPU): anchor points uniform in the image,
    predicted boxes of w, h in [8, 300] centred on their anchors, scores uniform in (0, 1),
    ~20% of the GT slots padding, labels in [0, C)."""
    points = torch.rand(A, 2, generator=gen) * torch.tensor([IMG_W, IMG_H])
    wh = MIN_WH + torch.rand(B, A, 2, generator=gen) * (MAX_WH - MIN_WH)
    pred_boxes = torch.cat([points - wh / 2, points + wh / 2], dim=-1)
    scores = torch.rand(B, A, C, generator=gen).clamp_(1e-6, 1 - 1e-6)
    labels = torch.randint(0, C, (B, G), generator=gen, dtype=torch.int64)
    gt_boxes = rand_boxes((B, G), gen)
    gt_mask = torch.rand(B, G, generator=gen) >= 0.2
    return scores, pred_boxes, points, labels, gt_boxes, gt_mask


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------------
# case builders
# --------------------------------------------------------------------------------------------


def pairwise_case(device, mode, n, m, dtype=torch.float32, with_tv=True, passes="fwd"):
    sizes = {"N": n, "M": m}
    name = f"box_iou.{mode}.pairwise N={n} M={m}"
    if passes == "fwd+bwd":
        name += " fwd+bwd"
    if dtype != torch.float32:
        name += f" {_dtype_name(dtype)}"

    def setup():
        g = _gen(1)
        a = rand_boxes((n,), g).to(device, dtype)
        b = rand_boxes((m,), g).to(device, dtype)
        impls = {
            "kernel": lambda x, y: tood_ext.box_iou(x, y, mode),
            "reference": lambda x, y: ref.box_iou(x, y, mode),
        }
        if with_tv and tvo is not None:
            impls["torchvision"] = getattr(tvo, TV_PAIRWISE[mode])
        if passes == "fwd":
            return {k: (lambda f=f: f(a, b)) for k, f in impls.items()}
        a.requires_grad_(True)
        b.requires_grad_(True)
        grad_out = torch.rand((n, m), generator=_gen(2)).to(device, dtype)
        return {k: fwd_bwd(lambda f=f: f(a, b), (a, b), grad_out) for k, f in impls.items()}

    notes = []
    if with_tv and tvo is None:
        notes.append("torchvision not installed")
    if passes == "fwd+bwd":
        notes.append("gradients w.r.t. both box sets, dense random upstream gradient (N, M)")
    note = "; ".join(notes)
    return Case(name=name, family="box_ops", op="box_iou", passes=passes, sizes=sizes,
                dtype=_dtype_name(dtype), setup=setup, note=note)


def batched_case(device, mode, B, n, m):
    def setup():
        g = _gen(3)
        a = rand_boxes((B, n), g).to(device)
        b = rand_boxes((B, m), g).to(device)
        return {"kernel": lambda: tood_ext.box_iou(a, b, mode),
                "reference": lambda: ref.box_iou(a, b, mode)}

    return Case(name=f"box_iou.{mode}.batched B={B} N={n} M={m}", family="box_ops",
                op="box_iou", passes="fwd", sizes={"B": B, "N": n, "M": m}, dtype="float32",
                setup=setup, note="torchvision has no batched box_iou")


def giou_loss_case(device, n, passes):
    def setup():
        g = _gen(4)
        target = rand_boxes((n,), g)
        pred = jitter_boxes(target, g).to(device)
        target = target.to(device)
        impls = {
            "kernel": lambda p: tood_ext.giou_loss(p, target, reduction="mean"),
            "reference": lambda p: ref.giou_loss(p, target, reduction="mean"),
        }
        if tvo is not None:
            impls["torchvision"] = lambda p: tvo.generalized_box_iou_loss(p, target,
                                                                          reduction="mean")
        if passes == "fwd":
            return {k: (lambda f=f: f(pred)) for k, f in impls.items()}
        pred.requires_grad_(True)
        return {k: fwd_bwd(lambda f=f: f(pred), (pred,)) for k, f in impls.items()}

    name = f"giou_loss.aligned N={n}" + (" fwd+bwd" if passes == "fwd+bwd" else "")
    note = "reduction='mean'; pred = target jittered by <=15% of w/h per side"
    if passes == "fwd+bwd":
        note += "; gradient w.r.t. pred"
    return Case(name=name, family="box_ops", op="giou_loss", passes=passes, sizes={"N": n},
                dtype="float32", setup=setup, note=note)


def metric_case(device, B, G, A, C, iou_mode, dtype=torch.float32, repeats=None):
    def setup():
        scores, pred_boxes, points, labels, gt_boxes, gt_mask = metric_inputs(B, G, A, C, _gen(5))
        args = (scores.to(device, dtype), pred_boxes.to(device, dtype),
                points.to(device, dtype), labels.to(device), gt_boxes.to(device, dtype),
                gt_mask.to(device))
        return {
            "kernel": lambda: tood_ext.alignment_metric(*args, iou_mode=iou_mode),
            "reference": lambda: ref.alignment_metric(*args, iou_mode=iou_mode),
        }

    name = f"alignment_metric.{iou_mode} B={B} G={G} A={A} C={C}"
    if dtype != torch.float32:
        name += f" {_dtype_name(dtype)}"
    return Case(name=name, family="box_ops", op="alignment_metric", passes="fwd",
                sizes={"B": B, "G": G, "A": A, "C": C}, dtype=_dtype_name(dtype), setup=setup,
                repeats=repeats, note="alpha=1, beta=6; outputs metric, overlaps, inside")


@register_family("box_ops")
def cases(device: str, quick: bool) -> list:
    cuda = device == "cuda"
    if quick:
        n_pair, n_bwd, batched = 64, 32, (2, 8, 64)
        n_loss, metric, metric_big = 1000, (2, 8, 128, 8), (2, 16, 128, 8)
    else:
        n_pair, n_bwd, batched = 2000, (2000 if cuda else 1000), (16, 100, 8400)
        n_loss = 1_000_000 if cuda else 100_000
        metric, metric_big = (16, 100, 8400, 80), (16, 400, 8400, 80)
    out = [pairwise_case(device, mode, n_pair, n_pair) for mode in TV_PAIRWISE]
    out.append(pairwise_case(device, "giou", n_bwd, n_bwd, passes="fwd+bwd"))
    out.append(batched_case(device, "iou", *batched))
    out += [giou_loss_case(device, n_loss, p) for p in ("fwd", "fwd+bwd")]
    out += [metric_case(device, *metric, iou_mode=m) for m in ("iou", "ciou")]
    if cuda:
        out += [metric_case(device, *metric_big, iou_mode=m) for m in ("iou", "ciou")]
        for dt in (torch.float16, torch.bfloat16):
            out.append(pairwise_case(device, "giou", n_pair, n_pair, dtype=dt, with_tv=False))
            out.append(metric_case(device, *metric, iou_mode="iou", dtype=dt))
    return out
