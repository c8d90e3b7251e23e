"""tood_ext.dfl_loss (csrc/losses): against its reference and ultralytics' DFLoss (values and
gradients), edge inputs, opcheck, gradcheck, thread-count determinism, bad input, memory."""
from __future__ import annotations

import pytest
import torch

import tood_ext
from tood_ext import reference as ref
from tood_ext.testing.memory import peak_extra_memory

from conftest import DEVICES, assert_close, dtypes_for
from loss_cases import loss_grad_per_thread_count

F64 = torch.float64


def draw(gen, shape, R=16, dtype=F64, device="cpu"):
    pd = torch.randn(*shape, R, generator=gen, dtype=F64) * 2
    t = torch.rand(*shape, generator=gen, dtype=F64) * (R + 1) - 0.5  # some outside [0, R-1)
    w = torch.rand(*shape, generator=gen, dtype=F64)
    cast = dict(dtype=dtype, device=device)
    return pd.to(**cast), t.to(**cast), w.to(**cast)


def loss_and_grad(fn, pd, t, w, **kw):
    pd = pd.detach().clone().requires_grad_()
    loss = fn(pd, t, w, **kw)
    (g,) = torch.autograd.grad(loss, pd)
    return loss.detach(), g


@pytest.mark.parametrize("shape", [(40,), (7, 4), (2, 3, 4)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("bins", ["random", 16])  # 16: the CPU loops' compile-time path
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(gen, shape, weighted, bins, device):
    for dtype in dtypes_for(device):
        R = int(torch.randint(2, 20, (1,), generator=gen)) if bins == "random" else bins
        pd, t, w = draw(gen, shape, R, dtype, device)
        w = w if weighted else None
        got, g = loss_and_grad(tood_ext.dfl_loss, pd, t, w)
        want, gw = loss_and_grad(ref.dfl_loss, pd.double(), t.double(),
                                 None if w is None else w.double())
        assert g.dtype == dtype and g.shape == pd.shape
        assert_close(got, want, dtype=dtype)
        assert_close(g, gw, msg=str(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_matches_ultralytics(gen, dtype):
    from ultralytics.utils.loss import DFLoss

    n, R = 60, 16
    pd, t, w = draw(gen, (n, 4), R, dtype)
    pu = pd.clone().requires_grad_()
    # v8DetectionLoss: dfl_loss(pred_dist[fg].view(-1, reg_max), target_ltrb[fg]) * weight
    want = (DFLoss(R)(pu.view(-1, R), t.clone()) * w[:, :1]).sum()
    (gw,) = torch.autograd.grad(want, pu)
    got, g = loss_and_grad(tood_ext.dfl_loss, pd, t, (w[:, :1] / 4).expand(n, 4))
    assert_close(got, want.detach())
    assert_close(g, gw)


def test_edges(gen):
    R = 8
    pd, t, w = draw(gen, (30,), R)
    t[:5] = 0.0
    t[5:10] = R - 1 - 0.01
    t[10:15] = 1e6  # clamped
    t[15:20] = -3.0  # clamped
    pd[20] = torch.tensor([100.0, -100.0] * (R // 2), dtype=F64)  # extreme logits
    got, g = loss_and_grad(tood_ext.dfl_loss, pd, t, w)
    want, gw = loss_and_grad(ref.dfl_loss, pd, t, w)
    assert torch.isfinite(got) and torch.isfinite(g).all()
    assert_close(got, want)
    assert_close(g, gw)
    # NaN in one logit or one target: NaN loss, NaN gradient in that row only
    for where in ("logit", "target"):
        p2, t2 = pd.clone(), t.clone()
        if where == "logit":
            p2[3, 2] = float("nan")
        else:
            t2[3] = float("nan")
        loss, g2 = loss_and_grad(tood_ext.dfl_loss, p2, t2, w)
        assert torch.isnan(loss)
        rows = torch.isnan(g2).any(-1)
        assert rows[3] and int(rows.sum()) == 1, where
        _, gw2 = loss_and_grad(ref.dfl_loss, p2, t2, w)
        assert torch.isnan(g2[3]).all(), where
        assert_close(g2[~rows], gw2[~rows])
    # the target is never modified (ultralytics clamps it in place)
    t0 = t.clone()
    tood_ext.dfl_loss(pd, t, w)
    assert torch.equal(t, t0)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0,)])
def test_empty(shape):
    pd = torch.zeros(*shape, 16, requires_grad=True)
    t = torch.zeros(shape)
    loss = tood_ext.dfl_loss(pd, t)
    assert loss.shape == () and float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, pd)
    assert g.shape == pd.shape
    assert float(tood_ext.dfl_loss(pd, t, reduction="mean").detach()) == 0.0


def test_reductions(gen):
    pd, t, w = draw(gen, (9, 4))
    total = tood_ext.dfl_loss(pd, t, w)
    torch.testing.assert_close(tood_ext.dfl_loss(pd, t, w, reduction="mean"), total / 36)
    torch.testing.assert_close(tood_ext.dfl_loss(pd, t, w, reduction="mean", avg_factor=2.5),
                               total / 2.5)


def test_opcheck_and_gradcheck(gen):
    ops = torch.ops.tood_ext
    pd, t, w = draw(gen, (3, 4), 6)
    torch.library.opcheck(ops.dfl_loss.default, (pd.clone().requires_grad_(), t, w))
    torch.library.opcheck(ops.dfl_loss.default, (pd.float(), t.float(), None))
    torch.library.opcheck(ops._dfl_loss_backward.default, (torch.tensor(0.7, dtype=F64), pd, t, w))
    t = t.clamp(0.1, 4.8)  # away from the bins' edges: the loss is smooth in pred only anyway
    pd.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: tood_ext.dfl_loss(p, t, w, reduction="mean"), (pd,))


def test_thread_count_does_not_change_bits(gen):
    pd, t, w = draw(gen, (5000, 4), 16, torch.float32)
    out = loss_grad_per_thread_count(tood_ext.dfl_loss, pd, t, w)
    for loss, g in out[1:]:
        assert torch.equal(loss, out[0][0]) and torch.equal(g, out[0][1])


@pytest.mark.parametrize("impl", ["op", "reference"])
def test_bad_input(gen, impl):
    fn = tood_ext.dfl_loss if impl == "op" else ref.dfl_loss
    pd, t, w = draw(gen, (5, 4), 16, torch.float32)
    cases = [
        (dict(pred_dist=[1.0]), TypeError, "pred_dist"),
        (dict(target=None), TypeError, "target"),
        (dict(reduction="none"), ValueError, "reduction"),
        (dict(avg_factor="2"), TypeError, "avg_factor"),
        (dict(pred_dist=pd[..., :1]), RuntimeError, "pred_dist"),
        (dict(pred_dist=pd.long()), RuntimeError, "pred_dist"),
        (dict(target=t[:, :3]), RuntimeError, "target"),
        (dict(target=t.double()), RuntimeError, "target"),
        (dict(weight=w[:3]), RuntimeError, "weight"),
        (dict(weight=w.double()), RuntimeError, "weight"),
        (dict(weight=w.to("meta")), RuntimeError, "weight"),
        (dict(pred_dist=pd.half(), target=t.half()), RuntimeError, "pred_dist"),
    ]
    for over, exc, text in cases:
        kw = {**dict(pred_dist=pd, target=t, weight=w), **over}
        args = (kw.pop("pred_dist"), kw.pop("target"), kw.pop("weight"))
        with pytest.raises(exc, match=text):
            fn(*args, **kw)
    # the backward op's gradient checks: tests/test_contracts.py's table


@pytest.mark.parametrize("device", DEVICES)
def test_memory_is_the_gradient(gen, device):
    pd, t, w = draw(gen, (20000, 4), 16, torch.float32, device)
    pd.requires_grad_()

    def fused():
        return torch.autograd.grad(tood_ext.dfl_loss(pd, t, w), pd)

    def dense():
        return torch.autograd.grad(ref.dfl_loss(pd, t, w), pd)

    grad_bytes = pd.numel() * 4
    peak = peak_extra_memory(fused, device)
    assert grad_bytes <= peak <= grad_bytes + 64 * 1024, peak
    assert peak_extra_memory(dense, device) > 1.5 * peak
