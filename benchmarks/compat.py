"""Benchmarks of the drop-in adapters (``tood_ext.compat``) against what they replace.

* ``compat.ultralytics_assigner``: ``tood_ext.compat.ultralytics.TaskAlignedAssigner`` called
  exactly as ``v8DetectionLoss`` calls its assigner (topk 10, alpha 0.5, beta 6, gt_labels and
  mask (B, G, 1) float). Columns: ``kernel`` = the adapter on the compiled op, ``reference`` =
  the same adapter on the pure-PyTorch reference op, ``ultralytics`` =
  ``ultralytics.utils.tal.TaskAlignedAssigner`` (absent when ultralytics is not importable).
  maxdiff compares ``target_scores`` (the output the loss consumes). Inputs: those of the
  ``tal`` family (YOLO-style grids, GT sides >= 16 px, ~20% padding), B=16, C=80, A=8400,
  G in {10, 100, 400}; plus G=100 with half the GTs below 16 px (ultralytics' widened inside
  test: the adapter's sparse path).
* ``compat.v8_loss_step``: one training step of ultralytics' ``v8DetectionLoss`` (forward +
  backward w.r.t. the raw head outputs) for YOLOv8n's head at 640 px (A=8400, C=80,
  reg_max=16), B=16, 1..40 random GTs per image (padded G=40): ``kernel`` = the loss built under
  ``patch_ultralytics()``, ``reference`` = with the reference-op adapter, ``ultralytics`` = the
  unpatched loss. Only when ultralytics is importable.

``--quick``: one tiny case each (B=2, A=336, G=8).
"""
from __future__ import annotations

import types

import torch

from tood_ext.testing.ultralytics import random_v8_batch, tiny_v8_model
from tood_ext.reference.tal import task_aligned_assign as ref_tal

from .harness import Case, optional_module, register_family
from .tal import _gen, anchor_grid, image_side, tal_inputs

UL_CFG = dict(topk=10, alpha=0.5, beta=6.0)  # v8DetectionLoss's assigner


def _has_ultralytics() -> bool:
    return all(optional_module(m) is not None
               for m in ("ultralytics.utils.loss", "ultralytics.utils.tal"))


def _adapter_classes():
    from tood_ext.compat.ultralytics import TaskAlignedAssigner

    class ReferenceAssigner(TaskAlignedAssigner):
        @staticmethod
        def _tal_op():
            return ref_tal

    return TaskAlignedAssigner, ReferenceAssigner


def _assigner_case(device, B, G, A, C, small_frac=0.0, with_reference=True):
    def setup():
        scores, pred_boxes, points, labels, gt_boxes, gt_mask = tal_inputs(B, G, A, C, _gen(21))
        if small_frac:  # the first small_frac of the GTs get sides in [4, 16) px
            n = int(G * small_frac)
            g = _gen(22)
            wh = 4 + 12 * torch.rand(B, n, 2, generator=g)
            gt_boxes[:, :n, 2:] = gt_boxes[:, :n, :2] + wh
        m = gt_mask[..., None].float()
        args = (scores.to(device), pred_boxes.to(device), points.to(device),
                (labels[..., None].float() * m).to(device), (gt_boxes * m).to(device),
                m.to(device))
        ours, ref_cls = _adapter_classes()
        impls = {"kernel": lambda: ours(num_classes=C, **UL_CFG)(*args)[2]}
        if with_reference:
            impls["reference"] = lambda: ref_cls(num_classes=C, **UL_CFG)(*args)[2]
        if _has_ultralytics():
            from ultralytics.utils.tal import TaskAlignedAssigner as UL

            impls["ultralytics"] = lambda: UL(num_classes=C, **UL_CFG)(*args)[2]
        return impls

    name = f"compat.ultralytics_assigner B={B} G={G} A={A} C={C}"
    note = ("tood_ext.compat.ultralytics.TaskAlignedAssigner vs ultralytics' (topk 10, alpha 0.5; "
            "maxdiff on target_scores)")
    if small_frac:
        name += f" small={small_frac:g}"
        note += f"; {small_frac:.0%} of the GTs with sides < 16 px (widened inside test)"
    return Case(name=name, family="compat", op="ultralytics.TaskAlignedAssigner", passes="fwd",
                sizes={"B": B, "G": G, "A": A, "C": C}, dtype="float32", setup=setup, note=note)


def _loss_case(device, B, A, C, max_gt, reg_max=16):
    def setup():
        import ultralytics.utils.loss as loss_mod

        from tood_ext.compat import ultralytics as tul

        preds, batch = random_v8_batch(_gen(31), B, C, round(image_side(A)), reg_max=reg_max,
                                       max_gt=max_gt, max_wh=0.5, score_shift=-3.0,
                                       device=device)
        boxes, scores = preds["boxes"], preds["scores"]
        model = tiny_v8_model(C, reg_max, device)
        plain = loss_mod.v8DetectionLoss(model)
        with tul.patched_ultralytics():
            patched = loss_mod.v8DetectionLoss(model)
        reference = loss_mod.v8DetectionLoss(model)
        ours, ref_cls = _adapter_classes()
        reference.assigner = ref_cls(**{k: getattr(patched.assigner, k) for k in
                                        ("topk", "topk2", "num_classes", "alpha", "beta",
                                         "stride", "eps")})

        def step(loss_fn, fused=False):
            def run():
                with tul.patched_ultralytics(fused_loss=fused):
                    loss, _ = loss_fn(preds, batch)
                total = loss.sum()
                grads = torch.autograd.grad(total, (boxes, scores))
                return (total.detach(), *grads)
            return run

        return {"kernel": step(patched, fused=True), "assigner_only": step(patched),
                "reference": step(reference), "ultralytics": step(plain)}

    return Case(name=f"compat.v8_loss_step B={B} A={A} C={C} G<={max_gt}", family="compat",
                op="ultralytics.v8DetectionLoss", passes="fwd+bwd",
                sizes={"B": B, "A": A, "C": C, "G": max_gt}, dtype="float32", setup=setup,
                note=("YOLOv8n loss (box 7.5, cls 0.5, dfl 1.5; reg_max 16) forward+backward on "
                      "random head outputs; kernel = patch_ultralytics(fused_loss=True), "
                      "assigner_only = patch_ultralytics(), ultralytics = unpatched"))


def _tood_step_case(device, B, size, G, num_classes=80, depth=18, channels=64, stacked=3):
    """One TOOD training step (forward, TAL targets, QFL + GIoU losses, backward): compiled ops
    vs the same model (same weights) with every op swapped for its reference."""
    def setup():
        import copy

        from tood_ext.models import TOODConfig, build_model

        torch.manual_seed(0)
        cfg = TOODConfig(num_classes=num_classes, depth=depth, fpn_channels=channels,
                         feat_channels=channels, stacked_convs=stacked, num_groups=16,
                         initial_epoch=0)
        kernel_model = build_model(cfg).to(device).train()
        reference_model = copy.deepcopy(kernel_model)
        reference_model.set_ops("reference")
        g = _gen(41)
        images = torch.rand(B, 3, size, size, generator=g).to(device)
        targets = []
        for _ in range(B):
            wh = (0.05 + 0.45 * torch.rand(G, 2, generator=g)) * size
            xy = torch.rand(G, 2, generator=g) * (size - wh)
            targets.append({"boxes": torch.cat((xy, xy + wh), -1).to(device),
                            "labels": torch.randint(0, num_classes, (G,), generator=g).to(device)})

        def step(model):
            def run():
                model.zero_grad(set_to_none=True)
                losses = model.loss(images, targets, epoch=1)
                total = sum(losses.values())
                total.backward()
                return total.detach()
            return run

        return {"kernel": step(kernel_model), "reference": step(reference_model)}

    return Case(name=f"compat.tood_train_step B={B} {size}x{size} G={G} C={num_classes}",
                family="compat", op="tood_ext.models.TOOD.loss", passes="fwd+bwd",
                sizes={"B": B, "H": size, "W": size, "G": G, "C": num_classes},
                dtype="float32", setup=setup, repeats=5,
                note=(f"TOOD-R{depth} (FPN/head {channels} ch, {stacked} stacked convs) training "
                      "step after the ATSS epochs (TAL): forward, targets, losses, backward; "
                      "kernel = compiled ops, reference = model.set_ops('reference'), same "
                      "weights"))


@register_family("compat")
def cases(device: str, quick: bool) -> list:
    if quick:
        out = [_assigner_case(device, 2, 8, 336, 8)]
        if _has_ultralytics():
            out.append(_loss_case(device, 2, 336, 8, 8))
        out.append(_tood_step_case(device, 1, 128, 2, num_classes=4, stacked=1))
        return out
    out = [_assigner_case(device, 16, G, 8400, 80, with_reference=G <= 100)
           for G in (10, 100, 400)]
    out.append(_assigner_case(device, 16, 100, 8400, 80, small_frac=0.5))
    if _has_ultralytics():
        out += [_loss_case(device, 16, 8400, C, 40) for C in (80, 365, 1203)]
    out.append(_tood_step_case(device, 4, 512, 20))
    return out
