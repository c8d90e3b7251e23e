"""Memory check of the CUDA kernels: the emulated ops (csrc/tools/cuda_emu.h) built with
AddressSanitizer, run over every op family, shape edge cases, full and capped grids and the
64-bit index path, so that an out-of-bounds read or write of a kernel (an illegal address on a
GPU) aborts with ASan's report (the role of compute-sanitizer's memcheck, which needs a GPU).

Run by test_cuda_emu.py in a subprocess whose ASan runtime is preloaded:

    LD_PRELOAD=$(c++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
        python tests/emu_memcheck.py [--bug oob_read]

Prints ``memcheck: OK, <n> launches`` and exits 0 when clean. ``--bug oob_read`` launches a
kernel that reads one value past a tensor instead (ASan must report a heap-buffer-overflow).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import metric_inputs, random_boxes, random_obbs  # noqa: E402
from emu_build import load_emulator  # noqa: E402

F64 = torch.float64


def deform(ops, gen):
    for B, C, G, H, W in [(2, 24, 2, 6, 5), (2, 6, 6, 5, 7), (1, 16, 1, 1, 9), (3, 8, 4, 7, 1),
                          (0, 4, 2, 3, 3)]:
        x = torch.randn(B, C, H, W, generator=gen, dtype=F64)
        off = torch.randn(B, 2 * G, H, W, generator=gen, dtype=F64) * 4  # many samples outside
        for mask in (None, torch.rand(B, G, H, W, generator=gen, dtype=F64)):
            out = ops.deform_sampling(x, off, mask)
            assert torch.equal(out, torch.ops.tood_ext.deform_sampling(x, off, mask))
            ops._deform_sampling_backward(torch.randn_like(out), x, off, mask)


def box_ops(ops, gen):
    for mode in ("iou", "giou", "diou", "ciou"):
        for (lead, n, m) in [((), 7, 45), ((2,), 19, 70), ((3,), 1, 33), ((), 0, 5)]:
            b1 = random_boxes(gen, *lead, n, dtype=F64)
            b2 = random_boxes(gen, *lead, m, dtype=F64)
            out = ops.box_iou(b1, b2, mode)
            ops._box_iou_backward(torch.randn_like(out), b1, b2, mode, False, 1e-7)
        p = random_boxes(gen, 3, 70, dtype=F64)
        t = random_boxes(gen, 3, 70, dtype=F64)
        w = torch.rand(3, 70, generator=gen, dtype=F64)
        ops._box_iou_backward(torch.randn(3, 70, generator=gen, dtype=F64), p, t, mode, True, 1e-7)
        ops._iou_loss_backward(torch.randn(3, 70, generator=gen, dtype=F64), p, t, w, mode, 1e-7)
    for iou_mode in ("iou", "ciou"):
        ops.alignment_metric(*metric_inputs(gen, 2, 300, 5, 9, dtype=F64), iou_mode=iou_mode)


def probiou(ops, gen):
    for ciou in (False, True):
        s = (1e-7, 0.01, ciou)
        for (lead, n, m) in [((), 7, 45), ((2,), 19, 70), ((3,), 1, 33), ((), 0, 5), ((), 4, 0)]:
            b1 = random_obbs(gen, *lead, n, dtype=F64)
            b2 = random_obbs(gen, *lead, m, dtype=F64)
            out = ops.probiou(b1, b2, False, *s)
            ops._probiou_backward(torch.randn_like(out), b1, b2, False, *s)
        p = random_obbs(gen, 3, 70, dtype=F64)
        t = random_obbs(gen, 3, 70, dtype=F64)
        w = torch.rand(3, 70, generator=gen, dtype=F64)
        g = torch.randn(3, 70, generator=gen, dtype=F64)
        ops._probiou_backward(g, p, t, True, *s)
        ops._probiou_loss_backward(g, p, t, w, *s)
        ops.probiou_loss(p, t, None, *s)


def tal(ops, gen):
    from tal_cases import FLAVOURS, SCENARIOS, _kw

    flavours = [FLAVOURS["ultralytics-exact"], dict(topk=40, iou_mode="ciou"),
                dict(topk=64, candidates="inside_then_topk")]
    for make in SCENARIOS.values():
        inputs = make(gen)
        for kw in flavours:
            got = ops.task_aligned_assign(*inputs, **_kw(kw))
            want = torch.ops.tood_ext.task_aligned_assign(*inputs, **_kw(kw))
            assert all(torch.equal(a, b) for a, b in zip(got, want))
    for B, A, G in [(2, 50, 0), (0, 50, 4), (2, 0, 4), (2, 5, 3)]:
        ops.task_aligned_assign(*metric_inputs(gen, B, A, 3, G, dtype=F64))
    # the rotated geometry: the same kernels
    from test_tal_rotated import rotated_inputs

    for B, G, size, kw in [(2, 20, 128, dict(topk=10, min_inside_size=16.0)),
                           (1, 3, 64, dict(topk=64, conflict="candidates")), (2, 0, 64, {})]:
        inputs = rotated_inputs(gen, B, 3, G, size, "crowded" if G else "sparse")
        got = ops.task_aligned_assign_rotated(*inputs, **kw)
        want = torch.ops.tood_ext.task_aligned_assign_rotated(*inputs, **kw)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def losses(ops, gen):
    """sparse_target_cls_loss (every kind, the class and the anchor weight, row-major and
    class-major pred) and dfl_loss."""
    from loss_cases import KINDS, draw

    for shape, C in [((3, 70), 7), ((0, 5), 3), ((2, 4), 1)]:
        for kind, activated in KINDS:
            x, lab, sc = draw(gen, shape, C, F64, activated=activated)
            w = torch.rand(shape, generator=gen, dtype=F64)
            cw = torch.rand(C, generator=gen, dtype=F64)
            class_major = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # read in place
            for args in ((None, None), (cw, w)):
                for pred in (x, class_major):
                    full = (pred, lab, sc, kind, 1.5, None, activated, *args)
                    ops.sparse_target_cls_loss(*full)
                    ops._sparse_target_cls_loss_backward(torch.tensor(0.5, dtype=F64), *full)
    pd = torch.randn(300, 16, generator=gen, dtype=F64)
    t = torch.rand(300, generator=gen, dtype=F64) * 15
    ops.dfl_loss(pd, t, None)
    ops._dfl_loss_backward(torch.tensor(1.0, dtype=F64), pd, t, t)


def main() -> int:
    import tood_ext  # noqa: F401  (the CPU kernels compared with)

    ops = load_emulator(asan=True)
    if sys.argv[1:] == ["--bug", "oob_read"]:
        ops._selftest_bug("oob_read")
        print("memcheck: the out-of-bounds read went unnoticed")
        return 0
    gen = torch.Generator().manual_seed(0)
    for cap, int64_index in ((0, False), (2, False), (0, True)):
        ops._set_grid_cap(cap)
        ops._set_force_int64_index(int64_index)
        deform(ops, gen)
        box_ops(ops, gen)
        probiou(ops, gen)
        losses(ops, gen)
        if not int64_index:  # TAL's kernels index in 64 bits always
            tal(ops, gen)
    ops._set_grid_cap(0)
    ops._set_force_int64_index(False)
    print(f"memcheck: OK, {ops._launches()} launches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
