"""Dispatcher registration: opcheck of every op, torch.compile, build information."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import tood_ext

from conftest import DEVICES, metric_inputs, random_boxes


def _box_cases(gen, device):
    b1 = random_boxes(gen, 2, 7, dtype=torch.float64, device=device)
    b2 = random_boxes(gen, 2, 5, dtype=torch.float64, device=device)
    a1 = random_boxes(gen, 3, 6, dtype=torch.float64, device=device)
    a2 = random_boxes(gen, 3, 6, dtype=torch.float64, device=device)
    w = torch.rand(3, 6, generator=gen, dtype=torch.float64).to(device)
    ops = torch.ops.tood_ext
    cases = []
    for mode in ("iou", "giou", "diou", "ciou"):
        cases += [
            (ops.box_iou.default, (b1.clone().requires_grad_(), b2.clone().requires_grad_(), mode,
                                   False, 1e-7)),
            (ops.box_iou.default, (a1.clone().requires_grad_(), a2.clone().requires_grad_(), mode,
                                   True, 1e-7)),
            (ops.iou_loss.default, (a1.clone().requires_grad_(), a2.clone().requires_grad_(),
                                    w.clone().requires_grad_(), mode, 1e-7)),
            (ops.iou_loss.default, (a1, a2, None, mode, 1e-7)),
            (ops._box_iou_backward.default, (torch.rand(2, 7, 5, dtype=torch.float64,
                                                        device=device), b1, b2, mode, False,
                                             1e-7)),
            (ops._iou_loss_backward.default, (torch.rand(3, 6, dtype=torch.float64,
                                                         device=device), a1, a2, w, mode, 1e-7)),
        ]
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_box_ops(gen, device):
    for op, args in _box_cases(gen, device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_alignment_metric(gen, device):
    inputs = list(metric_inputs(gen, 2, 40, 5, 3, dtype=torch.float64, device=device))
    for iou_mode in ("iou", "ciou"):
        torch.library.opcheck(torch.ops.tood_ext.alignment_metric.default,
                              (*inputs, 1.0, 6.0, iou_mode, 0.01, 1e-7))
    inputs[0].requires_grad_()
    torch.library.opcheck(torch.ops.tood_ext.alignment_metric.default,
                          (*inputs, 0.5, 6.0, "ciou", 1e-9, 1e-9))


class TinyDetectorLoss(nn.Module):
    """A toy dense head that uses every box op: regress boxes, align, and take TOOD's losses."""

    def __init__(self, in_ch: int = 8, num_classes: int = 3):
        super().__init__()
        self.reg = nn.Linear(in_ch, 4)
        self.cls = nn.Linear(in_ch, num_classes)

    def forward(self, feats, anchors, gt_labels, gt_boxes, gt_mask):
        dist = self.reg(feats).exp()  # (B, A, 4)
        boxes = torch.cat([anchors - dist[..., :2], anchors + dist[..., 2:]], dim=-1)
        scores = self.cls(feats).sigmoid()
        metric, overlaps, inside = tood_ext.alignment_metric(scores, boxes, anchors, gt_labels,
                                                             gt_boxes, gt_mask)
        metric = metric * inside
        best = metric.argmax(dim=1)  # (B, A) the GT of highest metric per anchor
        target = torch.gather(gt_boxes, 1, best[..., None].expand(-1, -1, 4))
        weight = metric.amax(dim=1)
        reg = tood_ext.giou_loss(boxes, target, weight, avg_factor=weight.sum().clamp(min=1))
        pair = tood_ext.box_iou(boxes, gt_boxes, "diou").mean()
        return reg + 0.1 * pair + 0.01 * scores.mean()


def test_torch_compile_fullgraph_matches_eager(gen):
    torch.manual_seed(0)
    model = TinyDetectorLoss()
    scores, _, anchors, labels, gt_boxes, mask = metric_inputs(gen, 2, 64, 3, 4)
    feats = torch.randn(2, 64, 8, generator=gen)
    args = (feats, anchors, labels, gt_boxes, mask)
    eager = model(*args)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(*args)
    grads = torch.autograd.grad(out, list(model.parameters()))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_losses_match_eager(gen, device):
    """sparse_target_cls_loss (each kind, per-anchor weight) and dfl_loss in one
    fullgraph-compiled function (fake kernels, registered autograd, the reductions with a tensor
    avg_factor): the eager values and gradients."""
    C, R = 6, 8
    logits = (torch.randn(2, 40, C, generator=gen) * 3).to(device)
    labels = torch.randint(-1, C, (2, 40), generator=gen).to(device)
    scores = torch.rand(2, 40, generator=gen).to(device)
    pd = (torch.randn(30, 4, R, generator=gen) * 2).to(device)
    target = (torch.rand(30, 4, generator=gen) * (R - 1)).to(device)
    weight = torch.rand(30, 4, generator=gen).to(device)
    cw = (torch.rand(C, generator=gen) + 0.5).to(device)
    aw = torch.rand(2, 40, generator=gen).to(device)

    def losses(x, d):
        avg = scores.sum().clamp(min=1)
        cls = (tood_ext.sparse_target_cls_loss(x, labels, scores, "bce", class_weight=cw,
                                               reduction="mean", avg_factor=avg)
               + tood_ext.sparse_target_cls_loss(x, labels, scores, "qfl", gamma=1.5)
               + tood_ext.sparse_target_cls_loss(x.sigmoid(), labels, scores, "qfl",
                                                 activated=True, reduction="mean")
               + tood_ext.sparse_target_cls_loss(x, labels, scores, "vfl", alpha=0.5)
               + tood_ext.sparse_target_cls_loss(x, labels, scores, "focal", weight=aw)
               + tood_ext.sparse_target_cls_loss(x.sigmoid(), labels, scores, "focal",
                                                 activated=True, alpha=0.3))
        dfl = tood_ext.dfl_loss(d, target, weight, reduction="mean", avg_factor=weight.sum())
        return cls, dfl

    def run(f):
        x, d = logits.clone().requires_grad_(), pd.clone().requires_grad_()
        cls, dfl = f(x, d)
        return cls.detach(), dfl.detach(), *torch.autograd.grad(cls + 2 * dfl, (x, d))

    eager = run(losses)
    torch._dynamo.reset()
    got = run(torch.compile(losses, fullgraph=True))
    for g, e in zip(got, eager, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_build_info():
    info = tood_ext.build_info()
    assert info["ops_loaded"] and info["torch"] == torch.__version__
    assert set(info) >= {"torch", "torch_cuda", "ops_loaded", "cuda", "cuda_version",
                         "cuda_archs", "num_threads"}
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_archs"]
    else:
        assert info["cuda_version"] is None
    if os.environ.get("FORCE_CUDA") == "1":  # CI builds every .cu file: prove it happened
        assert info["cuda"], "FORCE_CUDA=1 but the CUDA kernels are not compiled in"
        assert "9.0" in " ".join(info["cuda_archs"]) or torch.cuda.is_available()
