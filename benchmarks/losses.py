"""Benchmarks of the fused losses (``tood_ext.sparse_target_cls_loss``).

* ``losses.cls_loss``: the classification loss of ultralytics' ``v8DetectionLoss`` after the
  assignment, forward + backward w.r.t. the class logits, B=16, A=8400 (YOLOv8 at 640 px),
  C in {80 (COCO), 365 (Objects365), 1203 (LVIS)}; ~5% of the anchors foreground (TAL's
  top-10 per GT), their scores uniform in [0, 1]. ``kernel`` = ``sparse_target_cls_loss(pred,
  labels, scores, "bce", reduction="mean", avg_factor=sum of the scores)`` on the sparse
  (labels, scores); ``ultralytics`` = ultralytics' dense path as written in
  ``TaskAlignedAssigner.get_targets`` / ``v8DetectionLoss`` (int8 one-hot ``target_scores``
  by scatter, masked by fg, times the normalised metric, ``BCEWithLogitsLoss(reduction="none")``,
  ``.sum() / target_scores.sum().clamp(min=1)``); ``reference`` = ``tood_ext.reference``'s
  dense twin. The peak-memory column holds each path's extra memory (the gradient included).
* ``losses.qfl``: the same sizes at C=80 with ``kind="qfl", activated=True`` (TOOD's loss on
  P_align) against the reference.
* ``losses.focal``: the same sizes at C=80 with ``kind="focal", activated=True`` (TOOD's loss
  of its ATSS epochs, mmdetection's ``FocalLoss(use_sigmoid=True, activated=True)``): hard
  labels (scores 1), a per-anchor ``weight`` (mmdetection's ``label_weights``: 1, 0 on ~2% of
  the anchors, the ignored ones), ``avg_factor`` = the number of positives; against the
  reference and ``mmdetection`` = mmdetection's dense path as written in ``FocalLoss`` /
  ``py_focal_loss_with_prob`` (one-hot target by ``F.one_hot`` over C + 1 classes, the
  background column dropped, the focal weight, ``binary_cross_entropy``, times
  ``label_weights`` viewed (N, 1), summed / avg_factor).
* ``losses.dfl``: the DFL of v8DetectionLoss (reg_max 16) on the foreground anchors of the same
  batch (5% of B * A = 6720 anchors, 4 sides each) and on all 134400 anchors, fwd+bwd:
  ``kernel`` = ``dfl_loss(pred_dist (n, 4, 16), target (n, 4), weight / 4)``, ``ultralytics`` =
  ``DFLoss(16)(pred_dist.view(-1, 16), target) * weight`` summed, ``reference`` = our twin.

``--quick``: one tiny case (B=2, A=336, C=80).
"""
from __future__ import annotations

import torch

from tood_ext import reference as ref
from tood_ext.ops.losses import dfl_loss, sparse_target_cls_loss

from .harness import Case, register_family

SEED = 19


def _inputs(B, A, C, device, fg=0.05, activated=False):
    g = torch.Generator().manual_seed(SEED + C)
    x = torch.randn(B, A, C, generator=g) * 2 - 4  # most anchors confidently background
    if activated:
        x = x.sigmoid()
    labels = torch.randint(0, C, (B, A), generator=g)
    labels = torch.where(torch.rand(B, A, generator=g) < fg, labels, torch.full_like(labels, -1))
    scores = torch.rand(B, A, generator=g) * (labels >= 0)
    return x.to(device).requires_grad_(), labels.to(device), scores.to(device)


def ultralytics_dense_cls_loss(pred, labels, scores):
    """ultralytics' classification loss from the assigner's output, dense as ultralytics
    builds it (tal.py get_targets + forward, loss.py v8DetectionLoss)."""
    B, A, C = pred.shape
    fg_mask = labels >= 0
    target_labels = labels.clamp(0)
    target_scores = torch.zeros((B, A, C), dtype=torch.int8, device=pred.device)
    target_scores.scatter_(2, target_labels.unsqueeze(-1), 1)
    target_scores = target_scores * (fg_mask[:, :, None] > 0)
    target_scores = target_scores * scores[..., None]  # norm_align_metric (B, A, 1)
    target_scores_sum = target_scores.sum().clamp(min=1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        pred, target_scores.to(pred.dtype), reduction="none")
    return bce.sum() / target_scores_sum


def mmdet_dense_focal_loss_with_prob(pred, labels, label_weights, avg_factor, gamma=2.0,
                                     alpha=0.25):
    """mmdetection's FocalLoss(use_sigmoid=True, activated=True) on flattened (N, C)
    probabilities and (N,) labels with background C (py_focal_loss_with_prob)."""
    C = pred.shape[-1]
    pred = pred.reshape(-1, C)
    target = torch.nn.functional.one_hot(labels.reshape(-1), num_classes=C + 1)[:, :C]
    target = target.type_as(pred)
    pt = (1 - pred) * target + pred * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = torch.nn.functional.binary_cross_entropy(pred, target, reduction="none") * \
        focal_weight
    return (loss * label_weights.reshape(-1, 1)).sum() / avg_factor


def _cls_case(device, B, A, C, kind="bce", activated=False):
    def setup():
        x, labels, scores = _inputs(B, A, C, device, activated=activated)
        weight = None
        if kind == "focal":  # hard labels, mmdetection's label_weights (0: ignored anchors)
            scores = torch.ones_like(scores)
            g = torch.Generator().manual_seed(SEED)
            weight = (torch.rand(B, A, generator=g) >= 0.02).float().to(device)

        def fused(fn):
            def run():
                avg = (labels >= 0).sum().clamp(min=1).float() if kind == "focal" else \
                    scores.sum().clamp(min=1)
                loss = fn(x, labels, scores, kind, activated=activated, weight=weight,
                          reduction="mean", avg_factor=avg)
                return (loss.detach(), *torch.autograd.grad(loss, x))
            return run

        impls = {"kernel": fused(sparse_target_cls_loss),
                 "reference": fused(ref.sparse_target_cls_loss)}
        if kind == "bce":
            def dense():
                loss = ultralytics_dense_cls_loss(x, labels, scores)
                return (loss.detach(), *torch.autograd.grad(loss, x))
            impls["ultralytics"] = dense
        if kind == "focal" and activated:
            def mmdet():
                mm_labels = torch.where(labels >= 0, labels, torch.full_like(labels, C))
                avg = (labels >= 0).sum().clamp(min=1).float()
                loss = mmdet_dense_focal_loss_with_prob(x, mm_labels, weight, avg)
                return (loss.detach(), *torch.autograd.grad(loss, x))
            impls["mmdetection"] = mmdet
        return impls

    name = f"losses.{'cls_loss' if kind == 'bce' else kind} B={B} A={A} C={C}"
    note = {"bce": "sparse_target_cls_loss (fused fwd+bwd) vs ultralytics' dense target_scores "
                   "+ BCE + sum, and the reference",
            "qfl": "sparse_target_cls_loss qfl on probabilities (TOOD) vs the reference",
            "focal": "sparse_target_cls_loss focal on probabilities with label weights (TOOD's "
                     "ATSS epochs) vs mmdetection's dense FocalLoss(activated=True) and the "
                     "reference"}[kind]
    big = B * A * C >= 4e7
    return Case(name=name, family="losses", op="sparse_target_cls_loss", passes="fwd+bwd",
                sizes={"B": B, "A": A, "C": C}, dtype="float32", setup=setup, note=note,
                warmup=1 if big else None,
                impl_repeats={"reference": 3, "ultralytics": 3} if big else {})


def _dfl_case(device, n, R=16):
    def setup():
        g = torch.Generator().manual_seed(SEED + n)
        pd = (torch.randn(n, 4, R, generator=g) * 2).to(device).requires_grad_()
        t = (torch.rand(n, 4, generator=g) * (R - 1)).to(device)
        w = torch.rand(n, generator=g).to(device)
        w4 = (w / 4)[:, None].expand(n, 4)

        def ours(fn):
            def run():
                loss = fn(pd, t, w4)
                return (loss.detach(), *torch.autograd.grad(loss, pd))
            return run

        impls = {"kernel": ours(dfl_loss), "reference": ours(ref.dfl_loss)}
        try:
            from ultralytics.utils.loss import DFLoss
        except Exception:  # noqa: BLE001 - optional peer
            DFLoss = None
        if DFLoss is not None:
            dfl = DFLoss(R)

            def peer():
                loss = (dfl(pd.view(-1, R), t.clone()) * w[:, None]).sum()
                return (loss.detach(), *torch.autograd.grad(loss, pd))
            impls["ultralytics"] = peer
        return impls

    return Case(name=f"losses.dfl n={n} R={R}", family="losses", op="dfl_loss",
                passes="fwd+bwd", sizes={"n": n, "R": R}, dtype="float32", setup=setup,
                note="dfl_loss (fused fwd+bwd) vs ultralytics' DFLoss and the reference")


@register_family("losses")
def cases(device: str, quick: bool = False) -> list:
    if quick:
        return [_cls_case(device, 2, 336, 80), _cls_case(device, 2, 336, 80, "focal", True),
                _dfl_case(device, 64)]
    return [_cls_case(device, 16, 8400, C) for C in (80, 365, 1203)] + \
        [_cls_case(device, 16, 8400, 80, kind="qfl", activated=True),
         _cls_case(device, 16, 8400, 80, kind="focal", activated=True),
         _dfl_case(device, 6720), _dfl_case(device, 134400)]
