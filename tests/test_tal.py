"""task_aligned_assign (TOOD's task-aligned assignment): the kernel op vs the pure-PyTorch
reference, plus checks that do not trust the reference (a loop oracle, invariants of the outputs,
hand-computed answers, ultralytics' assigner where installed). The flavours, scenarios and
checks live in tal_cases.py (shared with the CUDA emulator's tests).

The op is imported lazily (tests skip while ``tood_ext/ops/tal.py`` does not exist).
``TOOD_TAL_TEST_SELF=1`` points every test at the reference itself: the comparisons with the
reference are then trivial, the oracle, invariants and hand-computed cases are not.

Random inputs are drawn until they are *well posed*: no decision (the k-th/(k+1)-th place of a
GT's ranking, the highest u of an anchor claimed by several GTs, t > 0) hinges on a difference
below 1e-5 relative, which rounding could flip between two correct float32 implementations.
Exact ties are kept (they are the point of several tests): equal inputs give equal values in
any implementation, and the tie rules (lower anchor index, lower GT index) decide.

Half types (CUDA only): the op and the reference both compute in float32 from the rounded
inputs, so assignments are compared exactly on well-posed draws (the well-posedness check runs
in float64 on the rounded inputs); the float outputs with the half type's TOL; the soft-target
self-consistency check only on GTs whose largest t is >= 1e-2 (a smaller t rounded to half is too
coarse for t / max t).
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch

from tood_ext._types import TALResult
from tood_ext.reference.box_ops import alignment_metric as ref_metric
from tood_ext.reference.tal import _positive_candidates
from tood_ext.reference.tal import task_aligned_assign as ref_tal

from conftest import (DEVICES, HAS_CUDA, assert_close, dtypes_for, inject_nonfinite,
                      metric_inputs)
from tal_cases import (F64, FIELDS, FLAVOURS, FLOAT_FIELDS, NAN_FLAVOURS, SCENARIOS, _ambiguities,
                       _check_against_oracle, _check_equal_assignment, _check_format,
                       _check_invariants, _cpu64, _crowded, _draw, _issue_23_inputs, _kw, _metric,
                       _moderate, _overlapping, _run_and_check, _ties, _to)

SELF_TEST = os.environ.get("TOOD_TAL_TEST_SELF") == "1"


def _load_op():
    """The op under test: tood_ext.ops.tal.task_aligned_assign (the reference in self-test mode)."""
    if SELF_TEST:
        return ref_tal
    if importlib.util.find_spec("tood_ext.ops.tal") is None:
        pytest.skip("tood_ext.ops.tal does not exist yet")
    return importlib.import_module("tood_ext.ops.tal").task_aligned_assign


@pytest.fixture
def tal_op():
    return _load_op()


def _dispatcher_op():
    if SELF_TEST:
        pytest.skip("self-test mode: the reference has no dispatcher op")
    _load_op()  # the Python module registers the fake kernel
    try:
        return torch.ops.tood_ext.task_aligned_assign.default
    except (AttributeError, RuntimeError):
        pytest.skip("torch.ops.tood_ext.task_aligned_assign is not registered")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matches_reference(gen, tal_op, device, flavour, scenario):
    kw = FLAVOURS[flavour]
    for dtype in dtypes_for(device):
        inputs = _draw(lambda: SCENARIOS[scenario](gen), kw, dtype, device)
        # the loop oracle once per case (float64; the float32 run is checked against the
        # reference, which the oracle checks)
        out = _run_and_check(tal_op, inputs, kw, oracle=dtype == F64)
        if scenario == "zero-area" and not kw.get("min_inside_size"):  # widening: positives
            zero_u_gt0 = (out.assigned_gt == 0) & (out.iou == 0)  # "all_gts" zero columns
            assert not bool(((out.assigned_gt >= 0) & (out.assigned_gt <= 2) & ~zero_u_gt0).any())
        if scenario == "padding":
            assert not bool(out.fg_mask[0].any())
        if scenario == "zero-scores" and kw.get("candidates") != "inside_then_topk":
            assert not bool(out.fg_mask[:, ::3].any())  # t = 0 is never positive


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------


def _hand_inputs(device, dtype=F64):
    """1 image, 2 GTs, 6 anchors; alpha = beta = 1 so that t = s * IoU by hand.

    GT0 = [0, 0, 4, 4] (class 1), GT1 = [2, 0, 6, 4] (class 0). Centres inside (margin 0.01):
    GT0: a0, a1, a3, a5; GT1: a1, a2, a3.
    IoU (GT0, GT1): a0 (1, 1/3), a1 (3/11, 3/4), a2 (1/5, 1/2), a3 (1, 1/3), a4 (1, 1/3),
    a5 (1/2, 0).
    t for GT0 (scores of class 1 .5 .9 .2 .8 .9 1): .5, 27/110, .04, .8, .9, .5
    t for GT1 (scores of class 0 .6 .3 .6 .75 .5 0): .2, .225, .3, .25, 1/6, 0
    """
    pts = torch.tensor([[1, 2], [3, 2], [5, 2], [3, 1], [7, 2], [1, 1]], dtype=dtype)
    pb = torch.tensor([[0, 0, 4, 4], [2, 1, 6, 4], [2, 0, 6, 2], [0, 0, 4, 4], [0, 0, 4, 4],
                       [0, 0, 2, 4]], dtype=dtype)[None]
    ps = torch.tensor([[0.6, 0.5], [0.3, 0.9], [0.6, 0.2], [0.75, 0.8], [0.5, 0.9],
                       [0.0, 1.0]], dtype=dtype)[None]
    gb = torch.tensor([[[0, 0, 4, 4], [2, 0, 6, 4]]], dtype=dtype)
    gl = torch.tensor([[1, 0]])
    gm = torch.ones(1, 2, dtype=torch.bool)
    return _to((ps, pb, pts, gl, gb, gm), dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("candidates", ["topk_then_inside", "inside_then_topk"])
def test_hand_computed_case(tal_op, device, candidates):
    eps = 1e-7
    if candidates == "topk_then_inside":
        # GT0 top-3 of all: a4 (.9), a3 (.8), then a0 and a5 tie at .5 -> a0 (lower index);
        #   a4 is outside -> candidates a3, a0.  GT1 top-3: a2 (.3), a3 (.25), a1 (.225).
        # a3 claimed by both: IoU 1 (GT0) > 1/3 (GT1) -> GT0.
        assigned = [0, 1, 1, 0, -1, -1]
        # GT0 positives a0 (t .5, u 1), a3 (.8, 1); GT1 a1 (.225, .75), a2 (.3, .5)
        soft = [0.5 * 1 / (0.8 + eps), 0.225 * 0.75 / (0.3 + eps), 0.3 * 0.75 / (0.3 + eps),
                0.8 * 1 / (0.8 + eps), 0.0, 0.0]
        iou = [1.0, 0.75, 0.5, 1.0, 0.0, 0.0]
        metric = [0.5, 0.225, 0.3, 0.8, 0.0, 0.0]
    else:
        # GT0 top-3 of its inside a0 (.5), a1 (27/110), a3 (.8), a5 (.5): a3, a0, a5 (tie .5,
        # a0 first). GT1: all 3 inside a1, a2, a3. a3 -> GT0 (IoU 1 > 1/3).
        assigned = [0, 1, 1, 0, -1, 0]
        soft = [0.5 / (0.8 + eps), 0.225 * 0.75 / (0.3 + eps), 0.3 * 0.75 / (0.3 + eps),
                0.8 / (0.8 + eps), 0.0, 0.5 / (0.8 + eps)]
        iou = [1.0, 0.75, 0.5, 1.0, 0.0, 0.5]
        metric = [0.5, 0.225, 0.3, 0.8, 0.0, 0.5]
    labels = [[1, 0][g] if g >= 0 else -1 for g in assigned]
    for dtype in (F64, torch.float32):
        inputs = _hand_inputs(device, dtype)
        out = tal_op(*inputs, topk=3, alpha=1.0, beta=1.0, candidates=candidates)
        _check_format(out, inputs)
        assert out.assigned_gt.tolist() == [assigned]
        assert out.labels.tolist() == [labels]
        assert out.fg_mask.tolist() == [[g >= 0 for g in assigned]]
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-6, atol=1e-7)
        for name, want in (("soft_target", soft), ("iou", iou), ("metric", metric)):
            torch.testing.assert_close(getattr(out, name).cpu().double(),
                                       torch.tensor([want], dtype=F64), **tol, msg=name)
        gt_boxes = inputs[4][0].cpu()
        for a, g in enumerate(assigned):
            want_box = gt_boxes[g] if g >= 0 else torch.zeros(4, dtype=dtype)
            assert torch.equal(out.boxes[0, a].cpu(), want_box)
        # topk = 13 > the inside counts: inside_then_topk takes every inside anchor; a1 is
        # claimed by GT0 (IoU 3/11) and GT1 (3/4) -> GT1
        if candidates == "inside_then_topk":
            out = tal_op(*inputs, topk=13, alpha=1.0, beta=1.0, candidates=candidates)
            assert out.assigned_gt.tolist() == [[0, 1, 1, 0, -1, 0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("candidates", ["topk_then_inside", "inside_then_topk"])
def test_exact_ties_go_to_lower_indices(tal_op, device, candidates):
    """30 anchors on a line, the first 5 outside the GT, every t exactly equal: the k slots go
    to the lowest anchor indices; a duplicate GT (same label) loses every anchor to GT 0."""
    A = 30
    x = torch.cat([torch.full((5,), -5.0), torch.linspace(1, 99, A - 5)]).double()
    pts = torch.stack([x, torch.full((A,), 5.0, dtype=F64)], -1)
    box = torch.tensor([0.0, 0.0, 100.0, 10.0], dtype=F64)
    pb = box.expand(1, A, 4).clone()
    ps = torch.full((1, A, 2), 0.5, dtype=F64)
    gb = box.expand(1, 2, 4).clone()
    gl = torch.tensor([[1, 1]])
    gm = torch.ones(1, 2, dtype=torch.bool)
    inputs = _to((ps, pb, pts, gl, gb, gm), F64, device)
    out = tal_op(*inputs, topk=13, candidates=candidates)
    # inside_then_topk: the first 13 inside anchors (5..17); topk_then_inside: the first 13 of
    # all anchors (0..12), of which the outside ones (0..4) are dropped
    stop = 18 if candidates == "inside_then_topk" else 13
    want = [0 if 5 <= a < stop else -1 for a in range(A)]
    assert out.assigned_gt[0].tolist() == want
    fg = out.fg_mask[0]
    torch.testing.assert_close(out.soft_target[0][fg].cpu(),
                               torch.full((int(fg.sum()),), 0.5 / (0.5 + 1e-7), dtype=F64))
    _check_invariants(out, inputs, dict(candidates=candidates))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("candidates", ["topk_then_inside", "inside_then_topk"])
def test_nan_metric_is_never_a_candidate(tal_op, device, candidates):
    """Anchors 0-2 have NaN predicted boxes (t = NaN): never ranked, never positive; the
    other anchors (all equal) fill the k slots in index order."""
    A = 20
    pts = torch.stack([torch.linspace(1, 99, A), torch.full((A,), 5.0)], -1).double()
    box = torch.tensor([0.0, 0.0, 100.0, 10.0], dtype=F64)
    pb = box.expand(1, A, 4).clone()
    pb[0, :3] = float("nan")
    ps = torch.full((1, A, 1), 0.5, dtype=F64)
    inputs = _to((ps, pb, pts, torch.zeros(1, 1, dtype=torch.int64), box.expand(1, 1, 4),
                  torch.ones(1, 1, dtype=torch.bool)), F64, device)
    out = tal_op(*inputs, topk=5, candidates=candidates)
    assert out.assigned_gt[0].tolist() == [0 if 3 <= a < 8 else -1 for a in range(A)]
    assert bool(torch.isfinite(out.soft_target).all()) and bool(torch.isfinite(out.iou).all())
    _check_against_oracle(out, inputs, dict(topk=5, candidates=candidates))


@pytest.mark.parametrize("device", DEVICES)
def test_all_zero_scores(tal_op, device, gen):
    """t = 0 everywhere: topk_then_inside assigns nothing; inside_then_topk ranks every anchor
    at masked t = 0, so each GT's top k are anchors 0..k-1 (index order) and those of them
    inside the GT are its positives, with soft target 0 and their true IoU."""
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 300, 3, 6, dtype=F64, pad_frac=0.0)
    gb = gb.clone()
    gb[:, 0] = torch.tensor([0.0, 0.0, 0.6, 0.6], dtype=F64) * ap.max()  # holds low indices
    inputs = _to((torch.zeros_like(ps), pb, ap, gl, gb, gm), F64, device)
    out = tal_op(*inputs)
    assert not bool(out.fg_mask.any())
    k = 40
    out = tal_op(*inputs, candidates="inside_then_topk", topk=k)
    _, _, inside = ref_metric(*_cpu64(inputs))
    first = torch.arange(inside.shape[-1]) < k  # the k lowest anchor indices
    claimed = (inside & first).any(1)
    assert bool(claimed.any()) and bool((inside & ~first).any())
    assert torch.equal(out.fg_mask.cpu(), claimed)
    assert bool((out.soft_target == 0).all())
    _check_against_oracle(out, inputs, dict(candidates="inside_then_topk", topk=k))


# ---------------------------------------------------------------------------------------------
# empty and degenerate shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 50, 3, 0), (0, 50, 3, 4), (2, 0, 3, 4), (0, 0, 3, 0),
                                   (1, 50, 3, 5), (3, 1, 1, 1)], ids=str)
@pytest.mark.parametrize("flavour", ["mmdet", "ultralytics"])
def test_empty_and_tiny_inputs(gen, tal_op, device, shape, flavour):
    B, A, C, G = shape
    kw = FLAVOURS[flavour]
    for dtype in dtypes_for(device):
        inputs = _draw(lambda: metric_inputs(gen, B, A, C, G, dtype=F64), kw, dtype, device)
        out = _run_and_check(tal_op, inputs, kw, oracle=dtype == F64)
        if G == 0 or B == 0 or A == 0:
            assert not bool(out.fg_mask.any())
        # every GT padding: all background
        pad = list(inputs)
        pad[5] = torch.zeros_like(inputs[5])
        pad[3] = torch.full_like(inputs[3], -1)  # junk labels of padding GTs are ignored
        out = tal_op(*pad, **kw)
        _check_format(out, pad)
        assert not bool(out.fg_mask.any()) and bool((out.assigned_gt == -1).all())


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(gen, tal_op, device):
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 300, 5, 9, dtype=F64)
    strided = (ps.transpose(1, 2).contiguous().transpose(1, 2),  # (B, A, C) from (B, C, A)
               torch.cat([pb, pb], -1)[..., :4], ap.t().contiguous().t(),
               gl.t().contiguous().t(), gb.permute(2, 0, 1).contiguous().permute(1, 2, 0),
               gm.t().contiguous().t())
    assert not any(t.is_contiguous() for t in strided)
    for kw in (FLAVOURS["mmdet"], FLAVOURS["ultralytics"]):
        a = tal_op(*_to(strided, device=device), **kw)
        b = tal_op(*_to((ps, pb, ap, gl, gb, gm), device=device), **kw)
        for name in FIELDS:
            assert torch.equal(getattr(a, name), getattr(b, name)), name


# ---------------------------------------------------------------------------------------------
# autograd, dispatcher, compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_requiring_grad_give_outputs_without_grad(gen, tal_op, device):
    inputs = [t.to(device) for t in metric_inputs(gen, 2, 80, 4, 5)]
    for i in (0, 1, 2, 4):
        inputs[i] = inputs[i].clone().requires_grad_()
    out = tal_op(*inputs)
    for name in FIELDS:
        x = getattr(out, name)
        assert not x.requires_grad and x.grad_fn is None, name
    plain = tal_op(*[t.detach() for t in inputs])
    for name in FIELDS:
        assert torch.equal(getattr(out, name), getattr(plain, name)), name


def _schema_args(inputs, kw):
    kw = _kw(kw)
    return (*inputs, kw["topk"], kw["alpha"], kw["beta"], kw["candidates"], kw["iou_mode"],
            kw["inside_eps"], kw["norm_eps"], kw["conflict"], kw["min_inside_size"])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(gen, device):
    op = _dispatcher_op()
    inputs = list(metric_inputs(gen, 2, 40, 5, 6, dtype=F64, device=device))
    for kw in FLAVOURS.values():
        torch.library.opcheck(op, _schema_args(inputs, kw))
    empty = list(metric_inputs(gen, 2, 40, 5, 0, dtype=F64, device=device))
    torch.library.opcheck(op, _schema_args(empty, {}))
    inputs[0] = inputs[0].clone().requires_grad_()
    inputs[1] = inputs[1].clone().requires_grad_()
    torch.library.opcheck(op, _schema_args(inputs, FLAVOURS["ultralytics"]))


def test_torch_compile_fullgraph_matches_eager(gen, tal_op):
    if SELF_TEST:
        pytest.skip("the reference validates labels with data-dependent Python control flow")
    inputs = metric_inputs(gen, 2, 64, 3, 5)

    def assign(*args):
        mm = tal_op(*args, topk=4)
        ul = tal_op(*args, **FLAVOURS["ultralytics"])
        return mm, ul, mm.soft_target.sum() + ul.soft_target.sum()

    eager = assign(*inputs)
    torch._dynamo.reset()
    compiled = torch.compile(assign, fullgraph=True)
    got = compiled(*inputs)
    for g, e in zip(got[:2], eager[:2]):
        for name in FIELDS:
            torch.testing.assert_close(getattr(g, name), getattr(e, name), rtol=1e-6,
                                       atol=1e-7, msg=name)
    torch.testing.assert_close(got[2], eager[2])


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_errors(gen, tal_op):
    args = list(metric_inputs(gen, 2, 30, 4, 3, pad_frac=0))

    def call(i, value, pattern, exc=RuntimeError, **kw):
        bad = list(args)
        if i is not None:
            bad[i] = value
        with pytest.raises(exc, match=pattern):
            tal_op(*bad, **kw)

    call(None, None, "topk must be >= 1", ValueError, topk=0)
    call(None, None, "topk must be >= 1", ValueError, topk=-3)
    call(None, None, "candidates", ValueError, candidates="topk")
    call(None, None, "iou_mode must be one of", ValueError, iou_mode="eiou")
    call(None, None, "conflict must be", ValueError, conflict="all")
    call(None, None, "min_inside_size must be finite and >= 0", ValueError,
         min_inside_size=-1.0)
    call(None, None, "min_inside_size must be finite and >= 0", ValueError,
         min_inside_size=float("nan"))
    call(0, args[0][0], r"pred_scores must have shape \(B, A, C\)")
    call(1, args[1][:, :20], r"pred_boxes must have shape \(B, A, 4\)")
    call(2, args[2][:, :1], r"anchor_points must have shape \(A, 2\)")
    call(3, args[3][:1], r"gt_labels must have shape \(B, G\)")
    call(3, args[3].int(), "gt_labels must be int64")
    call(4, args[4][..., :3], r"gt_boxes must have shape \(B, G, 4\)")
    call(5, args[5][:, :2], r"gt_mask must have shape \(B, G\)")
    call(5, args[5].float(), "gt_mask must be bool")
    labels = args[3].clone()
    labels[1, 2] = 4
    call(3, labels, r"gt_labels holds class 4", (IndexError, RuntimeError))
    labels[1, 2] = -1
    call(3, labels, r"gt_labels holds class -1", (IndexError, RuntimeError))
    # ... but any label is fine on a padding GT
    mask = args[5].clone()
    mask[1, 2] = False
    ok = list(args)
    ok[3], ok[5] = labels, mask
    tal_op(*ok)


# ---------------------------------------------------------------------------------------------
# CPU vs CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_cpu_and_cuda_agree(gen, tal_op, flavour):
    kw = FLAVOURS[flavour]
    for make in (_moderate, _overlapping, _ties):
        inputs = _draw(lambda: make(gen), kw, F64, "cpu")
        cpu = tal_op(*inputs, **kw)
        gpu = tal_op(*_to(inputs, device="cuda"), **kw)
        for name in FIELDS:
            torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name),
                                       rtol=1e-12, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------------
# ultralytics
# ---------------------------------------------------------------------------------------------


def _ultralytics_inputs(gen, B, C, G, disjoint, n_pad=2):
    """A 256 x 256 image, anchors on a stride-8 grid (A = 1024), GT sides >= 40 px (no
    widening of small GTs in ultralytics' inside test), the last ``n_pad`` GT slots padding
    (label 0, zero box, as ultralytics pads). Disjoint: GT i in its own cell of a 3 x 2 tiling."""
    xs = torch.arange(32, dtype=F64) * 8 + 4
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    ap = torch.stack([gx.flatten(), gy.flatten()], -1)
    A = ap.shape[0]
    n = G - n_pad
    wh = 40 + torch.rand(B, n, 2, generator=gen, dtype=F64) * 40
    if disjoint:
        assert n <= 6
        cell = torch.tensor([[256 / 3 * (i % 3), 128.0 * (i // 3)] for i in range(n)], dtype=F64)
        cell_wh = torch.tensor([256 / 3, 128.0], dtype=F64)
        xy = cell + torch.rand(B, n, 2, generator=gen, dtype=F64) * (cell_wh - wh)
    else:
        xy = torch.rand(B, n, 2, generator=gen, dtype=F64) * (256 - wh)
    gb = torch.cat([torch.cat([xy, xy + wh], -1), torch.zeros(B, n_pad, 4, dtype=F64)], 1)
    gl = torch.cat([torch.randint(0, C, (B, n), generator=gen),
                    torch.zeros(B, n_pad, dtype=torch.int64)], 1)
    gm = torch.arange(G)[None].expand(B, G) < n
    half = 15 + torch.rand(B, A, 2, generator=gen, dtype=F64) * 25
    centre = ap[None] + torch.randn(B, A, 2, generator=gen, dtype=F64) * 3
    pb = torch.cat([centre - half, centre + half], -1)
    ps = 0.05 + 0.95 * torch.rand(B, A, C, generator=gen, dtype=F64)
    return ps, pb, ap, gl, gb, gm


@pytest.mark.parametrize("disjoint", [True, False], ids=["disjoint-gts", "overlapping-gts"])
def test_matches_ultralytics(gen, tal_op, disjoint):
    """inside_then_topk + CIoU + eps 1e-9 + conflict="all_gts" + min_inside_size=16 is
    ultralytics' assigner wherever its torch.topk choice is unique: every GT has >= topk inside
    anchors of t > 0 (its top-k then never reaches t = 0 anchors, whose order is torch.topk's).
    Everything is compared, on overlapping GTs too (anchors inside >= 3 GTs included)."""
    tal_mod = pytest.importorskip("ultralytics.utils.tal")
    B, C, G, topk, alpha, beta = 2, 6, 8, 10, 0.5, 6.0
    kw = dict(FLAVOURS["ultralytics-exact"], topk=topk, alpha=alpha, beta=beta)
    for _ in range(50):
        inputs = _ultralytics_inputs(gen, B, C, G, disjoint)
        t, _, inside = _metric(inputs, _kw(kw))
        enough = ((inside & (t > 0)).sum(-1) >= topk) | ~inputs[5]
        if bool(enough.all()) and _ambiguities(inputs, kw) == 0:
            break
    else:
        pytest.fail("no input with >= topk inside anchors of t > 0 per GT")
    ps, pb, ap, gl, gb, gm = inputs
    assigner = tal_mod.TaskAlignedAssigner(topk=topk, num_classes=C, alpha=alpha, beta=beta,
                                           eps=1e-9)
    t_labels, t_boxes, t_scores, u_fg, u_idx = assigner(
        ps, pb, ap, gl[..., None].to(F64), gb, gm[..., None].to(F64))
    out = tal_op(*inputs, **kw)
    fg = out.fg_mask
    assert torch.equal(u_fg.bool(), fg)
    assert torch.equal(u_idx[fg], out.assigned_gt[fg])
    assert torch.equal(t_labels[fg].long(), out.labels[fg])
    assert torch.equal(t_boxes[fg], out.boxes[fg])
    expected = torch.zeros(B, ps.shape[1], C, dtype=F64).scatter_(
        2, out.labels.clamp(min=0)[..., None], out.soft_target[..., None])
    torch.testing.assert_close(t_scores.to(F64), expected, rtol=1e-5, atol=1e-7)
    if not disjoint:
        assert int(inside.sum(1).max()) >= 2


def _crowded_conflicts(gen):
    """Crowded, heavily overlapping GTs with few anchors: many anchors claimed by >= 2 GTs
    inside a third one."""
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 300, 4, 60, dtype=F64, pad_frac=0.1)
    return ps, pb, ap, gl, gb, gm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", ["ultralytics-exact", "mmdet-all-gts-widened"])
def test_all_gts_conflicts_change_the_result(gen, tal_op, device, flavour):
    """conflict="all_gts" vs the reference on crowded inputs, and it does differ from
    "candidates" there: some anchors go to a GT that did not pick them."""
    kw = FLAVOURS[flavour]
    changed = 0
    for make in (_crowded_conflicts, _overlapping, _crowded):
        for dtype in dtypes_for(device):
            inputs = _draw(lambda: make(gen), kw, dtype, device)
            out = _run_and_check(tal_op, inputs, kw, oracle=dtype == F64 and make is not _crowded)
            mm = tal_op(*inputs, **dict(kw, conflict="candidates"))
            changed += int((out.assigned_gt != mm.assigned_gt).sum())
            # some GT received an anchor outside its own top-k
            if dtype == F64 and make is _crowded_conflicts:
                pos = _positive_candidates(*_metric(_cpu64(inputs), _kw(kw))[::2], inputs[5].cpu(),
                                           _kw(kw)["topk"], _kw(kw)["candidates"])
                ag = out.assigned_gt.cpu()
                fgc = ag >= 0
                picked = pos.gather(1, ag.clamp(min=0)[:, None, :]).squeeze(1)
                assert bool((fgc & ~picked).any()), "no anchor went to a GT that did not pick it"
    assert changed > 0


def test_all_gts_hand_case(tal_op):
    """Anchor a0 is inside GTs 0, 1, 2, a1 inside GT 2 only; topk = 1: GTs 0 and 1 pick a0
    (their only inside anchor), GT 2 picks a1 (larger t). a0's best u is with GT 2: "all_gts"
    gives a0 to GT 2 (which did not pick it), "candidates" to GT 0 (10/18 > 10/19)."""
    pts = torch.tensor([[5.0, 5.0], [15.0, 5.0]], dtype=F64)
    gb = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 11.0], [0.0, 0.0, 20.0, 10.0]]],
                      dtype=F64)
    pb = torch.tensor([[[0.0, 0.0, 18.0, 10.0], [0.0, 0.0, 20.0, 10.0]]], dtype=F64)
    ps = torch.tensor([[[0.9], [0.9]]], dtype=F64)
    gl = torch.zeros(1, 3, dtype=torch.int64)
    gm = torch.ones(1, 3, dtype=torch.bool)
    inputs = (ps, pb, pts, gl, gb, gm)
    kw = dict(topk=1, alpha=1.0, beta=1.0, candidates="inside_then_topk")
    # u: a0 with GT0 10/18, GT1 10/19, GT2 18/20; a1 only inside GT2 (u 1)
    mm = tal_op(*inputs, **kw)
    assert mm.assigned_gt.tolist() == [[0, 2]]  # a0: GT0 (10/18 > 9/19)
    ul = tal_op(*inputs, **kw, conflict="all_gts")
    assert ul.assigned_gt.tolist() == [[2, 2]]  # a0: GT2 (18/20), which picked a1 only
    # GT2's positives a0 (t .9 * .9, u .9) and a1 (t .9, u 1): t_hat = t * 1 / (.9 + eps)
    want = torch.tensor([[0.81 / (0.9 + 1e-7), 0.9 / (0.9 + 1e-7)]], dtype=F64)
    torch.testing.assert_close(ul.soft_target, want)
    torch.testing.assert_close(ul.iou, torch.tensor([[0.9, 1.0]], dtype=F64))
    # a zero column goes to GT 0 even when GT 0 is padding and does not contain the anchor
    gm0 = gm.clone()
    gm0[0, 0] = False
    pb0 = torch.tensor([[[100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 20.0, 10.0]]], dtype=F64)
    out = tal_op(ps, pb0, pts, gl, gb, gm0, topk=2, candidates="inside_then_topk",
                 conflict="all_gts")
    assert out.assigned_gt.tolist() == [[0, 2]]
    assert out.soft_target[0, 0].item() == 0.0 and out.iou[0, 0].item() == 0.0
    ref = ref_tal(ps, pb0, pts, gl, gb, gm0, topk=2, candidates="inside_then_topk",
                  conflict="all_gts")
    _check_equal_assignment(out, ref, None)


def test_min_inside_size_widens_the_centre_test(tal_op):
    """A 4 x 4 GT misses the anchor at distance 5 from its centre; widened to 12 it contains
    it (u, t and the output box still use the GT itself)."""
    pts = torch.tensor([[10.0, 10.0], [15.0, 10.0], [30.0, 10.0]], dtype=F64)
    gb = torch.tensor([[[8.0, 8.0, 12.0, 12.0]]], dtype=F64)
    pb = torch.tensor([[[8.0, 8.0, 12.0, 12.0], [9.0, 8.0, 13.0, 12.0], [8.0, 8.0, 12.0, 12.0]]],
                      dtype=F64)
    ps = torch.full((1, 3, 1), 0.5, dtype=F64)
    gl = torch.zeros(1, 1, dtype=torch.int64)
    gm = torch.ones(1, 1, dtype=torch.bool)
    for cand in ("topk_then_inside", "inside_then_topk"):
        out = tal_op(ps, pb, pts, gl, gb, gm, topk=5, candidates=cand)
        assert out.fg_mask.tolist() == [[True, False, False]]
        out = tal_op(ps, pb, pts, gl, gb, gm, topk=5, candidates=cand, min_inside_size=12.0)
        assert out.fg_mask.tolist() == [[True, True, False]]
        assert torch.equal(out.boxes[0, 1], gb[0, 0])
        torch.testing.assert_close(out.iou[0, 1], torch.tensor(0.6, dtype=F64))


@pytest.mark.parametrize("device", DEVICES)
def test_widened_inside_test_is_ultralytics_bit_for_bit(gen, device):
    """float32 GT boxes with edges a hair away from the anchors: the op's centre test (one GT per
    image, inside_then_topk with topk = every anchor, so fg_mask = the test) equals ultralytics'
    select_candidates_in_gts (xyxy -> xywh -> widen -> xyxy) exactly."""
    if SELF_TEST:
        pytest.skip("compares the op")
    tal_mod = pytest.importorskip("ultralytics.utils.tal")
    op = _load_op()
    xs = torch.arange(16, dtype=torch.float32) * 8 + 4
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    ap = torch.stack([gx.flatten(), gy.flatten()], -1)
    A, B = ap.shape[0], 64
    # edges on anchor coordinates +- a few ulps, sides 1 to 40 px (many below 16)
    lo = xs[torch.randint(0, 12, (B, 1, 2), generator=gen)]
    side = torch.randint(1, 40, (B, 1, 2), generator=gen).float() + torch.rand(
        B, 1, 2, generator=gen) * 0.01
    jit = (torch.randint(-3, 4, (B, 1, 4), generator=gen) * 1e-6).float()
    gb = torch.cat([lo, lo + side], -1) + jit
    gm = torch.ones(B, 1, dtype=torch.bool)
    ul = tal_mod.TaskAlignedAssigner(topk=10, num_classes=1)
    want = ul.select_candidates_in_gts(ap, gb, gm[..., None].float()).reshape(B, A)
    ps = torch.ones(B, A, 1)
    pb = gb.expand(B, A, 4).clone()
    top = A if device == "cpu" else 64
    out = op(ps.to(device), pb.to(device), ap.to(device), torch.zeros(B, 1, dtype=torch.int64,
             device=device), gb.to(device), gm.to(device), topk=top,
             candidates="inside_then_topk", iou_mode="ciou", inside_eps=1e-9,
             min_inside_size=16.0)
    got = out.fg_mask.cpu()
    if device != "cpu":
        want = want & (want.long().cumsum(-1) <= top)
    assert torch.equal(got, want), int((got != want).sum())
    plain = op(ps, pb, ap, torch.zeros(B, 1, dtype=torch.int64), gb, gm, topk=A,
               candidates="inside_then_topk", inside_eps=1e-9)
    assert not torch.equal(plain.fg_mask, got)  # the widening mattered


def test_bad_conflict_string_from_the_dispatcher(gen):
    op = _dispatcher_op()
    args = _schema_args(metric_inputs(gen, 1, 20, 3, 2), dict(conflict="everyone"))
    with pytest.raises(ValueError, match="conflict must be 'candidates' or 'all_gts'"):
        op(*args)
    args = _schema_args(metric_inputs(gen, 1, 20, 3, 2), dict(min_inside_size=-2.0))
    with pytest.raises(ValueError, match="min_inside_size must be finite"):
        op(*args)


# ---------------------------------------------------------------------------------------------
# non-finite GTs and anchors (issue 23): a GT with a non-finite coordinate is padding
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flavour", list(NAN_FLAVOURS))
@pytest.mark.parametrize("nan_first", [False, True])
def test_nan_gt_steals_nothing_issue_23(tal_op, flavour, nan_first):
    """The issue's case: the NaN GT must not win the anchor (it went to the NaN GT with a NaN
    box and soft target under conflict="all_gts"; with beta = 0 it took positives outright)."""
    kw = NAN_FLAVOURS[flavour]
    inputs = _issue_23_inputs(nan_first)
    out = tal_op(*inputs, **kw)
    exp = ref_tal(*inputs, **kw)
    _check_equal_assignment(out, exp, inputs)
    nan_gt = 0 if nan_first else 2
    assert int(out.assigned_gt[0, 0]) == (1 if nan_first else 0)
    for name in ("boxes", *FLOAT_FIELDS):
        assert bool(torch.isfinite(getattr(out, name)).all()), name
    assert int(exp.assigned_gt[0, 0]) != nan_gt


def _raw_op(inputs, kw):
    """The dispatcher op, without the Python wrapper's masking of non-finite GTs: the kernels'
    own centre test must already keep a NaN GT from claiming anything."""
    return TALResult(*torch.ops.tood_ext.task_aligned_assign(*inputs, **_kw(kw)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", list(NAN_FLAVOURS))
def test_nan_gts_match_reference(gen, tal_op, device, flavour):
    """Random batches with NaN GT coordinates (GT index >= 1, so that the "all_gts" zero column
    cannot hand an anchor to one) and NaN anchor points: the raw kernel equals the reference,
    and so does the op; no output is non-finite."""
    if SELF_TEST:
        pytest.skip("self-test mode: no kernel")
    kw = NAN_FLAVOURS[flavour]
    for dtype in dtypes_for(device)[:2]:
        for B, A, C, G in ((2, 400, 4, 9), (1, 120, 3, 25)):
            inputs, hit = inject_nonfinite(gen, metric_inputs(gen, B, A, C, G, dtype=dtype,
                                                              device=device), first_gt=1)
            exp = ref_tal(*inputs, **kw)
            for out in (_raw_op(inputs, _kw(kw)), tal_op(*inputs, **kw)):
                _check_equal_assignment(out, exp, inputs)
                for name in FLOAT_FIELDS:
                    assert_close(getattr(out, name), getattr(exp, name), dtype=dtype, msg=name)
                    assert bool(torch.isfinite(getattr(out, name)).all()), name
                assert bool(torch.isfinite(out.boxes).all())
                claimed = hit.to(device).gather(1, out.assigned_gt.clamp(min=0))
                assert not bool((claimed & out.fg_mask).any()), "a NaN GT holds an anchor"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", list(NAN_FLAVOURS))
def test_non_finite_gts_are_padding(gen, tal_op, device, flavour):
    """NaN or +-inf anywhere (GT 0 included): the op's result is that of the same inputs with
    those GTs marked padding and their boxes zeroed (the documented rule), equals the
    reference's, and holds no non-finite value."""
    kw = NAN_FLAVOURS[flavour]
    for dtype in dtypes_for(device)[:2]:
        inputs, hit = inject_nonfinite(
            gen, metric_inputs(gen, 2, 300, 4, 10, dtype=dtype, device=device), gt_frac=0.4,
            values=(float("nan"), float("inf"), float("-inf")))
        hit = hit.to(device)
        ps, pb, ap, gl, gb, gm = inputs
        masked = (ps, pb, ap, gl, gb.masked_fill(hit[..., None], 0.0), gm & ~hit)
        out = tal_op(*inputs, **kw)
        want = tal_op(*masked, **kw)
        for name in TALResult._fields:
            assert torch.equal(getattr(out, name), getattr(want, name)), name
        exp = ref_tal(*inputs, **kw)
        _check_equal_assignment(out, exp, inputs)
        for name in FLOAT_FIELDS:
            assert_close(getattr(out, name), getattr(exp, name), dtype=dtype, msg=name)
        for name in ("boxes", *FLOAT_FIELDS):
            assert bool(torch.isfinite(getattr(out, name)).all()), name
        assert bool(out.fg_mask.any())
