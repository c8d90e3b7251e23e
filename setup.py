"""Build script of tood-ext: the C++ CPU kernels always, the CUDA kernels when possible.

Install against the torch you already have (as flash-attention and apex do):

    pip install --no-build-isolation .        # or -e . for development

Environment switches:
    CUDA_HOME=/path          CUDA toolkit (default: /usr/local/cuda when it has bin/nvcc;
                             torch's own guess from `which nvcc` can point at a wrapper)
    TORCH_CUDA_ARCH_LIST     e.g. "9.0" or "8.0;9.0+PTX"; default: the visible GPUs' archs,
                             or "8.0;9.0+PTX" when no GPU is visible
    FORCE_CUDA=1             fail unless the CUDA kernels can be built
    TOOD_EXT_CPU_ONLY=1      build the CPU kernels only
    MAX_JOBS                 parallel compile jobs (ninja)
"""
import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    return home


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first.
_CUDA_HOME = _cuda_home()
if _CUDA_HOME:
    os.environ["CUDA_HOME"] = _CUDA_HOME

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # the isolated build env of a plain `pip install .`
    sys.exit(
        "tood-ext compiles its kernels against the torch already installed in your environment, "
        f"but torch could not be imported here ({exc}).\n"
        "Install torch first, then build without build isolation:\n"
        "    pip install --no-build-isolation .\n"
        "(a plain `pip install .` builds in an isolated environment without your torch)."
    )


def _cuda_decision():
    """(build_cuda, reason) following TOOD_EXT_CPU_ONLY, FORCE_CUDA and what is installed."""
    if _env_flag("TOOD_EXT_CPU_ONLY"):
        return False, "TOOD_EXT_CPU_ONLY=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    nvcc = os.path.join(_CUDA_HOME or "", "bin", "nvcc")
    if not _CUDA_HOME or not os.path.exists(nvcc):
        return False, "nvcc not found (set CUDA_HOME to the CUDA toolkit)"
    return True, f"nvcc at {nvcc}"


def _arch_list():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if archs:
        return archs
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = ";".join(f"{major}.{minor}" for major, minor in caps)
    else:
        archs = DEFAULT_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # what torch.utils.cpp_extension reads
    return archs


def _nvcc_version():
    try:
        out = subprocess.run([os.path.join(_CUDA_HOME, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[-1]
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def _wheel_cuda_include():
    """Headers that torch's CUDA headers need (cusparse.h, cublas_v2.h, ...) but a minimal
    toolkit lacks: take them from the nvidia/cu13 (or cu12) pip wheels installed with torch.
    Added with -isystem, so the toolkit's own -I headers keep priority."""
    if os.path.exists(os.path.join(_CUDA_HOME, "include", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package of the CUDA wheels
    except ImportError:
        return []
    for base in getattr(nvidia, "__path__", []):
        for sub in ("cu13", "cu12"):
            inc = os.path.join(base, sub, "include")
            if os.path.exists(os.path.join(inc, "cusparse.h")):
                return [inc]
    return []


def _extensions():
    build_cuda, reason = _cuda_decision()
    if _env_flag("FORCE_CUDA") and not build_cuda:
        raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fno-trapping-math lets GCC if-convert, hence vectorise, the branch-free pair math;
    # -ffp-contract=off: no FMA contraction, so the CPU kernels' ISA clones (csrc/cpu) give the
    # same bits as their baseline code
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    ext_kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    if build_cuda:
        archs = _arch_list()
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define = [("TOOD_EXT_WITH_CUDA", None), ("TOOD_EXT_CUDA_ARCHS", f'"{archs}"')]
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                "--threads", os.environ.get("NVCC_THREADS", "2")]
        for inc in _wheel_cuda_include():
            cxx += ["-isystem", inc]
            nvcc += ["-isystem", inc]
        ext = CUDAExtension("tood_ext._C", sources, define_macros=define,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **ext_kwargs)
        summary = f"CUDA kernels: yes ({reason}; {_nvcc_version()}; TORCH_CUDA_ARCH_LIST={archs})"
    else:
        ext = CppExtension("tood_ext._C", sources, extra_compile_args={"cxx": cxx}, **ext_kwargs)
        summary = f"CUDA kernels: no ({reason})"
    print(f"[tood-ext] torch {torch.__version__}; CPU kernels: yes; {summary}", flush=True)
    return [ext]


setup(
    packages=find_packages(include=["tood_ext", "tood_ext.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
