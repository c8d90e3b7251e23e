"""The CUDA kernels of csrc/cuda/*.cu run on the CPU, through the emulator of
csrc/tools/cuda_emu.h, against tood_ext's CPU kernels.

The same .cu sources (kernels, launch geometry, ATen glue) are compiled by the host compiler with
``-DTOOD_CUDA_EMU`` into a test library whose ops, ``torch.ops.tood_ext_emu.*``, take tood_ext's
schemas and run on CPU tensors: every block of a launch in a shuffled order, the threads of a
block as fibers, resumed in a shuffled order after each barrier, warp shuffles, atomics and shared
memory emulated. So a machine without a GPU runs the CUDA code paths: index arithmetic, chunking,
grid-stride loops, the warp-merged top-k, the packed claims, and each launch's configuration
(checked against CUDA's limits). The emulator reports what is undefined on a GPU (shuffles with
exited lanes or lanes outside the mask, deadlocked barriers); its self-tests show it does.

test_memcheck_under_address_sanitizer reruns the ops with the library built with AddressSanitizer
(emu_memcheck.py, in a subprocess): an out-of-bounds read or write of a kernel, an illegal
address on a GPU, fails it (compute-sanitizer's memcheck needs a GPU).

Not covered here: float16/bfloat16 (the shared argument checks accept them only for CUDA
tensors), timing, and races between threads that do not synchronise. On a machine with a GPU the
real kernels are tested by the other test files (their ``cuda`` cases), so this file skips there.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import tood_ext  # noqa: F401  (registers tood_ext's ops: the CPU kernels compared with)
from tood_ext._types import TALResult

from conftest import HAS_CUDA, assert_close, inject_nonfinite, metric_inputs, random_boxes
from emu_build import ROOT, asan_runtime
from tal_cases import (FLAVOURS, FLOAT_FIELDS, NAN_FLAVOURS, SCENARIOS, _check_equal_assignment,
                       _draw, _issue_23_inputs, _kw, _run_and_check)
from tood_ext.reference.box_ops import alignment_metric as ref_metric
from tood_ext.reference.tal import task_aligned_assign as ref_tal

pytestmark = pytest.mark.skipif(
    HAS_CUDA, reason="a GPU is present: the real CUDA kernels are tested (cuda cases elsewhere)")

F64 = torch.float64


@pytest.fixture(params=["full-grid", "grid-cap-2"])
def tal_ops(request, emu):
    """As `ops`, for task_aligned_assign, whose kernels always index in 64 bits."""
    emu._set_grid_cap(2 if request.param == "grid-cap-2" else 0)
    yield emu
    emu._set_grid_cap(0)


# ---------------------------------------------------------------------------------------------
# the emulator itself
# ---------------------------------------------------------------------------------------------


def test_emulated_intrinsics(emu, gen):
    x = torch.randn(128 * 7, generator=gen)
    # xor and down shuffles within warps, shared memory and __syncthreads across them
    torch.testing.assert_close(emu._selftest_block_sum(x), x.view(7, 128).sum(1))
    want = x.view(7, 128).roll(-1, 1).reshape(-1)
    assert torch.equal(emu._selftest_neighbour(x, True), want)
    # without the barrier, threads read neighbours that have not written yet
    assert not torch.equal(emu._selftest_neighbour(x, False), want)
    # blocks run in a shuffled order: the last writer is not always the last block
    assert {emu._selftest_last_writer(64) for _ in range(4)} != {63}


def test_grid_cap(emu, gen):
    x = torch.randn(2, 8, 40, 40, generator=gen)
    off = torch.randn(2, 4, 40, 40, generator=gen)
    emu.deform_sampling(x, off)
    assert emu._last_launch_blocks() == 2 * 2 * 1 * 1600 // 256  # (b, g, chunk, pixel) units
    emu._set_grid_cap(2)
    try:
        assert torch.equal(emu.deform_sampling(x, off), torch.ops.tood_ext.deform_sampling(x, off))
        assert emu._last_launch_blocks() == 2
    finally:
        emu._set_grid_cap(0)


def _shuffle_source(op, lane, arg, width):
    """The lane a CUDA shuffle reads (CUDA programming guide, warp shuffle functions; PTX
    shfl.sync takes the low 5 bits of the offset / mask)."""
    base = lane - lane % width
    if op == "sync":  # srcLane % width within the caller's segment
        return base + arg % width
    if op == "xor":  # lane ^ laneMask; a later segment's lane yields the caller's own value
        src = lane ^ (arg % 32)
        return src if src < base + width else lane
    if op == "down":
        src = lane + arg % 32
        return src if src < base + width else lane
    src = lane - arg % 32  # up
    return src if src >= base else lane


@pytest.mark.parametrize("width", [32, 16, 8, 4, 1])
@pytest.mark.parametrize("op", ["sync", "xor", "down", "up"])
def test_emulated_shuffle_sources(emu, op, width):
    code = ["sync", "xor", "down", "up"].index(op)
    for arg in [0, 1, 3, 5, 16, 17, 31, 33] + ([-1, -6] if op in ("sync", "xor") else []):
        got = emu._selftest_shuffle(code, arg, width).tolist()
        want = [_shuffle_source(op, lane, arg, width) for lane in range(32)]
        assert got == want, (op, arg, width)


@pytest.mark.parametrize("bug, message", [
    ("exited_lane", "has exited"), ("outside_mask", "not in its mask"), ("deadlock", "deadlock"),
    ("grid_y", "invalid configuration"), ("block_size", "invalid configuration"),
    ("shuffle_width", "not a power of two"),
])
def test_emulator_reports_undefined_behaviour(emu, bug, message):
    with pytest.raises(RuntimeError, match=message) as err:
        emu._selftest_bug(bug)
    if "configuration" not in message:  # errors of a running launch name its orders' seed
        assert "TOOD_CUDA_EMU_SEED=" in str(err.value)


def test_emulator_seed_changes_the_orders(emu, monkeypatch):
    orders = set()
    for seed in range(6):
        monkeypatch.setenv("TOOD_CUDA_EMU_SEED", str(seed))
        orders.add(emu._selftest_last_writer(64))
    assert len(orders) > 1


# ---------------------------------------------------------------------------------------------
# deform_sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B, C, G, H, W", [
    (2, 6, 6, 5, 7),     # G = C: one channel per group
    (2, 24, 2, 6, 5),    # 12 channels per group: a chunk of 8 and one of 4
    (1, 16, 1, 1, 9),    # H = 1
    (3, 8, 4, 7, 1),     # W = 1
    (2, 64, 4, 9, 11),   # 16 per group: two full chunks
    (0, 4, 2, 3, 3),     # B = 0
])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_deform_sampling(ops, gen, B, C, G, H, W, with_mask, dtype):
    x = torch.randn(B, C, H, W, generator=gen, dtype=F64)
    # offsets up to ~9 px: many samples fall partly or wholly outside the map
    offset = torch.randn(B, 2 * G, H, W, generator=gen, dtype=F64) * 3
    offset[:, :, ::2] = offset[:, :, ::2].round()  # integer offsets: weights exactly 0 / 1
    mask = torch.rand(B, G, H, W, generator=gen, dtype=F64) if with_mask else None
    grad = torch.randn(B, C, H, W, generator=gen, dtype=F64)
    x, offset, grad = x.to(dtype), offset.to(dtype), grad.to(dtype)
    mask = mask.to(dtype) if mask is not None else None
    got = ops.deform_sampling(x, offset, mask)
    want = torch.ops.tood_ext.deform_sampling(x, offset, mask)
    assert torch.equal(got, want)  # the same gather, the same math: the same bits
    x_cl = x.to(memory_format=torch.channels_last)  # the glue makes inputs contiguous
    assert torch.equal(ops.deform_sampling(x_cl, offset, mask), want)
    got_grads = ops._deform_sampling_backward(grad, x, offset, mask)
    want_grads = torch.ops.tood_ext._deform_sampling_backward(grad, x, offset, mask)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("input", "offset", "mask"), got_grads, want_grads):
        if name == "mask" and mask is None:
            assert g.numel() == 0 and w.numel() == 0
            continue
        # grad_input: atomics add in another order than the CPU kernel's sweep
        torch.testing.assert_close(g, w, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


# ---------------------------------------------------------------------------------------------
# box metrics
# ---------------------------------------------------------------------------------------------


MODES = ["iou", "giou", "diou", "ciou"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [((7,), (45,)), ((2, 19), (2, 70)), ((3, 1), (3, 33)),
                                   ((0,), (5,))])
def test_box_iou_pairwise(ops, gen, mode, shape):
    (*lead1, n), (*lead2, m) = shape
    b1 = random_boxes(gen, *lead1, n, dtype=F64)
    b2 = random_boxes(gen, *lead2, m, dtype=F64)
    if n:
        b2[..., :3, :] = b1[..., :1, :]  # some exact copies: IoU 1
    got = ops.box_iou(b1, b2, mode)
    want = torch.ops.tood_ext.box_iou(b1, b2, mode)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    grad = torch.randn(got.shape, generator=gen, dtype=F64)
    # rows kernel: a warp per row (m > 32: several columns per lane); cols kernel: (32, 16)
    # blocks (n > 16: several rows per thread row)
    for g, w in zip(ops._box_iou_backward(grad, b1, b2, mode, False, 1e-7),
                    torch.ops.tood_ext._box_iou_backward(grad, b1, b2, mode, False, 1e-7)):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("mode", MODES)
def test_aligned_iou_and_loss(ops, gen, mode):
    p = random_boxes(gen, 3, 300, dtype=F64)
    t = random_boxes(gen, 3, 300, dtype=F64)
    w = torch.rand(3, 300, generator=gen, dtype=F64)
    torch.testing.assert_close(ops.box_iou(p, t, mode, True),
                               torch.ops.tood_ext.box_iou(p, t, mode, True), rtol=0, atol=1e-14)
    grad = torch.randn(3, 300, generator=gen, dtype=F64)
    for g, want in zip(ops._box_iou_backward(grad, p, t, mode, True, 1e-7),
                       torch.ops.tood_ext._box_iou_backward(grad, p, t, mode, True, 1e-7)):
        torch.testing.assert_close(g, want, rtol=0, atol=1e-13)
    for weight in (None, w):
        torch.testing.assert_close(ops.iou_loss(p, t, weight, mode),
                                   torch.ops.tood_ext.iou_loss(p, t, weight, mode),
                                   rtol=0, atol=1e-14)
        got = ops._iou_loss_backward(grad, p, t, weight, mode, 1e-7)
        want = torch.ops.tood_ext._iou_loss_backward(grad, p, t, weight, mode, 1e-7)
        for g, x in zip(got, want):
            torch.testing.assert_close(g, x, rtol=0, atol=1e-13)


@pytest.mark.parametrize("iou_mode", ["iou", "ciou"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_alignment_metric(ops, gen, iou_mode, dtype):
    inputs = metric_inputs(gen, 2, 700, 5, 9, dtype=dtype)
    kw = dict(alpha=0.5, beta=6.0, iou_mode=iou_mode, inside_eps=0.01, eps=1e-7)
    for got, want in zip(ops.alignment_metric(*inputs, **kw),
                         torch.ops.tood_ext.alignment_metric(*inputs, **kw)):
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------
# task_aligned_assign
# ---------------------------------------------------------------------------------------------


def _emu_tal(emu):
    def op(*inputs, **kw):
        return TALResult(*emu.task_aligned_assign(*inputs, **_kw(kw)))
    return op


# every scenario of test_tal.py with the two published flavours (the exact ultralytics one has
# the "all_gts" conflict rule and widened centre test), and top-k beyond the 16-slot kernel
TAL_FLAVOURS = {"mmdet": FLAVOURS["mmdet"], "ultralytics-exact": FLAVOURS["ultralytics-exact"],
                "topk40-ciou": dict(topk=40, iou_mode="ciou", alpha=1.0, beta=4.0),
                "topk64-inside": dict(topk=64, candidates="inside_then_topk")}


@pytest.mark.parametrize("flavour", list(TAL_FLAVOURS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_task_aligned_assign(tal_ops, gen, flavour, scenario):
    kw = TAL_FLAVOURS[flavour]
    op = _emu_tal(tal_ops)
    for dtype in (torch.float32, F64):
        inputs = _draw(lambda: SCENARIOS[scenario](gen), kw, dtype, "cpu")
        got = op(*inputs, **kw)
        want = TALResult(*torch.ops.tood_ext.task_aligned_assign(*inputs, **_kw(kw)))
        for name in TALResult._fields:  # the same per-element math: the same bits
            assert torch.equal(getattr(got, name), getattr(want, name)), name
    _run_and_check(op, inputs, kw, oracle=False)  # float64: vs the reference, invariants


def test_task_aligned_assign_empty(tal_ops, gen):
    op = _emu_tal(tal_ops)
    for B, A, G in [(2, 50, 0), (0, 50, 4), (2, 0, 4)]:
        inputs = metric_inputs(gen, B, A, 3, G, dtype=F64)
        out = op(*inputs)
        assert out.assigned_gt.shape == (B, A) and not bool(out.fg_mask.any())


# ---------------------------------------------------------------------------------------------
# non-finite GTs and anchors (issue 23): the CUDA kernels' centre test (the shared header)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_alignment_metric_nan_gts_and_anchors(ops, gen, dtype):
    """NaN / +-inf in GT boxes and anchor points: the emulated CUDA kernel's inside test equals
    the CPU kernel's and the reference's (a NaN coordinate: not inside); t, u NaN-aware."""
    inputs, _ = inject_nonfinite(gen, metric_inputs(gen, 2, 300, 4, 12, dtype=dtype),
                                 values=(float("nan"), float("inf"), float("nan"),
                                         float("-inf")))
    kw = dict(alpha=1.0, beta=6.0, iou_mode="iou", inside_eps=0.01, eps=1e-7)
    got = ops.alignment_metric(*inputs, **kw)
    cpu = torch.ops.tood_ext.alignment_metric(*inputs, **kw)
    want = ref_metric(*inputs, **kw)
    assert torch.equal(got[2], cpu[2]) and torch.equal(got[2], want[2])
    for g, c in zip(got[:2], cpu[:2]):
        torch.testing.assert_close(g, c, rtol=0, atol=0, equal_nan=True)
    assert not bool(got[2][torch.isnan(inputs[4]).any(-1)].any())
    assert not bool(got[2][:, :, torch.isnan(inputs[2]).any(-1)].any())


@pytest.mark.parametrize("flavour", list(NAN_FLAVOURS))
def test_task_aligned_assign_nan_gts(tal_ops, gen, flavour):
    """The emulated CUDA TAL kernels on NaN GTs (index >= 1) and NaN anchors, without the
    Python wrapper's masking: equal to the CPU kernel bit for bit and to the reference; the
    issue's three-GT case goes to GT 0."""
    kw = NAN_FLAVOURS[flavour]
    op = _emu_tal(tal_ops)
    for dtype in (torch.float32, F64):
        inputs, hit = inject_nonfinite(gen, metric_inputs(gen, 2, 300, 4, 9, dtype=dtype),
                                       first_gt=1)
        got = op(*inputs, **kw)
        cpu = TALResult(*torch.ops.tood_ext.task_aligned_assign(*inputs, **_kw(kw)))
        for name in TALResult._fields:
            torch.testing.assert_close(getattr(got, name), getattr(cpu, name), rtol=0, atol=0,
                                       equal_nan=True, msg=name)
        exp = ref_tal(*inputs, **kw)
        _check_equal_assignment(got, exp, inputs)
        for name in FLOAT_FIELDS:
            assert_close(getattr(got, name), getattr(exp, name), dtype=dtype, msg=name)
            assert bool(torch.isfinite(getattr(got, name)).all()), name
        claimed = hit.gather(1, got.assigned_gt.clamp(min=0))
        assert not bool((claimed & got.fg_mask).any()), "a NaN GT holds an anchor"
    small = _issue_23_inputs()
    out = op(*small, **kw)
    assert int(out.assigned_gt[0, 0]) == 0 and bool(torch.isfinite(out.soft_target).all())


# ---------------------------------------------------------------------------------------------
# memory check (AddressSanitizer): out-of-bounds accesses of the kernels
# ---------------------------------------------------------------------------------------------


def _run_memcheck(*args):
    env = {**os.environ, "LD_PRELOAD": asan_runtime(), "ASAN_OPTIONS": "detect_leaks=0"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "emu_memcheck.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(asan_runtime() is None, reason="the C++ compiler has no AddressSanitizer")
def test_memcheck_under_address_sanitizer():
    """Every op family (shape edge cases, both grid settings) under ASan: no out-of-bounds
    access; and the check can fail: a kernel reading one value past a tensor is reported."""
    proc = _run_memcheck()
    assert proc.returncode == 0 and "memcheck: OK" in proc.stdout, proc.stderr[-6000:]
    bug = _run_memcheck("--bug", "oob_read")
    assert bug.returncode != 0
    assert "heap-buffer-overflow" in bug.stderr and "oob_read_kernel" in bug.stderr, \
        bug.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# task_aligned_assign_rotated: the same templated kernels with the rotated geometry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["ultralytics", "topk13", "candidates"])
@pytest.mark.parametrize("scenario", ["sparse", "crowded", "tiny"])
def test_task_aligned_assign_rotated(tal_ops, gen, flavour, scenario):
    """The emulated CUDA kernels of the rotated assignment: bit for bit the CPU kernel's (the
    same geometry functions, tal_geometry.h), and the reference's assignment."""
    from test_tal_rotated import FLAVOURS as ROT_FLAVOURS, SCENARIOS as ROT_SCENARIOS
    from test_tal_rotated import _check_equal, _draw, _kw as _rot_kw
    from tood_ext.reference.tal import task_aligned_assign_rotated as ref_rot

    kw = ROT_FLAVOURS[flavour]
    for dtype in (torch.float32, F64):
        inputs = _draw(lambda: ROT_SCENARIOS[scenario](gen), kw, dtype)
        got = TALResult(*tal_ops.task_aligned_assign_rotated(*inputs, **_rot_kw(kw)))
        want = TALResult(*torch.ops.tood_ext.task_aligned_assign_rotated(*inputs,
                                                                          **_rot_kw(kw)))
        for name in TALResult._fields:
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        _check_equal(got, ref_rot(*inputs, **kw), dtype)


def test_task_aligned_assign_rotated_topk64_and_nan(tal_ops, gen):
    """topk beyond the 16-slot kernel, NaN GTs (raw: the centre test is False for them) and
    NaN predicted boxes: equal to the CPU kernel bit for bit."""
    from test_tal_rotated import rotated_inputs

    ps, pb, ap, gl, gb, gm = rotated_inputs(gen, 2, 3, 20, 128, "crowded")
    gb, pb = gb.clone(), pb.clone()
    gb[0, 3, 4] = float("nan")
    gb[1, 5, 2] = float("inf")
    pb[0, 7, 0] = float("nan")
    pb[1, 11, 4] = float("inf")
    for kw in (dict(topk=40, min_inside_size=16.0), dict(topk=64, conflict="candidates")):
        got = tal_ops.task_aligned_assign_rotated(ps, pb, ap, gl, gb, gm, **kw)
        want = torch.ops.tood_ext.task_aligned_assign_rotated(ps, pb, ap, gl, gb, gm, **kw)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
