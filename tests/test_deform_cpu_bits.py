"""The CPU deform kernels' variants give the same bits: the ISA clones (the dispatched one,
AVX2 on x86-64 CPUs that have it, vs TOOD_EXT_CPU_ISA=generic) and the two paths (planar,
pixel-major: TOOD_EXT_DEFORM_CPU_PATH), forward and every gradient, at 1 and 2 threads
(1 thread: the fused backward; 2: the two-pass one where there are few blocks).

The switches are read once per process (csrc/cpu/deform_sampling_cpu.cpp), so each variant
runs in its own subprocess (tests/deform_bits_worker.py) on the same random inputs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tood_ext import reference as ref

from conftest import assert_close

HERE = Path(__file__).resolve().parent
VARIANTS = [(isa, path) for isa in ("dispatched", "generic") for path in ("planar", "pixel_major")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    seed = int(os.environ.get("TOOD_TEST_SEED", torch.randint(2**31, (1,)).item()))
    tmp = tmp_path_factory.mktemp("deform-bits")
    procs = {}
    for isa, path in VARIANTS:
        env = {k: v for k, v in os.environ.items()
               if k not in ("TOOD_EXT_CPU_ISA", "TOOD_EXT_DEFORM_CPU_PATH")}
        env["TOOD_EXT_DEFORM_CPU_PATH"] = path
        if isa == "generic":
            env["TOOD_EXT_CPU_ISA"] = "generic"
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
        out = tmp / f"{isa}-{path}.pt"
        procs[isa, path] = (out, subprocess.Popen(
            [sys.executable, str(HERE / "deform_bits_worker.py"), str(seed), str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for key, (out, proc) in procs.items():
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"{key} (seed {seed}):\n{log}"
        results[key] = torch.load(out)
    return seed, results


def _assert_same_bits(got, want, what):
    torch.testing.assert_close(got["output"], want["output"], rtol=0, atol=0, equal_nan=True,
                               msg=lambda s: f"{what} output: {s}")
    for name, g, e in zip(("input", "offset", "mask"), got["grads"], want["grads"]):
        torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda s: f"{what} grad of {name}: {s}")


def test_values_are_right(runs):
    # the baseline of the comparisons below: float64 forward vs the reference (non-finite
    # positions are float32-only; float32 positions i + dy round by up to ~1e-5 px at i ~ 130)
    seed, results = runs
    for key, r in results["generic", "planar"].items():
        if key[1] == str(torch.float64):
            x, off, m = r["inputs"]
            want = ref.deform_sampling(x, off, m)
            assert_close(r["output"], want, msg=f"{key} (seed {seed})")


@pytest.mark.parametrize("path", ["planar", "pixel_major"])
def test_generic_isa_gives_the_dispatched_bits(runs, path):
    seed, results = runs
    for key, want in results["dispatched", path].items():
        _assert_same_bits(results["generic", path][key], want, f"{path} {key} (seed {seed})")


@pytest.mark.parametrize("isa", ["dispatched", "generic"])
def test_cpu_paths_give_the_same_bits(runs, isa):
    # the planar path (gathers per channel plane) and the pixel-major one (chunks of 8 channels
    # transposed to pixel-major scratch) do the same operations in the same order; and each
    # gives the same bits at 1 and 2 threads (fused vs two-pass backward schedule)
    seed, results = runs
    want_all = results[isa, "planar"]
    for key, got in results[isa, "pixel_major"].items():
        single = key[:3] + (1,)
        _assert_same_bits(got, want_all[single], f"{isa} pixel_major {key} (seed {seed})")
        _assert_same_bits(want_all[key], want_all[single], f"{isa} planar {key} (seed {seed})")
