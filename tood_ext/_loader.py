"""Loading of the compiled kernels and what the build contains."""
from __future__ import annotations

import torch

try:  # importing the library runs its TORCH_LIBRARY registrations
    from . import _C  # noqa: F401

    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _C = None
    _IMPORT_ERROR = exc


def has_ops() -> bool:
    """True when the compiled kernels (``tood_ext._C``) are loaded."""
    return _C is not None


def require_ops() -> None:
    if _C is None:
        raise RuntimeError(
            "tood_ext's compiled kernels could not be loaded "
            f"({_IMPORT_ERROR}). Build them against your torch with "
            "`pip install --no-build-isolation -e .`; the pure-PyTorch references in "
            "tood_ext.reference work without them."
        )


def _cuda_version_int() -> int:
    return int(torch.ops.tood_ext._cuda_version()) if _C is not None else -1


_CUDA_VERSION = _cuda_version_int()
CUDA_BUILT = _CUDA_VERSION >= 0


def build_info() -> dict:
    """What this installation of tood_ext was built with.

    Keys: ``torch`` (version), ``torch_cuda`` (CUDA version torch was built for, or None),
    ``ops_loaded``, ``cuda`` (CUDA kernels compiled in), ``cuda_version`` ("13.0" or None),
    ``cuda_archs`` (the TORCH_CUDA_ARCH_LIST compiled for, as a list), ``num_threads``
    (threads the CPU kernels use, torch.get_num_threads()).
    """
    archs = str(torch.ops.tood_ext._cuda_archs()) if _C is not None else ""
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ops_loaded": _C is not None,
        "cuda": CUDA_BUILT,
        "cuda_version": (f"{_CUDA_VERSION // 1000}.{(_CUDA_VERSION % 1000) // 10}"
                         if CUDA_BUILT else None),
        "cuda_archs": [a for a in archs.replace(" ", ";").split(";") if a],
        "num_threads": torch.get_num_threads(),
    }


def check_inputs(op: str, **tensors: torch.Tensor | None) -> None:
    """Clear errors before dispatch: kernels missing, or a CUDA tensor on a CPU-only build."""
    require_ops()
    if CUDA_BUILT:
        return
    for name, t in tensors.items():
        if t is not None and t.is_cuda:
            raise RuntimeError(
                f"tood_ext.{op}: {name} is a CUDA tensor but this build of tood_ext has no CUDA "
                "kernels (tood_ext.build_info()['cuda'] is False). Rebuild with a CUDA build of "
                "torch and nvcc available (CUDA_HOME, FORCE_CUDA=1), or use tood_ext.reference."
            )
