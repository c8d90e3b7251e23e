"""setup.py's decisions: CUDA or not, arch list, FORCE_CUDA, and the no-torch message.

Runs `python setup.py --name`, which evaluates the extension configuration (and prints the
build summary) without compiling anything.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_TOOLKIT = os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                          "bin", "nvcc"))


def _setup(env_update: dict, tmp_path=None, extra_path=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_CUDA", "TOOD_EXT_CPU_ONLY", "TORCH_CUDA_ARCH_LIST")}
    env.update(env_update)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cpu_only_switch():
    proc = _setup({"TOOD_EXT_CPU_ONLY": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "CPU kernels: yes; CUDA kernels: no (TOOD_EXT_CPU_ONLY=1)" in proc.stdout


def test_force_cuda_fails_loudly_without_a_toolkit(tmp_path):
    proc = _setup({"FORCE_CUDA": "1", "CUDA_HOME": str(tmp_path / "no-cuda-here")})
    assert proc.returncode != 0
    assert "FORCE_CUDA=1 but the CUDA kernels cannot be built" in proc.stderr


@pytest.mark.skipif(torch.version.cuda is None or not HAS_TOOLKIT,
                    reason="needs a CUDA build of torch and nvcc (CI has both)")
def test_cuda_arch_list_default_and_override():
    proc = _setup({})
    assert proc.returncode == 0, proc.stderr
    if not torch.cuda.is_available():
        assert "TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX" in proc.stdout
    proc = _setup({"TORCH_CUDA_ARCH_LIST": "9.0a"})
    assert "CUDA kernels: yes" in proc.stdout and "TORCH_CUDA_ARCH_LIST=9.0a" in proc.stdout


def test_without_torch_the_build_stops_with_instructions(tmp_path):
    # what a plain `pip install .` sees in its isolated build environment: no torch
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    proc = _setup({}, extra_path=tmp_path)
    assert proc.returncode != 0
    assert "pip install --no-build-isolation ." in proc.stderr
