"""The CMake build for C++ users (CMakeLists.txt): configure, build, run, install.

CPU-only (-DTOOD_EXT_WITH_CUDA=OFF) to keep the time down (about 30 s on 2 cores): the
library libtood_ext_ops and the tood_ext_smoke executable, which finds tood_ext::box_iou in
the dispatcher from plain C++ and checks it against IoUs computed by hand.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")


def _run(cmd, timeout, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
                    f"--- stdout (tail) ---\n{proc.stdout[-6000:]}\n"
                    f"--- stderr (tail) ---\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory):
    torch_prefix = subprocess.run(
        [sys.executable, "-c", "import torch.utils; print(torch.utils.cmake_prefix_path)"],
        capture_output=True, text=True, check=True).stdout.strip()
    build = tmp_path_factory.mktemp("cmake-build")
    _run(["cmake", "-S", ROOT, "-B", build,
          "-DCMAKE_BUILD_TYPE=Release",
          "-DTOOD_EXT_WITH_CUDA=OFF",
          f"-DCMAKE_PREFIX_PATH={torch_prefix}",
          f"-DPython3_EXECUTABLE={sys.executable}"], timeout=300)
    _run(["cmake", "--build", build, "-j", "2"], timeout=900)
    return build


def test_smoke_executable(cmake_build):
    exe = cmake_build / "tood_ext_smoke"
    assert exe.is_file(), f"no {exe}"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "found tood_ext::box_iou(" in out, out
    assert "built with CUDA: no" in out, out
    assert "MISMATCH" not in out, out
    assert out.rstrip().endswith("tood_ext smoke: OK"), out


def test_install(cmake_build, tmp_path):
    prefix = tmp_path / "prefix"
    _run(["cmake", "--install", cmake_build, "--prefix", prefix], timeout=120)
    libs = list(prefix.glob("lib*/libtood_ext_ops.so*"))
    assert libs, sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*"))
    include = prefix / "include" / "tood_ext"
    assert (include / "macros.h").is_file()
    assert (include / "box_ops" / "box_ops.h").is_file()
    assert list(prefix.glob("lib*/cmake/tood_ext/tood_extConfig.cmake"))
