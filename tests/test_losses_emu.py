"""The CUDA kernels of csrc/cuda/losses_cuda.cu run on the CPU through the emulator of
csrc/tools/cuda_emu.h (see test_cuda_emu.py), against the CPU kernels and the reference: the
grid-stride loops, the per-block partial sums and their fixed-order final sum, with the launch's
own grid, with every grid cut to 2 blocks (each loop takes several turns) and with the 64-bit
index instantiations; every kind (focal included) with and without the per-class and the
per-anchor weight; and the contract's value errors on the emulated kernels (its shape, dtype and
device errors: tests/test_contracts.py)."""
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


def test_emulated_value_errors(gen, emu):
    """The value rows of the bad-input table (labels outside [-1, C), foreground scores
    outside [0, 1], focal's alpha > 1) raise the same on the emulated kernel. Shapes, dtypes,
    devices, the scalar modes and the backward's gradient: tests/test_contracts.py's table, on
    the CPU and the emulated kernels."""
    cases, ok = bad_cases(gen)
    n = 0
    for what, over, exc, text in cases:
        if exc not in (IndexError, ValueError) or \
                any(not isinstance(v, torch.Tensor) for k, v in over.items() if k != "kind"):
            continue  # Python-level rows never reach a kernel
        kw = {**ok, "kind": "bce", **over}
        with pytest.raises(exc, match=text):
            emu.sparse_target_cls_loss(kw["pred"], kw["labels"], kw["scores"], kw["kind"], 2.0,
                                       0.75, False, kw.get("class_weight"), kw.get("weight"))
        n += 1
    assert n >= 4
    x, lab, sc = ok["pred"], ok["labels"], ok["scores"]
    with pytest.raises(ValueError, match="alpha"):
        emu.sparse_target_cls_loss(x, lab, sc, "focal", 2.0, 1.5, False, None, None)


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
    # one bin (the other tensor errors: tests/test_contracts.py's table)
    with pytest.raises(RuntimeError, match="pred_dist"):
        emu.dfl_loss(torch.zeros(5, 1), torch.zeros(5), None)
