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
    TOOD_EXT_DEBUG=1         keep debug info (default: -g0 and stripped, as in a release)
    TOOD_EXT_PREBUILT_LIB=tood_ext/_C....so
                             package that library, compiled earlier by this tree against the
                             torch installed here, instead of compiling (build once, test, ship)
    MAX_JOBS                 parallel compile jobs (ninja)

What the build decided is stamped into the package (tood_ext/_build_stamp.py: torch and CUDA
versions, CUDA kernels or not and why; tood_ext.build_info() reports it, and importing tood_ext
next to another torch release stops with an error naming both), and the package requires the
torch minor it was compiled against (torch==X.Y.*). When the CUDA kernels are left out the build
warns, with the reason and the fix; pip hides a build's output unless it fails or runs with -v,
so the warning also goes to the terminal (/dev/tty) when there is one.
"""
import glob
import os
import shutil
import subprocess
import sys
import textwrap

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


def _tell_user(text):
    """Print a build message so that the user sees it: on stderr (pip -v, `setup.py`, logs) and,
    as pip captures the backend's output and shows it only on failure or with -v, on the
    terminal too (/dev/tty) when stderr is not one. pip runs this script twice (metadata, then
    the build): the terminal gets it from the metadata step only, so once."""
    print(text, file=sys.stderr, flush=True)
    metadata_step = any(cmd in sys.argv for cmd in ("dist_info", "egg_info"))
    if sys.stderr.isatty() or not metadata_step:
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write("\n" + text + "\n")
    except OSError:  # no controlling terminal (CI, docker build): stderr only
        pass


def _cpu_only_warning(reason):
    if torch.version.cuda is None:
        fix = ("install a CUDA build of torch (https://pytorch.org/get-started/locally/) and "
               "rebuild")
    else:
        fix = ("point CUDA_HOME at a CUDA toolkit (CUDA_HOME=/usr/local/cuda) and rebuild; "
               "FORCE_CUDA=1 makes a build without CUDA kernels fail, TOOD_EXT_CPU_ONLY=1 asks "
               "for one and silences this warning")
    return textwrap.fill(
        f"WARNING [tood-ext]: building WITHOUT CUDA kernels: {reason}. "
        f"Ops on CUDA tensors will raise an error. To build them: {fix}. "
        f"tood_ext.build_info()['cuda_reason'] repeats this reason after installation.",
        width=100, subsequent_indent="    ")


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


def _prebuilt():
    """TOOD_EXT_PREBUILT_LIB: a tood_ext/_C library compiled earlier by this tree (with the
    _build_stamp.py written beside it), packaged as it is instead of compiling again."""
    path = os.environ.get("TOOD_EXT_PREBUILT_LIB", "").strip()
    if not path:
        return None
    stamp = os.path.join(os.path.dirname(os.path.abspath(path)), "_build_stamp.py")
    if not os.path.isfile(path) or not os.path.isfile(stamp):
        sys.exit(f"TOOD_EXT_PREBUILT_LIB={path}: needs that library and the _build_stamp.py "
                 "its build wrote beside it")
    values = {}
    with open(stamp) as f:
        exec(f.read(), values)  # our own generated file
    if values.get("TORCH_VERSION") != torch.__version__:
        sys.exit(f"TOOD_EXT_PREBUILT_LIB={path} was built against torch "
                 f"{values.get('TORCH_VERSION')}, not the torch {torch.__version__} installed here")
    return os.path.abspath(path), stamp, values


def correctness_flags() -> list:
    """The C++ flags that the results' bits rest on (csrc/correctness_flags.txt, which CMake and
    the CUDA emulator's build read too)."""
    with open(os.path.join(ROOT, "csrc", "correctness_flags.txt")) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def _extensions():
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if PREBUILT:
        lib, _, values = PREBUILT
        print(f"[tood-ext] packaging the prebuilt {lib} (torch {values['TORCH_VERSION']}; CUDA "
              f"kernels: {'yes' if values['CUDA_KERNELS'] else 'no'} ({values['CUDA_REASON']}))",
              flush=True)
        return [CppExtension("tood_ext._C", sources)]  # never compiled
    build_cuda, reason = _cuda_decision()
    if _env_flag("FORCE_CUDA") and not build_cuda:
        raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    # -fno-trapping-math lets GCC if-convert, hence vectorise, the branch-free pair math; the
    # flags the bits rest on (-ffp-contract=off) come from csrc/correctness_flags.txt
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math"] + correctness_flags()
    link = ["-fopenmp"]
    if not _env_flag("TOOD_EXT_DEBUG"):
        # release build: Python's own CFLAGS often carry -g, and debug info is most of an
        # unstripped _C; -g0 after them wins, --strip-debug drops what is left
        cxx += ["-g0"]
        link += ["-Wl,--strip-debug"]
    ext_kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=link)
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
    if not build_cuda and not _env_flag("TOOD_EXT_CPU_ONLY"):
        _tell_user(_cpu_only_warning(reason))
    BUILD_STAMP.update(cuda_kernels=build_cuda, cuda_reason=reason,
                       nvcc=_nvcc_version() if build_cuda else None)
    return [ext]


PREBUILT = _prebuilt()
BUILD_STAMP = {
    "torch_version": torch.__version__,
    "torch_cuda": torch.version.cuda,
}


def _torch_requirement():
    """The torch minor this build is compiled against: its C++ ABI is not stable across minors."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return f"torch=={major}.{minor}.*"


class _BuildExt(BuildExtension.with_options(use_ninja=True)):
    """build_ext that also writes tood_ext/_build_stamp.py next to the compiled library."""

    def build_extension(self, ext):
        if not PREBUILT:
            return super().build_extension(ext)
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target) or not os.path.samefile(PREBUILT[0], target):
            shutil.copyfile(PREBUILT[0], target)

    def run(self):
        super().run()
        if PREBUILT:
            with open(PREBUILT[1]) as f:
                text = f.read()
        else:
            text = ('"""Written by setup.py when tood_ext._C was compiled; read by '
                    'tood_ext._loader."""\n'
                    + "".join(f"{k.upper()} = {v!r}\n" for k, v in BUILD_STAMP.items()))
        dirs = {os.path.join(self.build_lib, "tood_ext")}
        if self.inplace or getattr(self, "editable_mode", False):
            dirs.add(os.path.join(ROOT, "tood_ext"))
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "_build_stamp.py"), "w") as f:
                f.write(text)


setup(
    packages=find_packages(include=["tood_ext", "tood_ext.*"]),
    ext_modules=_extensions(),
    install_requires=[_torch_requirement(), "numpy"],
    cmdclass={"build_ext": _BuildExt},
)
