"""Cases and checks of the task-aligned assignment shared by test_tal.py (the op vs the
reference, a loop oracle, invariants) and the CUDA emulator's tests (test_cuda_emu.py,
emu_memcheck.py): the flavours, the scenarios of random inputs, the well-posedness filter and
the checks of a result. See test_tal.py's docstring for what they establish.
"""
from __future__ import annotations

import math

import torch

from tood_ext._types import TALResult
from tood_ext.reference.box_ops import alignment_metric as ref_metric
from tood_ext.reference.tal import _positive_candidates, inside_boxes
from tood_ext.reference.tal import task_aligned_assign as ref_tal

from conftest import TOL, assert_close, metric_inputs

F64 = torch.float64
HALF_TYPES = (torch.float16, torch.bfloat16)

# the two published flavours and two mixed ones; alpha/beta/topk vary with them
FLAVOURS = {
    "mmdet": dict(),  # topk_then_inside, iou, topk 13, alpha 1, beta 6, eps 0.01 / 1e-7
    "mmdet-ciou-a0.5": dict(iou_mode="ciou", alpha=0.5, beta=6.0),
    "ultralytics": dict(candidates="inside_then_topk", iou_mode="ciou", inside_eps=1e-9,
                        norm_eps=1e-9, topk=10, alpha=0.5, beta=6.0),  # v8DetectionLoss
    "inside-iou": dict(candidates="inside_then_topk", topk=5, alpha=2.0, beta=2.5),
    # ultralytics 8.4 exactly: its conflict rule and its widened inside test (stride_val)
    "ultralytics-exact": dict(candidates="inside_then_topk", iou_mode="ciou", inside_eps=1e-9,
                              norm_eps=1e-9, topk=10, alpha=0.5, beta=6.0, conflict="all_gts",
                              min_inside_size=16.0),
    "mmdet-all-gts-widened": dict(conflict="all_gts", min_inside_size=30.0, topk=9),
}
DEFAULTS = dict(topk=13, alpha=1.0, beta=6.0, candidates="topk_then_inside", iou_mode="iou",
                inside_eps=0.01, norm_eps=1e-7, conflict="candidates", min_inside_size=0.0)
FIELDS = TALResult._fields
EXACT_FIELDS = ("assigned_gt", "fg_mask", "labels", "boxes")
FLOAT_FIELDS = ("iou", "metric", "soft_target")


def _kw(kw: dict) -> dict:
    return {**DEFAULTS, **kw}


def _to(inputs, dtype=None, device=None):
    return tuple(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                 for t in inputs)


def _cpu64(inputs):
    return _to([t.detach() for t in inputs], F64, "cpu")


def _compute_dtype(dtype):
    return torch.float32 if dtype in HALF_TYPES else dtype


# ---------------------------------------------------------------------------------------------
# well-posedness, oracle, invariants
# ---------------------------------------------------------------------------------------------


def _metric(inputs, kw):
    """t, u and the centre test (against the widened boxes when min_inside_size > 0) of the
    (already cast) inputs, dense (B, G, A); t and u as alignment_metric gives them."""
    ps, pb, ap, gl, gb, gm = inputs
    t, u, inside = ref_metric(ps, pb, ap, gl, gb, gm, alpha=kw["alpha"], beta=kw["beta"],
                              iou_mode=kw["iou_mode"], inside_eps=kw["inside_eps"])
    if kw["min_inside_size"] > 0:
        box = inside_boxes(gb, kw["min_inside_size"])[:, :, None, :]
        pts = ap[None, None]
        margin = torch.cat([pts - box[..., :2], box[..., 2:] - pts], -1).amin(-1)
        inside = (margin > kw["inside_eps"]) & gm[:, :, None]
    return t, u, inside


def _ambiguities(inputs, kw, rel: float = 1e-5) -> int:
    """Number of decisions that a relative difference of ``rel`` in t or u could flip."""
    kw = _kw(kw)
    ps, pb, ap, gl, gb, gm = _cpu64(inputs)
    B, A, _ = ps.shape
    if B == 0 or A == 0 or gl.shape[1] == 0:
        return 0
    t, u, inside = _metric((ps, pb, ap, gl, gb, gm), kw)
    if kw["candidates"] == "inside_then_topk":  # ranked by t masked to 0 outside
        t = torch.where(inside, t, torch.zeros_like(t))
    eligible = ~torch.isnan(t) & gm[:, :, None]
    key = torch.where(eligible, t, torch.full_like(t, -math.inf))
    k = kw["topk"]
    top = key.topk(min(k + 1, A), dim=-1).values
    bad = int(((top > 0) & (top < 1e-36)).sum())  # near float32 underflow (FLT_MIN 1.2e-38)
    if A > k:
        a, b = top[..., k - 1], top[..., k]
        bad += int(((a != b) & (b > -math.inf) & (a - b <= rel * a.abs())).sum())
    pos = _positive_candidates(t, inside, gm, k, kw["candidates"])
    if gl.shape[1] >= 2:
        uu = torch.where(pos, u, torch.full_like(u, -1.0)).topk(2, dim=1).values  # (B, 2, A)
        u1, u2 = uu[:, 0], uu[:, 1]
        bad += int(((u2 >= 0) & (u1 != u2) & (u1 - u2 <= rel * u1)).sum())
        if kw["conflict"] == "all_gts":  # the argmax over all GTs of the masked u
            many = pos.sum(1) >= 2
            uu = torch.where(inside, u, torch.zeros_like(u)).topk(2, dim=1).values
            u1, u2 = uu[:, 0], uu[:, 1]
            bad += int((many & (u1 != u2) & (u1 - u2 <= rel * u1)).sum())
    return bad


def _draw(make, kw, dtype, device, tries: int = 25):
    """Inputs from ``make()`` (float64, CPU), cast, until they are well posed at ``dtype``."""
    for _ in range(tries):
        inputs = _to(make(), dtype, device)
        if _ambiguities(inputs, kw) == 0:
            return inputs
    raise AssertionError(f"no well-posed draw in {tries} tries")


def _oracle(inputs, kw):
    """Assignment by plain loops, independent of the reference's tensor algorithm (it shares
    only alignment_metric, evaluated in the op's compute dtype). Returns (assigned (B, A) list,
    soft_target (B, A) list of float, t, u as nested lists)."""
    kw = _kw(kw)
    cdt = _compute_dtype(inputs[0].dtype)
    ps, pb, ap, gl, gb, gm = _to([x.detach() for x in inputs], cdt, "cpu")
    B, A, _ = ps.shape
    G = gl.shape[1]
    if B == 0 or A == 0 or G == 0:
        return [[-1] * A for _ in range(B)], [[0.0] * A for _ in range(B)], None, None
    t, u, inside = _metric((ps, pb, ap, gl, gb, gm), kw)
    T, U, U32, IN, M = t.tolist(), u.tolist(), u.float().tolist(), inside.tolist(), gm.tolist()
    k, mode = kw["topk"], kw["candidates"]
    assigned, soft, TM, UM = [], [], [], []
    for b in range(B):
        claims = [[] for _ in range(A)]
        for g in range(G):
            if not M[b][g]:
                continue
            tg, ig = T[b][g], IN[b][g]
            if mode == "inside_then_topk":  # ultralytics: top-k of t masked to 0 outside
                tg = [tg[a] if ig[a] else 0.0 for a in range(A)]
            ranked = [a for a in range(A) if not math.isnan(tg[a])]
            ranked.sort(key=lambda a: -tg[a])  # list.sort is stable: ties keep index order
            for a in ranked[:k]:
                if ig[a] and (mode == "inside_then_topk" or tg[a] > 0):
                    claims[a].append(g)
        row = [max(c, key=lambda g: (U32[b][g][a], -g)) if c else -1
               for a, c in enumerate(claims)]
        if kw["conflict"] == "all_gts":  # ultralytics: argmax over all GTs of the masked u
            for a, c in enumerate(claims):
                if len(c) >= 2:
                    col = [U[b][g][a] if IN[b][g][a] else 0.0 for g in range(G)]
                    row[a] = col.index(max(col))  # the first maximum
        # t and u of the final pairs, masked to 0 outside the inside pairs
        Tm = [[T[b][g][a] if IN[b][g][a] else 0.0 for a in range(A)] for g in range(G)]
        Um = [[U[b][g][a] if IN[b][g][a] else 0.0 for a in range(A)] for g in range(G)]
        max_t, max_u = {}, {}
        for a, g in enumerate(row):
            if g >= 0:
                max_t[g] = max(max_t.get(g, -math.inf), Tm[g][a])
                max_u[g] = max(max_u.get(g, -math.inf), Um[g][a])
        soft.append([Tm[g][a] * max_u[g] / (max_t[g] + kw["norm_eps"]) if g >= 0 else 0.0
                     for a, g in enumerate(row)])
        assigned.append(row)
        TM.append(Tm)
        UM.append(Um)
    return assigned, soft, TM, UM


def _check_format(out, inputs):
    ps, pb, ap, gl, gb, gm = inputs
    B, A, _ = ps.shape
    assert isinstance(out, TALResult), type(out)
    want = {"assigned_gt": ((B, A), torch.int64), "fg_mask": ((B, A), torch.bool),
            "labels": ((B, A), torch.int64), "boxes": ((B, A, 4), gb.dtype),
            "iou": ((B, A), ps.dtype), "metric": ((B, A), ps.dtype),
            "soft_target": ((B, A), ps.dtype)}
    for name, (shape, dtype) in want.items():
        x = getattr(out, name)
        assert tuple(x.shape) == shape and x.dtype == dtype, (name, x.shape, x.dtype)
        assert x.device == ps.device, name
        assert not x.requires_grad, name


def _check_invariants(out, inputs, kw):
    """Properties every correct result has, read off the outputs and the inputs alone."""
    kw = _kw(kw)
    ps, pb, ap, gl, gb, gm = [x.detach() for x in inputs]
    B, A, _ = ps.shape
    G = gl.shape[1]
    fg, ag = out.fg_mask, out.assigned_gt
    assert torch.equal(fg, ag >= 0), "fg_mask != (assigned_gt >= 0)"
    assert bool((ag >= -1).all()) and bool((ag < max(G, 1)).all())
    bg = ~fg
    assert bool((out.labels[bg] == -1).all()) and bool((out.boxes[bg] == 0).all())
    for name in FLOAT_FIELDS:
        assert bool((getattr(out, name)[bg] == 0).all()), f"{name} not 0 on background"
    if not bool(fg.any()):
        return
    idx = ag.clamp(min=0)
    all_gts = kw["conflict"] == "all_gts"
    # "all_gts": an anchor whose masked u is 0 for every GT goes to GT 0, padding or not
    # and inside or not (u = 0); other positives are inside valid GTs
    # (only such a GT-0 anchor may be outside its GT or on a padding GT)
    real = fg & ~((ag == 0) & (out.iou == 0)) if all_gts else fg
    assert bool(gm.gather(1, idx)[real].all()), "an anchor is assigned to a padding GT"
    assert torch.equal(out.labels[fg], gl.gather(1, idx)[fg])
    assert torch.equal(out.boxes[fg], gb.gather(1, idx[..., None].expand(B, A, 4))[fg])
    counts = torch.zeros(B, G, dtype=torch.int64, device=ag.device).scatter_add_(
        1, idx, fg.long())
    if not all_gts:  # "all_gts" hands anchors to GTs that did not pick them
        assert int(counts.max()) <= kw["topk"], "a GT holds more than topk anchors"
    # the centre of every positive is inside its (widened) GT; t > 0 for topk_then_inside
    cdt = _compute_dtype(ps.dtype)
    box = inside_boxes(gb.to(cdt), kw["min_inside_size"]).gather(
        1, idx[..., None].expand(B, A, 4))
    pts = ap.to(cdt)[None].expand(B, A, 2)
    margin = torch.cat([pts - box[..., :2], box[..., 2:] - pts], -1).amin(-1)
    assert bool((margin[real] > kw["inside_eps"]).all()), "a positive's centre is outside its GT"
    half = ps.dtype in HALF_TYPES
    if kw["candidates"] == "topk_then_inside" and not half and not all_gts:
        assert bool((out.metric[fg] > 0).all()), "a topk_then_inside positive has t <= 0"
    # soft_target = t * max u / (max t + eps) over the GT's positives, from the op's own outputs
    t, u = out.metric.double(), out.iou.double()
    ninf = torch.full((B, G), -math.inf, dtype=F64, device=t.device)
    max_t = ninf.scatter_reduce(1, idx, t.where(fg, -math.inf), "amax")
    max_u = ninf.scatter_reduce(1, idx, u.where(fg, -math.inf), "amax")
    expected = t * max_u.gather(1, idx) / (max_t.gather(1, idx) + kw["norm_eps"])
    expected = expected.where(fg, 0.0)
    # half types: t rounded to half is too coarse below ~1e-2 for t / max_t to be checked
    check = ~fg | (max_t.gather(1, idx) >= 1e-2) if half else torch.ones_like(fg)
    assert_close(out.soft_target[check], expected[check], dtype=ps.dtype,
                 msg="soft_target self-consistency")
    assert bool((out.soft_target[fg] >= 0).all())
    rtol, atol = TOL[ps.dtype]
    assert bool((out.soft_target.double() <= max_u.gather(1, idx) * (1 + rtol) + atol)[fg].all())


def _explain(name, got, want, inputs):
    diff = (got != want)
    if diff.dim() == 3:
        diff = diff.any(-1)
    where = diff.nonzero()[:8].tolist()
    return (f"{name} differs at {int(diff.sum())} anchors, first (b, a): {where}; "
            f"got {[got[b][a].tolist() for b, a in where]}, "
            f"want {[want[b][a].tolist() for b, a in where]}")


def _check_equal_assignment(out, exp, inputs, what="reference"):
    for name in EXACT_FIELDS:
        got, want = getattr(out, name), getattr(exp, name)
        assert torch.equal(got, want), f"vs {what}: " + _explain(name, got, want, inputs)


def _check_against_oracle(out, inputs, kw):
    assigned, soft, T, U = _oracle(inputs, kw)
    got = out.assigned_gt.cpu()
    want = torch.tensor(assigned, dtype=torch.int64).reshape(got.shape)
    assert torch.equal(got, want), "vs oracle: " + _explain("assigned_gt", got, want, inputs)
    dtype = inputs[0].dtype
    exp_soft = torch.tensor(soft, dtype=F64).reshape(got.shape)
    assert_close(out.soft_target.cpu(), exp_soft, dtype=dtype, msg="soft_target vs oracle")
    if T is not None:
        B, A = got.shape
        exp_t = torch.tensor([[T[b][g][a] if g >= 0 else 0.0 for a, g in enumerate(row)]
                              for b, row in enumerate(assigned)], dtype=F64).reshape(B, A)
        exp_u = torch.tensor([[U[b][g][a] if g >= 0 else 0.0 for a, g in enumerate(row)]
                              for b, row in enumerate(assigned)], dtype=F64).reshape(B, A)
        assert_close(out.metric.cpu(), exp_t, dtype=dtype, msg="metric vs oracle")
        assert_close(out.iou.cpu(), exp_u, dtype=dtype, msg="iou vs oracle")


def _run_and_check(op, inputs, kw, oracle=True):
    """The op vs the reference (same dtype: exact assignment; float outputs vs a float64
    reference within TOL), invariants, and (optionally) the loop oracle."""
    out = op(*inputs, **kw)
    _check_format(out, inputs)
    exp = ref_tal(*inputs, **kw)
    _check_equal_assignment(out, exp, inputs)
    exp64 = exp if inputs[0].dtype == F64 else ref_tal(*_to(inputs, F64), **kw)
    same = all(torch.equal(getattr(exp, n), getattr(exp64, n).to(getattr(exp, n).dtype))
               for n in ("assigned_gt", "fg_mask"))
    base = exp64 if same else exp  # well-posed draws make `same` true; exact ties too
    for name in FLOAT_FIELDS:
        assert_close(getattr(out, name), getattr(base, name), dtype=inputs[0].dtype, msg=name)
    _check_invariants(out, inputs, kw)
    if oracle:
        _check_against_oracle(out, inputs, kw)
    return out


# ---------------------------------------------------------------------------------------------
# scenarios (float64 CPU inputs; cast by _draw)
# ---------------------------------------------------------------------------------------------


def _sparse(gen):  # B = 1, a few GTs
    return metric_inputs(gen, 1, 400, 5, 4, dtype=F64)


def _moderate(gen):
    return metric_inputs(gen, 2, 2000, 20, 60, dtype=F64)


def _crowded(gen):  # G = 500 on 256 anchors
    return metric_inputs(gen, 2, 256, 6, 500, dtype=F64, pad_frac=0.1)


def _overlapping(gen):
    """Groups of 4 GTs: a box, an exact copy (same label), an exact copy of another label, a
    copy jittered by up to 2 px: conflicts everywhere, exact u ties among the copies."""
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 600, 4, 48, dtype=F64, pad_frac=0.0)
    gb, gl, gm = gb.clone(), gl.clone(), gm.clone()
    gb[:, 1::4] = gb[:, 0::4]
    gl[:, 1::4] = gl[:, 0::4]
    gb[:, 2::4] = gb[:, 0::4]
    gl[:, 2::4] = (gl[:, 0::4] + 1) % 4
    gb[:, 3::4] = gb[:, 0::4] + (torch.rand(2, 12, 4, generator=gen, dtype=F64) * 4 - 2)
    gm[:, 5] = False  # a padding copy, junk label
    gl[:, 5] = 99
    return ps, pb, ap, gl, gb, gm


def _ties(gen):
    """Anchors on a 20 x 20 grid, two predicted boxes shared by all anchors, scores in
    {0, .25, .5, .75, 1}: many exactly equal t; duplicated GTs: exactly equal u."""
    B, C, G = 2, 3, 16
    xs = torch.arange(20, dtype=F64) * 10 + 5
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    ap = torch.stack([gx.flatten(), gy.flatten()], -1)  # (400, 2)
    A = ap.shape[0]
    shapes = torch.tensor([[60.0, 60.0, 140.0, 140.0], [20.0, 100.0, 100.0, 180.0]], dtype=F64)
    pb = shapes[torch.arange(A) % 2][None].expand(B, A, 4).clone()
    ps = torch.randint(0, 5, (B, A, C), generator=gen).to(F64) / 4
    xy = torch.randint(0, 16, (B, G, 2), generator=gen).to(F64) * 10
    wh = torch.randint(3, 9, (B, G, 2), generator=gen).to(F64) * 10
    gb = torch.cat([xy, xy + wh], -1)
    gb[:, 8:12] = gb[:, 0:4]  # exact duplicates
    gl = torch.randint(0, C, (B, G), generator=gen)
    gm = torch.ones(B, G, dtype=torch.bool)
    gm[:, -1] = False
    gl[:, -1] = -3
    return ps, pb, ap, gl, gb, gm


def _small_a(gen):  # A = 4 < topk
    return metric_inputs(gen, 3, 4, 4, 5, dtype=F64, pad_frac=0.2)


def _padding(gen):  # mostly padding, image 0 padding only
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 3, 300, 4, 12, dtype=F64, pad_frac=0.7)
    gm = gm.clone()
    gm[0] = False
    return ps, pb, ap, gl, gb, gm


def _zero_scores(gen):
    """Scores exactly 0: every third anchor, and all of class 0."""
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 500, 3, 10, dtype=F64, pad_frac=0.1)
    ps = ps.clone()
    ps[:, ::3] = 0.0
    ps[..., 0] = 0.0
    return ps, pb, ap, gl, gb, gm


def _zero_area(gen):
    """GTs 0-2 of each image degenerate: zero width, a point, negative height."""
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 500, 3, 8, dtype=F64, pad_frac=0.0)
    gb = gb.clone()
    gb[:, 0, 2] = gb[:, 0, 0]
    gb[:, 1, 2:] = gb[:, 1, :2]
    gb[:, 2, 3] = gb[:, 2, 1] - 5
    return ps, pb, ap, gl, gb, gm


SCENARIOS = {
    "sparse-B1": _sparse, "moderate": _moderate, "crowded-G500": _crowded,
    "overlapping": _overlapping, "ties": _ties, "A<topk": _small_a, "padding": _padding,
    "zero-scores": _zero_scores, "zero-area": _zero_area,
}


NAN_FLAVOURS = {**FLAVOURS, "mmdet-beta0": dict(beta=0.0),
                "ultralytics-exact-beta0": {**FLAVOURS["ultralytics-exact"], "beta": 0.0}}


def _issue_23_inputs(nan_first: bool = False):
    """An anchor at (5, 5) under GTs [0, 0, 10, 10], [1, 1, 11, 11] and [0, 0, 10, nan] (the
    NaN GT first when ``nan_first``); the predicted box is GT 0's."""
    gts = [[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, math.nan]]
    if nan_first:
        gts = gts[2:] + gts[:2]
    return (torch.full((1, 1, 1), 0.5, dtype=F64), torch.tensor([[[0.0, 0, 10, 10]]], dtype=F64),
            torch.tensor([[5.0, 5]], dtype=F64), torch.zeros(1, 3, dtype=torch.long),
            torch.tensor([gts], dtype=F64), torch.ones(1, 3, dtype=torch.bool))
