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

import importlib.util
import types

import torch

from tood_ext.reference.tal import task_aligned_assign as ref_tal

from .harness import Case, register_family
from .tal import _gen, anchor_grid, image_side, tal_inputs

UL_CFG = dict(topk=10, alpha=0.5, beta=6.0)  # v8DetectionLoss's assigner


def _has_ultralytics() -> bool:
    if importlib.util.find_spec("ultralytics") is None:
        return False
    try:
        import ultralytics.utils.loss  # noqa: F401
        import ultralytics.utils.tal  # noqa: F401
    except Exception:  # noqa: BLE001 - optional peer
        return False
    return True


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


def _tiny_yolo(nc: int, reg_max: int, device: str):
    head = torch.nn.Module()
    head.stride, head.nc, head.reg_max = torch.tensor([8.0, 16.0, 32.0]), nc, reg_max
    model = torch.nn.Module()
    model.model = torch.nn.ModuleList([torch.nn.Linear(1, 1), head])
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    return model.to(device)


def _loss_case(device, B, A, C, max_gt, reg_max=16):
    def setup():
        import ultralytics.utils.loss as loss_mod

        from tood_ext.compat import ultralytics as tul

        g = _gen(31)
        side = round(image_side(A))
        feats = [torch.zeros(B, 1, side // s, side // s, device=device) for s in (8, 16, 32)]
        n_anchor = sum(f.shape[2] * f.shape[3] for f in feats)
        boxes = (torch.randn(B, 4 * reg_max, n_anchor, generator=g) * 2).to(device)
        scores = (torch.randn(B, C, n_anchor, generator=g) - 3).to(device)
        boxes.requires_grad_()
        scores.requires_grad_()
        counts = torch.randint(1, max_gt + 1, (B,), generator=g)
        batch_idx = torch.cat([torch.full((int(k),), i, dtype=torch.float32)
                               for i, k in enumerate(counts)])
        N = batch_idx.numel()
        wh = 0.02 + torch.rand(N, 2, generator=g) * 0.5
        xy = wh / 2 + torch.rand(N, 2, generator=g) * (1 - wh)
        batch = {"batch_idx": batch_idx.to(device),
                 "cls": torch.randint(0, C, (N, 1), generator=g).float().to(device),
                 "bboxes": torch.cat((xy, wh), -1).to(device)}
        preds = {"boxes": boxes, "scores": scores, "feats": feats}
        model = _tiny_yolo(C, reg_max, device)
        plain = loss_mod.v8DetectionLoss(model)
        with tul.patched_ultralytics():
            patched = loss_mod.v8DetectionLoss(model)
        reference = loss_mod.v8DetectionLoss(model)
        ours, ref_cls = _adapter_classes()
        reference.assigner = ref_cls(**{k: getattr(patched.assigner, k) for k in
                                        ("topk", "topk2", "num_classes", "alpha", "beta",
                                         "stride", "eps")})

        def step(loss_fn):
            def run():
                loss, _ = loss_fn(preds, batch)
                total = loss.sum()
                grads = torch.autograd.grad(total, (boxes, scores))
                return (total.detach(), *grads)
            return run

        return {"kernel": step(patched), "reference": step(reference),
                "ultralytics": step(plain)}

    return Case(name=f"compat.v8_loss_step B={B} A={A} C={C} G<={max_gt}", family="compat",
                op="ultralytics.v8DetectionLoss", passes="fwd+bwd",
                sizes={"B": B, "A": A, "C": C, "G": max_gt}, dtype="float32", setup=setup,
                note=("YOLOv8n loss (box 7.5, cls 0.5, dfl 1.5; reg_max 16) forward+backward on "
                      "random head outputs; kernel = patch_ultralytics(), ultralytics = "
                      "unpatched"))


@register_family("compat")
def cases(device: str, quick: bool) -> list:
    if quick:
        out = [_assigner_case(device, 2, 8, 336, 8)]
        if _has_ultralytics():
            out.append(_loss_case(device, 2, 336, 8, 8))
        return out
    out = [_assigner_case(device, 16, G, 8400, 80, with_reference=G <= 100)
           for G in (10, 100, 400)]
    out.append(_assigner_case(device, 16, 100, 8400, 80, small_frac=0.5))
    if _has_ultralytics():
        out.append(_loss_case(device, 16, 8400, 80, 40))
    return out
