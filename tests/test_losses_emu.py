"""The CUDA kernels of csrc/cuda/losses_cuda.cu run on the CPU through the emulator of
csrc/tools/cuda_emu.h (see test_cuda_emu.py), against the CPU kernels and the reference: the
grid-stride loops, the per-block partial sums and their fixed-order final sum, with the launch's
own grid, with every grid cut to 2 blocks (each loop takes several turns) and with the 64-bit
index instantiations; every kind (focal included) with and without the per-class and the
per-anchor weight; and the shared host contract's errors on the emulated kernels."""
from __future__ import annotations

import pytest
import torch

import tood_ext
from tood_ext import reference as ref

from conftest import HAS_CUDA, assert_close
from loss_cases import KIND_IDS, KINDS, bad_cases, draw

pytestmark = pytest.mark.skipif(
    HAS_CUDA, reason="a GPU is present: the real CUDA kernels are tested (test_losses.py)")

F64 = torch.float64


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_emulated_kernels_match_cpu(gen, ops, kind, activated, dtype):
    x, lab, sc = draw(gen, (3, 700), 7, dtype, activated=activated)  # 14700 elements: 58 blocks
    x.view(-1)[5] = 100.0 if not activated else 1.0
    cw = torch.rand(7, generator=gen, dtype=F64).to(dtype)
    w = (torch.rand(3, 700, generator=gen, dtype=F64) * 2).to(dtype)
    w[1, :50] = 0.0
    alpha = 0.3 if kind == "focal" else 0.75
    for weight, row_weight in ((None, None), (cw, None), (None, w), (cw, w)):
        args = (x, lab, sc, kind, 1.5, alpha, activated, weight, row_weight)
        got = ops.sparse_target_cls_loss(*args)
        want = torch.ops.tood_ext.sparse_target_cls_loss(*args)
        assert got.dtype == want.dtype and got.shape == ()
        rtol = 1e-12 if dtype == F64 else 1e-5
        torch.testing.assert_close(got, want, rtol=rtol, atol=0)
        grad = torch.tensor(0.37, dtype=dtype)
        g = ops._sparse_target_cls_loss_backward(grad, *args)
        gc = torch.ops.tood_ext._sparse_target_cls_loss_backward(grad, *args)
        torch.testing.assert_close(g, gc, rtol=1e-12 if dtype == F64 else 1e-6, atol=0)
        # and the reference
        want_ref = ref.sparse_target_cls_loss(x.double(), lab, sc.double(), kind, gamma=1.5,
                                              alpha=alpha, activated=activated,
                                              class_weight=None if weight is None
                                              else weight.double(),
                                              weight=None if row_weight is None
                                              else row_weight.double())
        assert_close(got.double(), want_ref, dtype=dtype)


def test_emulated_forward_is_deterministic(gen, emu):
    x, lab, sc = draw(gen, (2, 3000), 11, torch.float32)
    w = torch.rand(2, 3000, generator=gen)
    for kind, weight in (("vfl", None), ("focal", w)):
        first = emu.sparse_target_cls_loss(x, lab, sc, kind, 2.0, None, False, None, weight)
        for _ in range(2):  # the emulator shuffles the block order on every launch
            assert torch.equal(
                emu.sparse_target_cls_loss(x, lab, sc, kind, 2.0, None, False, None, weight),
                first)


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
def test_emulated_class_major(gen, ops, kind, activated):
    """pred as a class-major (B, A, C) view of a contiguous (B, C, A) tensor: the emulated
    kernels read it in place and write grad_pred in its layout; loss and gradient equal the
    CPU kernels' on the same view (and on its contiguous copy)."""
    x, lab, sc = draw(gen, (3, 700), 7, torch.float32, activated=activated)
    xc = x.transpose(1, 2).contiguous().transpose(1, 2)
    cw = torch.rand(7, generator=gen) + 0.5
    w = torch.rand(3, 700, generator=gen)
    for class_weight, weight in ((None, None), (cw, w)):
        args = (lab, sc, kind, 1.5, None, activated, class_weight, weight)
        got = ops.sparse_target_cls_loss(xc, *args)
        torch.testing.assert_close(got, torch.ops.tood_ext.sparse_target_cls_loss(xc, *args),
                                   rtol=1e-5, atol=0)
        torch.testing.assert_close(got, torch.ops.tood_ext.sparse_target_cls_loss(x, *args),
                                   rtol=1e-5, atol=0)
        grad = torch.tensor(0.37)
        g = ops._sparse_target_cls_loss_backward(grad, xc, *args)
        assert g.stride() == xc.stride()
        torch.testing.assert_close(
            g, torch.ops.tood_ext._sparse_target_cls_loss_backward(grad, x, *args),
            rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(0, 9, 5), (4, 0, 5), (3, 4, 0)])
def test_emulated_empty(emu, shape):
    x = torch.zeros(shape)
    lab = torch.full(shape[:-1], -1, dtype=torch.long)
    sc = torch.zeros(shape[:-1])
    w = torch.ones(shape[:-1])
    for kind, weight in (("bce", None), ("focal", w)):
        assert float(emu.sparse_target_cls_loss(x, lab, sc, kind, 2.0, None, False, None,
                                                weight)) == 0.0
        g = emu._sparse_target_cls_loss_backward(torch.tensor(1.0), x, lab, sc, kind, 2.0, None,
                                                 False, None, weight)
        assert g.shape == x.shape


def test_emulated_contract_errors(gen, emu):
    """The tensor-level rows of the bad-input table raise the same on the emulated kernel (the
    Python-level rows never reach a kernel)."""
    cases, ok = bad_cases(gen)
    n = 0
    for what, over, exc, text in cases:
        if any(not isinstance(v, torch.Tensor) for k, v in over.items() if k not in ("kind",)):
            continue
        kw = {**ok, "kind": "bce", **over}
        if kw["pred"].dim() == 0 or any(isinstance(v, torch.Tensor) and v.device.type == "meta"
                                        for v in kw.values()):
            continue  # the emulator library has no meta kernels
        with pytest.raises(exc, match=text):
            emu.sparse_target_cls_loss(kw["pred"], kw["labels"], kw["scores"], kw["kind"], 2.0,
                                       0.75, False, kw.get("class_weight"), kw.get("weight"))
        if "weight" in over:  # the backward's contract too
            with pytest.raises(exc, match=text):
                emu._sparse_target_cls_loss_backward(
                    torch.tensor(1.0), kw["pred"], kw["labels"], kw["scores"], kw["kind"], 2.0,
                    0.75, False, None, kw["weight"])
        n += 1
    assert n >= 15
    x, lab, sc = ok["pred"], ok["labels"], ok["scores"]
    with pytest.raises(ValueError, match="kind"):
        emu.sparse_target_cls_loss(x, lab, sc, "fl", 2.0, 0.75, False, None, None)
    with pytest.raises(ValueError, match="gamma"):
        emu.sparse_target_cls_loss(x, lab, sc, "qfl", -2.0, 0.75, False, None, None)
    with pytest.raises(ValueError, match="alpha"):
        emu.sparse_target_cls_loss(x, lab, sc, "focal", 2.0, 1.5, False, None, None)
    with pytest.raises(ValueError, match="activated"):
        emu.sparse_target_cls_loss(x, lab, sc, "vfl", 2.0, None, True, None, None)
    with pytest.raises(RuntimeError, match="grad"):
        emu._sparse_target_cls_loss_backward(torch.ones(2), x, lab, sc, "bce", 2.0, 0.75, False,
                                             None, None)
    with pytest.raises(RuntimeError, match="grad"):
        emu._sparse_target_cls_loss_backward(torch.tensor(1.0, dtype=F64), x, lab, sc, "bce",
                                             2.0, 0.75, False, None, None)


# ---- dfl_loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_emulated_dfl_matches_cpu(gen, ops, dtype):
    rows, R = 3000, 16  # 12 blocks of 256 rows; the grid-cap-2 case loops
    pd = (torch.randn(rows, R, generator=gen, dtype=F64) * 2).to(dtype)
    t = (torch.rand(rows, generator=gen, dtype=F64) * 17 - 0.5).to(dtype)
    w = torch.rand(rows, generator=gen, dtype=F64).to(dtype)
    t[7] = float("nan")
    for weight in (None, w):
        got = ops.dfl_loss(pd, t, weight)
        want = torch.ops.tood_ext.dfl_loss(pd, t, weight)
        assert torch.isnan(got) and torch.isnan(want)
        keep = torch.ones(rows, dtype=torch.bool)
        keep[7] = False
        sub = (pd[keep], t[keep], None if weight is None else weight[keep])
        torch.testing.assert_close(ops.dfl_loss(*sub), torch.ops.tood_ext.dfl_loss(*sub),
                                   rtol=1e-12 if dtype == F64 else 1e-5, atol=0)
        grad = torch.tensor(1.7, dtype=dtype)
        g = ops._dfl_loss_backward(grad, pd, t, weight)
        gc = torch.ops.tood_ext._dfl_loss_backward(grad, pd, t, weight)
        torch.testing.assert_close(g, gc, rtol=1e-12 if dtype == F64 else 1e-6, atol=0,
                                   equal_nan=True)


def test_emulated_dfl_empty_and_errors(emu):
    pd = torch.zeros(0, 4, 16)
    t = torch.zeros(0, 4)
    assert float(emu.dfl_loss(pd, t, None)) == 0.0
    assert emu._dfl_loss_backward(torch.tensor(1.0), pd, t, None).shape == pd.shape
    pd, t = torch.zeros(5, 16), torch.zeros(5)
    with pytest.raises(RuntimeError, match="pred_dist"):
        emu.dfl_loss(pd[:, :1], t, None)
    with pytest.raises(RuntimeError, match="target"):
        emu.dfl_loss(pd, t[:3], None)
    with pytest.raises(RuntimeError, match="weight"):
        emu.dfl_loss(pd, t, t.double())
    with pytest.raises(RuntimeError, match="grad"):
        emu._dfl_loss_backward(torch.ones(2), pd, t, None)
