"""What a run's numbers depend on besides the code and the seed: recorded next to the results.

On the CPU a training run is a pure function of (code, seed, settings, torch version, thread
count, the instruction-set paths torch's libraries pick on the CPU): none of it reads the clock
or the load. Change any of those and the floating-point sums are added in another order, the
trajectory moves by rounding, and over hundreds of steps it ends elsewhere (README, "The
detector, end to end"). :func:`run_conditions` lists them so two results can be compared.
"""
from __future__ import annotations

import os
import platform

import torch

# environment variables that choose a numerical code path (ISA, kernel variant) or thread count
NUMERIC_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY",
                    "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                    "MKL_CBWR", "TOOD_EXT_CPU_ISA", "TOOD_EXT_DEFORM_CPU_PATH")

# CPU flags that decide which kernels torch's CPU libraries (ATen, oneDNN, MKL) run
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key == "model name" and not model:
                    model = line.split(":", 1)[1].strip()
                elif key == "flags" and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown", flags


def run_conditions(device="cpu") -> dict:
    """Machine, library versions, thread count, ISA paths and numerical environment variables
    of this process (everything besides code, seed and settings that a result depends on)."""
    model, flags = _cpuinfo()
    info = {
        "cpu_model": model,
        "cpu_isa_flags": [f for f in _ISA_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cpu_capability": _safe(lambda: torch.backends.cpu.get_cpu_capability()),
        "torch_num_threads": torch.get_num_threads(),
        "device": str(device),
        "env": {k: os.environ[k] for k in NUMERIC_ENV_VARS if k in os.environ},
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None
