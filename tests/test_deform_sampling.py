"""deform_sampling: kernels vs the grid_sample reference, torchvision's deform_conv2d, gradients,
registration, layouts, errors and determinism."""
from __future__ import annotations

import pytest
import torch

import tood_ext
from tood_ext import reference as ref

from conftest import DEVICES, HAS_CUDA, assert_close, dtypes_for

# (B, C, H, W, G)
SHAPES = [
    (2, 6, 5, 7, 3),     # G in between
    (1, 4, 1, 9, 2),     # H = 1
    (2, 8, 9, 1, 1),     # W = 1, G = 1
    (3, 5, 6, 4, 5),     # G = C
    (1, 1, 1, 1, 1),
    (2, 12, 11, 13, 4),
    (0, 4, 5, 5, 2),     # B = 0
    # groups of >= 4 channels: the CPU kernels' pixel-major path (chunks of 8 channels)
    (2, 16, 7, 9, 1),    # two full chunks
    (1, 20, 6, 11, 2),   # a full chunk and a partial one (Cg = 10)
    (2, 8, 1, 5, 1),     # H = 1: every pixel an edge pixel
]


def make_inputs(gen, B, C, H, W, G, dtype=torch.float64, device="cpu", mask=False,
                offsets="wide"):
    """input ~ N(0, 1); offsets:
    "wide": uniform in [-H, H] x [-W, W] (many samples outside the map);
    "frac": integer part in [-H, H] x [-W, W], fractional part in [0.1, 0.9] (away from the
            kinks of bilinear interpolation at integer positions, for gradient checks);
    "int":  integers in [-H, H] x [-W, W] (bilinear weights exactly 0 and 1)."""
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    scale = torch.tensor([H, W], dtype=torch.float64).repeat(G).view(1, 2 * G, 1, 1)
    u = torch.rand(B, 2 * G, H, W, generator=gen, dtype=torch.float64) * 2 - 1
    if offsets == "wide":
        off = u * scale
    else:
        off = torch.round(u * scale)
        if offsets == "frac":
            off = off + 0.1 + 0.8 * torch.rand(off.shape, generator=gen, dtype=torch.float64)
    m = torch.rand(B, G, H, W, generator=gen, dtype=torch.float64) if mask else None
    cast = dict(dtype=dtype, device=device)
    return x.to(**cast), off.to(**cast), (m.to(**cast) if m is not None else None)


def _ref64(x, off, m=None):
    """The reference evaluated in float64 on the same (rounded) inputs."""
    return ref.deform_sampling(x.double(), off.double(), m.double() if m is not None else None)


def _outside(off):
    """(B, G, H, W): the sample position is outside the map."""
    B, G2, H, W = off.shape
    y = torch.arange(H, device=off.device).view(H, 1) + off[:, 0::2].double()
    x = torch.arange(W, device=off.device).view(1, W) + off[:, 1::2].double()
    return (y <= -1) | (y >= H) | (x <= -1) | (x >= W)


def _shifted(x, off):
    """Exact result for integer offsets: a gather with zeros outside (G from offset)."""
    B, C, H, W = x.shape
    G = off.shape[1] // 2
    out = torch.zeros_like(x)
    for b in range(B):
        for c in range(C):
            g = c // (C // G)
            for i in range(H):
                for j in range(W):
                    y = i + int(off[b, 2 * g, i, j])
                    xx = j + int(off[b, 2 * g + 1, i, j])
                    if 0 <= y < H and 0 <= xx < W:
                        out[b, c, i, j] = x[b, c, y, xx]
    return out


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_reference(gen, device, shape, with_mask):
    for dtype in dtypes_for(device):
        x, off, m = make_inputs(gen, *shape, dtype=dtype, device=device, mask=with_mask)
        out = tood_ext.deform_sampling(x, off, m)
        assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
        assert_close(out, _ref64(x, off, m), msg=f"{shape} {dtype}")
        if off.numel() >= 40:
            assert _outside(off).any(), "offsets should push some samples outside the map"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 6, 5, 7, 3), (1, 4, 1, 9, 4), (2, 3, 6, 1, 1)], ids=str)
def test_integer_offsets_are_exact_shifts(gen, device, shape):
    for dtype in dtypes_for(device):
        x, off, _ = make_inputs(gen, *shape, dtype=dtype, device=device, offsets="int")
        out = tood_ext.deform_sampling(x, off)
        assert torch.equal(out.cpu(), _shifted(x.cpu(), off.cpu()))
        assert_close(out, _ref64(x, off))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_offsets_are_the_identity(gen, device):
    for dtype in dtypes_for(device):
        for B, C, H, W, G in [(2, 6, 5, 7, 3), (1, 2, 1, 1, 1), (1, 4, 8, 3, 4)]:
            x, off, _ = make_inputs(gen, B, C, H, W, G, dtype=dtype, device=device)
            out = tood_ext.deform_sampling(x, torch.zeros_like(off))
            assert torch.equal(out, x)
            ones = torch.ones(B, G, H, W, dtype=dtype, device=device)
            assert torch.equal(tood_ext.deform_sampling(x, torch.zeros_like(off), ones), x)


@pytest.mark.parametrize("device", DEVICES)
def test_hand_computed_values(device):
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, device=device)
    off = torch.zeros(1, 2, 2, 2, dtype=torch.float64, device=device)
    off[0, :, 0, 0] = torch.tensor([0.5, 0.5])    # centre of the map: mean of the four
    off[0, :, 0, 1] = torch.tensor([0.25, -1.0])  # (0.25, 0): 0.75 * 1 + 0.25 * 3
    off[0, :, 1, 0] = torch.tensor([0.5, -0.5])   # (1.5, -0.5): half of row 1 half in the map
    off[0, :, 1, 1] = torch.tensor([-2.0, 0.0])   # (-1, 1): on the border, 0
    out = tood_ext.deform_sampling(x, off)
    expected = torch.tensor([[[[2.5, 1.5], [0.25 * 3.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-15)
    mask = torch.tensor([[[[2.0, 0.5], [1.0, 3.0]]]], dtype=torch.float64, device=device)
    torch.testing.assert_close(tood_ext.deform_sampling(x, off, mask).cpu(),
                               expected * mask.cpu(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_offsets(gen, device):
    x, off, _ = make_inputs(gen, 1, 2, 4, 5, 1, device=device)
    off[0, 0, 1, 2] = float("nan")
    off[0, 1, 2, 3] = float("inf")
    off[0, 0, 3, 0] = -float("inf")
    xg, og = x.clone().requires_grad_(), off.clone().requires_grad_()
    out = tood_ext.deform_sampling(xg, og)
    assert torch.isnan(out[0, :, 1, 2]).all()
    assert (out[0, :, 2, 3] == 0).all() and (out[0, :, 3, 0] == 0).all()
    keep = torch.isfinite(off).all(1, keepdim=True).expand_as(x)
    assert torch.isfinite(out[keep]).all()
    gx, go = torch.autograd.grad(out, (xg, og), torch.ones_like(out))
    assert torch.isfinite(gx).all(), "a NaN sample scatters nothing into the input gradient"
    assert torch.isnan(go[0, :, 1, 2]).all()
    assert (go[0, :, 2, 3] == 0).all() and (go[0, :, 3, 0] == 0).all()


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 6, 5, 7, 3), (1, 4, 1, 9, 2), (2, 8, 9, 1, 1),
                                   (3, 5, 6, 4, 5), (2, 16, 12, 10, 1)], ids=str)
@pytest.mark.parametrize("with_mask", [False, True])
def test_grad_matches_reference(gen, device, shape, with_mask):
    for dtype in (torch.float64, torch.float32):
        x, off, m = make_inputs(gen, *shape, dtype=dtype, device=device, mask=with_mask,
                                offsets="frac")
        xs = [t.clone().requires_grad_() for t in (x, off, m) if t is not None]
        out = tood_ext.deform_sampling(*xs, *([None] if m is None else []))
        up = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
        got = torch.autograd.grad(out, xs, up.to(dtype))
        rs = [t.double().requires_grad_() for t in (x, off, m) if t is not None]
        want = torch.autograd.grad(ref.deform_sampling(*rs, *([None] if m is None else [])), rs,
                                   up)
        tol = 1e-10 if dtype == torch.float64 else 2e-4
        for name, g, e in zip(("input", "offset", "mask"), got, want):
            assert g.dtype == dtype and g.shape == e.shape
            torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol,
                                       msg=lambda s: f"grad of {name} {dtype}: {s}")


@pytest.mark.parametrize("with_mask", [False, True])
def test_large_planes_local_offsets(gen, with_mask):
    # 131 x 129 = 16899 pixels: more than one CPU tile per plane (kTile = 16384), and offsets
    # of a few pixels (the dense sweeps and the interleaved grad_input scatter on nearly every
    # pixel, with neighbouring samples adding into shared corners); B * G = 2 blocks run the
    # two-pass backward with 2 threads, 1 thread the fused one: same values, same bits.
    B, C, H, W, G = 1, 4, 131, 129, 2
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    off = torch.randn(B, 2 * G, H, W, generator=gen, dtype=torch.float64) * 2
    m = torch.rand(B, G, H, W, generator=gen, dtype=torch.float64) if with_mask else None
    up = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    args = [t for t in (x, off, m) if t is not None]
    rs = [t.clone().requires_grad_() for t in args]
    want_out = ref.deform_sampling(*rs, *([None] if m is None else []))
    want = torch.autograd.grad(want_out, rs, up)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            xs = [t.clone().requires_grad_() for t in args]
            out = tood_ext.deform_sampling(*xs, *([None] if m is None else []))
            runs.append((out.detach(), *torch.autograd.grad(out, xs, up)))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(runs[0][0], want_out.detach(), rtol=1e-10, atol=1e-10)
    for name, g, e in zip(("input", "offset", "mask"), runs[0][1:], want):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9, msg=lambda s: f"{name}: {s}")
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(gen, device, with_mask):
    for shape in [(2, 4, 5, 6, 2), (1, 3, 4, 1, 3), (1, 9, 4, 5, 1)]:  # Cg = 9: pixel-major on CPU
        x, off, m = make_inputs(gen, *shape, device=device, mask=with_mask, offsets="frac")
        args = [t.requires_grad_() for t in (x, off, m) if t is not None]
        if with_mask:
            assert torch.autograd.gradcheck(tood_ext.deform_sampling, args)
        else:
            assert torch.autograd.gradcheck(lambda a, b: tood_ext.deform_sampling(a, b), args)


def test_only_some_inputs_require_grad(gen):
    x, off, m = make_inputs(gen, 2, 4, 5, 6, 2, mask=True, offsets="frac")
    og = off.clone().requires_grad_()
    (g,) = torch.autograd.grad(tood_ext.deform_sampling(x, og, m).sum(), og)
    rg = off.clone().requires_grad_()
    (e,) = torch.autograd.grad(ref.deform_sampling(x, rg, m).sum(), rg)
    torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    xg = x.clone().requires_grad_()
    out = tood_ext.deform_sampling(xg, off)
    (g,) = torch.autograd.grad(out, xg, torch.ones_like(out))
    assert g.shape == x.shape


def test_double_backward_raises(gen):
    x, off, _ = make_inputs(gen, 1, 2, 4, 4, 1, offsets="frac")
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(tood_ext.deform_sampling(xg, off).pow(2).sum(), xg,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(gen, device):
    ops = torch.ops.tood_ext
    x, off, m = make_inputs(gen, 2, 6, 5, 4, 3, device=device, mask=True, offsets="frac")
    torch.library.opcheck(ops.deform_sampling.default, (x, off, m))
    torch.library.opcheck(ops.deform_sampling.default, (x, off, None))
    torch.library.opcheck(ops.deform_sampling.default, (x, off))
    torch.library.opcheck(ops.deform_sampling.default,
                          (x.clone().requires_grad_(), off.clone().requires_grad_(),
                           m.clone().requires_grad_()))
    torch.library.opcheck(ops.deform_sampling.default,
                          (x.clone().requires_grad_(), off.clone().requires_grad_(), None))
    grad = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
    torch.library.opcheck(ops._deform_sampling_backward.default, (grad, x, off, m))
    torch.library.opcheck(ops._deform_sampling_backward.default, (grad, x, off, None))


def test_backward_op_without_mask_returns_empty_grad_mask(gen):
    x, off, _ = make_inputs(gen, 2, 4, 3, 3, 2)
    gi, go, gm = torch.ops.tood_ext._deform_sampling_backward(torch.ones_like(x), x, off, None)
    assert gi.shape == x.shape and go.shape == off.shape and gm.shape == (0,)


# ---------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_torchvision_deform_conv2d(gen, device, with_mask):
    tv = pytest.importorskip("torchvision.ops")
    for dtype in (torch.float32, torch.float64):
        for shape in [(2, 6, 5, 7, 3), (2, 4, 6, 3, 4), (1, 8, 7, 5, 1), (2, 3, 1, 6, 1)]:
            x, off, m = make_inputs(gen, *shape, dtype=dtype, device=device, mask=with_mask)
            weight = torch.ones(shape[1], 1, 1, 1, dtype=dtype, device=device)
            xs = [t.clone().requires_grad_() for t in (x, off, m) if t is not None]
            rs = [t.clone().requires_grad_() for t in (x, off, m) if t is not None]
            out = tood_ext.deform_sampling(*xs, *([None] if m is None else []))
            expected = tv.deform_conv2d(rs[0], rs[1], weight, mask=rs[2] if with_mask else None)
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
            up = torch.randn(out.shape, generator=gen, dtype=dtype).to(device)
            for g, e in zip(torch.autograd.grad(out, xs, up), torch.autograd.grad(expected, rs,
                                                                                  up)):
                torch.testing.assert_close(g, e, rtol=10 * tol, atol=10 * tol)


# ---------------------------------------------------------------------------------------------
# layouts, empty inputs, groups argument
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous_inputs(gen, device):
    x, off, m = make_inputs(gen, 2, 8, 6, 5, 4, device=device, mask=True, offsets="frac")
    expected = tood_ext.deform_sampling(x, off, m)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    off_nc = torch.cat([off, off], dim=1)[:, ::2]  # strided channels
    off_nc.copy_(off)
    assert not off_nc.is_contiguous()
    m_nc = m.transpose(2, 3).contiguous().transpose(2, 3)
    out = tood_ext.deform_sampling(x_cl, off_nc, m_nc)
    assert torch.equal(out, expected)
    args = [t.clone().requires_grad_() for t in (x, off, m)]
    args_nc = [t.detach().clone().requires_grad_() for t in (x_cl, off_nc, m_nc)]
    up = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
    grads = torch.autograd.grad(tood_ext.deform_sampling(*args), args, up)
    grads_nc = torch.autograd.grad(tood_ext.deform_sampling(*args_nc), args_nc, up.mT.mT)
    for g, e in zip(grads_nc, grads):
        assert torch.equal(g, e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4, 5, 5, 2), (2, 0, 5, 5, 0), (2, 0, 5, 5, 2),
                                   (2, 4, 0, 5, 4), (2, 4, 5, 0, 1)], ids=str)
def test_empty_inputs(gen, device, shape):
    B, C, H, W, G = shape
    x = torch.randn(B, C, H, W, dtype=torch.float64, device=device, requires_grad=True)
    off = torch.randn(B, 2 * G, H, W, dtype=torch.float64, device=device, requires_grad=True)
    m = torch.rand(B, G, H, W, dtype=torch.float64, device=device, requires_grad=True)
    for mask in (None, m):
        out = tood_ext.deform_sampling(x, off, mask)
        assert out.shape == x.shape
        assert ref.deform_sampling(x, off, mask).shape == x.shape
        inputs = [x, off] + ([m] if mask is not None else [])
        grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
        for g, t in zip(grads, inputs):
            assert g is None or (g.shape == t.shape and (g == 0).all())


def test_groups_argument(gen):
    x, off, _ = make_inputs(gen, 2, 6, 4, 4, 3)
    torch.testing.assert_close(tood_ext.deform_sampling(x, off, groups=3),
                               tood_ext.deform_sampling(x, off))
    with pytest.raises(ValueError, match="groups=2 but offset has 6 channels"):
        tood_ext.deform_sampling(x, off, groups=2)
    with pytest.raises(ValueError, match="groups=2 but offset has 6 channels"):
        ref.deform_sampling(x, off, groups=2)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_errors(gen):
    x, off, m = make_inputs(gen, 2, 4, 5, 6, 2, dtype=torch.float32, mask=True)
    ds = tood_ext.deform_sampling
    with pytest.raises(RuntimeError, match=r"input must be 4-D \(B, C, H, W\), got shape"):
        ds(x[0], off)
    with pytest.raises(RuntimeError, match=r"offset must be 4-D \(B, 2\*G, H, W\)"):
        ds(x, off[0])
    with pytest.raises(RuntimeError, match="offset must have an even number of channels"):
        ds(x, off[:, :3])
    with pytest.raises(RuntimeError, match="offset must have the batch size B = 2"):
        ds(x, off[:1])
    with pytest.raises(RuntimeError, match=r"offset must have the spatial size \(H, W\) = "
                                           r"\(5, 6\)"):
        ds(x, off[:, :, :4])
    with pytest.raises(RuntimeError, match=r"offset must have the spatial size"):
        ds(x, off[..., :5])
    with pytest.raises(RuntimeError, match="the channels C = 4 of input must be divisible by "
                                           "the offset groups G = 3"):
        ds(x, torch.zeros(2, 6, 5, 6))
    with pytest.raises(RuntimeError, match="the channels C = 4 of input must be divisible by "
                                           "the offset groups G = 0"):
        ds(x, torch.zeros(2, 0, 5, 6))
    with pytest.raises(RuntimeError, match=r"mask must have shape \(B, G, H, W\) = "
                                           r"\(2, 2, 5, 6\), got shape \[2, 1, 5, 6\]"):
        ds(x, off, m[:, :1])
    with pytest.raises(RuntimeError, match=r"mask must have shape \(B, G, H, W\)"):
        ds(x, off, m[:, :, :4])
    with pytest.raises(RuntimeError, match=r"mask must have shape \(B, G, H, W\)"):
        ds(x, off, m[:1])
    with pytest.raises(RuntimeError, match="offset has dtype Double but input has dtype Float"):
        ds(x, off.double())
    with pytest.raises(RuntimeError, match="mask has dtype Double but input has dtype Float"):
        ds(x, off, m.double())
    with pytest.raises(RuntimeError, match="input must be float32 or float64 on CPU"):
        ds(x.half(), off.half())
    with pytest.raises(RuntimeError, match="input must be float32 or float64"):
        ds(x.long(), off.long())
    bwd = torch.ops.tood_ext._deform_sampling_backward
    with pytest.raises(RuntimeError, match="grad must have the shape of deform_sampling's output"):
        bwd(x[:, :2], x, off, m)
    with pytest.raises(RuntimeError, match="grad has dtype Double but input has dtype Float"):
        bwd(x.double(), x, off, m)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_mixed_devices_error(gen):
    x, off, m = make_inputs(gen, 2, 4, 5, 6, 2, mask=True)
    with pytest.raises(RuntimeError, match="offset is on cpu but input is on cuda"):
        tood_ext.deform_sampling(x.cuda(), off)
    with pytest.raises(RuntimeError, match="mask is on cpu but input is on cuda"):
        tood_ext.deform_sampling(x.cuda(), off.cuda(), m)


# ---------------------------------------------------------------------------------------------
# determinism, CPU vs CUDA
# ---------------------------------------------------------------------------------------------


def _all_grads(x, off, m, up):
    args = [t.clone().requires_grad_() for t in (x, off, m)]
    return torch.autograd.grad(tood_ext.deform_sampling(*args), args, up)


def test_cpu_backward_is_bitwise_deterministic(gen):
    # B * G = 6 blocks: one thread runs the fused schedule, two threads the two-pass one
    # (csrc/cpu/deform_sampling_cpu.cpp); both must give the same bits, run after run.
    x, off, m = make_inputs(gen, 3, 8, 9, 11, 2, dtype=torch.float32, mask=True)
    off = off / 3
    up = torch.randn(x.shape, generator=gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, threads, 1):
            torch.set_num_threads(n)
            results.append(_all_grads(x, off, m, up))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for g, e in zip(other, results[0]):
            assert torch.equal(g, e)


# The CPU paths (planar, pixel-major) and ISA clones give the same bits: tests/test_deform_cpu_bits.py
# (the switches are read once per process: a subprocess per variant).


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_cuda_input_grad_is_flagged_nondeterministic(gen):
    x, off, m = make_inputs(gen, 2, 4, 5, 6, 2, dtype=torch.float32, device="cuda", mask=True)
    old, old_warn = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        out = tood_ext.deform_sampling(x, off, m)  # the forward is deterministic
        xg = x.clone().requires_grad_()
        with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
            tood_ext.deform_sampling(xg, off, m).sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="does not have a deterministic implementation"):
            tood_ext.deform_sampling(xg, off, m).sum().backward()
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)
    assert out.shape == x.shape


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("with_mask", [False, True])
def test_cpu_and_cuda_agree(gen, with_mask):
    for shape in [(2, 6, 17, 23, 3), (3, 32, 20, 24, 1), (2, 8, 9, 13, 8)]:
        x, off, m = make_inputs(gen, *shape, mask=with_mask, offsets="frac")
        up = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        cpu_args = [t for t in (x, off, m) if t is not None]
        cuda_args = [t.cuda() for t in cpu_args]
        torch.testing.assert_close(tood_ext.deform_sampling(*cuda_args).cpu(),
                                   tood_ext.deform_sampling(*cpu_args), rtol=1e-12, atol=1e-12)
        cpu_in = [t.clone().requires_grad_() for t in cpu_args]
        cuda_in = [t.clone().requires_grad_() for t in cuda_args]
        gc = torch.autograd.grad(tood_ext.deform_sampling(*cpu_in), cpu_in, up)
        gg = torch.autograd.grad(tood_ext.deform_sampling(*cuda_in), cuda_in, up.cuda())
        for a, b in zip(gg, gc):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-11, atol=1e-11)
        for dtype in (torch.float16, torch.bfloat16):
            half = [t.to(dtype) for t in cuda_args]
            assert_close(tood_ext.deform_sampling(*half), _ref64(*half), msg=str(dtype))
