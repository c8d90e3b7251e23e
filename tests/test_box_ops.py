"""box_iou, iou_loss / giou_loss and alignment_metric: kernels vs the pure-PyTorch references."""
from __future__ import annotations

import math

import pytest
import torch

import tood_ext
from tood_ext import reference as ref
from tood_ext import _loader

from conftest import (DEVICES, HAS_CUDA, assert_close, dtypes_for, inject_nonfinite, metric_inputs,
                      random_boxes)

MODES = ["iou", "giou", "diou", "ciou"]


def _ref64(fn, *tensors, **kw):
    """The reference evaluated in float64 on the same (rounded) inputs."""
    return fn(*[t.double() if t is not None and t.is_floating_point() else t for t in tensors], **kw)


# ---------------------------------------------------------------------------------------------
# box_iou forward
# ---------------------------------------------------------------------------------------------

PAIRWISE_SHAPES = [((7,), (9,)), ((1,), (1,)), ((0,), (5,)), ((5,), (0,)), ((3, 40), (3, 33)),
                   ((2, 3, 17), (2, 3, 1)), ((0, 4), (0, 6)), ((130,), (70,))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shapes", PAIRWISE_SHAPES, ids=str)
def test_box_iou_pairwise_matches_reference(gen, device, mode, shapes):
    for dtype in dtypes_for(device):
        b1 = random_boxes(gen, *shapes[0], dtype=dtype, device=device)
        b2 = random_boxes(gen, *shapes[1], dtype=dtype, device=device)
        out = tood_ext.box_iou(b1, b2, mode)
        expected = _ref64(ref.box_iou, b1, b2, mode=mode)
        assert out.shape == (*shapes[0], shapes[1][-1]) and out.dtype == dtype
        assert_close(out, expected, msg=f"{mode} {dtype}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(11,), (0,), (4, 25), (2, 0, 3), (1,)], ids=str)
def test_box_iou_aligned_matches_reference(gen, device, mode, shape):
    for dtype in dtypes_for(device):
        b1 = random_boxes(gen, *shape, dtype=dtype, device=device)
        b2 = random_boxes(gen, *shape, dtype=dtype, device=device)
        out = tood_ext.box_iou(b1, b2, mode, aligned=True)
        assert out.shape == shape
        assert_close(out, _ref64(ref.box_iou, b1, b2, mode=mode, aligned=True), msg=mode)


def test_box_iou_pairwise_broadcasts_leading_dims(gen):
    b1 = random_boxes(gen, 3, 5)
    b2 = random_boxes(gen, 1, 6)
    out = tood_ext.box_iou(b1[:, None], b2[None], "giou")  # (3, 1, 5) x (1, 1, 6)
    assert out.shape == (3, 1, 5, 6)
    assert_close(out, _ref64(ref.box_iou, b1[:, None], b2[None], mode="giou"))


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_agrees_with_torchvision(gen, device):
    tv = pytest.importorskip("torchvision.ops")
    fns = {"iou": tv.box_iou, "giou": tv.generalized_box_iou, "diou": tv.distance_box_iou,
           "ciou": tv.complete_box_iou}
    for dtype in (torch.float32, torch.float64):
        b1 = random_boxes(gen, 60, dtype=dtype, device=device)
        b2 = random_boxes(gen, 45, dtype=dtype, device=device)
        b2[:10] = b1[:10]  # identical boxes too
        for mode, fn in fns.items():
            rtol, atol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-5, 2e-6)
            torch.testing.assert_close(tood_ext.box_iou(b1, b2, mode), fn(b1, b2), rtol=rtol,
                                       atol=atol, msg=lambda m: f"{mode} {dtype}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_hand_computed_values(device):
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device, dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 2.0]], device=device,
                     dtype=torch.float64)
    iou = tood_ext.box_iou(a, b, "iou")
    giou = tood_ext.box_iou(a, b, "giou")
    diou = tood_ext.box_iou(a, b, "diou")
    # intersection 1, union 7, enclosing 3x3=9; second box disjoint, enclosing 5x2=10, union 6
    expected_iou = torch.tensor([[1 / 7, 0.0]], dtype=torch.float64)
    expected_giou = torch.tensor([[1 / 7 - 2 / 9, -4 / 10]], dtype=torch.float64)
    # centres (1,1),(2,2): rho^2 = 2, c^2 = 18; (1,1),(4.5,1): rho^2 = 12.25, c^2 = 29
    expected_diou = torch.tensor([[1 / 7 - 2 / 18, -12.25 / 29]], dtype=torch.float64)
    torch.testing.assert_close(iou.cpu(), expected_iou, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(giou.cpu(), expected_giou, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(diou.cpu(), expected_diou, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# box_iou backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou"])
@pytest.mark.parametrize("aligned", [False, True])
def test_box_iou_gradcheck(gen, device, mode, aligned):
    # overlapping boxes of distinct coordinates: no ties, no clamp kinks
    b1 = random_boxes(gen, 2, 4, size=20, min_wh=5, max_wh=20, dtype=torch.float64,
                      device=device).requires_grad_()
    b2 = random_boxes(gen, 2, 4 if aligned else 3, size=20, min_wh=5, max_wh=20,
                      dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: tood_ext.box_iou(x, y, mode, aligned), (b1, b2))


def _without_coordinate_ties(b1: torch.Tensor, b2: torch.Tensor, gap: float = 1e-3):
    """b2 with each coordinate that (nearly) equals one of b1's on the same axis moved by 2 gap:
    at a tie (min / max of two equal coordinates) IoU is not differentiable; the reference's
    autograd averages the two sides' gradients, the kernel takes one side (seed 1157439318
    drew one such tie)."""
    b2 = b2.clone()
    for axis in (0, 1):
        a = b1[..., axis::2].reshape(b1.shape[0], -1)  # (B, 2N): x1, x2 (or y1, y2) of b1
        for c in (axis, axis + 2):
            col = b2[..., c]
            near = ((col[..., :, None] - a[..., None, :]).abs() < gap).any(-1)
            b2[..., c] = torch.where(near, col + 2 * gap, col)
    return b2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
def test_box_iou_grad_matches_reference(gen, device, mode, aligned):
    # CIoU's alpha is a constant in the gradient (torchvision's convention), which gradcheck's
    # finite differences cannot see: the reference's autograd (alpha detached) is the oracle.
    for dtype in dtypes_for(device):
        b1 = random_boxes(gen, 3, 31, dtype=dtype, device=device)
        b2 = random_boxes(gen, 3, 31 if aligned else 26, dtype=dtype, device=device)
        b2 = _without_coordinate_ties(b1, b2)
        x1, x2 = b1.clone().requires_grad_(), b2.clone().requires_grad_()
        out = tood_ext.box_iou(x1, x2, mode, aligned)
        upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
        g1, g2 = torch.autograd.grad(out, (x1, x2), upstream.to(dtype))
        r1, r2 = b1.double().requires_grad_(), b2.double().requires_grad_()
        e1, e2 = torch.autograd.grad(ref.box_iou(r1, r2, mode, aligned), (r1, r2), upstream)
        rtol, atol = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-3, 1e-4)}.get(
            dtype, (0.2, 0.2))
        torch.testing.assert_close(g1.double(), e1, rtol=rtol, atol=atol)
        torch.testing.assert_close(g2.double(), e2, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_backward_is_deterministic(gen, device):
    b1 = random_boxes(gen, 300, device=device).requires_grad_()
    b2 = random_boxes(gen, 257, device=device).requires_grad_()
    grads = []
    for _ in range(3):
        out = tood_ext.box_iou(b1, b2, "giou")
        grads.append(torch.autograd.grad(out.square().sum(), (b1, b2)))
    for g in grads[1:]:
        assert torch.equal(g[0], grads[0][0]) and torch.equal(g[1], grads[0][1])


def test_double_backward_raises(gen):
    b1 = random_boxes(gen, 4, dtype=torch.float64).requires_grad_()
    b2 = random_boxes(gen, 5, dtype=torch.float64).requires_grad_()
    (g1,) = torch.autograd.grad(tood_ext.box_iou(b1, b2, "giou").sum(), b1, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g1.sum().backward()


# ---------------------------------------------------------------------------------------------
# iou_loss / giou_loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "avg_factor"])
def test_iou_loss_matches_reference(gen, device, mode, reduction):
    for dtype in dtypes_for(device):
        for shape in [(37,), (4, 9), (0,)]:
            pred = random_boxes(gen, *shape, dtype=dtype, device=device)
            target = random_boxes(gen, *shape, dtype=dtype, device=device)
            weight = torch.rand(shape, generator=gen).to(dtype=dtype, device=device)
            kw = dict(mode=mode, reduction=reduction)
            if reduction == "avg_factor":
                kw.update(reduction="mean", avg_factor=3.5)
            for w in (None, weight):
                xs = [t.clone().requires_grad_() for t in (pred, target, weight)]
                out = tood_ext.iou_loss(xs[0], xs[1], xs[2] if w is not None else None, **kw)
                rs = [t.double().requires_grad_() for t in (pred, target, weight)]
                exp = ref.iou_loss(rs[0], rs[1], rs[2] if w is not None else None, **kw)
                assert out.shape == exp.shape
                assert_close(out, exp, dtype=dtype, msg=f"{mode} {reduction} {dtype}")
                if out.numel() == 0 or pred.numel() == 0:
                    continue
                up = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(device)
                n = 3 if w is not None else 2
                got = torch.autograd.grad(out, xs[:n], up.to(dtype))
                want = torch.autograd.grad(exp, rs[:n], up)
                tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 5e-2)
                for g, e in zip(got, want):
                    torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou"])
def test_iou_loss_gradcheck(gen, device, mode):
    pred = random_boxes(gen, 6, size=20, min_wh=5, max_wh=20, dtype=torch.float64,
                        device=device).requires_grad_()
    target = random_boxes(gen, 6, size=20, min_wh=5, max_wh=20, dtype=torch.float64,
                          device=device).requires_grad_()
    weight = torch.rand(6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    for reduction in ("none", "mean"):
        assert torch.autograd.gradcheck(
            lambda p, t, w: tood_ext.iou_loss(p, t, w, mode=mode, reduction=reduction),
            (pred, target, weight))


def test_giou_loss_is_iou_loss_giou(gen):
    pred, target = random_boxes(gen, 50), random_boxes(gen, 50)
    torch.testing.assert_close(tood_ext.giou_loss(pred, target),
                               tood_ext.iou_loss(pred, target, mode="giou"))
    tv = pytest.importorskip("torchvision.ops")
    torch.testing.assert_close(tood_ext.giou_loss(pred, target, reduction="sum"),
                               tv.generalized_box_iou_loss(pred, target, reduction="sum"),
                               rtol=1e-5, atol=1e-5)


def test_iou_loss_scalar_and_strided_upstream_grads(gen):
    """A broadcast scalar gradient (stride 0) and a non-contiguous one give the right grads."""
    pred = random_boxes(gen, 8, 5, dtype=torch.float64).requires_grad_()
    target = random_boxes(gen, 8, 5, dtype=torch.float64)
    loss = tood_ext.iou_loss(pred, target, reduction="none")
    up = torch.randn(5, 8, generator=gen, dtype=torch.float64).t()  # non-contiguous
    (g_strided,) = torch.autograd.grad(loss, pred, up, retain_graph=True)
    (g_expected,) = torch.autograd.grad(loss, pred, up.contiguous(), retain_graph=True)
    torch.testing.assert_close(g_strided, g_expected)
    (g_sum,) = torch.autograd.grad(tood_ext.iou_loss(pred, target, reduction="sum"), pred)
    (g_ones,) = torch.autograd.grad(loss, pred, torch.ones_like(loss))
    torch.testing.assert_close(g_sum, g_ones)


def test_iou_loss_mean_of_nothing_is_zero_with_grad():
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = tood_ext.giou_loss(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# degenerate, non-finite, non-contiguous inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_degenerate_boxes_give_zero_iou_and_finite_grads(gen, device, mode):
    good = random_boxes(gen, 6, dtype=torch.float64, device=device)
    bad = torch.tensor([[5.0, 5.0, 5.0, 5.0],      # a point
                        [3.0, 3.0, 9.0, 3.0],      # zero height
                        [9.0, 9.0, 2.0, 12.0],     # x2 < x1
                        [20.0, 30.0, 10.0, 10.0]],  # inverted
                       dtype=torch.float64, device=device)
    x = bad.clone().requires_grad_()
    y = good.clone().requires_grad_()
    out = tood_ext.box_iou(x, y, mode)
    assert torch.isfinite(out).all()
    iou = tood_ext.box_iou(bad, good, "iou")
    assert (iou == 0).all()
    assert_close(out, ref.box_iou(bad, good, mode))
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    loss = tood_ext.iou_loss(bad, bad, mode=mode, reduction="none")
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pair_gives_nan_and_leaves_others(gen, device, mode, bad_value):
    b1 = random_boxes(gen, 5, dtype=torch.float64, device=device)
    b2 = random_boxes(gen, 4, dtype=torch.float64, device=device)
    b1[2, 3] = bad_value
    out = tood_ext.box_iou(b1, b2, mode)
    assert torch.isnan(out[2]).all()
    keep = torch.tensor([0, 1, 3, 4], device=device)
    assert_close(out[keep], ref.box_iou(b1[keep], b2, mode))
    assert_close(out, ref.box_iou(b1, b2, mode))  # the reference has the same rule
    x = b1.clone().requires_grad_()
    (g,) = torch.autograd.grad(tood_ext.box_iou(x, b2, mode)[keep].sum(), x)
    assert torch.isfinite(g[keep]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(gen, device):
    big1 = random_boxes(gen, 20, 2, device=device)
    b1 = big1[:, 1]  # strided rows
    b2 = random_boxes(gen, 15, device=device).t().contiguous().t()  # column-major
    assert not b1.is_contiguous() and not b2.is_contiguous()
    for mode in MODES:
        assert_close(tood_ext.box_iou(b1, b2, mode), ref.box_iou(b1.double(), b2.double(), mode))


# ---------------------------------------------------------------------------------------------
# alignment_metric
# ---------------------------------------------------------------------------------------------

METRIC_SHAPES = [(2, 300, 5, 7), (1, 50, 3, 1), (3, 64, 80, 20), (2, 10, 4, 0), (0, 10, 4, 3),
                 (2, 0, 4, 3), (1, 5, 2, 13)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iou_mode", MODES)
@pytest.mark.parametrize("shape", METRIC_SHAPES, ids=str)
def test_alignment_metric_matches_reference(gen, device, iou_mode, shape):
    B, A, C, G = shape
    for dtype in dtypes_for(device):
        for alpha, beta in ((1.0, 6.0), (0.5, 6.0), (2.0, 2.5)):
            inputs = metric_inputs(gen, B, A, C, G, dtype=dtype, device=device)
            metric, overlaps, inside = tood_ext.alignment_metric(
                *inputs, alpha=alpha, beta=beta, iou_mode=iou_mode)
            e_metric, e_overlaps, e_inside = _ref64(ref.alignment_metric, *inputs, alpha=alpha,
                                                     beta=beta, iou_mode=iou_mode)
            assert metric.shape == overlaps.shape == inside.shape == (B, G, A)
            assert metric.dtype == dtype and inside.dtype == torch.bool
            assert_close(overlaps, e_overlaps, msg="overlaps")
            assert_close(metric, e_metric, msg=f"metric a={alpha} b={beta}")
            assert torch.equal(inside, e_inside)
            # padding GTs are zero rows
            pad = ~inputs[5]
            assert (metric[pad] == 0).all() and (~inside[pad]).all()


def test_alignment_metric_special_values(gen):
    scores, boxes, points, labels, gt_boxes, mask = metric_inputs(gen, 1, 40, 3, 4, pad_frac=0)
    scores[0, :10] = 0.0  # scores exactly 0 -> metric 0
    gt_boxes[0, 1] = torch.tensor([50.0, 50.0, 50.0, 80.0])  # zero-area GT -> overlaps 0
    metric, overlaps, inside = tood_ext.alignment_metric(scores, boxes, points, labels, gt_boxes,
                                                         mask)
    assert (metric[0, :, :10] == 0).all()
    assert (overlaps[0, 1] == 0).all() and (metric[0, 1] == 0).all() and not inside[0, 1].any()
    # the centre test uses a strict margin of inside_eps
    pts = torch.tensor([[10.0, 10.0], [10.005, 15.0], [10.02, 15.0]])
    gt = torch.tensor([[[10.0, 10.0, 20.0, 20.0]]])
    _, _, ins = tood_ext.alignment_metric(torch.rand(1, 3, 1), torch.rand(1, 3, 4), pts,
                                          torch.zeros(1, 1, dtype=torch.long), gt,
                                          torch.ones(1, 1, dtype=torch.bool))
    assert ins.tolist() == [[[False, False, True]]]


def test_alignment_metric_has_no_gradient(gen):
    inputs = list(metric_inputs(gen, 1, 20, 3, 2))
    inputs[0].requires_grad_()
    inputs[1].requires_grad_()
    metric, overlaps, inside = tood_ext.alignment_metric(*inputs)
    assert not metric.requires_grad and not overlaps.requires_grad


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_box_iou_errors(gen):
    b = random_boxes(gen, 5)
    with pytest.raises(RuntimeError, match=r"boxes1 must have shape \(\.\.\., 4\)"):
        tood_ext.box_iou(torch.rand(5, 3), b)
    with pytest.raises(RuntimeError, match="boxes2 must have shape"):
        tood_ext.box_iou(b, torch.rand(5, 5))
    with pytest.raises(RuntimeError, match="boxes2 has dtype Double but boxes1 has dtype Float"):
        tood_ext.box_iou(b, b.double())
    with pytest.raises(RuntimeError, match="boxes1 must be float32 or float64 on CPU"):
        tood_ext.box_iou(b.half(), b.half())
    with pytest.raises(RuntimeError, match="boxes1 must be float32 or float64"):
        tood_ext.box_iou(b.long(), b.long())
    with pytest.raises(RuntimeError, match="aligned box_iou needs boxes1 and boxes2 of the same"):
        tood_ext.box_iou(b, b[:3], aligned=True)
    with pytest.raises(RuntimeError, match="pairwise box_iou needs boxes1"):
        tood_ext.box_iou(b[0], b)
    with pytest.raises(ValueError, match="mode must be one of"):
        tood_ext.box_iou(b, b, mode="eiou")
    with pytest.raises(ValueError, match="mode must be one of"):  # the op itself checks too
        torch.ops.tood_ext.box_iou(b, b, "eiou")
    with pytest.raises(RuntimeError, match="shape mismatch|broadcast"):
        tood_ext.box_iou(random_boxes(gen, 2, 3), random_boxes(gen, 3, 3))


def test_iou_loss_errors(gen):
    p = random_boxes(gen, 5)
    with pytest.raises(RuntimeError, match="pred and target must have the same shape"):
        tood_ext.giou_loss(p, p[:4])
    with pytest.raises(RuntimeError, match="weight must have the shape of pred without its last"):
        tood_ext.giou_loss(p, p, weight=torch.ones(4))
    with pytest.raises(RuntimeError, match="weight has dtype Double"):
        tood_ext.giou_loss(p, p, weight=torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction must be one of"):
        tood_ext.giou_loss(p, p, reduction="avg")


def test_alignment_metric_errors(gen):
    args = list(metric_inputs(gen, 2, 30, 4, 3, pad_frac=0))

    def call(i, value, pattern, exc=RuntimeError):
        bad = list(args)
        bad[i] = value
        with pytest.raises(exc, match=pattern):
            tood_ext.alignment_metric(*bad)

    call(0, args[0][0], r"pred_scores must have shape \(B, A, C\)")
    call(1, args[1][:, :20], r"pred_boxes must have shape \(B, A, 4\)")
    call(2, args[2][:, :1], r"anchor_points must have shape \(A, 2\)")
    call(3, args[3].int(), "gt_labels must be int64")
    call(3, args[3][:1], r"gt_labels must have shape \(B, G\)")
    call(4, args[4][..., :3], r"gt_boxes must have shape \(B, G, 4\)")
    call(5, args[5].float(), "gt_mask must be bool")
    call(5, args[5][:, :2], r"gt_mask must have shape \(B, G\)")
    call(4, args[4].double(), "gt_boxes has dtype Double but pred_scores has dtype Float")
    labels = args[3].clone()
    labels[1, 2] = 4
    call(3, labels, r"gt_labels holds class 4 for a valid GT .* outside \[0, 4\)", IndexError)
    labels[1, 2] = -1
    call(3, labels, "gt_labels holds class -1", IndexError)
    with pytest.raises(ValueError, match="iou_mode must be one of"):
        tood_ext.alignment_metric(*args, iou_mode="eiou")


def test_cuda_tensor_on_a_build_without_cuda_is_a_clear_error(monkeypatch):
    class FakeCudaTensor:
        is_cuda = True

    monkeypatch.setattr(_loader, "CUDA_BUILT", False)
    with pytest.raises(RuntimeError, match="boxes2 is a CUDA tensor but this build of tood_ext "
                                           "has no CUDA kernels"):
        _loader.check_inputs("box_iou", boxes1=torch.zeros(1, 4), boxes2=FakeCudaTensor())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_mixed_devices_error(gen):
    b = random_boxes(gen, 5)
    with pytest.raises(RuntimeError, match="boxes2 is on cpu but boxes1 is on cuda"):
        tood_ext.box_iou(b.cuda(), b)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("mode", MODES)
def test_cpu_and_cuda_agree(gen, mode):
    b1, b2 = random_boxes(gen, 3, 200, dtype=torch.float64), random_boxes(gen, 3, 150,
                                                                           dtype=torch.float64)
    torch.testing.assert_close(tood_ext.box_iou(b1.cuda(), b2.cuda(), mode).cpu(),
                               tood_ext.box_iou(b1, b2, mode), rtol=1e-12, atol=1e-12)
    inputs = metric_inputs(gen, 2, 500, 10, 8, dtype=torch.float64)
    cpu = tood_ext.alignment_metric(*inputs, iou_mode=mode)
    gpu = tood_ext.alignment_metric(*[t.cuda() for t in inputs], iou_mode=mode)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# non-finite coordinates in the centre-inside test (issue 23)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("where", ["x1", "y1", "x2", "y2", "px", "py"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_centre_inside_with_a_non_finite_coordinate(device, where, value):
    """One GT [0, 0, 10, 10], one anchor at (5, 5): a NaN anywhere (GT or point) is "not
    inside", as the reference's (and mmdetection's / ultralytics') amin-then-compare gives;
    +-inf is ordinary arithmetic there (inside unless the inf closes the box)."""
    dt = torch.float64
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], dtype=dt, device=device)
    pt = torch.tensor([[5.0, 5.0]], dtype=dt, device=device)
    if where.startswith("p"):
        pt[0, "xy".index(where[1])] = value
    else:
        gt[0, 0, ("x1", "y1", "x2", "y2").index(where)] = value
    args = (torch.full((1, 1, 1), 0.5, dtype=dt, device=device),
            torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], dtype=dt, device=device), pt,
            torch.zeros(1, 1, dtype=torch.long, device=device), gt,
            torch.ones(1, 1, dtype=torch.bool, device=device))
    got = tood_ext.alignment_metric(*args)[2]
    want = ref.alignment_metric(*args)[2]
    px, py = pt[0].tolist()
    x1, y1, x2, y2 = gt[0, 0].tolist()
    margin = min(px - x1, py - y1, x2 - px, y2 - py)  # Python's min: by hand, NaN-aware below
    expected = not any(map(math.isnan, (px, py, x1, y1, x2, y2))) and margin > 0.01
    assert bool(want[0, 0, 0]) == expected
    assert bool(got[0, 0, 0]) == expected, (where, value)


@pytest.mark.parametrize("device", DEVICES)
def test_alignment_metric_nan_gts_and_anchors_match_reference(gen, device):
    """Random inputs with NaN / +-inf in GT boxes and anchor points: the kernel's inside test
    equals the reference's exactly, t and u NaN-aware; no NaN GT or NaN anchor is inside."""
    for dtype in dtypes_for(device)[:2]:
        inputs, hit = inject_nonfinite(
            gen, metric_inputs(gen, 2, 300, 4, 12, dtype=dtype, device=device),
            values=(float("nan"), float("inf"), float("nan"), float("-inf")))
        got = tood_ext.alignment_metric(*inputs)
        want = ref.alignment_metric(*inputs)
        assert torch.equal(got[2], want[2])
        for g, w in zip(got[:2], want[:2]):
            assert_close(g, w.to(g.dtype), dtype=dtype)
        gb, ap = inputs[4], inputs[2]
        nan_gt = torch.isnan(gb).any(-1)  # (B, G)
        nan_pt = torch.isnan(ap).any(-1)  # (A,)
        assert not bool(got[2][nan_gt].any()), "a GT with a NaN coordinate contains an anchor"
        assert not bool(got[2][:, :, nan_pt].any()), "an anchor with a NaN coordinate is inside"
        assert bool(nan_gt.any()) and bool(got[2].any())
