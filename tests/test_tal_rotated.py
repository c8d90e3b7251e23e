"""task_aligned_assign_rotated (the task-aligned assignment of oriented boxes): the kernel op vs
the pure-PyTorch reference and vs ultralytics' own ``RotatedTaskAlignedAssigner`` (8.4.190),
on random sparse, crowded and tiny-GT batches, edge cases (empty, NaN, ties), thread counts,
opcheck and the extra memory.

Random inputs are drawn until they are *well posed*: no decision (a GT's top-k membership,
the two largest u of an anchor inside >= 2 GTs, an anchor on a GT's edge) hinges on a relative
difference below 1e-5, which the last bit of ``cos`` / ``sin`` / ``log`` / ``exp`` (the C
library's in the kernels, torch's vector code in the reference and in ultralytics) could flip,
nor on a ProbIoU within a few units of the dtype's epsilon of 0 (whether such a pair's t is a
tiny positive number or exactly 0 is rounding: ``probiou_rounds_to_zero``).
Exact ties are kept on purpose (``test_ties``): equal inputs give equal values everywhere and
the tie rules decide.
"""
from __future__ import annotations

import math

import pytest
import torch

import tood_ext
from tood_ext._types import TALResult
from tood_ext.reference.probiou import probiou_pair
from tood_ext.reference.tal import _positive_candidates, inside_rotated
from tood_ext.reference.tal import task_aligned_assign_rotated as ref_tal
from tood_ext.testing.memory import peak_extra_memory
from tood_ext.testing.ultralytics_obb import probiou_is_zero, probiou_rounds_to_zero

from conftest import DEVICES, assert_close, dtypes_for
from test_compat import grid_points

F64 = torch.float64
STRIDES = (8, 16, 32)
EXACT = ("assigned_gt", "fg_mask", "labels", "boxes")
FLOATS = ("iou", "metric", "soft_target")

# ultralytics' v8OBBLoss assigner (topk 10, alpha 0.5, stride_val 16) and a paper-style one
FLAVOURS = {
    "ultralytics": dict(topk=10, alpha=0.5, beta=6.0, min_inside_size=16.0),
    "topk13": dict(topk=13, alpha=1.0, beta=6.0),
    "candidates": dict(topk=9, alpha=1.0, beta=4.0, candidates="topk_then_inside",
                       conflict="candidates", norm_eps=1e-7),
}


def anchors(size: int) -> torch.Tensor:
    """(A, 2) anchor centres of a size x size image on the stride 8/16/32 grids (pixels)."""
    return grid_points(size, STRIDES).double()


def rotated_inputs(gen, B: int, C: int, G: int, size: int = 128, kind: str = "sparse",
                   pad_frac: float = 0.2):
    """Random inputs (float64, CPU): predicted boxes around the anchors, GTs of ``kind``:
    ``sparse`` (sides 4-60 px anywhere), ``crowded`` (sides 8-50 px around one point per image:
    anchors inside several GTs), ``tiny`` (sides 1-14 px: widened by min_inside_size 16).
    Angles in [-pi/2, pi/2); padding GTs hold junk labels."""
    ap = anchors(size)
    A = ap.shape[0]
    lo, hi = {"sparse": (4, 60), "crowded": (8, 50), "tiny": (1, 14)}[kind]
    wh = lo + torch.rand(B, G, 2, generator=gen, dtype=F64) * (hi - lo)
    if kind == "crowded":
        centre = size * (0.3 + 0.4 * torch.rand(B, 1, 2, generator=gen, dtype=F64))
        xy = centre + (torch.rand(B, G, 2, generator=gen, dtype=F64) - 0.5) * size * 0.3
    else:
        xy = torch.rand(B, G, 2, generator=gen, dtype=F64) * size
    angle = (torch.rand(B, G, 1, generator=gen, dtype=F64) - 0.5) * math.pi
    gt = torch.cat((xy, wh, angle), -1)
    pxy = ap[None] + torch.randn(B, A, 2, generator=gen, dtype=F64) * 4
    pwh = 4 + torch.rand(B, A, 2, generator=gen, dtype=F64) * 40
    pang = (torch.rand(B, A, 1, generator=gen, dtype=F64) - 0.5) * math.pi
    pb = torch.cat((pxy, pwh, pang), -1)
    ps = torch.rand(B, A, C, generator=gen, dtype=F64)
    gl = torch.randint(0, C, (B, G), generator=gen)
    gm = torch.rand(B, G, generator=gen) >= pad_frac
    gl = torch.where(gm, gl, torch.full_like(gl, -3))
    return ps, pb, ap, gl, gt, gm


def _kw(kw: dict) -> dict:
    return dict(dict(topk=13, alpha=1.0, beta=6.0, candidates="inside_then_topk", norm_eps=1e-9,
                     conflict="all_gts", min_inside_size=0.0, probiou_eps=1e-7), **kw)


def _to(inputs, dtype=None, device=None):
    return tuple(x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
                 for x in inputs)


def _near_edges(ap, gb, gm, min_inside_size: float, rel: float = 1e-5) -> int:
    """(anchor, GT) pairs whose centre test a relative ``rel`` in the edge projections could
    flip (float64; the GT's sides widened as for the test)."""
    ap, gb = ap.double(), gb.double()
    boxes = gb.clone()
    if min_inside_size > 0:
        boxes[..., 2:4] = torch.where((boxes[..., 2:4] < min_inside_size) & gm[..., None],
                                      torch.full_like(boxes[..., 2:4], min_inside_size),
                                      boxes[..., 2:4])
    c, sn = boxes[..., 4].cos()[..., None], boxes[..., 4].sin()[..., None]
    dx = ap[:, 0] - boxes[..., 0:1]
    dy = ap[:, 1] - boxes[..., 1:2]
    along_w = (dx * c + dy * sn).abs() - boxes[..., 2:3] / 2  # 0 on the edges
    along_h = (-dx * sn + dy * c).abs() - boxes[..., 3:4] / 2
    scale = boxes[..., 2:4].abs().amax(-1, keepdim=True) + 1
    return int((gm[..., None] & ((along_w.abs() <= rel * scale) | (along_h.abs() <= rel * scale))
                ).sum())


def _ambiguities(inputs, kw, rel: float = 1e-5, ulps: float = 2.0) -> int:
    """Decisions that a relative difference of ``rel`` in t, u or the edge projections, or an
    absolute error of ``ulps`` x the inputs' dtype epsilon in u, could flip (computed in float64
    from the inputs as given)."""
    kw = _kw(kw)
    noise = ulps * torch.finfo(inputs[0].dtype).eps  # absolute rounding error of u near 0
    ps, pb, ap, gl, gb, gm = _to(inputs, F64, "cpu")
    B, A, _ = ps.shape
    G = gl.shape[1]
    if B == 0 or A == 0 or G == 0:
        return 0
    u_raw = probiou_pair(gb[:, :, None], pb[:, None], kw["probiou_eps"])
    u = u_raw.clamp(min=0)
    s = ps.gather(2, gl.clamp(min=0)[:, None, :].expand(B, A, G)).transpose(1, 2)
    t = s.pow(kw["alpha"]) * u.pow(kw["beta"])
    inside = inside_rotated(ap, gb, gm, kw["min_inside_size"])
    bad = _near_edges(ap, gb, gm, kw["min_inside_size"], rel)
    # top-k membership: every t in [t_lo, t_hi] (u +- noise, t +- rel); ambiguous when a t
    # outside a GT's top k could reach the smallest t_lo inside it, or when a t in the top k
    # could be exactly 0 (t_lo = 0 < t_hi) and then lose the tie of zeros (lowest anchor index
    # first) to an anchor outside, or (topk_then_inside) lose its t > 0 test. Exact equal
    # positive values are ties that the tie rule decides the same way everywhere (test_ties).
    t_lo = s.pow(kw["alpha"]) * (u_raw - noise).clamp(min=0).pow(kw["beta"]) * (1 - rel)
    t_hi = s.pow(kw["alpha"]) * (u_raw + noise).clamp(min=0).pow(kw["beta"]) * (1 + rel)
    # exactly 0 everywhere below probiou_rounds_to_zero's band (e.g. every pair at bd = 100)
    t_hi = torch.where(probiou_is_zero(u_raw, kw["probiou_eps"]), torch.zeros_like(t_hi), t_hi)
    if kw["candidates"] == "inside_then_topk":
        key, t_lo, t_hi = (torch.where(inside, x, torch.zeros_like(x)) for x in (t, t_lo, t_hi))
    else:
        key = t
    key = torch.where(gm[:, :, None], key, torch.full_like(key, -math.inf))
    k = kw["topk"]
    if A > k:
        idx = key.topk(k, dim=-1).indices
        in_top = torch.zeros_like(key, dtype=torch.bool).scatter_(-1, idx, True)
        lo_top = torch.where(in_top, t_lo, torch.full_like(t_lo, math.inf)).amin(-1)
        hi_rest = torch.where(in_top, torch.full_like(t_hi, -1.0), t_hi)
        reach = (hi_rest > 0) & (hi_rest >= lo_top[..., None])
        unc_top = (in_top & (t_lo == 0) & (t_hi > 0)).any(-1)
        if kw["candidates"] == "inside_then_topk":
            unc_top &= (~in_top & (key == 0)).any(-1)
        bad += int((gm[..., None] & reach).sum()) + int((gm & unc_top).sum())
    pos = _positive_candidates(t, inside, gm, k, kw["candidates"])
    if G >= 2:
        uu = torch.where(pos, u, torch.full_like(u, -1.0)).topk(2, dim=1).values
        bad += int(((uu[:, 1] >= 0) & (uu[:, 0] != uu[:, 1])
                    & (uu[:, 0] - uu[:, 1] <= rel * uu[:, 0] + 2 * noise)).sum())
        if kw["conflict"] == "all_gts":
            many = pos.sum(1) >= 2
            uu = torch.where(inside, u, torch.zeros_like(u)).topk(2, dim=1).values
            bad += int((many & (uu[:, 0] != uu[:, 1])
                        & (uu[:, 0] - uu[:, 1] <= rel * uu[:, 0] + 2 * noise)).sum())
    return bad


def _draw(make, kw, dtype, device="cpu", tries: int = 25):
    for _ in range(tries):
        inputs = _to(make(), dtype, device)
        if _ambiguities(inputs, kw) == 0:
            return inputs
    raise AssertionError(f"no well-posed draw in {tries} tries")


def _check_equal(out: TALResult, exp: TALResult, dtype):
    for name in EXACT:
        got, want = getattr(out, name), getattr(exp, name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert torch.equal(got.cpu(), want.cpu()), name
    for name in FLOATS:
        assert_close(getattr(out, name).cpu(), getattr(exp, name).cpu(), dtype=dtype, msg=name)


SCENARIOS = {
    "sparse": lambda gen: rotated_inputs(gen, 2, 4, 6, 128, "sparse"),
    "crowded": lambda gen: rotated_inputs(gen, 2, 3, 40, 128, "crowded"),
    "tiny": lambda gen: rotated_inputs(gen, 2, 3, 12, 128, "tiny"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matches_reference(gen, device, flavour, scenario):
    kw = FLAVOURS[flavour]
    for dtype in dtypes_for(device)[:2]:
        inputs = _draw(lambda: SCENARIOS[scenario](gen), kw, dtype, device)
        out = tood_ext.task_aligned_assign_rotated(*inputs, **kw)
        exp = ref_tal(*inputs, **kw)
        _check_equal(out, exp, dtype)
        assert out.boxes.shape == (*inputs[0].shape[:2], 5)
        if scenario == "crowded":
            assert int(out.fg_mask.sum()) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(gen, device):
    for B, G, keep in [(2, 0, None), (0, 5, None), (2, 5, 0)]:
        ps, pb, ap, gl, gb, gm = _to(rotated_inputs(gen, max(B, 1), 3, G, 64), torch.float32,
                                     device)
        ps, pb, gl, gb, gm = ps[:B], pb[:B], gl[:B], gb[:B], gm[:B]
        if keep == 0:  # no anchors
            ps, pb, ap = ps[:, :0], pb[:, :0], ap[:0]
        out = tood_ext.task_aligned_assign_rotated(ps, pb, ap, gl, gb, gm)
        A = ap.shape[0]
        assert out.assigned_gt.shape == (B, A) and out.boxes.shape == (B, A, 5)
        assert not bool(out.fg_mask.any()) and bool((out.assigned_gt == -1).all())
        _check_equal(out, ref_tal(ps, pb, ap, gl, gb, gm), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_gts_are_padding(gen, device):
    """A GT with a NaN / inf coordinate or angle is padding (the wrapper clears its mask):
    it claims nothing and no non-finite value reaches an output; the raw op's centre test is
    False for it as well."""
    kw = FLAVOURS["ultralytics"]
    for dtype in dtypes_for(device)[:2]:
        ps, pb, ap, gl, gb, gm = rotated_inputs(gen, 2, 3, 12, 128, "crowded", pad_frac=0.0)
        gb = gb.clone()
        hit = torch.zeros(2, 12, dtype=torch.bool)
        for n, (b, g) in enumerate([(0, 1), (0, 5), (1, 2), (1, 7), (1, 11)]):
            gb[b, g, n % 5] = (float("nan"), float("inf"), float("-inf"))[n % 3]
            hit[b, g] = True
        inputs = _to((ps, pb, ap, gl, gb, gm), dtype, device)
        out = tood_ext.task_aligned_assign_rotated(*inputs, **kw)
        exp = ref_tal(*inputs, **kw)
        _check_equal(out, exp, dtype)
        for name in ("boxes",) + FLOATS:
            assert bool(torch.isfinite(getattr(out, name)).all()), name
        claimed = hit.to(device).gather(1, out.assigned_gt.clamp(min=0)) & out.fg_mask
        assert not bool(claimed.any())
        # the raw op: a NaN GT is inside nothing (a -inf side would be widened to
        # min_inside_size by the centre test, as in ultralytics: the wrapper's masking matters)
        raw = TALResult(*torch.ops.tood_ext.task_aligned_assign_rotated(*inputs, **_kw(kw)))
        nan_gt = torch.isnan(inputs[4]).any(-1)
        claimed = nan_gt.gather(1, raw.assigned_gt.clamp(min=0)) & raw.fg_mask
        assert not bool(claimed.any())  # (no NaN GT is GT 0, the zero columns' GT)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_predicted_boxes(gen, device):
    """A predicted box with a NaN value or an infinite angle: u = NaN, t = NaN, never a
    candidate (the "all_gts" argmax ranks NaN first, as torch.argmax); kernel == reference."""
    kw = FLAVOURS["ultralytics"]
    ps, pb, ap, gl, gb, gm = rotated_inputs(gen, 2, 3, 20, 128, "crowded")
    pb = pb.clone()
    idx = torch.randperm(pb.shape[1], generator=gen)[:40]
    for n, a in enumerate(idx.tolist()):
        pb[n % 2, a, n % 5] = float("nan") if n % 5 != 4 or n % 2 else float("inf")
    inputs = _to((ps, pb, ap, gl, gb, gm), F64, device)
    out = tood_ext.task_aligned_assign_rotated(*inputs, **kw)
    exp = ref_tal(*inputs, **kw)
    for name in EXACT:
        assert torch.equal(getattr(out, name).cpu(), getattr(exp, name).cpu()), name
    for name in FLOATS:
        torch.testing.assert_close(getattr(out, name).cpu(), getattr(exp, name).cpu(),
                                   rtol=1e-10, atol=1e-10, equal_nan=True, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", ["ultralytics", "candidates"])
def test_ties(gen, device, flavour):
    """Exact ties: identical predicted boxes and scores everywhere (equal t: lower anchor index
    first), GTs duplicated (equal u: lower GT index, or "all_gts"' first maximum)."""
    kw = FLAVOURS[flavour]
    def reference_ties(inputs) -> bool:
        """The reference's t equal along each GT's row: torch's elementwise ``pow`` gives a
        vector body and a scalar tail that may differ in the last bit on equal inputs."""
        ps, pb, ap, gl, gb, gm = inputs
        u = probiou_pair(gb[:, :, None], pb[:, None], 1e-7).clamp(min=0)
        s = ps.gather(2, gl.clamp(min=0)[:, None, :].expand(-1, ps.shape[1], -1)).transpose(1, 2)
        t = s.pow(kw["alpha"]) * u.pow(kw["beta"])
        return bool((t == t[..., :1]).all())

    for _ in range(25):  # until no GT's u is ~0 by rounding and no anchor is on an edge
        ps, pb, ap, gl, gb, gm = rotated_inputs(gen, 2, 3, 6, 64, "sparse", pad_frac=0.0)
        gb = gb.clone()
        gb[:, 3] = gb[:, 0]  # a duplicated GT
        gb[:, 4, :2] = gb[:, 1, :2]
        gl[:, 3] = gl[:, 0]
        pb = pb.clone()
        pb[:] = pb[:, :1]  # one predicted box for all anchors: t ties within each GT
        ps = ps[:, :1].expand_as(ps).clone()
        if not bool(probiou_rounds_to_zero(probiou_pair(gb, pb[:, :1], 1e-7)).any()) and \
                _near_edges(ap, gb, gm, _kw(kw)["min_inside_size"]) == 0 and \
                all(reference_ties(_to((ps, pb, ap, gl, gb, gm), dt))
                    for dt in dtypes_for(device)[:2]):
            break
    else:
        raise AssertionError("no draw without near-zero u, edge anchors and reference ULP ties")
    for dtype in dtypes_for(device)[:2]:
        inputs = _to((ps, pb, ap, gl, gb, gm), dtype, device)
        out = tood_ext.task_aligned_assign_rotated(*inputs, **kw)
        _check_equal(out, ref_tal(*inputs, **kw), dtype)


def test_thread_count_does_not_change_the_bits(gen):
    inputs = _to(rotated_inputs(gen, 3, 4, 30, 128, "crowded"), torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tood_ext.task_aligned_assign_rotated(*inputs, **FLAVOURS["ultralytics"])
        torch.set_num_threads(2)
        two = tood_ext.task_aligned_assign_rotated(*inputs, **FLAVOURS["ultralytics"])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_opcheck(gen):
    inputs = _to(rotated_inputs(gen, 2, 3, 8, 64, "crowded"), torch.float32)
    args = (*inputs, 10, 0.5, 6.0, "inside_then_topk", 1e-9, "all_gts", 16.0, 1e-7)
    torch.library.opcheck(torch.ops.tood_ext.task_aligned_assign_rotated.default, args)


def test_fake_kernel_shapes(gen):
    inputs = _to(rotated_inputs(gen, 2, 3, 8, 64, "sparse"), torch.float32, "meta")
    out = torch.ops.tood_ext.task_aligned_assign_rotated(*inputs)
    A = inputs[2].shape[0]
    assert [tuple(o.shape) for o in out] == [(2, A)] * 3 + [(2, A, 5)] + [(2, A)] * 3
    with pytest.raises(RuntimeError, match="gt_boxes must have shape"):
        torch.ops.tood_ext.task_aligned_assign_rotated(*inputs[:4], inputs[4][..., :4],
                                                       inputs[5])


@pytest.mark.parametrize("bad, exc, match", [
    (dict(pred_boxes=lambda t: t[..., :4]), RuntimeError, "pred_boxes must have shape"),
    (dict(gt_boxes=lambda t: t[..., :4]), RuntimeError, "gt_boxes must have shape"),
    (dict(gt_labels=lambda t: t[:1]), RuntimeError, "gt_labels must have shape"),
    (dict(gt_mask=lambda t: t[:1]), RuntimeError, "gt_mask must have shape"),
    (dict(gt_boxes=lambda t: t.double()), RuntimeError, "gt_boxes has dtype"),
    (dict(gt_labels=lambda t: t.fill_(7)), IndexError, "gt_labels holds class 7"),
    (dict(pred_boxes=lambda t: t.tolist()), TypeError, "pred_boxes"),
    (dict(topk=0), ValueError, "topk"),
    (dict(candidates="inside"), ValueError, "candidates"),
    (dict(probiou_eps=-1.0), ValueError, "probiou_eps"),
])
@pytest.mark.parametrize("fn", ["op", "reference"])
def test_bad_input_names_the_argument(gen, bad, exc, match, fn):
    ps, pb, ap, gl, gb, gm = _to(rotated_inputs(gen, 2, 3, 5, 64, pad_frac=0.0), torch.float32)
    args = dict(pred_scores=ps, pred_boxes=pb, anchor_points=ap, gt_labels=gl, gt_boxes=gb,
                gt_mask=gm)
    kwargs = {}
    for name, value in bad.items():
        if name in args:
            args[name] = value(args[name].clone())
        else:
            kwargs[name] = value
    call = tood_ext.task_aligned_assign_rotated if fn == "op" else ref_tal
    with pytest.raises(exc, match=match):
        call(*args.values(), **kwargs)


# ---------------------------------------------------------------------------------------------
# ultralytics' own RotatedTaskAlignedAssigner
# ---------------------------------------------------------------------------------------------


def _as_ultralytics(out: TALResult, gl, gb, C):
    """The op's result in ultralytics' output format (target_labels, target_bboxes,
    target_scores, fg_mask, target_gt_idx): background rows hold GT 0's label and box."""
    idx = torch.where(out.fg_mask, out.assigned_gt, torch.zeros_like(out.assigned_gt))
    labels = gl.gather(1, idx).clamp(min=0)
    boxes = gb.gather(1, idx[..., None].expand(*idx.shape, 5))
    scores = torch.zeros(*idx.shape, C, dtype=out.soft_target.dtype)
    scores.scatter_(2, labels[..., None], out.soft_target[..., None])
    return labels, boxes, scores, out.fg_mask, idx


@pytest.mark.parametrize("kind", ["sparse", "crowded", "tiny"])
def test_matches_ultralytics_rotated_assigner(gen, kind):
    ul_tal = pytest.importorskip("ultralytics.utils.tal")
    from tood_ext.compat.ultralytics import lowest_index_topk

    kw = FLAVOURS["ultralytics"]

    def make():
        G = int(torch.randint(1, 30 if kind != "sparse" else 10, (1,), generator=gen))
        return rotated_inputs(gen, 2, 5, G, 128, kind)

    for _ in range(8):
        inputs = _draw(make, kw, torch.float32)
        ps, pb, ap, gl, gb, gm = inputs
        assigner = ul_tal.RotatedTaskAlignedAssigner(topk=10, num_classes=5, alpha=0.5,
                                                     beta=6.0, stride=list(STRIDES))
        with lowest_index_topk():
            want = assigner(ps, pb, ap, gl.clamp(min=0)[..., None].float(), gb,
                            gm[..., None].float())
        got = _as_ultralytics(tood_ext.task_aligned_assign_rotated(*inputs, **kw), gl, gb, 5)
        for i, (g, w) in enumerate(zip(got, want)):
            if i == 2:  # t_hat ~ u^7: float32 rounding of u (~1e-7 absolute) grows 7 / u fold
                assert_close(g, w, dtype=torch.float32, msg="target_scores")
            else:
                assert torch.equal(g, w.to(g.dtype)), i


# ---------------------------------------------------------------------------------------------
# extra memory: O(B*A + B*G*topk), never (B, G, A)
# ---------------------------------------------------------------------------------------------


def test_extra_memory_is_o_of_b_times_a(gen):
    B, G, k = 2, 300, 10
    inputs = _to(rotated_inputs(gen, B, 5, G, 512, "crowded"), torch.float32)
    A = inputs[2].shape[0]
    peak = peak_extra_memory(
        lambda: tood_ext.task_aligned_assign_rotated(*inputs, **FLAVOURS["ultralytics"]), "cpu")
    # outputs 7 x (B, A) (boxes x5), columns (B, 7, A), candidates (B, G, k) x 13 bytes
    bound = B * A * 4 * (3 + 2 * 2 + 5 + 7) + B * G * k * 13 + 64 * 1024
    assert peak <= bound, (peak, bound)
    assert peak < B * G * A * 4  # one (B, G, A) float32 tensor
