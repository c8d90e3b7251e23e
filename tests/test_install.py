"""Installation that tells the truth: the build's CUDA warning, the torch stamp, the release wheel.

- A build that leaves the CUDA kernels out warns where a user sees it: pip hides the build
  backend's output unless the build fails or runs with -v, so setup.py also writes the warning
  to the terminal. Checked with a real `pip install --dry-run` (it runs setup.py's metadata step,
  where the warning is made, without compiling) under a pseudo-terminal at pip's default
  verbosity.
- The torch a build was compiled against is stamped into the package and compared at import:
  another torch minor stops the import with one error naming both versions and the rebuild
  command, before the library is loaded.
- The release wheel: `pip wheel` of a copy of this tree pins the torch minor, carries the stamp
  and a stripped library, installs into a fresh venv and passes the core op tests there. To keep
  CI's time, the wheel packages the library this checkout already built (`make` compiled it
  with the same setup.py and flags) through setup.py's TOOD_EXT_PREBUILT_LIB, which copies it
  and the stamp written with it instead of compiling again. The fresh venv has nothing
  installed but the wheel; torch and pytest come from this interpreter's site-packages through a
  plain path entry. `.ci/torch-check` does the same from scratch (torch installed into the venv
  from the index, the library compiled): see README "Installing".
"""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import torch

import tood_ext
from tood_ext import _loader

ROOT = Path(__file__).resolve().parents[1]
MAJOR, MINOR, PATCH = _loader._release(torch.__version__)
BUILD_VARS = ("FORCE_CUDA", "TOOD_EXT_CPU_ONLY", "TOOD_EXT_SKIP_TORCH_CHECK", "PYTHONPATH")


def _env(**update) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in BUILD_VARS}
    env.update(update)
    return env


def _copy_sources(dst: Path) -> None:
    """What a source distribution holds: setup.py, pyproject.toml, README.md, csrc/, tood_ext/."""
    skip = shutil.ignore_patterns("__pycache__", "_C*.so", "_build_stamp.py")
    dst.mkdir(parents=True)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    for name in ("csrc", "tood_ext"):
        shutil.copytree(ROOT / name, dst / name, ignore=skip)


def _run(cmd, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
                    f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def _run_in_terminal(cmd, env, cwd, timeout=180) -> tuple[int, str]:
    """Run cmd with a pseudo-terminal as its terminal (what a user at a shell sees)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: never returns
        try:
            os.chdir(cwd)
            os.execvpe(str(cmd[0]), [str(c) for c in cmd], env)
        finally:
            os._exit(127)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), " ".join(out.decode(errors="replace").split())


# ---------------------------------------------------------------------------------------------
# the CUDA decision, visible at pip's default verbosity
# ---------------------------------------------------------------------------------------------


def test_cpu_only_build_warns_at_default_pip_verbosity(tmp_path):
    src = tmp_path / "src"
    _copy_sources(src)
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation",
           "--no-deps", "--no-index", src]
    # no toolkit: CUDA_HOME names an empty place, so nvcc is not found
    code, out = _run_in_terminal(pip, _env(CUDA_HOME=str(tmp_path / "no-cuda")), tmp_path)
    assert code == 0, out
    assert "Would install tood-ext" in out, out
    assert out.count("WARNING [tood-ext]: building WITHOUT CUDA kernels") == 1, out
    if torch.version.cuda is not None:
        assert "nvcc not found" in out and "CUDA_HOME" in out and "FORCE_CUDA=1" in out, out
    else:
        assert f"torch {torch.__version__} is not a CUDA build" in out, out
    assert "build_info()['cuda_reason']" in out, out
    # asked for by name: no warning
    code, out = _run_in_terminal(pip, _env(CUDA_HOME=str(tmp_path / "no-cuda"),
                                           TOOD_EXT_CPU_ONLY="1"), tmp_path)
    assert code == 0 and "Would install tood-ext" in out, out
    assert "WITHOUT CUDA kernels" not in out, out


def test_gpu_left_unused_warning():
    warn = _loader.gpu_left_unused
    text = warn(False, "nvcc not found (set CUDA_HOME to the CUDA toolkit)", True)
    assert "nvcc not found" in text and "FORCE_CUDA=1" in text and _loader.REBUILD in text
    assert warn(True, "nvcc at /usr/local/cuda/bin/nvcc", True) is None
    assert warn(False, "nvcc not found", False) is None  # no GPU: nothing is lost
    assert warn(False, "TOOD_EXT_CPU_ONLY=1", True) is None  # asked for
    assert warn(False, None, True) is None  # no stamp: reason unknown


# ---------------------------------------------------------------------------------------------
# the torch stamp
# ---------------------------------------------------------------------------------------------


def test_torch_mismatch_rules():
    check = _loader.torch_mismatch
    assert check("2.14.1+cu130", "13.0", True, "2.14.1+cu130", "13.0") is None
    assert check("2.14.1+cu130", "13.0", True, "2.14.1+cu132", "13.2") is None  # CUDA minor
    kind, text = check("2.14.1+cu130", "13.0", False, "2.14.0", "13.0")
    assert kind == "warning" and "2.14.1+cu130" in text and "2.14.0" in text
    kind, text = check("2.14.1", None, False, "2.14.1+cu130", "13.0")  # CPU kernels, CPU torch
    assert kind == "warning"
    for running, cuda in [("2.13.0+cpu", None), ("2.15.0+cu132", "13.2"), ("3.14.1", "13.0"),
                          ("2.15.0a0+git1234", "13.0")]:
        kind, text = check("2.14.1+cu130", "13.0", True, running, cuda)
        assert kind == "error", (running, text)
        assert "2.14.1+cu130" in text and running in text and _loader.REBUILD in text
    kind, text = check("2.14.1+cu130", "13.0", True, "2.14.1+cpu", None)
    assert kind == "error" and "CUDA build of torch" in text
    kind, text = check("2.14.1+cu130", "13.0", True, "2.14.1+cu126", "12.6")
    assert kind == "error" and "major" in text
    assert check("2.14.1+cu130", "13.0", False, "2.14.1+cu126", "12.6") is None  # CPU kernels


def _package_copy(tmp_path: Path, lib: str, stamp_torch: str | None) -> Path:
    """tood_ext's Python files in tmp_path/tood_ext, with lib = "real" (a link to the loaded
    library), "junk" (a file no loader accepts) or "none", and a stamp naming stamp_torch."""
    pkg = tmp_path / "tood_ext"
    shutil.copytree(ROOT / "tood_ext", pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "_C*.so", "_build_stamp.py"))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    if lib == "real":
        os.symlink(_loader._C.__file__, pkg / f"_C{suffix}")
    elif lib == "junk":
        (pkg / f"_C{suffix}").write_bytes(b"not a shared library")
    if stamp_torch is not None:
        (pkg / "_build_stamp.py").write_text(
            f"TORCH_VERSION = {stamp_torch!r}\nTORCH_CUDA = {torch.version.cuda!r}\n"
            f"CUDA_KERNELS = {tood_ext.build_info()['cuda']!r}\nCUDA_REASON = 'test'\n"
            "NVCC = None\n")
    return tmp_path


def _import_in(path: Path, code: str = "import tood_ext", **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=path, env=_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_other_torch_minor_stops_the_import(tmp_path):
    built = f"{MAJOR}.{MINOR + 1}.0"
    # a library that cannot load: the error must come from the check, before loading
    proc = _import_in(_package_copy(tmp_path, "junk", built))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: tood_ext was built against torch " + built), proc.stderr
    assert f"but torch {torch.__version__}" in last and _loader.REBUILD in last, last
    assert proc.stderr.count("tood_ext was built against") == 1, proc.stderr


@pytest.mark.skipif(not tood_ext.has_ops(), reason="compiled ops not built")
def test_same_minor_or_override_loads_with_a_warning(tmp_path):
    code = "import tood_ext; print('ops', tood_ext.has_ops(), tood_ext.build_info()['built_torch'])"
    other_patch = f"{MAJOR}.{MINOR}.{PATCH + 1}"
    proc = _import_in(_package_copy(tmp_path / "a", "real", other_patch), code)
    assert proc.returncode == 0, proc.stderr
    assert f"ops True {other_patch}" in proc.stdout
    assert "RuntimeWarning" in proc.stderr and other_patch in proc.stderr, proc.stderr
    other_minor = f"{MAJOR}.{MINOR + 1}.0"
    proc = _import_in(_package_copy(tmp_path / "b", "real", other_minor), code,
                      TOOD_EXT_SKIP_TORCH_CHECK="1")
    assert proc.returncode == 0 and "ops True" in proc.stdout, proc.stderr
    assert "RuntimeWarning" in proc.stderr and other_minor in proc.stderr, proc.stderr
    proc = _import_in(_package_copy(tmp_path / "c", "real", torch.__version__), code)
    assert proc.returncode == 0 and "ops True" in proc.stdout, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr


def test_source_tree_without_kernels_says_so(tmp_path):
    # the source tree shadows an installed tood_ext (not an editable one: setuptools' editable
    # finder would supply _C from its own checkout, so this test takes it away)
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            "import torch, tood_ext\n"
            "print(tood_ext.has_ops())\n"
            "tood_ext.box_iou(torch.rand(2, 4), torch.rand(3, 4))\n")
    proc = _import_in(_package_copy(tmp_path, "none", None), code)
    assert proc.returncode != 0 and proc.stdout.strip() == "False", proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: tood_ext's compiled kernels are not loaded"), last
    assert f"imported from {tmp_path / 'tood_ext'}, which holds no compiled kernels" in last, last
    assert "make build" in last and "circular" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------
# the release wheel in a fresh venv
# ---------------------------------------------------------------------------------------------


def _elf_sections(data: bytes) -> set[str]:
    """Section names of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # (name offset, file offset, size)
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    strtab = data[str_off:str_off + str_size]
    return {strtab[n:strtab.index(b"\0", n)].decode() for n, _, _ in map(header, range(shnum))}


@pytest.fixture(scope="module")
def release_wheel(tmp_path_factory):
    if not tood_ext.has_ops():
        pytest.skip("compiled ops not built")
    lib = Path(_loader._C.__file__)
    if not (lib.parent / "_build_stamp.py").is_file():
        pytest.skip("the loaded _C has no _build_stamp.py beside it (copied by hand: `make build` "
                    "or setup.py writes both)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    _copy_sources(src)
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
          "-w", tmp / "dist", src], env=_env(TOOD_EXT_PREBUILT_LIB=str(lib)), cwd=tmp,
         timeout=600)
    wheels = list((tmp / "dist").glob("tood_ext-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], lib


def test_release_wheel_pins_torch_stamps_and_strips(release_wheel):
    wheel, lib = release_wheel
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        stamp = z.read("tood_ext/_build_stamp.py").decode()
        so = [n for n in names if n.startswith("tood_ext/_C") and n.endswith(".so")]
        assert len(so) == 1, names
        data = z.read(so[0])
    torch_reqs = [line for line in meta.splitlines() if line.startswith("Requires-Dist: torch")
                  and "extra ==" not in line]
    assert torch_reqs == [f"Requires-Dist: torch=={MAJOR}.{MINOR}.*"], torch_reqs
    values = {}
    exec(stamp, values)  # noqa: S102 - our own generated file
    assert values["TORCH_VERSION"] == torch.__version__
    assert values["TORCH_CUDA"] == torch.version.cuda
    assert values["CUDA_KERNELS"] == tood_ext.build_info()["cuda"]
    assert data == lib.read_bytes()
    sections = _elf_sections(data)
    assert ".text" in sections and not any(s.startswith(".debug") for s in sections), sections


@pytest.fixture(scope="module")
def fresh_venv(release_wheel, tmp_path_factory):
    wheel, _ = release_wheel
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    vpy = venv / "bin" / "python"
    purelib = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                   .stdout.strip())
    # torch, numpy and pytest from this interpreter's site-packages, as a plain path entry: its
    # .pth files (an editable tood_ext among them) are not run, and the venv's own
    # site-packages, where the wheel goes, comes first
    (purelib / "_parent_site.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index",
          "--ignore-installed",  # a tood_ext in the path entry is not this venv's
          wheel], env=_env(), cwd=tmp)
    return vpy, purelib, tmp


def test_wheel_in_a_fresh_venv_passes_the_core_tests(fresh_venv):
    vpy, purelib, tmp = fresh_venv
    info = json.loads(_run([vpy, "-c", "import json, tood_ext; print(json.dumps("
                                       "[tood_ext.__file__, tood_ext.build_info()]))"],
                           env=_env(), cwd=tmp).stdout)
    path, info = info
    assert Path(path).is_relative_to(purelib), path
    assert info["ops_loaded"] and info["built_torch"] == torch.__version__, info
    assert info["cuda"] == tood_ext.build_info()["cuda"] and info["cuda_reason"], info
    tests = tmp / "tests"
    tests.mkdir()
    for name in ("conftest.py", "test_box_ops.py", "test_deform_sampling.py"):
        shutil.copy2(ROOT / "tests" / name, tests / name)
    proc = subprocess.run([vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", tests],
                          env=_env(), cwd=tmp, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail


# ---------------------------------------------------------------------------------------------
# the Makefile's TORCH_SPEC (dry runs: the commands make would run)
# ---------------------------------------------------------------------------------------------


def _make_n(venv: Path, *args: str) -> str:
    env = {k: v for k, v in _env().items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return _run(["make", "-n", "-C", ROOT, f"VENV={venv}", *args, "build"], env=env).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_makefile_follows_torch_spec(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".deps").write_text("torch==2.14.1 torchvision==0.29.1\n")
    (venv / ".built").touch()
    assert "pip install" not in _make_n(venv, "TORCH_SPEC=torch==2.14.1 torchvision==0.29.1")
    out = _make_n(venv, "TORCH_SPEC=torch==2.15.0 torchvision")
    assert f"rm -rf {venv}" in out and "pip install -q torch==2.15.0 torchvision" in out, out
    assert "pip install --no-build-isolation --no-deps -e ." in out, out  # rebuilt against it
    out = _make_n(venv, "TORCH_SPEC=system")
    assert f"rm -rf {venv}" in out and "_tood_parent_env.pth" in out, out
    assert "pip install -q torch" not in out and f"-c {venv}/torch-constraint.txt" in out, out
    # a fresh venv: nothing to remove
    assert "rm -rf" not in _make_n(tmp_path / "new", "TORCH_SPEC=torch==2.15.0")
