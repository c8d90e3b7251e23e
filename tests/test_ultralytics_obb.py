"""The oriented-box drop-in (``tood_ext.compat.ultralytics.RotatedTaskAlignedAssigner``) against
ultralytics' own code (8.4.190), on many random batches.

What is claimed (``tood_ext.compat.ultralytics_obb``): the adapter is ultralytics'
``RotatedTaskAlignedAssigner`` with equal values of its two ``torch.topk`` calls taken in
anchor-index order (the axis-aligned adapter's documented tie rule). So:

* assigner level: every output equals ultralytics' run with a lowest-index ``torch.topk``, on
  random batches of tiny, crowded, mixed (thin boxes, any angle) and empty images (images
  without GTs, batches without any GT), for v8OBBLoss's topk 10 and YOLO26-OBB's one-to-one
  topk 7 / topk2 1; and ultralytics as it is wherever its own (CPU) order gives the same;
* loss level: ``v8OBBLoss`` and ``E2ELoss(v8OBBLoss)`` give the same loss terms and gradients
  w.r.t. the predictions (box distributions, scores, angles) with and without the patch, also
  with ``fused_loss=True``;
* ultralytics' real OBB trainer, a short run on a tiny synthetic DOTA-format set: the same loss
  on every batch.

Draws where float rounding could flip a decision (two GTs' ProbIoU, or a GT's k-th and
(k+1)-th metric, within a relative 1e-6: the op's ProbIoU is not ultralytics' arithmetic
order) are skipped and counted.
"""
from __future__ import annotations

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

from test_ultralytics_dropin import (_assert_same, _loss_and_grads, _same_outputs,  # noqa: E402
                                     near_ties, recording)

from tood_ext.compat import ultralytics as tul  # noqa: E402
from tood_ext.testing.ultralytics import STRIDES  # noqa: E402
from tood_ext.testing.ultralytics_obb import OBB_KINDS as KINDS  # noqa: E402
from tood_ext.testing.ultralytics_obb import (random_obb_preds, random_obb_targets,  # noqa: E402
                                              tiny_obb_model)

lowest_index_topk = tul.lowest_index_topk
Rotated = tul.RotatedTaskAlignedAssigner


def obb_assigner_inputs(gen, B: int, nc: int, size: int, kind: str, **loss_kw):
    """Inputs of ``RotatedTaskAlignedAssigner.forward`` as ``v8OBBLoss`` builds them."""
    loss = ul_loss.v8OBBLoss(tiny_obb_model(nc), **loss_kw)
    preds = random_obb_preds(gen, B, nc, size)
    with recording(loss) as seen:
        loss(preds, random_obb_targets(gen, B, nc, kind))
    return seen[0][1:]


# ---------------------------------------------------------------------------------------------
# the assigner
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [dict(topk=10, alpha=0.5, beta=6.0),  # v8OBBLoss
                                 dict(topk=7, topk2=1, alpha=0.5, beta=6.0),  # E2E one2one
                                 dict(topk=13, topk2=4, alpha=1.0, beta=6.0)],
                         ids=["topk10", "topk7-topk2_1", "topk13-topk2_4"])
def test_rotated_assigner_is_ultralytics_with_lowest_index_ties(gen, cfg):
    n, compared, as_is_differs, fg = (24 if cfg["topk"] == 10 else 16), 0, 0, 0
    for i in range(n):
        kind = KINDS[i % 4]
        ps, pb, ap, gl, gb, mg = obb_assigner_inputs(gen, 3, 5, (128, 192)[i % 2], kind)
        ul = ul_tal.RotatedTaskAlignedAssigner(num_classes=5, stride=list(STRIDES), **cfg)
        if near_ties(ul, ps, pb, ap, gl, gb, mg):
            continue
        compared += 1
        ours = Rotated(num_classes=5, stride=list(STRIDES), **cfg)
        got = ours(ps, pb, ap, gl, gb, mg)
        with lowest_index_topk():
            want = ul(ps, pb, ap, gl, gb, mg)
        assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
        assert [g.dtype for g in got] == [w.dtype for w in want], (i, kind)
        assert _same_outputs(got, want), (i, kind)
        fg += int(got[3].sum())
        as_is = ul(ps, pb, ap, gl, gb, mg)
        if _same_outputs(as_is, want):
            assert _same_outputs(got, as_is), (i, kind)
        else:
            as_is_differs += 1
        # forward_sparse: the same outputs with norm for the one-hot target_scores
        labels, boxes, norm, fg_mask, gt_idx = ours.forward_sparse(ps, pb, ap, gl, gb, mg)
        dense = torch.zeros_like(got[2])
        if gb.shape[1]:
            dense.scatter_(2, labels[..., None], norm[..., None])
        assert torch.equal(dense, got[2]) and torch.equal(fg_mask, got[3])
    assert compared >= n - 2, f"only {compared} of {n} draws free of near-ties"
    assert fg > 0, "no positive anchor in any draw"
    print(f"compared {compared} of {n} draws ({fg} positives); ultralytics as is differs from "
          f"its lowest-index result on {as_is_differs}")


def test_rotated_assigner_corner_cases(gen):
    """Hand-made cases: a GT rotated by 45 degrees (anchors inside the diamond only, the inside
    test inclusive on its edges), a tiny GT widened to stride_val, a padding GT, a GT with a
    NaN angle (padding: claims nothing, no NaN target), and an empty batch (G = 0)."""
    C = 3
    ap = torch.cat([torch.stack(torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5,
                                               indexing="xy"), -1).reshape(-1, 2) * s
                    for s, n in zip(STRIDES, (16, 8, 4))])
    A = ap.shape[0]
    ps = torch.rand(2, A, C, generator=gen)
    pb = torch.cat([ap + 1.0, torch.full((A, 2), 30.0), torch.full((A, 1), 0.7)], -1)
    pb = pb.expand(2, A, 5).clone()
    gb = torch.tensor([[[64.0, 64.0, 60.0, 20.0, math.pi / 4], [20.0, 100.0, 3.0, 5.0, 0.3],
                        [0.0, 0.0, 0.0, 0.0, 0.0]],
                       [[64.0, 64.0, 50.0, 50.0, float("nan")], [90.0, 30.0, 40.0, 12.0, -2.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0]]])
    gl = torch.tensor([[[1.0], [2.0], [0.0]], [[0.0], [1.0], [0.0]]])
    mg = torch.tensor([[[1.0], [1.0], [0.0]], [[1.0], [1.0], [0.0]]])
    for cfg in (dict(topk=10), dict(topk=13, topk2=3)):
        got = Rotated(num_classes=C, **cfg)(ps, pb, ap, gl, gb, mg)
        clean = gb.clone()
        clean[1, 0] = 0  # ultralytics treats the NaN GT as never inside; we make it padding
        mclean = mg.clone()
        mclean[1, 0] = 0
        with lowest_index_topk():
            want = ul_tal.RotatedTaskAlignedAssigner(num_classes=C, **cfg)(ps, pb, ap, gl, clean,
                                                                         mclean)
        assert _same_outputs(got, want)
        assert all(bool(torch.isfinite(t.float()).all()) for t in got)
        assert int(got[3][0].sum()) > 0 and int(got[3][1].sum()) > 0
        assert not bool(((got[4] == 0) & got[3])[1].any())  # the NaN GT 0 claims nothing
    empty = Rotated(num_classes=C)(ps, pb, ap, gl[:, :0], gb[:, :0], mg[:, :0])
    want = ul_tal.RotatedTaskAlignedAssigner(num_classes=C)(ps, pb, ap, gl[:, :0], gb[:, :0],
                                                            mg[:, :0])
    for g, w in zip(empty, want):
        assert g.shape == w.shape and g.dtype == w.dtype and torch.equal(g, w)


def test_rotated_assigner_bad_inputs(gen):
    """Clear errors naming the argument: boxes not of 5 columns, mismatched batch, a non-tensor,
    num_classes not the scores' C, a label out of range."""
    B, A, G, C = 2, 8, 3, 4
    ps = torch.rand(B, A, C, generator=gen)
    pb = torch.rand(B, A, 5, generator=gen) * 50
    ap = torch.rand(A, 2, generator=gen) * 50
    gl = torch.zeros(B, G, 1)
    gb = torch.rand(B, G, 5, generator=gen) * 50
    mg = torch.ones(B, G, 1)
    a = Rotated(num_classes=C, topk=3)
    with pytest.raises(RuntimeError, match="gt_bboxes.*5"):
        a(ps, pb, ap, gl, gb[..., :4], mg)
    with pytest.raises(RuntimeError, match="pd_bboxes.*5"):
        a(ps, pb[..., :4], ap, gl, gb, mg)
    with pytest.raises(RuntimeError, match="gt_bboxes"):
        a(ps, pb, ap, gl[:1], gb[:1], mg[:1])
    with pytest.raises(RuntimeError, match="gt_labels"):
        a(ps, pb, ap, gl[:, :2], gb, mg)
    with pytest.raises(TypeError, match="mask_gt"):
        a(ps, pb, ap, gl, gb, mg.tolist())
    with pytest.raises(RuntimeError, match="num_classes"):
        Rotated(num_classes=C + 1)(ps, pb, ap, gl, gb, mg)
    with pytest.raises(IndexError):
        a(ps, pb, ap, gl + C, gb, mg)
    with pytest.raises(NotImplementedError, match="pair_overlaps"):
        a(ps, pb, ap, gl, gb, mg, extra=ps)


# ---------------------------------------------------------------------------------------------
# the patch and the losses
# ---------------------------------------------------------------------------------------------


def test_patch_swaps_the_obb_assigner_and_unpatch_restores():
    model = tiny_obb_model(3)
    before = ul_loss.v8OBBLoss(model)
    e2e_before = ul_loss.E2ELoss(model, ul_loss.v8OBBLoss)
    original_cls, original_loss = ul_tal.RotatedTaskAlignedAssigner, ul_loss.v8OBBLoss.loss
    with tul.patched_ultralytics(before, e2e_before, fused_loss=True):
        assert ul_tal.RotatedTaskAlignedAssigner is Rotated
        assert ul_loss.RotatedTaskAlignedAssigner is Rotated
        for loss in (ul_loss.v8OBBLoss(model), before):
            assert type(loss.assigner) is Rotated
            assert (loss.assigner.topk, loss.assigner.topk2, loss.assigner.alpha) == (10, 10, 0.5)
        assert type(e2e_before.one2one.assigner) is Rotated
        assert (e2e_before.one2one.assigner.topk, e2e_before.one2one.assigner.topk2) == (7, 1)
        assert type(ul_loss.v8DetectionLoss(model).assigner) is tul.TaskAlignedAssigner
        assert ul_loss.v8OBBLoss.loss is not original_loss
    assert ul_tal.RotatedTaskAlignedAssigner is original_cls
    assert ul_loss.RotatedTaskAlignedAssigner is original_cls
    assert ul_loss.v8OBBLoss.loss is original_loss
    assert type(before.assigner) is original_cls
    assert type(e2e_before.one2many.assigner) is original_cls
    assert type(ul_loss.v8OBBLoss(model).assigner) is original_cls


def _obb_preds(gen, which, B, nc, size, reg_max=16):
    if which == "v8OBBLoss":
        p = random_obb_preds(gen, B, nc, size, reg_max=reg_max)
        return p, [p["boxes"], p["scores"], p["angle"]]
    p1, p2 = (random_obb_preds(gen, B, nc, size, reg_max=reg_max) for _ in range(2))
    return {"one2many": p1, "one2one": p2}, [p1["boxes"], p1["scores"], p1["angle"],
                                             p2["boxes"], p2["scores"], p2["angle"]]


def _make_loss(which, model):
    if which == "v8OBBLoss":
        return ul_loss.v8OBBLoss(model)
    return ul_loss.E2ELoss(model, ul_loss.v8OBBLoss)


@pytest.mark.parametrize("which", ["v8OBBLoss", "E2ELoss"])
def test_obb_losses_equal_with_and_without_patch(gen, which):
    """Each loss term (box, cls, dfl, angle) and the gradients w.r.t. the predictions: the
    patched loss equals ultralytics with lowest-index ties on every compared batch, and
    ultralytics as it is wherever that agrees."""
    nc, B, n = 5, 3, (20 if which == "v8OBBLoss" else 12)
    model = tiny_obb_model(nc)
    plain = _make_loss(which, model)
    with tul.patched_ultralytics():
        patched = _make_loss(which, model)
    assert type(getattr(patched, "assigner", None) or patched.one2many.assigner) is Rotated
    compared = as_is_differs = 0
    for i in range(n):
        preds, leaves = _obb_preds(gen, which, B, nc, (128, 160, 192)[i % 3])
        batch = random_obb_targets(gen, B, nc, KINDS[i % 4])
        with recording(plain) as seen:
            as_is = _loss_and_grads(plain, preds, batch, leaves)
        if any(near_ties(*args) for args in seen):
            continue
        compared += 1
        got = _loss_and_grads(patched, preds, batch, leaves)
        with lowest_index_topk():
            want = _loss_and_grads(plain, preds, batch, leaves)
        _assert_same(got, want, f"batch {i} ({KINDS[i % 4]}) vs lowest-index ultralytics")
        torch.testing.assert_close(got[0].sum(), want[0].sum(), rtol=1e-5, atol=1e-7)
        try:
            _assert_same(as_is, want, "")
        except AssertionError:
            as_is_differs += 1
            continue
        _assert_same(got, as_is, f"batch {i} ({KINDS[i % 4]}) vs ultralytics as is")
    assert compared >= n - 2, f"only {compared} of {n} batches free of near-ties"
    print(f"compared {compared} of {n} batches; ultralytics as is differs from its "
          f"lowest-index result on {as_is_differs}")


@pytest.mark.parametrize("which,class_weights,reg_max", [
    ("v8OBBLoss", False, 16), ("v8OBBLoss", True, 16), ("E2ELoss", False, 16),
    ("v8OBBLoss", False, 1)])
def test_fused_obb_loss_equals_ultralytics(gen, monkeypatch, which, class_weights, reg_max):
    """``patch_ultralytics(fused_loss=True)``: v8OBBLoss on the assignment's sparse output (the
    fused cls loss; no target_scores) equals ultralytics' own loss (lowest-index ties) and its
    gradients, to float rounding, with and without class_weights, DFL (reg_max 16) and L1
    (reg_max 1), also inside YOLO26-OBB's E2ELoss."""
    import importlib

    import tood_ext.ops.losses as losses_mod

    probiou_mod = importlib.import_module("tood_ext.ops.probiou")
    nc, B, n = 5, 3, 12
    model = tiny_obb_model(nc, reg_max=reg_max)
    if class_weights:
        model.class_weights = 0.5 + torch.rand(nc, generator=gen)
    plain = _make_loss(which, model)
    with tul.patched_ultralytics():
        fused = _make_loss(which, model)
    calls = []
    op = losses_mod.sparse_target_cls_loss
    monkeypatch.setattr(losses_mod, "sparse_target_cls_loss",
                        lambda *a, **k: calls.append(1) or op(*a, **k))
    box_calls = []
    box_op = probiou_mod.probiou_loss
    monkeypatch.setattr(probiou_mod, "probiou_loss",
                        lambda *a, **k: box_calls.append(1) or box_op(*a, **k))
    original = ul_loss.v8OBBLoss.loss
    compared = 0
    for i in range(n):
        preds, leaves = _obb_preds(gen, which, B, nc, (128, 160, 192)[i % 3], reg_max)
        batch = random_obb_targets(gen, B, nc, KINDS[i % 4])
        with recording(plain) as seen, lowest_index_topk():
            want = _loss_and_grads(plain, preds, batch, leaves)
        if any(near_ties(*args) for args in seen):
            continue
        compared += 1
        with tul.patched_ultralytics(fused_loss=True):
            assert ul_loss.v8OBBLoss.loss is not original
            got = _loss_and_grads(fused, preds, batch, leaves)
        _assert_same(got, want, f"batch {i} ({KINDS[i % 4]}), fused vs ultralytics")
    assert ul_loss.v8OBBLoss.loss is original  # restored
    assert compared >= n - 3, f"only {compared} of {n} batches free of near-ties"
    assert len(calls) >= compared, "the fused classification loss was not used"
    assert (len(box_calls) > 0) == (reg_max > 1), "the fused ProbIoU loss: only with DFL"


def test_fused_obb_loss_leaves_other_assigners_to_ultralytics(gen):
    """A v8OBBLoss whose assigner is ultralytics' (built before the patch) keeps ultralytics'
    method under ``fused_loss=True``, bit for bit."""
    nc = 4
    plain = ul_loss.v8OBBLoss(tiny_obb_model(nc))
    preds, leaves = _obb_preds(gen, "v8OBBLoss", 2, nc, 128)
    batch = random_obb_targets(gen, 2, nc, "mixed")
    want = _loss_and_grads(plain, preds, batch, leaves)
    with tul.patched_ultralytics(fused_loss=True):
        got = _loss_and_grads(plain, preds, batch, leaves)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# ---------------------------------------------------------------------------------------------
# ultralytics' OBB trainer
# ---------------------------------------------------------------------------------------------

_TRAIN = textwrap.dedent("""
    import json, math, sys
    import numpy as np
    from pathlib import Path
    from PIL import Image, ImageDraw
    root = Path(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    S = 96
    data = root / "data"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        (data / "labels" / split).mkdir(parents=True)
        for i in range(4):
            img = Image.fromarray((rng.random((S, S, 3)) * 60).astype(np.uint8))
            draw = ImageDraw.Draw(img)
            rows = []
            for _ in range(int(rng.integers(0, 7))):  # some images empty; small to large, any angle
                w, h = rng.uniform(0.06, 0.5, 2) * S
                cx, cy = rng.uniform(0.2, 0.8, 2) * S
                a = rng.uniform(0, math.pi)
                c, s = math.cos(a), math.sin(a)
                pts = [(cx + dx * c - dy * s, cy + dx * s + dy * c)
                       for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
                k = int(rng.integers(0, 2))
                draw.polygon(pts, fill=(200, 60, 60) if k == 0 else (60, 200, 60))
                pts = [(min(max(x / S, 0.0), 1.0), min(max(y / S, 0.0), 1.0)) for x, y in pts]
                rows.append(f"{k} " + " ".join(f"{x:.6f} {y:.6f}" for x, y in pts))
            img.save(data / "images" / split / f"{i}.png")
            (data / "labels" / split / f"{i}.txt").write_text("\\n".join(rows))
    (data / "data.yaml").write_text(f"path: {data}\\ntrain: images/train\\nval: images/val\\n"
                                    "names: ['a', 'b']\\n")
    from ultralytics import YOLO
    from tood_ext.compat import ultralytics as tul
    out = {}
    for patched in (False, True, "fused"):
        if patched:
            tul.patch_ultralytics(fused_loss=patched == "fused")
        losses, assigners = [], []
        model = YOLO("yolov8n-obb.yaml")
        def on_batch_end(tr):
            losses.append({k: float(v) for k, v in tr.loss_items.items()})
            a = type(tr.model.criterion.assigner)
            assigners.append(f"{a.__module__}.{a.__name__}")
        model.add_callback("on_train_batch_end", on_batch_end)
        model.train(data=str(data / "data.yaml"), epochs=2, imgsz=S, batch=2, device="cpu",
                    workers=0, plots=False, val=False, seed=0, deterministic=True, amp=False,
                    project=str(root / "runs"), name=f"obb-{patched}", exist_ok=True,
                    verbose=False, save=False, mosaic=0.0, warmup_epochs=0)
        tul.unpatch_ultralytics()
        key = {False: "unpatched", True: "patched"}.get(patched, patched)
        out[key] = {"losses": losses, "assigners": sorted(set(assigners))}
    print("LOSSES " + json.dumps(out))
""")


def test_ultralytics_obb_trainer_losses_match_per_batch(tmp_path):
    """ultralytics' own OBB trainer (YOLOv8n-OBB), 2 epochs of a 4-image synthetic DOTA-format
    set at 96 px, offline: the same losses on every batch with and without the patch, and with
    ``fused_loss=True``; the patched runs use the adapter."""
    pytest.importorskip("PIL")
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp_path / "cfg"))
    seed = int(torch.randint(0, 2**31, (1,)))
    proc = subprocess.run([sys.executable, "-c", _TRAIN, str(tmp_path), str(seed)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("LOSSES ")][-1]
    runs = json.loads(line[len("LOSSES "):])
    want = runs["unpatched"]["losses"]
    assert runs["unpatched"]["assigners"] == ["ultralytics.utils.tal.RotatedTaskAlignedAssigner"]
    for variant in ("patched", "fused"):
        assert runs[variant]["assigners"] == [
            "tood_ext.compat.ultralytics.RotatedTaskAlignedAssigner"], variant
        got = runs[variant]["losses"]
        assert len(want) == len(got) == 4, (variant, len(want), len(got))
        for step, (w, g) in enumerate(zip(want, got)):
            assert w.keys() == g.keys() and len(w) == 4
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-7), (variant, step, k, seed)
    assert any(step["box_loss"] > 0 and step["angle_loss"] > 0 for step in want)
