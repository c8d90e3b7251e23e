"""Subprocess of tests/test_deform_cpu_bits.py: runs deform_sampling forward and backward on the
CPU for fixed cases and a given seed, under the process's TOOD_EXT_CPU_ISA /
TOOD_EXT_DEFORM_CPU_PATH (the kernels read them once per process), at 1 and 2 threads, and saves
the results with torch.save.

    python tests/deform_bits_worker.py SEED OUT.pt
"""
from __future__ import annotations

import sys

import torch

import tood_ext

# (B, C, H, W, G, offset scale in pixels or None for "wide": uniform in [-H, H] x [-W, W])
CASES = [
    (2, 16, 12, 10, 1, 2.0),     # two full chunks, local offsets (shared scatter corners)
    (1, 20, 6, 11, 2, None),     # a full and a partial chunk, many samples outside
    (3, 24, 9, 13, 3, 1.0),      # B * G = 9 blocks: the fused schedule with 2 threads
    (2, 8, 1, 5, 1, None),       # H = 1: edge pixels only
    (1, 8, 7, 1, 1, 1.0),        # W = 1
    (2, 8, 6, 9, 2, 1.0),        # Cg = 4: the smallest group taking pixel-major by default
    (2, 6, 5, 7, 3, 0.5),        # Cg = 2: pixel-major forced on a small group
    (1, 8, 131, 129, 1, 3.0),    # 16899 pixels: two planar tiles, one pixel-major plan
]


def inputs(gen, case, dtype, with_mask):
    B, C, H, W, G, scale = case
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    if scale is None:
        hw = torch.tensor([H, W], dtype=torch.float64).repeat(G).view(1, 2 * G, 1, 1)
        off = (torch.rand(B, 2 * G, H, W, generator=gen, dtype=torch.float64) * 2 - 1) * hw
    else:
        off = torch.randn(B, 2 * G, H, W, generator=gen, dtype=torch.float64) * scale
    m = torch.rand(B, G, H, W, generator=gen, dtype=torch.float64) if with_mask else None
    x, off = x.to(dtype), off.to(dtype)
    m = m.to(dtype) if m is not None else None
    if dtype == torch.float32 and H * W >= 20:  # non-finite positions (edge pixels)
        flat = off.view(-1)
        picks = torch.randperm(flat.numel(), generator=gen)[:3]
        flat[picks] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    up = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, off, m, up


def main(seed: int, out_path: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    results = {}
    for ci, case in enumerate(CASES):
        for dtype in (torch.float32, torch.float64):
            for with_mask in (False, True):
                x, off, m, up = inputs(gen, case, dtype, with_mask)
                for n in (1, 2):
                    torch.set_num_threads(n)
                    args = [t.clone().requires_grad_() for t in (x, off, m) if t is not None]
                    out = tood_ext.deform_sampling(*args, *([None] if m is None else []))
                    grads = torch.autograd.grad(out, args, up)
                    results[ci, str(dtype), with_mask, n] = dict(
                        inputs=(x, off, m), output=out.detach(), grads=grads)
    torch.save(results, out_path)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
