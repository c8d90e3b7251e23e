"""The ultralytics drop-in against ultralytics' own code (8.4.190), on many random batches.

What is claimed (``tood_ext.compat.ultralytics``): the adapter is ultralytics'
``TaskAlignedAssigner`` with equal values of its two ``torch.topk`` calls taken in anchor-index
order. So:

* assigner level: every output equals ultralytics' run with a lowest-index ``torch.topk``
  (:func:`lowest_index_topk`), on random batches of tiny, crowded, mixed and empty images,
  for the topk / topk2 settings ultralytics uses; and equals ultralytics as it is wherever its
  own (CPU) order gives the same result;
* loss level: ``v8DetectionLoss`` and ``E2ELoss`` (YOLOv8 / YOLO26 detection) give the same
  loss and gradients with and without ``patch_ultralytics()`` on every batch;
  ``v8SegmentationLoss`` and ``v8PoseLoss`` (built from ultralytics' yaml files) equal
  ultralytics' with the lowest-index order on every batch, and ultralytics as it is wherever
  its order agrees;
* ultralytics' real trainer, 2 epochs on a tiny synthetic set: the same loss on every batch.

Only decisions that float rounding could flip (two GTs' CIoU, or a GT's k-th and (k+1)-th
metric, within a relative 1e-6: the op's CIoU lacks ultralytics' ``+ eps`` terms) exclude a
draw; each test checks that almost every draw is compared.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ul_tal = pytest.importorskip("ultralytics.utils.tal")
ul_loss = pytest.importorskip("ultralytics.utils.loss")

from tood_ext.compat import ultralytics as tul  # noqa: E402
from tood_ext.testing.ultralytics import STRIDES, random_v8_preds as v8_preds  # noqa: E402
from tood_ext.testing.ultralytics import random_gt_counts_and_sides, tiny_v8_model  # noqa: E402
from tood_ext.testing.ultralytics_obb import probiou_rounds_to_zero  # noqa: E402

KINDS = ("tiny", "crowded", "mixed", "empty")
lowest_index_topk = tul.lowest_index_topk


# ---------------------------------------------------------------------------------------------
# random batches
# ---------------------------------------------------------------------------------------------


def v8_targets(gen, B: int, nc: int, kind: str) -> dict:
    """A target batch in ultralytics' format (normalised xywh). ``tiny``: up to 30 GTs of sides
    0.3-4% of the image (below stride_val, widened by ultralytics' inside test); ``crowded``: up
    to 30 GTs of 2-30% clustered in a fifth of the image; ``mixed``: 0-24 GTs of 0.5-30%;
    ``empty``: no GT at all. In every kind about one image in five has none."""
    batch_idx, wh = random_gt_counts_and_sides(gen, B, kind)
    n = batch_idx.numel()
    if kind == "crowded":
        centre = 0.2 + 0.6 * torch.rand(B, 2, generator=gen)
        xy = centre[batch_idx.long()] + (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
        xy = torch.maximum(torch.minimum(xy, 1 - wh / 2), wh / 2)
    else:
        xy = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    return {"batch_idx": batch_idx, "cls": torch.randint(0, nc, (n, 1), generator=gen).float(),
            "bboxes": torch.cat((xy, wh), -1)}


def assigner_inputs(gen, B: int, nc: int, size: int, kind: str):
    """Inputs of ``TaskAlignedAssigner.forward`` as ``v8DetectionLoss`` builds them."""
    loss = ul_loss.v8DetectionLoss(tiny_v8_model(nc))
    preds = v8_preds(gen, B, nc, size)
    with recording(loss) as seen:
        loss(preds, v8_targets(gen, B, nc, kind))
    return seen[0]


@contextlib.contextmanager
def recording(loss):
    """Records the inputs of every call of ``loss``'s assigners (E2E branches included)."""
    seen = []
    branches = [b for b in (loss, getattr(loss, "one2many", None), getattr(loss, "one2one", None))
                if b is not None and hasattr(b, "assigner")]
    for branch in branches:
        forward = branch.assigner.forward

        def record(*args, _forward=forward, _assigner=branch.assigner, **kw):
            seen.append((_assigner,) + tuple(a.detach().clone() for a in args))
            return _forward(*args, **kw)

        branch.assigner.forward = record
    try:
        yield seen
    finally:
        for branch in branches:
            del branch.assigner.forward


def _rounding_decides_topk(assigner, t, u, inside, pb, gb) -> bool:
    """Oriented boxes: an inside pair whose ProbIoU is 0 or a few 1e-8 by float32 rounding alone
    (``probiou_rounds_to_zero``), where that decides a GT's top-k set under the lowest-index
    tie rule (ultralytics' positives need no t > 0: a zero t taken by index is positive too),
    or which GT an anchor in >= 2 GTs goes to."""
    from tood_ext.reference.probiou import probiou_pair  # ultralytics' arithmetic

    rounding = inside & probiou_rounds_to_zero(probiou_pair(gb[:, :, None].double(),
                                                            pb[:, None].double()))
    if not bool(rounding.any()):
        return False
    A = t.shape[-1]
    k = min(assigner.topk, A)
    order = torch.sort(t, dim=-1, descending=True, stable=True).indices[..., :k]
    sel = torch.zeros_like(inside).scatter_(-1, order, True)
    tiny = (2 * torch.finfo(torch.float32).eps) ** assigner.beta
    kth = torch.where(sel, t, torch.full_like(t, math.inf)).amin(-1, keepdim=True)
    # a 0 (or a tiny t) outside the top k turning into a tiny t that enters it
    if bool((rounding & ~sel & (kth <= tiny)).any()):
        return True
    # a tiny t in the top k turning into 0: then ranked among the zeros by anchor index
    positives = (sel & (t > 0)).sum(-1, keepdim=True)
    zeros_before = (t == 0).cumsum(-1) - (t == 0).long()
    if bool((rounding & sel & (t > 0) & (positives - 1 + zeros_before >= k)).any()):
        return True
    tiny_best = torch.where(inside, u, torch.zeros_like(u)).amax(1) < 2 * torch.finfo(
        torch.float32).eps
    return bool((rounding.any(1) & (inside.sum(1) >= 2) & tiny_best).any())


def near_ties(assigner, ps, pb, ap, gl, gb, mg, rel: float = 1e-6) -> bool:
    """A decision of ultralytics' assignment that float rounding of u or t could flip: a GT's
    k-th vs (k+1)-th metric, or the two largest (inside-masked) u of an anchor inside >= 2 GTs;
    for oriented boxes also a ProbIoU of an inside pair that is 0 or not by rounding where that
    decides (``_rounding_decides_topk``)."""
    assigner.bs, assigner.n_max_boxes = ps.shape[0], gb.shape[1]
    if gb.shape[1] == 0:
        return False
    inside = assigner.select_candidates_in_gts(ap, gb, mg).bool() & mg.bool()
    t, u = assigner.get_box_metrics(ps, pb, gl, gb, inside)
    k = min(assigner.topk + 1, t.shape[-1])
    top = t.topk(k, dim=-1).values
    if gb.shape[-1] == 5 and _rounding_decides_topk(assigner, t, u, inside, pb, gb):
        return True
    a, b = top[..., k - 2], top[..., k - 1]
    if bool(((b > 0) & (a - b <= rel * a)).any()):
        return True
    uu = torch.where(inside, u, torch.zeros_like(u)).topk(min(2, u.shape[1]), dim=1).values
    if uu.shape[1] < 2:
        return False
    many = inside.sum(1) >= 2
    close = (uu[:, 0] > 0) & (uu[:, 0] - uu[:, 1] <= rel * uu[:, 0])
    return bool((many & close).any())


def _same_outputs(got, want) -> bool:
    exact = all(torch.equal(g, w) for i, (g, w) in enumerate(zip(got, want)) if i != 2)
    return exact and torch.allclose(got[2], want[2], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the assigner
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [dict(topk=10, alpha=0.5, beta=6.0),  # v8DetectionLoss
                                 dict(topk=7, topk2=1, alpha=0.5, beta=6.0),  # E2E one2one
                                 dict(topk=13, topk2=4, alpha=1.0, beta=6.0)],
                         ids=["topk10", "topk7-topk2_1", "topk13-topk2_4"])
def test_assigner_is_ultralytics_with_lowest_index_ties(gen, cfg):
    n, compared, as_is_differs = 24, 0, 0
    for i in range(n):
        kind = KINDS[i % 4]
        ps, pb, ap, gl, gb, mg = assigner_inputs(gen, 3, 5, (128, 192)[i % 2], kind)[1:]
        ul = ul_tal.TaskAlignedAssigner(num_classes=5, stride=list(STRIDES), **cfg)
        if near_ties(ul, ps, pb, ap, gl, gb, mg):
            continue
        compared += 1
        ours = tul.TaskAlignedAssigner(num_classes=5, stride=list(STRIDES), **cfg)
        got = ours(ps, pb, ap, gl, gb, mg)
        with lowest_index_topk():
            want = ul(ps, pb, ap, gl, gb, mg)
        assert _same_outputs(got, want), (i, kind)
        as_is = ul(ps, pb, ap, gl, gb, mg)
        if _same_outputs(as_is, want):
            assert _same_outputs(got, as_is), (i, kind)
        else:
            as_is_differs += 1
    assert compared >= n - 2, f"only {compared} of {n} draws free of near-ties"
    print(f"compared {compared} of {n} draws; ultralytics as is differs from its lowest-index "
          f"result on {as_is_differs}")


def test_lowest_index_order_decides_zero_metric_fills(gen):
    """A tiny GT at the top-left corner, no anchor of t > 0: its top-k is anchors 0..k-1 under
    the lowest-index order; those inside the (widened) GT are its positives (t = 0)."""
    C, topk = 3, 10
    ap = torch.cat([torch.stack(torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5,
                                               indexing="xy"), -1).reshape(-1, 2) * s
                    for s, n in zip(STRIDES, (16, 8, 4))])
    A = ap.shape[0]
    ps = torch.rand(1, A, C, generator=gen)
    pb = torch.tensor([100.0, 100.0, 120.0, 120.0]).expand(1, A, 4).clone()  # misses the GT
    gb = torch.tensor([[[2.0, 2.0, 14.0, 6.0]]])  # widened to 16 px: x in (0, 16), y in (-4, 12)
    gl, mg = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    got = tul.TaskAlignedAssigner(topk=topk, num_classes=C)(ps, pb, ap, gl, gb, mg)
    with lowest_index_topk():
        want = ul_tal.TaskAlignedAssigner(topk=topk, num_classes=C)(ps, pb, ap, gl, gb, mg)
    assert _same_outputs(got, want)
    fg = got[3][0].nonzero().flatten().tolist()
    assert fg == [0, 1], fg  # anchors (4, 4) and (12, 4): in the top 10, inside the GT
    assert bool((got[2] == 0).all())


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def _loss_and_grads(loss_fn, preds, batch, leaves):
    for t in leaves:
        t.grad = None
    loss, _ = loss_fn(preds, batch)
    loss.sum().backward()
    return [loss.detach().clone()] + [t.grad.clone() for t in leaves]


def _assert_same(got, want, what):
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max().clamp(min=1)),
                                   msg=lambda m, i=i: f"{what}, tensor {i}: {m}")


def _compare_losses(make_loss, make_preds, make_batch, n):
    """Builds the loss unpatched and patched; for n random batches returns, per batch, whether
    it was compared (no near-tie), and checks: patched == ultralytics with lowest-index ties on
    every compared batch, == ultralytics as is where that agrees. Returns (compared, differs)."""
    plain = make_loss()
    with tul.patched_ultralytics():
        patched = make_loss()
    assert any(isinstance(getattr(b, "assigner", None), tul.TaskAlignedAssigner)
               for b in (patched, getattr(patched, "one2many", None)))
    compared = as_is_differs = 0
    for i in range(n):  # kinds in turn: tiny, crowded, mixed, empty
        preds, leaves = make_preds(i)
        batch = make_batch(i)
        with recording(plain) as seen:
            as_is = _loss_and_grads(plain, preds, batch, leaves)
        if any(near_ties(*args) for args in seen):
            continue
        compared += 1
        got = _loss_and_grads(patched, preds, batch, leaves)
        with lowest_index_topk():
            want = _loss_and_grads(plain, preds, batch, leaves)
        _assert_same(got, want, f"batch {i} ({KINDS[i % 4]}) vs lowest-index ultralytics")
        try:
            _assert_same(as_is, want, "")
        except AssertionError:
            as_is_differs += 1
            continue
        _assert_same(got, as_is, f"batch {i} ({KINDS[i % 4]}) vs ultralytics as is")
    assert compared >= n - 3, f"only {compared} of {n} batches free of near-ties"
    print(f"compared {compared} of {n} batches; ultralytics as is differs from its "
          f"lowest-index result on {as_is_differs}")
    return compared, as_is_differs


@pytest.mark.parametrize("which", ["v8DetectionLoss", "E2ELoss"])
def test_detection_losses_equal_with_and_without_patch(gen, which):
    """Detection: equal to ultralytics with lowest-index ties on every batch, and to
    ultralytics as it is wherever that agrees (the t = 0 positives whose choice depends on
    torch.topk's order weigh nothing in these losses unless they reach the conflict rule)."""
    nc, B, n = 6, 3, (60 if which == "v8DetectionLoss" else 50)
    model = tiny_v8_model(nc)
    model.args.epochs = 10
    make_loss = (lambda: ul_loss.v8DetectionLoss(model)) if which == "v8DetectionLoss" else (
        lambda: ul_loss.E2ELoss(model))

    def make_preds(i):
        size = (128, 160, 192)[i % 3]
        if which == "v8DetectionLoss":
            p = v8_preds(gen, B, nc, size)
            return p, [p["boxes"], p["scores"]]
        p1, p2 = v8_preds(gen, B, nc, size), v8_preds(gen, B, nc, size)
        return {"one2many": p1, "one2one": p2}, [p1["boxes"], p1["scores"], p2["boxes"],
                                                 p2["scores"]]

    compared, as_is_differs = _compare_losses(
        make_loss, make_preds, lambda i: v8_targets(gen, B, nc, KINDS[i % 4]), n)
    assert as_is_differs <= compared // 8, f"{as_is_differs} of {compared} batches differ"


@pytest.mark.parametrize("which,class_weights,reg_max", [
    ("v8DetectionLoss", False, 16), ("v8DetectionLoss", True, 16), ("E2ELoss", False, 16),
    ("v8DetectionLoss", False, 1)])
def test_fused_loss_equals_ultralytics(gen, monkeypatch, which, class_weights, reg_max):
    """``patch_ultralytics(fused_loss=True)``: the loss from the assignment's sparse output
    (fused cls loss, fused CIoU and DFL; no target_scores) equals ultralytics' own loss (run
    with lowest-index top-k ties, the adapter's documented order) and its gradients w.r.t. the
    predictions, to float rounding, on random batches of tiny, crowded, mixed and empty images
    (with images without GTs and batches without any GT), with and without class_weights, for
    YOLOv8 (DFL) and reg_max 1 (YOLO26's CIoU + L1)."""
    import tood_ext.ops.losses as losses_mod

    nc, B, n = 6, 3, 24
    model = tiny_v8_model(nc, reg_max=reg_max)
    model.args.epochs = 10
    if class_weights:
        model.class_weights = 0.5 + torch.rand(nc, generator=gen)
    make_loss = (lambda: ul_loss.v8DetectionLoss(model)) if which == "v8DetectionLoss" else (
        lambda: ul_loss.E2ELoss(model))
    plain = make_loss()
    with tul.patched_ultralytics():
        fused = make_loss()
    calls = []
    op = losses_mod.sparse_target_cls_loss
    monkeypatch.setattr(losses_mod, "sparse_target_cls_loss",
                        lambda *a, **k: calls.append(1) or op(*a, **k))
    original = ul_loss.v8DetectionLoss.get_assigned_targets_and_loss
    compared = 0
    for i in range(n):
        size = (128, 160, 192)[i % 3]
        if which == "v8DetectionLoss":
            preds = v8_preds(gen, B, nc, size, reg_max=reg_max)
            leaves = [preds["boxes"], preds["scores"]]
        else:
            p1, p2 = (v8_preds(gen, B, nc, size, reg_max=reg_max) for _ in range(2))
            preds, leaves = {"one2many": p1, "one2one": p2}, [p1["boxes"], p1["scores"],
                                                              p2["boxes"], p2["scores"]]
        batch = v8_targets(gen, B, nc, KINDS[i % 4])
        with recording(plain) as seen, lowest_index_topk():
            want = _loss_and_grads(plain, preds, batch, leaves)
        if any(near_ties(*args) for args in seen):
            continue
        compared += 1
        with tul.patched_ultralytics(fused_loss=True):
            assert ul_loss.v8DetectionLoss.get_assigned_targets_and_loss is not original
            got = _loss_and_grads(fused, preds, batch, leaves)
        _assert_same(got, want, f"batch {i} ({KINDS[i % 4]}), fused vs ultralytics")
    assert ul_loss.v8DetectionLoss.get_assigned_targets_and_loss is original  # restored
    assert compared >= n - 3, f"only {compared} of {n} batches free of near-ties"
    assert len(calls) >= compared, "the fused classification loss was not used"


@pytest.mark.parametrize("kind", ["tiny", "crowded", "empty"])
def test_fused_loss_assigns_from_the_gt_class_columns(gen, kind):
    """The fused loss's assignment from the (B, A, G) sigmoid of each GT's class column of the
    head's (B, C, A) logits (``_gt_class_scores``) equals the adapter's ``forward_sparse`` on
    the whole (B, A, C) sigmoid; the shortcut steps aside (None) when G >= C or a valid GT's
    label is outside [0, C)."""
    from tood_ext.compat.ultralytics_fused import _gt_class_scores

    nc = 40  # > G (up to 30 GTs per image)
    _, _, pb, ap, gl, gb, mg = assigner_inputs(gen, 2, nc, 160, kind)
    logits = torch.randn(2, nc, pb.shape[1], generator=gen) * 2 - 2  # the head's (B, C, A)
    assigner = tul.TaskAlignedAssigner(topk=10, num_classes=nc, alpha=0.5, beta=6.0,
                                       stride=list(STRIDES))
    want = assigner.forward_sparse(logits.permute(0, 2, 1).sigmoid(), pb, ap, gl, gb, mg)
    cols = _gt_class_scores(logits, gl, mg)
    assert cols is not None and cols.shape == (2, pb.shape[1], gb.shape[1])
    got = assigner._forward_sparse_gt_scores(cols, pb, ap, gl, gb, mg)
    assert _same_outputs(got, want)
    if gb.shape[1] > 0:
        assert _gt_class_scores(logits[:, : gb.shape[1]], gl.clamp(max=0), mg) is None  # G >= C
        bad = gl.clone()
        bad[mg.bool()] = nc  # a valid GT of class C
        assert (_gt_class_scores(logits, bad, mg) is None) == bool(mg.any())


def test_fused_loss_leaves_other_assigners_to_ultralytics(gen):
    """A loss whose assigner is not the adapter (built before the patch) keeps ultralytics'
    method under ``fused_loss=True``, bit for bit."""
    nc, B = 4, 2
    model = tiny_v8_model(nc)
    plain = ul_loss.v8DetectionLoss(model)
    preds = v8_preds(gen, B, nc, 128)
    batch = v8_targets(gen, B, nc, "mixed")
    leaves = [preds["boxes"], preds["scores"]]
    want = _loss_and_grads(plain, preds, batch, leaves)
    with tul.patched_ultralytics(fused_loss=True):
        got = _loss_and_grads(plain, preds, batch, leaves)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _yaml_model(kind: str, nc: int = 3):
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    from ultralytics.cfg import get_cfg

    cls, yaml = {"seg": (tasks.SegmentationModel, "yolov8n-seg.yaml"),
                 "pose": (tasks.PoseModel, "yolov8n-pose.yaml")}[kind]
    model = cls(yaml, nc=nc, verbose=False)
    model.args = get_cfg()
    return model


@pytest.mark.parametrize("kind", ["seg", "pose"])
def test_segmentation_and_pose_losses(gen, kind):
    """v8SegmentationLoss / v8PoseLoss average over all positives, t = 0 ones included: equal
    to ultralytics with lowest-index ties on every batch, and to ultralytics as it is wherever
    its CPU top-k order gives the same loss."""
    nc, B, n, size = 3, 3, 40, 160
    model = _yaml_model(kind, nc)
    with torch.no_grad():
        shapes = model.train()(torch.zeros(B, 3, size, size))
    assert type(model.init_criterion()).__name__ == {"seg": "v8SegmentationLoss",
                                                     "pose": "v8PoseLoss"}[kind]

    def make_preds(i):
        preds = {}
        for k, v in shapes.items():
            if torch.is_tensor(v):
                x = torch.randn(v.shape, generator=gen) * (1.0 if k == "scores" else 2.0)
                preds[k] = (x - 2 if k == "scores" else x).requires_grad_()
            else:
                preds[k] = v
        return preds, [v for v in preds.values() if torch.is_tensor(v)]

    def make_batch(i):
        batch = v8_targets(gen, B, nc, KINDS[i % 4])
        n_gt = batch["bboxes"].shape[0]
        if kind == "seg":  # overlap masks: instance j of its image painted over its box
            mh, mw = shapes["proto"].shape[-2:]
            masks = torch.zeros(B, mh, mw)
            seen = [0] * B
            for j in range(n_gt):
                b = int(batch["batch_idx"][j])
                seen[b] += 1
                cx, cy, w, h = batch["bboxes"][j].tolist()
                x1, y1 = int((cx - w / 2) * mw), int((cy - h / 2) * mh)
                masks[b, y1:max(int((cy + h / 2) * mh), y1 + 1),
                      x1:max(int((cx + w / 2) * mw), x1 + 1)] = seen[b]
            batch["masks"] = masks
        else:
            kp = torch.rand(n_gt, 17, 3, generator=gen)
            kp[..., :2] = batch["bboxes"][:, None, :2] + (kp[..., :2] - 0.5) * batch["bboxes"][:, None, 2:]
            kp[..., 2] = (kp[..., 2] > 0.3).float() * 2
            batch["keypoints"] = kp
        return batch

    compared, as_is_differs = _compare_losses(model.init_criterion, make_preds, make_batch,
                                              n)
    assert compared - as_is_differs >= compared // 4, (as_is_differs, compared)


# ---------------------------------------------------------------------------------------------
# ultralytics' trainer
# ---------------------------------------------------------------------------------------------

_TRAIN = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from pathlib import Path
    from PIL import Image
    root = Path(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    data = root / "data"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        (data / "labels" / split).mkdir(parents=True)
        for i in range(8):
            img = (rng.random((128, 128, 3)) * 60).astype(np.uint8)
            rows = []
            for _ in range(int(rng.integers(0, 9))):  # tiny to large boxes, some images empty
                w, h = rng.uniform(0.02, 0.5, 2)
                cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
                c = int(rng.integers(0, 2))
                x1, y1, x2, y2 = (int(v * 128) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
                img[y1:y2 + 1, x1:x2 + 1] = (200, 60, 60) if c == 0 else (60, 200, 60)
                rows.append(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            Image.fromarray(img).save(data / "images" / split / f"{i}.png")
            (data / "labels" / split / f"{i}.txt").write_text("\\n".join(rows))
    (data / "data.yaml").write_text(f"path: {data}\\ntrain: images/train\\nval: images/val\\n"
                                    "names: ['a', 'b']\\n")
    from ultralytics import YOLO
    from tood_ext.compat import ultralytics as tul
    out = {}
    for cfg in ("yolov8n.yaml", "yolo26n.yaml"):
        for patched in (False, True, "fused"):
            if patched:
                tul.patch_ultralytics(fused_loss=patched == "fused")
            losses = []
            model = YOLO(cfg)
            model.add_callback("on_train_batch_end", lambda tr: losses.append(
                {k: float(v) for k, v in tr.loss_items.items()}))
            model.train(data=str(data / "data.yaml"), epochs=2, imgsz=128, batch=4, device="cpu",
                        workers=0, plots=False, val=False, seed=0, deterministic=True, amp=False,
                        project=str(root / "runs"), name=f"{cfg}-{patched}", exist_ok=True,
                        verbose=False, save=False, mosaic=0.0)
            tul.unpatch_ultralytics()
            out[f"{cfg} {({False: 'unpatched', True: 'patched'}).get(patched, patched)}"] = losses
    print("LOSSES " + json.dumps(out))
""")


def test_ultralytics_trainer_losses_match_per_batch(tmp_path):
    """ultralytics' own trainer (YOLOv8n, and YOLO26n's E2E loss), 2 epochs on a tiny
    synthetic set, offline: the same losses on every batch with and without the patch, and
    with ``fused_loss=True``."""
    pytest.importorskip("PIL")
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path / "cfg"))
    seed = int(torch.randint(0, 2**31, (1,)))
    proc = subprocess.run([sys.executable, "-c", _TRAIN, str(tmp_path), str(seed)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("LOSSES ")][-1]
    runs = json.loads(line[len("LOSSES "):])
    for cfg in ("yolov8n.yaml", "yolo26n.yaml"):
        want = runs[f"{cfg} unpatched"]
        for variant in ("patched", "fused"):
            got = runs[f"{cfg} {variant}"]
            assert len(want) == len(got) == 4, (cfg, variant, len(want), len(got))
            for step, (w, g) in enumerate(zip(want, got)):
                assert w.keys() == g.keys()
                for k in w:
                    assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-7), (cfg, variant,
                                                                             step, k, seed)
        assert any(v > 0 for step in want for v in step.values())
