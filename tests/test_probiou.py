"""probiou / probiou_loss: the kernels against ultralytics' own ``probiou`` (values and
gradients), against the pure-PyTorch reference, and their contracts (shapes, empty inputs,
errors, determinism, extra memory); the CUDA kernels through the emulator."""
from __future__ import annotations

import math

import pytest
import torch

import tood_ext
from tood_ext import reference as ref
from tood_ext.testing.memory import cpu_peak_extra_memory

from conftest import DEVICES, HAS_CUDA, dtypes_for, random_obbs

metrics = pytest.importorskip("ultralytics.utils.metrics")

F64 = torch.float64
# (value, gradient) tolerances against ultralytics, by dtype: float64 agrees to rounding;
# float32 to the spread of two float32 libms (cos/sin/log/exp) through the formula
TOL = {F64: (1e-12, 1e-9), torch.float32: (2e-5, 2e-3)}


def _upstream(b1, b2, ciou=False, eps=1e-7, floor=0.0):
    """ultralytics' probiou, aligned, squeezed to (N,)."""
    return metrics.probiou(b1, b2, CIoU=ciou, eps=eps, floor=floor).squeeze(-1)


def _value_and_grads(fn, b1, b2, seed=0):
    x1 = b1.detach().clone().requires_grad_()
    x2 = b2.detach().clone().requires_grad_()
    out = fn(x1, x2)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                    dtype=F64).to(out.dtype)
    out.backward(g)
    return out.detach(), x1.grad, x2.grad


def _close(got, want, tol, what):
    # relative to the magnitude: gradients of near-degenerate boxes are large
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True, msg=lambda m: f"{what}: {m}")


# ---- the edge cases of the issue, aligned pairs (N, 5) ---------------------------------------


def _case(gen, name, n=64):
    b1 = random_obbs(gen, n, dtype=F64, size=50.0, max_wh=30.0)
    b2 = random_obbs(gen, n, dtype=F64, size=50.0, max_wh=30.0)
    if name == "near":  # overlapping pairs: bd well inside (eps, 100)
        b2 = b1 + torch.randn(n, 5, generator=gen, dtype=F64) * torch.tensor([3, 3, 2, 2, 0.3],
                                                                              dtype=F64)
        b2[:, 2:4] = b2[:, 2:4].abs() + 0.5
    elif name == "squares":  # w = h: the angle is ambiguous, every angle the same Gaussian
        b1[:, 3] = b1[:, 2]
        b2 = b1.clone()
        b2[:, :2] += torch.randn(n, 2, generator=gen, dtype=F64) * 4
        b2[:, 4] = torch.linspace(-2 * math.pi, 2 * math.pi, n, dtype=F64)
    elif name == "thin":
        b1[:, 3] = b1[:, 2] * 1e-3
        b2[:, :2] = b1[:, :2] + torch.randn(n, 2, generator=gen, dtype=F64)
    elif name == "identical":
        b2 = b1.clone()
    elif name == "far":  # bd clamped at 100: value ~0, no gradient
        b2[:, 0] += 1e4
    elif name == "big_angles":  # beyond +-pi/2, up to +-5 pi
        b1[:, 4] = (torch.rand(n, generator=gen, dtype=F64) * 2 - 1) * 5 * math.pi
        b2 = b1.clone()
        b2[:, :2] += torch.randn(n, 2, generator=gen, dtype=F64) * 3
        b2[:, 4] += math.pi * torch.randint(-3, 4, (n,), generator=gen).to(F64)
    elif name.startswith("zero_side"):  # w or h = 0 (every other box, both sides)
        b1[::2, 2] = 0
        b1[1::2, 3] = 0
        b2[::3, 3] = 0
        b2[:, :2] = b1[:, :2] + torch.randn(n, 2, generator=gen, dtype=F64) * 5
        if name == "zero_side":
            # axis-aligned degenerate boxes: their determinant is exactly 0 (a rotated one's
            # is rounding noise, ~1e-17 of either sign, set by the libm's last bit of cos/sin)
            b1[:, 4] = 0
            b2[::3, 4] = 0
    return b1, b2


CASES = ["random", "near", "squares", "thin", "identical", "far", "big_angles", "zero_side",
         "zero_side_rotated"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("floor", [0.0, 0.01])
@pytest.mark.parametrize("ciou", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_matches_ultralytics(gen, case, floor, ciou, dtype):
    b1, b2 = _case(gen, case)
    b1, b2 = b1.to(dtype), b2.to(dtype)
    want = _value_and_grads(lambda x, y: _upstream(x, y, ciou, floor=floor), b1, b2)
    got = _value_and_grads(lambda x, y: tood_ext.probiou(x, y, aligned=True, floor=floor,
                                                         ciou=ciou), b1, b2)
    vtol, gtol = TOL[dtype]
    if case == "thin" and floor == 0 and dtype == torch.float32:
        vtol = 1e-3  # det ~ 1e-6 w^4: float32 rounding of upstream and ours, amplified
    if case == "zero_side_rotated" and floor == 0:
        # the determinant of a rotated zero-width box is rounding noise (~1e-17 in float64,
        # ~1e-8 relative in float32) and t3 takes its square root next to eps = 1e-7: float64
        # values agree to that noise (max 5.2e-5 absolute over 300 seeds; CI's seed drew
        # 1.2e-5), the gradients (and float32 values) are that noise, upstream's as well as ours
        if dtype == F64:
            _close(got[0], want[0], 1e-3, "value")
        return
    _close(got[0], want[0], vtol, "value")
    if case == "zero_side" and floor == 0:
        # zero determinants: upstream's gradients are huge or non-finite (sqrt'(0) = inf); ours
        # are non-finite exactly where upstream's are and agree where finite
        for g, w in zip(got[1:], want[1:]):
            assert torch.equal(g.isfinite(), w.isfinite())
            fin = w.isfinite()
            _close(g[fin], w[fin], 1e-4 if dtype == F64 else 5e-2, "grad")
        return
    if case == "thin" and floor == 0 and dtype == torch.float32:
        return  # float32 gradients of 1e-3 aspect boxes at floor 0: rounding-dominated
    for g, w in zip(got[1:], want[1:]):
        _close(g, w, gtol, "grad")
    if case == "far":  # clamped at 100: only the CIoU aspect term has a gradient
        assert (got[0] < 1e-6).all() and (ciou or not (got[1].any() or got[2].any()))
    if case == "identical" and not ciou and dtype == F64:
        assert torch.allclose(got[0], torch.full_like(got[0], 1 - math.sqrt(1 - math.exp(-1e-7) + 1e-7)))


@pytest.mark.parametrize("eps", [1e-9, 1e-3])
def test_eps_matches_ultralytics(gen, eps):
    b1, b2 = _case(gen, "near")
    want = _value_and_grads(lambda x, y: _upstream(x, y, True, eps=eps, floor=0.01), b1, b2)
    got = _value_and_grads(lambda x, y: tood_ext.probiou(x, y, True, eps, 0.01, True), b1, b2)
    for g, w in zip(got, want):
        _close(g, w, 1e-9, f"eps={eps}")


def test_reference_is_ultralytics_bit_for_bit(gen):
    for dtype in (F64, torch.float32):
        for case in CASES:
            b1, b2 = (t.to(dtype) for t in _case(gen, case))
            for ciou in (False, True):
                assert torch.equal(ref.probiou(b1, b2, aligned=True, floor=0.01, ciou=ciou),
                                   _upstream(b1, b2, ciou, floor=0.01)), (case, dtype, ciou)


# ---- kernel vs reference ------------------------------------------------------------------------

PAIRWISE_SHAPES = [((7,), (9,)), ((1,), (1,)), ((0,), (5,)), ((5,), (0,)), ((3, 40), (3, 70)),
                   ((2, 3, 17), (2, 3, 1)), ((0, 4), (0, 6)), ((130,), (65,))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shapes", PAIRWISE_SHAPES, ids=str)
@pytest.mark.parametrize("ciou", [False, True])
def test_pairwise_matches_reference(gen, device, shapes, ciou):
    for dtype in dtypes_for(device):
        b1 = random_obbs(gen, *shapes[0], dtype=dtype, device=device)
        b2 = random_obbs(gen, *shapes[1], dtype=dtype, device=device)
        if b1.numel() and b2.numel() and dtype == F64:
            # an identical pair (bd clamped at eps; in float32 bd is rounding noise near eps,
            # where d value / d bd ~ 1 / sqrt(bd) amplifies it: float64 only)
            b2[..., :1, :] = b1[..., :1, :]
        got = _value_and_grads(lambda x, y: tood_ext.probiou(x, y, floor=0.01, ciou=ciou), b1, b2)
        want = _value_and_grads(
            lambda x, y: ref.probiou(x.double(), y.double(), floor=0.01, ciou=ciou), b1, b2)
        assert got[0].shape == (*shapes[0], shapes[1][-1]) and got[0].dtype == dtype
        tol = 1e-10 if dtype == F64 else 2e-4
        for g, w in zip(got, want):
            _close(g.double(), w.double(), tol, f"{dtype}")


def test_pairwise_broadcasts_leading_dims(gen):
    b1 = random_obbs(gen, 3, 5, dtype=F64)
    b2 = random_obbs(gen, 1, 6, dtype=F64)
    out = tood_ext.probiou(b1[:, None], b2[None], ciou=True)  # (3, 1, 5) x (1, 1, 6)
    assert out.shape == (3, 1, 5, 6)
    torch.testing.assert_close(out, ref.probiou(b1[:, None], b2[None], ciou=True), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("ciou", [False, True])
def test_pairwise_equals_aligned(gen, ciou):
    """pairwise[..., i, j] is the aligned value of (b1[i], b2[j]): one pair math, same bits."""
    for dtype in (torch.float32, F64):
        b1 = random_obbs(gen, 2, 9, dtype=dtype)
        b2 = random_obbs(gen, 2, 11, dtype=dtype)
        pw = tood_ext.probiou(b1, b2, floor=0.01, ciou=ciou)
        al = tood_ext.probiou(b1[:, :, None].expand(2, 9, 11, 5), b2[:, None].expand(2, 9, 11, 5),
                              aligned=True, floor=0.01, ciou=ciou)
        assert torch.equal(pw, al)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_gradcheck(gen, aligned, floor):
    b1, b2 = _case(gen, "near", n=6)
    if not aligned:
        b2 = b2[:4]
    b1.requires_grad_()
    b2.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: tood_ext.probiou(x, y, aligned=aligned, floor=floor), (b1, b2))
    # the loss, its weight differentiable too
    w = torch.rand(6, generator=gen, dtype=F64, requires_grad=True)
    t = _case(gen, "near", n=6)[1].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, t, w: tood_ext.probiou_loss(p, t, w, reduction="none", floor=floor),
        (b1, t, w))


def test_opcheck(gen):
    b1, b2 = random_obbs(gen, 2, 4, dtype=F64), random_obbs(gen, 2, 6, dtype=F64)
    w = torch.rand(7, generator=gen, dtype=F64)
    p, t = random_obbs(gen, 7, dtype=F64), random_obbs(gen, 7, dtype=F64)
    # (the aligned form is the loss's element-wise kernel without weight; each opcheck ~10 s)
    cases = [(torch.ops.tood_ext.probiou, (b1.requires_grad_(), b2, False, 1e-7, 0.01, True)),
             (torch.ops.tood_ext.probiou_loss, (p.requires_grad_(), t, w.requires_grad_(), 1e-7,
                                                0.01, False))]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compiles_fullgraph(gen):
    b1, b2 = random_obbs(gen, 5), random_obbs(gen, 8)
    fn = torch.compile(lambda x, y: tood_ext.probiou(x, y, ciou=True).sum(), fullgraph=True,
                       backend="eager")
    torch.testing.assert_close(fn(b1, b2), tood_ext.probiou(b1, b2, ciou=True).sum())


def test_double_backward_raises(gen):
    b1 = random_obbs(gen, 3, dtype=F64).requires_grad_()
    b2 = random_obbs(gen, 4, dtype=F64)
    (g,) = torch.autograd.grad(tood_ext.probiou(b1, b2).sum(), b1, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_thread_count_does_not_change_bits(gen):
    b1, b2 = random_obbs(gen, 2, 150), random_obbs(gen, 2, 300)
    grad = torch.randn(2, 150, 300, generator=gen)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append((torch.ops.tood_ext.probiou(b1, b2, False, 1e-7, 0.01, True),
                         *torch.ops.tood_ext._probiou_backward(grad, b1, b2, False, 1e-7, 0.01,
                                                               True)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


# ---- non-finite, empty and bad inputs -----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_angle_gives_nan_and_leaves_others(gen, device):
    b1 = random_obbs(gen, 6, dtype=F64, device=device)
    b2 = random_obbs(gen, 6, dtype=F64, device=device)
    b1[1, 4] = float("inf")
    b1[2, 4] = float("nan")
    b2[3, 0] = float("nan")
    out = tood_ext.probiou(b1, b2, aligned=True)
    bad = torch.tensor([False, True, True, True, False, False], device=device)
    assert out[bad].isnan().all() and out[~bad].isfinite().all()
    torch.testing.assert_close(out, ref.probiou(b1, b2, aligned=True), equal_nan=True)
    pw = tood_ext.probiou(b1, b2)
    assert pw[1].isnan().all() and pw[:, 3].isnan().all() and pw[0, :3].isfinite().all()


def test_empty_inputs_and_gradients(gen):
    b = random_obbs(gen, 4, dtype=F64).requires_grad_()
    e = torch.zeros(0, 5, dtype=F64, requires_grad=True)
    out = tood_ext.probiou(b, e)
    assert out.shape == (4, 0)
    out.sum().backward()
    assert b.grad.shape == (4, 5) and not b.grad.any()
    assert tood_ext.probiou(torch.zeros(0, 3, 5), torch.zeros(0, 2, 5)).shape == (0, 3, 2)
    assert tood_ext.probiou(e, e, aligned=True).shape == (0,)
    loss = tood_ext.probiou_loss(e, e.detach())
    assert loss.item() == 0 and loss.requires_grad


def test_bad_inputs_raise_naming_the_argument(gen):
    b1, b2 = random_obbs(gen, 3), random_obbs(gen, 4)
    before = (b1.clone(), b2.clone())
    cases = [
        (lambda: tood_ext.probiou(b1[:, :4], b2), RuntimeError, "b1 must have shape \\(..., 5\\)"),
        (lambda: tood_ext.probiou(b1, b2[:, :4]), RuntimeError, "b2 must have shape \\(..., 5\\)"),
        (lambda: tood_ext.probiou(b1.long(), b2), RuntimeError, "b1 must be float32 or float64"),
        (lambda: tood_ext.probiou(b1, b2.double()), RuntimeError, "b2 has dtype"),
        (lambda: tood_ext.probiou(b1, b2.to("meta")), RuntimeError, "b2 is on meta"),
        (lambda: tood_ext.probiou(b1[None].expand(2, 3, 5), b2[None].expand(3, 4, 5)),
         RuntimeError, "leading \\(batch\\) dims of b1"),
        (lambda: tood_ext.probiou(b1, b2, aligned=True), RuntimeError,
         "aligned probiou needs b1 and b2 of the same shape"),
        (lambda: tood_ext.probiou(b1[0], b2[0]), RuntimeError, "pairwise probiou needs b1"),
        (lambda: tood_ext.probiou(b1.tolist(), b2), TypeError, "b1 must be a torch.Tensor"),
        (lambda: tood_ext.probiou(b1, b2, aligned=1), TypeError, "aligned must be a bool"),
        (lambda: tood_ext.probiou(b1, b2, ciou="yes"), TypeError, "ciou must be a bool"),
        (lambda: tood_ext.probiou(b1, b2, eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda: tood_ext.probiou(b1, b2, floor=float("nan")), ValueError, "floor must be a finite"),
        (lambda: tood_ext.probiou_loss(b1, b1[:2]), RuntimeError, "pred and target"),
        (lambda: tood_ext.probiou_loss(b1, b1, torch.ones(2)), RuntimeError, "weight must have"),
        (lambda: tood_ext.probiou_loss(b1, b1, reduction="avg"), ValueError, "reduction"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    # the reference raises the same
    with pytest.raises(RuntimeError, match="b1 must have shape"):
        ref.probiou(b1[:, :4], b2)
    assert torch.equal(b1, before[0]) and torch.equal(b2, before[1])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_cpu_and_cuda_agree(gen):
    for dtype in (torch.float32, F64):
        b1, b2 = random_obbs(gen, 2, 50, dtype=dtype), random_obbs(gen, 2, 70, dtype=dtype)
        got = _value_and_grads(lambda x, y: tood_ext.probiou(x.cuda(), y.cuda(), floor=0.01), b1,
                               b2)
        want = _value_and_grads(lambda x, y: tood_ext.probiou(x, y, floor=0.01), b1, b2)
        tol = 1e-10 if dtype == F64 else 1e-4
        for g, w in zip(got, want):
            _close(g.cpu(), w, tol, str(dtype))
    for dtype in (torch.float16, torch.bfloat16):
        b1, b2 = random_obbs(gen, 30, dtype=dtype, device="cuda"), random_obbs(gen, 30, dtype=dtype,
                                                                                device="cuda")
        out = tood_ext.probiou(b1, b2, floor=0.01)
        assert out.dtype == dtype
        _close(out.float(), ref.probiou(b1.float(), b2.float(), floor=0.01), 1e-2, str(dtype))


# ---- the fused loss against ultralytics' RotatedBboxLoss -------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_loss_matches_rotated_bbox_loss(gen, dtype):
    from ultralytics.utils.loss import RotatedBboxLoss

    B, A, C, reg_max = 2, 40, 3, 16
    crit = RotatedBboxLoss(reg_max)
    pred_bboxes = random_obbs(gen, B, A, dtype=dtype, size=60.0, max_wh=20.0)
    target_bboxes = (pred_bboxes + torch.randn(B, A, 5, generator=gen, dtype=F64).to(dtype)
                     * torch.tensor([2, 2, 1, 1, 0.2], dtype=dtype))
    target_bboxes[..., 2:4] = target_bboxes[..., 2:4].abs() + 0.1
    target_scores = torch.rand(B, A, C, generator=gen, dtype=F64).to(dtype)
    fg_mask = torch.rand(B, A, generator=gen) < 0.5
    target_scores_sum = target_scores.sum().clamp(min=1)
    anchor_points = torch.rand(A, 2, generator=gen, dtype=F64).to(dtype) * 60
    pred_dist = torch.randn(B, A, 4 * reg_max, generator=gen, dtype=F64).to(dtype)
    x = pred_bboxes.clone().requires_grad_()
    loss_iou, _ = crit(pred_dist, x, anchor_points, target_bboxes, target_scores,
                       target_scores_sum, fg_mask, torch.tensor([640, 640]), torch.ones(A, 1))
    loss_iou.backward()
    y = pred_bboxes.clone().requires_grad_()
    weight = target_scores[fg_mask].sum(-1)
    ours = tood_ext.probiou_loss(y[fg_mask], target_bboxes[fg_mask], weight,
                                 avg_factor=target_scores_sum, floor=RotatedBboxLoss.floor)
    ours.backward()
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(ours, loss_iou, rtol=tol, atol=tol)
    torch.testing.assert_close(y.grad, x.grad, rtol=tol * 100, atol=tol * 100)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_loss_matches_reference(gen, reduction):
    p, t = _case(gen, "near", n=50)
    w = torch.rand(50, generator=gen, dtype=F64)
    for weight in (None, w):
        for ciou in (False, True):
            got = _value_and_grads(lambda a, b: tood_ext.probiou_loss(
                a, b, weight, reduction=reduction, floor=0.01, ciou=ciou), p, t)
            want = _value_and_grads(lambda a, b: ref.probiou_loss(
                a, b, weight, reduction=reduction, floor=0.01, ciou=ciou), p, t)
            for g, x in zip(got, want):
                _close(g, x, 1e-11, reduction)
    # avg_factor, and a scalar upstream gradient read with stride 0
    got = tood_ext.probiou_loss(p, t, w, avg_factor=3.5)
    torch.testing.assert_close(got, ref.probiou_loss(p, t, w, avg_factor=3.5))


# ---- extra memory -----------------------------------------------------------------------------


def test_extra_memory_is_as_documented(gen):
    """Forward: the output and 32 bytes per box (float32: each box's prepared Gaussian);
    backward: the input gradients and the same per-box buffers, never an (N, M) partial."""
    n, m = 300, 2000
    b1, b2 = random_obbs(gen, n), random_obbs(gen, m)
    fwd = cpu_peak_extra_memory(lambda: torch.ops.tood_ext.probiou(b1, b2, False, 1e-7, 0.0,
                                                                   True))
    assert 4 * n * m <= fwd <= 4 * n * m + 32 * (n + m) + 4096, fwd
    grad = torch.ones(n, m)
    bwd = cpu_peak_extra_memory(lambda: torch.ops.tood_ext._probiou_backward(
        grad, b1, b2, False, 1e-7, 0.0, True))
    assert bwd <= 20 * (n + m) + 32 * (n + m) + 4096, bwd
    p, t = random_obbs(gen, 5000), random_obbs(gen, 5000)
    loss = cpu_peak_extra_memory(lambda: torch.ops.tood_ext.probiou_loss(p, t, None, 1e-7, 0.0,
                                                                         False))
    assert loss <= 4 * 5000 + 4096, loss


# ---- the CUDA kernels through the emulator ------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: the real CUDA kernels are tested")
@pytest.mark.parametrize("shape", [((7,), (45,)), ((2, 19), (2, 70)), ((3, 1), (3, 33)),
                                   ((0,), (5,)), ((4,), (0,))], ids=str)
@pytest.mark.parametrize("ciou", [False, True])
def test_emulated_cuda_pairwise(ops, gen, shape, ciou):
    (*lead1, n), (*lead2, m) = shape
    b1 = random_obbs(gen, *lead1, n, dtype=F64, size=40.0)
    b2 = random_obbs(gen, *lead2, m, dtype=F64, size=40.0)
    if n and m:
        b2[..., :3, :] = b1[..., :1, :]  # identical pairs (bd clamped at eps)
    args = (False, 1e-7, 0.01, ciou)
    got = ops.probiou(b1, b2, *args)
    torch.testing.assert_close(got, torch.ops.tood_ext.probiou(b1, b2, *args), rtol=1e-13,
                               atol=1e-13)
    grad = torch.randn(got.shape, generator=gen, dtype=F64)
    # rows kernel: a warp per row (m > 32: several columns per lane); cols kernel: (32, 16)
    # blocks (n > 16: several rows per thread row)
    for g, w in zip(ops._probiou_backward(grad, b1, b2, *args),
                    torch.ops.tood_ext._probiou_backward(grad, b1, b2, *args)):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: the real CUDA kernels are tested")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_emulated_cuda_aligned_and_loss(ops, gen, dtype):
    p = random_obbs(gen, 3, 300, dtype=dtype, size=40.0)
    t = random_obbs(gen, 3, 300, dtype=dtype, size=40.0)
    w = torch.rand(3, 300, generator=gen, dtype=dtype)
    p[0, 0, 4] = float("inf")  # a non-finite angle: NaN, as on the CPU
    grad = torch.randn(3, 300, generator=gen, dtype=dtype)
    for ciou in (False, True):
        args = (1e-7, 0.01, ciou)
        assert torch.equal(ops.probiou(p, t, True, *args).isnan(),
                           torch.ops.tood_ext.probiou(p, t, True, *args).isnan())
        # the same math on the same compiler: the same bits
        torch.testing.assert_close(ops.probiou(p, t, True, *args),
                                   torch.ops.tood_ext.probiou(p, t, True, *args), rtol=0, atol=0,
                                   equal_nan=True)
        for g, x in zip(ops._probiou_backward(grad, p, t, True, *args),
                        torch.ops.tood_ext._probiou_backward(grad, p, t, True, *args)):
            torch.testing.assert_close(g, x, rtol=0, atol=0, equal_nan=True)
        for weight in (None, w):
            torch.testing.assert_close(ops.probiou_loss(p, t, weight, *args),
                                       torch.ops.tood_ext.probiou_loss(p, t, weight, *args),
                                       rtol=0, atol=0, equal_nan=True)
            for g, x in zip(ops._probiou_loss_backward(grad, p, t, weight, *args),
                            torch.ops.tood_ext._probiou_loss_backward(grad, p, t, weight, *args)):
                torch.testing.assert_close(g, x, rtol=0, atol=0, equal_nan=True)


# ---- every implementation raises alike (wrapper, compiled op, reference, fake, meta) -----------


def _impls(op):
    from torch._subclasses.fake_tensor import FakeTensorMode

    schema = {a.name for a in getattr(torch.ops.tood_ext, op).default._schema.arguments}
    raw = getattr(torch.ops.tood_ext, op)

    def compiled(convert):
        def call(**kw):
            kw = {k: v for k, v in kw.items() if k in schema}
            return raw(**{k: convert(v) if isinstance(v, torch.Tensor) else v
                          for k, v in kw.items()})
        return call

    def fake(**kw):
        with FakeTensorMode() as mode:
            return compiled(mode.from_tensor)(**kw)

    return {"wrapper": getattr(tood_ext, op), "reference": getattr(ref, op),
            "raw": compiled(lambda t: t), "meta": compiled(lambda t: t.to("meta")),
            "fake": fake}


def _probiou_kw(gen):
    return dict(b1=random_obbs(gen, 2, 5), b2=random_obbs(gen, 2, 3))


def _loss_kw(gen):
    return dict(pred=random_obbs(gen, 6), target=random_obbs(gen, 6),
                weight=torch.rand(6, generator=gen))


ERROR_CASES = [  # (op, label, change, exception, the name in the message)
    ("probiou", "b1 4 columns", lambda a: {"b1": a["b1"][..., :4]}, RuntimeError, "b1"),
    ("probiou", "b2 4 columns", lambda a: {"b2": a["b2"][..., :4]}, RuntimeError, "b2"),
    ("probiou", "b1 int", lambda a: {"b1": a["b1"].int()}, RuntimeError, "b1"),
    ("probiou", "b2 float64", lambda a: {"b2": a["b2"].double()}, RuntimeError, "b2"),
    ("probiou", "batch", lambda a: {"b2": torch.cat([a["b2"], a["b2"][:1]])}, RuntimeError, "b2"),
    ("probiou", "aligned shapes", lambda a: {"aligned": True}, RuntimeError, "b2"),
    ("probiou", "eps", lambda a: {"eps": -1e-7}, ValueError, "eps"),
    ("probiou", "floor", lambda a: {"floor": float("inf")}, ValueError, "floor"),
    ("probiou_loss", "pred 6 columns", lambda a: {"pred": torch.cat([a["pred"], a["pred"][:, :1]], 1)},
     RuntimeError, "pred"),
    ("probiou_loss", "target rows", lambda a: {"target": a["target"][:5]}, RuntimeError, "target"),
    ("probiou_loss", "weight shape", lambda a: {"weight": a["weight"][:, None]}, RuntimeError,
     "weight"),
    ("probiou_loss", "weight bool", lambda a: {"weight": a["weight"] > 0.5}, RuntimeError,
     "weight"),
    ("probiou_loss", "floor", lambda a: {"floor": -1.0}, ValueError, "floor"),
]


@pytest.mark.parametrize("op, label, change, exc, name", ERROR_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ERROR_CASES])
@pytest.mark.parametrize("impl", ["wrapper", "raw", "reference", "fake", "meta"])
def test_every_implementation_raises_alike(gen, op, label, change, exc, name, impl):
    args = _probiou_kw(gen) if op == "probiou" else _loss_kw(gen)
    args.update(change(args))
    with pytest.raises(exc) as info:
        _impls(op)[impl](**args)
    assert name in str(info.value), str(info.value)


def test_reference_signatures_are_the_ops():
    import inspect

    for op in ("probiou", "probiou_loss"):
        assert inspect.signature(getattr(ref, op)) == inspect.signature(getattr(tood_ext, op))
