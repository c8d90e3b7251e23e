"""Shared fixtures and input generators of the test suite.

Inputs are fresh random draws: every test gets its own seed, printed in the failure report
(`TOOD_TEST_SEED=<seed>` reproduces a run).
"""
from __future__ import annotations

import math
import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU"))]

# (rtol, atol) against a float64 reference evaluated on the same inputs
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (5e-2, 3e-2),
}


def dtypes_for(device: str):
    if device == "cuda":
        return [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    return [torch.float32, torch.float64]


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator with a fresh seed (or TOOD_TEST_SEED), shown on failure."""
    seed = int(os.environ.get("TOOD_TEST_SEED", random.randrange(2**31)))
    request.node.user_properties.append(("seed", seed))
    g = torch.Generator().manual_seed(seed)
    return g


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("random seed", f"TOOD_TEST_SEED={seeds[0]}"))


def random_boxes(gen: torch.Generator, *shape: int, size: float = 100.0, min_wh: float = 0.5,
                 max_wh: float = 60.0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Valid xyxy boxes (x2 > x1, y2 > y1) in a size x size canvas, shape (*shape, 4)."""
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * size
    wh = min_wh + torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * (max_wh - min_wh)
    return torch.cat([xy, xy + wh], dim=-1).to(dtype=dtype, device=device)


def metric_inputs(gen: torch.Generator, B: int, A: int, C: int, G: int, dtype=torch.float32,
                  device="cpu", pad_frac: float = 0.25):
    """Random inputs of alignment_metric / TAL: predictions near GTs so that overlaps vary."""
    size = 200.0
    pred_scores = torch.rand(B, A, C, generator=gen, dtype=torch.float64)
    anchor_points = torch.rand(A, 2, generator=gen, dtype=torch.float64) * size
    half = 2 + torch.rand(B, A, 2, generator=gen, dtype=torch.float64) * 40
    centres = anchor_points[None] + torch.randn(B, A, 2, generator=gen, dtype=torch.float64) * 5
    pred_boxes = torch.cat([centres - half, centres + half], dim=-1)
    gt_boxes = random_boxes(gen, B, G, size=size, min_wh=4, max_wh=120, dtype=torch.float64)
    gt_labels = torch.randint(0, max(C, 1), (B, G), generator=gen)
    gt_mask = torch.rand(B, G, generator=gen) >= pad_frac
    # padding GTs hold junk, as real padded batches may
    gt_labels = torch.where(gt_mask, gt_labels, torch.full_like(gt_labels, -7))
    cast = dict(dtype=dtype, device=device)
    return (pred_scores.to(**cast), pred_boxes.to(**cast), anchor_points.to(**cast),
            gt_labels.to(device), gt_boxes.to(**cast), gt_mask.to(device))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, msg: str = "") -> None:
    rtol, atol = TOL[dtype or actual.dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                               equal_nan=True, msg=lambda m: f"{msg}\n{m}" if msg else m)


def inject_nonfinite(gen: torch.Generator, inputs, gt_frac: float = 0.3, anchor_frac: float = 0.03,
                     values=(float("nan"),), first_gt: int = 0):
    """A copy of alignment_metric / TAL ``inputs`` with one coordinate of about ``gt_frac`` of
    the GTs (index >= ``first_gt``; each of x1, y1, x2, y2 in turn, so every position is hit)
    and one coordinate of about ``anchor_frac`` of the anchor points set to one of ``values``
    (NaN, +-inf). Returns (inputs, (B, G) bool of the GTs hit)."""
    ps, pb, ap, gl, gb, gm = inputs
    gb, ap = gb.clone(), ap.clone()
    B, G = gm.shape
    hit = torch.rand(B, G, generator=gen) < gt_frac
    hit[:, :first_gt] = False
    if G > first_gt:  # at least one hit, at a random valid place
        b = int(torch.randint(0, B, (1,), generator=gen)) if B else 0
        g = int(torch.randint(first_gt, G, (1,), generator=gen))
        if B:
            hit[b, g] = True
    for n, (b, g) in enumerate(hit.nonzero().tolist()):
        gb[b, g, n % 4] = values[n % len(values)]
    a_hit = (torch.rand(ap.shape[0], generator=gen) < anchor_frac).nonzero().flatten().tolist()
    for n, a in enumerate(a_hit):
        ap[a, n % 2] = values[n % len(values)]
    return (ps, pb, ap, gl, gb, gm), hit


# ---- the CUDA emulator (tests/emu_build.py): fixtures of test_cuda_emu.py, test_losses_emu.py ----


@pytest.fixture(scope="module")
def emu():
    """torch.ops.tood_ext_emu, built on first use (about 35 s on 2 cores) into build/cuda_emu."""
    from emu_build import load_emulator

    return load_emulator()


@pytest.fixture(params=["full-grid", "grid-cap-2", "int64-index"])
def ops(request, emu):
    """The emulated ops: with the launches' own grids; with every grid-stride launch cut to 2
    blocks, so that each grid-stride loop takes several turns; or with the kernels' 64-bit index
    instantiations (both on a GPU only at sizes far beyond these)."""
    emu._set_grid_cap(2 if request.param == "grid-cap-2" else 0)
    emu._set_force_int64_index(request.param == "int64-index")
    yield emu
    emu._set_grid_cap(0)
    emu._set_force_int64_index(False)


def random_obbs(gen: torch.Generator, *shape: int, size: float = 100.0, min_wh: float = 0.5,
                max_wh: float = 60.0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Oriented boxes (cx, cy, w, h, angle), angle in [-pi, pi), shape (*shape, 5)."""
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * size
    wh = min_wh + torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * (max_wh - min_wh)
    angle = (torch.rand(*shape, 1, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    return torch.cat([xy, wh, angle], dim=-1).to(dtype=dtype, device=device)
