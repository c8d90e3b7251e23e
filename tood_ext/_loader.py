"""Loading of the compiled kernels and what the build contains.

Before ``tood_ext._C`` is loaded, the torch it was compiled against (``_build_stamp.py``, written
by setup.py next to it) is compared with the running torch: torch's C++ ABI changes between
releases, and a library built for another torch fails at its first op with a bare linker error
(or works by chance). A different torch minor, or CUDA kernels next to a torch without (the same
major of) CUDA, stops the import with one error naming both versions and the rebuild command;
``TOOD_EXT_SKIP_TORCH_CHECK=1`` loads the library anyway, with a warning.
"""
from __future__ import annotations

import glob
import os
import re
import warnings

import torch

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

try:
    from . import _build_stamp as _STAMP
except ImportError:  # built before stamps existed, or by hand: no check possible
    _STAMP = None


def _release(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as '2.14.1+cu130' or '2.15.0a0+git1'."""
    nums = [int(m.group()) if (m := re.match(r"\d+", p)) else 0
            for p in version.split("+")[0].split(".")[:3]]
    return tuple(nums + [0] * (3 - len(nums)))


def torch_mismatch(built_torch: str, built_cuda: str | None, cuda_kernels: bool,
                   running_torch: str, running_cuda: str | None) -> tuple[str, str] | None:
    """Compare the torch tood_ext was compiled against with the running one.

    Returns None when they agree, ``("warning", text)`` where the library still loads
    (another patch release of the same minor), ``("error", text)`` where it must not.
    """
    rebuild = (f"Rebuild tood_ext against the torch you run: `{REBUILD}` in its source tree "
               "(`make build` there for the project's .venv), or install the torch it was built "
               f"for (torch=={built_torch.split('+')[0]}).")
    both = (f"tood_ext was built against torch {built_torch} (CUDA {built_cuda}) but torch "
            f"{running_torch} (CUDA {running_cuda}) is running.")
    b, r = _release(built_torch), _release(running_torch)
    if b[:2] != r[:2]:
        return "error", f"{both} torch's C++ ABI changes between minor releases. {rebuild}"
    if cuda_kernels and running_cuda is None:
        return "error", (f"{both} This tood_ext has CUDA kernels, which need a CUDA build of "
                         f"torch. {rebuild}")
    if cuda_kernels and built_cuda and built_cuda.split(".")[0] != running_cuda.split(".")[0]:
        return "error", f"{both} CUDA major versions differ. {rebuild}"
    if b != r or (built_cuda is None) != (running_cuda is None):
        return "warning", (f"{both} Same torch minor: the library loads (patch releases keep the "
                           f"C++ ABI in practice), but only the torch it was built for is "
                           f"tested. {rebuild}")
    return None


def _check_torch() -> None:
    if _STAMP is None:
        return
    found = torch_mismatch(_STAMP.TORCH_VERSION, _STAMP.TORCH_CUDA, _STAMP.CUDA_KERNELS,
                           torch.__version__, torch.version.cuda)
    if found is None:
        return
    kind, text = found
    if kind == "error" and os.environ.get("TOOD_EXT_SKIP_TORCH_CHECK", "") != "1":
        raise ImportError(f"{text} (TOOD_EXT_SKIP_TORCH_CHECK=1 loads it anyway, at your risk.)")
    warnings.warn(text, RuntimeWarning, stacklevel=3)


def _missing_library_message(exc: ImportError) -> str:
    if not glob.glob(os.path.join(_PACKAGE_DIR, "_C*.so")) and not glob.glob(
            os.path.join(_PACKAGE_DIR, "_C*.pyd")):
        return (f"tood_ext is imported from {_PACKAGE_DIR}, which holds no compiled kernels "
                "(no _C library): a source tree that was never built, or one that shadows an "
                "installed tood_ext (run from another directory then). Build it in place with "
                "`make build` or `pip install --no-build-isolation -e .`")
    return f"tood_ext/_C could not be loaded ({exc})"


_check_torch()

try:  # importing the library runs its TORCH_LIBRARY registrations
    from . import _C  # noqa: F401

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _C = None
    _IMPORT_ERROR = _missing_library_message(exc)


def has_ops() -> bool:
    """True when the compiled kernels (``tood_ext._C``) are loaded."""
    return _C is not None


def require_ops() -> None:
    if _C is None:
        raise RuntimeError(
            f"tood_ext's compiled kernels are not loaded: {_IMPORT_ERROR}. Build them against "
            "your torch with `pip install --no-build-isolation -e .`; the pure-PyTorch "
            "references in tood_ext.reference work without them."
        )


def _cuda_version_int() -> int:
    return int(torch.ops.tood_ext._cuda_version()) if _C is not None else -1


_CUDA_VERSION = _cuda_version_int()
CUDA_BUILT = _CUDA_VERSION >= 0


def gpu_left_unused(cuda_built: bool, cuda_reason: str | None, gpu_visible: bool) -> str | None:
    """The warning for a build that left its CUDA kernels out by accident while a GPU is there
    (pip hides the build's own warning unless run with -v or in a terminal), else None."""
    if cuda_built or not gpu_visible or cuda_reason in (None, "TOOD_EXT_CPU_ONLY=1"):
        return None
    return (f"tood_ext was built without CUDA kernels ({cuda_reason}), but a GPU is visible: "
            "ops on CUDA tensors will raise. Rebuild with the CUDA toolkit found (CUDA_HOME) and "
            f"FORCE_CUDA=1: `FORCE_CUDA=1 {REBUILD}`.")


if _C is not None and not CUDA_BUILT and torch.version.cuda is not None:
    _msg = gpu_left_unused(CUDA_BUILT, getattr(_STAMP, "CUDA_REASON", None),
                           torch.cuda.is_available())
    if _msg:
        warnings.warn(_msg, RuntimeWarning, stacklevel=2)


def build_info() -> dict:
    """What this installation of tood_ext was built with.

    Keys: ``torch`` (version), ``torch_cuda`` (CUDA version torch was built for, or None),
    ``ops_loaded``, ``cuda`` (CUDA kernels compiled in), ``cuda_version`` ("13.0" or None),
    ``cuda_archs`` (the TORCH_CUDA_ARCH_LIST compiled for, as a list), ``num_threads``
    (threads the CPU kernels use, torch.get_num_threads()); from the build's stamp:
    ``built_torch`` and ``built_torch_cuda`` (the torch it was compiled against), ``cuda_reason``
    (why the CUDA kernels are in or out: "nvcc not found ...", "TOOD_EXT_CPU_ONLY=1", ...),
    ``nvcc`` (its version line); None when the build left no stamp. ``load_error``: why the
    kernels are not loaded, or None.
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
        "built_torch": getattr(_STAMP, "TORCH_VERSION", None),
        "built_torch_cuda": getattr(_STAMP, "TORCH_CUDA", None),
        "cuda_reason": getattr(_STAMP, "CUDA_REASON", None),
        "nvcc": getattr(_STAMP, "NVCC", None),
        "load_error": _IMPORT_ERROR,
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
