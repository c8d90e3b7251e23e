"""Builds and loads the CUDA emulator's test library, ``torch.ops.tood_ext_emu``: the sources of
csrc/cuda/*.cu compiled by the host compiler with ``-DTOOD_CUDA_EMU`` (csrc/tools/cuda_emu.h),
into build/cuda_emu, or with AddressSanitizer into build/cuda_emu_asan (that library loads only
in a process started with the ASan runtime preloaded: see emu_memcheck.py)."""
from __future__ import annotations

import glob
import os
import subprocess

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def correctness_flags() -> list[str]:
    """The C++ flags the bits rest on, as setup.py and CMake read them."""
    with open(os.path.join(CSRC, "correctness_flags.txt")) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def asan_runtime() -> str | None:
    """Path of the C++ compiler's AddressSanitizer runtime, or None."""
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None


def load_emulator(asan: bool = False):
    """Builds (first use: ~35 s on 2 cores, ~60 s with ASan) and loads the library."""
    from torch.utils.cpp_extension import load

    sources = [os.path.join(CSRC, "tools", "cuda_emu.cpp"),
               os.path.join(CSRC, "tools", "cuda_emu_ops.cpp")]
    sources += sorted(glob.glob(os.path.join(CSRC, "tools", "emu", "*.cpp")))
    flags = ["-std=c++20", "-DTOOD_CUDA_EMU", "-Wno-unknown-pragmas"] + correctness_flags()
    if asan:  # -O0: half the compile time of -O1 (57 vs 115 s on 2 cores) for 7 s more run
        flags += ["-O0", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    else:
        flags += ["-O2"]
    name = "tood_ext_emu_asan" if asan else "tood_ext_emu"
    build = os.path.join(ROOT, "build", name.replace("tood_ext_", "cuda_"))
    os.makedirs(build, exist_ok=True)
    load(name=name, sources=sources, extra_include_paths=[CSRC], extra_cflags=flags,
         extra_ldflags=["-fsanitize=address"] if asan else [], build_directory=build,
         is_python_module=False, verbose=False)
    return torch.ops.tood_ext_emu
