"""Timing, memory measurement and reporting shared by every benchmark family.

A *family* module (``benchmarks/box_ops.py``, later deformable sampling, TAL assignment, ...)
registers one function with :func:`register_family`; given a device and the ``quick`` flag it
returns a list of :class:`Case`. A case names one line of the report: an op, its sizes, dtype,
pass (``"fwd"`` or ``"fwd+bwd"``) and a ``setup`` callable that builds the inputs on the device
and returns ``{impl: zero-argument callable}`` for the implementations compared on that line
(``"kernel"``, ``"reference"``, ``"torchvision"``; the first is the baseline of the ratios).
A case may add a ``"floor"``: plain torch streaming ops that move the bytes the op must move
(see ``benchmarks/deform_ops.py``); it computes nothing comparable, so it is listed in
``Case.unchecked`` and gets no maxdiff, and its ratio ``floor/kernel`` is the share of that
memory floor the kernel reaches.

Measurement of one case (all implementations in the same process, same inputs):

1. warm-up: each implementation ``warmup`` times; the outputs of the first call are kept long
   enough to compare every implementation with the kernel (``maxdiff`` column), then freed;
2. timing: ``repeats`` rounds, each round calls every implementation once, in an order rotated
   by one each round (interleaved, so drift of clock/thermal state hits all alike); every call
   is timed with ``time.perf_counter`` and, on CUDA, ``torch.cuda.synchronize()`` before and
   after; reported: median, min and inter-quartile range. Unless ``--repeats`` is given, a slow
   implementation gets fewer calls (``Case.impl_repeats``, :data:`TIME_BUDGET_S`), at least
   :data:`MIN_REPEATS`; the JSON keeps every sample, so the count is visible;
3. memory: one more call per implementation (see :data:`MEMORY_METHODS`).

Interference: the share of the machine's CPU time taken by other processes during the timing
phase is measured from /proc and stored per case; cases above :data:`FOREIGN_CPU_WARN` are
marked ``(!)`` in the report.

Adding a family: a module ``benchmarks/<family>.py`` with ``@register_family("<family>")`` on a
``cases(device, quick) -> list[Case]`` function, and its name in
``benchmarks.FAMILY_MODULES``.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

import torch

from tood_ext.testing.memory import peak_extra_memory

IMPL_ORDER = ("kernel", "reference", "torchvision", "floor")
BASELINE = "kernel"

MEMORY_METHODS = {
    "cpu": (
        "peak extra CPU memory of one call = highest running sum of the allocation/free events "
        "recorded by torch.profiler(profile_memory=True) during the call (c10 CPU allocator: "
        "every CPU tensor, including outputs the call returns and autograd's saved tensors "
        "and gradients). Memory a kernel takes outside c10 (malloc/std::vector scratch, "
        "OpenMP thread stacks) is not seen."
    ),
    "cuda": (
        "peak extra CUDA memory of one call = torch.cuda.max_memory_allocated() after the call "
        "(peak stats reset just before it) minus torch.cuda.memory_allocated() before it; "
        "includes the outputs the call returns; caching-allocator reserve not counted."
    ),
}

# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One line of the report.

    ``setup()`` is called on the benchmark device right before the case is measured and returns
    ``{impl_name: callable}``; each callable takes no argument, runs the whole pass (forward, or
    forward plus backward) and returns its outputs (tensors or tuples of tensors; used for the
    cross-check only (maxdiff column)). Inputs are freed when the case is done.
    """

    name: str
    family: str
    op: str
    passes: str  # "fwd" or "fwd+bwd"
    sizes: dict
    dtype: str
    setup: Callable[[], dict]
    repeats: int | None = None  # overrides the device default (not --repeats)
    # per-implementation caps of the timed calls, e.g. {"torchvision": 3} for a very slow one
    # (not applied when --repeats is given)
    impl_repeats: dict = dataclasses.field(default_factory=dict)
    warmup: int | None = None
    note: str = ""
    # implementations whose outputs are not the op's (a memory floor): no maxdiff cross-check
    unchecked: tuple = ()

    def __post_init__(self):
        if self.passes not in ("fwd", "fwd+bwd"):
            raise ValueError(f"case {self.name}: passes must be 'fwd' or 'fwd+bwd'")


_FAMILIES: dict[str, Callable[[str, bool], list]] = {}


def optional_module(name: str):
    """The module ``name`` of an optional peer (e.g. ``"ultralytics.utils.tal"``), or None
    when its package is not installed or the import fails: the peer's column is left out."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(name.partition(".")[0]) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - optional peer
        return None


def register_family(name: str):
    """Decorator: ``@register_family("box_ops") def cases(device, quick) -> list[Case]``."""

    def deco(fn):
        _FAMILIES[name] = fn
        return fn

    return deco


def families() -> dict:
    from . import FAMILY_MODULES  # importing the modules runs their @register_family
    import importlib

    for mod in FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    return dict(_FAMILIES)


def collect_cases(device: str, quick: bool = False, filter_: str | None = None) -> list:
    cases = []
    for fam, fn in families().items():
        for case in fn(device, quick):
            if case.family != fam:
                raise ValueError(f"case {case.name} registered by {fam} says family {case.family}")
            if filter_ and filter_ not in case.name:
                continue
            cases.append(case)
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate case names: {sorted(dup)}")
    return cases


# --------------------------------------------------------------------------------------------
# helpers for family modules
# --------------------------------------------------------------------------------------------


def fwd_bwd(forward: Callable[[], Any], inputs: tuple, grad_output: torch.Tensor | None = None):
    """A callable running ``forward()`` and the gradients w.r.t. ``inputs`` (no ``.grad``
    accumulation). ``grad_output`` None means the output is a scalar (a reduced loss)."""

    def run():
        out = forward()
        grads = torch.autograd.grad(out, inputs, grad_output)
        return (out.detach(), *grads)

    return run


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _detach(out):
    return [t.detach() for t in _tensors(out)]


def max_abs_diff(a: list, b: list) -> float | None:
    """Largest |a - b| over matching tensors (NaN in both counts as equal, NaN in one as inf);
    None when the outputs do not match in structure."""
    if len(a) != len(b):
        return None
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return None
        if x.numel() == 0:
            continue
        x64, y64 = x.double(), y.double()
        d = (x64 - y64).abs()
        both_nan = torch.isnan(x64) & torch.isnan(y64)
        d = torch.where(both_nan, torch.zeros_like(d), d.nan_to_num(nan=math.inf))
        worst = max(worst, float(d.max()))
    return worst


def _quantile(sorted_xs: list, q: float) -> float:
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
    return text.replace("|", "/")  # keeps the markdown tables intact


def _cpu_ticks() -> tuple | None:
    """(busy ticks of the whole machine, ticks of this process) from /proc (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # minus idle, iowait
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return busy, int(fields[11]) + int(fields[12])  # utime + stime, all threads
    except (OSError, ValueError, IndexError):
        return None


def foreign_cpu_fraction(start: tuple | None, end: tuple | None, wall_s: float) -> float | None:
    """Share of the machine's CPU time used by *other* processes between two _cpu_ticks()."""
    if start is None or end is None or wall_s < FOREIGN_CPU_MIN_WALL_S:
        return None  # clock ticks (10 ms) too coarse for a shorter window
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    other = (end[0] - start[0]) - (end[1] - start[1])
    return min(1.0, max(0.0, other / hz / (wall_s * (os.cpu_count() or 1))))


# a case whose timing phase saw more foreign CPU use than this is flagged in the report
FOREIGN_CPU_WARN = 0.10
FOREIGN_CPU_MIN_WALL_S = 0.5  # timing phases shorter than this are not judged


# Without --repeats, an implementation gets at most as many timed calls as fit in this many
# seconds (judged from its last warm-up call), but never fewer than MIN_REPEATS; one whose
# first warm-up call took longer than SLOW_CALL_S gets no further warm-up calls.
TIME_BUDGET_S = 8.0
MIN_REPEATS = 3
SLOW_CALL_S = 1.0


def measure_case(case: Case, device: str, repeats: int, warmup: int,
                 measure_memory: bool = True, budget: bool = True) -> dict:
    """Measure one case. ``budget``: apply ``case.impl_repeats`` and :data:`TIME_BUDGET_S`
    (False when the repeats were given explicitly)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    result: dict = {
        "name": case.name, "family": case.family, "op": case.op, "pass": case.passes,
        "dtype": case.dtype, "sizes": case.sizes, "note": case.note,
        "repeats": repeats, "warmup": warmup, "impls": {},
    }
    try:
        impls = case.setup()
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        result["error"] = f"setup failed: {_err(exc)}"
        traceback.print_exc()
        return result
    order = [n for n in IMPL_ORDER if n in impls] + [n for n in impls if n not in IMPL_ORDER]
    alive: dict = {}
    outputs: dict = {}
    n_rep: dict = {}
    for name in order:
        fn = impls[name]
        try:
            last = None
            for i in range(warmup):
                _sync(device)
                t0 = time.perf_counter()
                out = fn()
                _sync(device)
                last = time.perf_counter() - t0
                if i == 0 and name not in case.unchecked:
                    outputs[name] = _detach(out)
                del out
                if budget and last > SLOW_CALL_S:
                    break
            n_rep[name] = repeats
            if budget:
                n_rep[name] = min(n_rep[name], case.impl_repeats.get(name, repeats))
                if last is not None and last > 0:
                    n_rep[name] = min(n_rep[name],
                                      max(MIN_REPEATS, int(TIME_BUDGET_S / last)))
            alive[name] = fn
        except Exception as exc:  # noqa: BLE001
            result["impls"][name] = {"error": _err(exc)}
            print(f"    {name}: ERROR {_err(exc)}", file=sys.stderr, flush=True)
    base_out = outputs.get(BASELINE)
    diffs = {n: (max_abs_diff(base_out, o) if base_out is not None else None)
             for n, o in outputs.items() if n != BASELINE}
    del outputs, base_out

    times: dict = {n: [] for n in alive}
    names = list(alive)
    ticks0, wall0 = _cpu_ticks(), time.perf_counter()
    for r in range(max(n_rep.values(), default=0)):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if r >= n_rep[name]:
                continue
            fn = alive[name]
            try:
                _sync(device)
                t0 = time.perf_counter()
                out = fn()
                _sync(device)
                t1 = time.perf_counter()
                del out
                times[name].append(t1 - t0)
            except Exception as exc:  # noqa: BLE001
                result["impls"][name] = {"error": _err(exc)}
                alive.pop(name)
                names.remove(name)
    result["foreign_cpu_frac"] = foreign_cpu_fraction(ticks0, _cpu_ticks(),
                                                      time.perf_counter() - wall0)
    for name in names:
        ts = sorted(times[name])
        entry = {
            "median_ms": statistics.median(ts) * 1e3,
            "min_ms": ts[0] * 1e3,
            "iqr_ms": (_quantile(ts, 0.75) - _quantile(ts, 0.25)) * 1e3,
            "times_ms": [t * 1e3 for t in times[name]],
            "peak_extra_mem_bytes": None,
        }
        if name in diffs:
            entry["max_abs_diff_vs_kernel"] = diffs[name]
        result["impls"][name] = entry
    if measure_memory:
        gc.collect()
        for name in names:
            try:
                peak = peak_extra_memory(alive[name], device)
                result["impls"][name]["peak_extra_mem_bytes"] = peak
            except Exception as exc:  # noqa: BLE001
                result["impls"][name]["memory_error"] = _err(exc)
    base = result["impls"].get(BASELINE, {}).get("median_ms")
    result["ratios"] = {}
    for name in names:
        if name != BASELINE and base:
            result["ratios"][f"{name}/{BASELINE}"] = result["impls"][name]["median_ms"] / base
    # order the impls dict as IMPL_ORDER for readable JSON
    result["impls"] = {n: result["impls"][n] for n in order if n in result["impls"]}
    del alive, impls
    return result


# --------------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------------


def sanitize(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.")
    return re.sub(r"-{2,}", "-", s) or "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_model_short() -> str:
    m = re.sub(r"\((R|TM|r|tm)\)", "", cpu_model())
    m = re.sub(r"@.*$", "", m)
    m = re.sub(r"\b(CPU|Processor|\d+-Core)\b", "", m)
    return sanitize(" ".join(m.split()))


def device_label(device: str) -> str:
    if device == "cuda":
        return sanitize("cuda-" + torch.cuda.get_device_name())
    return sanitize("cpu-" + cpu_model_short())


def _git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


# environment settings that change the numbers (threads, allocators, huge pages, our kernels'
# code-path switches)
PERF_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE",
                 "PYTORCH_CUDA_ALLOC_CONF", "CUDA_LAUNCH_BLOCKING", "LD_PRELOAD",
                 "TOOD_EXT_CPU_ISA", "TOOD_EXT_DEFORM_CPU_PATH")


# as the process started: imported peers may rewrite them (ultralytics sets OMP_NUM_THREADS=1
# on import, too late to change torch's thread pool)
_PERF_ENV_AT_START = {k: os.environ[k] for k in PERF_ENV_VARS if k in os.environ}


def perf_env() -> dict:
    """The PERF_ENV_VARS set when the process started, and the kernel's transparent-huge-page
    mode (Linux)."""
    env = dict(_PERF_ENV_AT_START)
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            modes = f.read().split()
        env["transparent_hugepage"] = next((m.strip("[]") for m in modes if m.startswith("[")),
                                           None)
    except OSError:
        pass
    return env


def machine_info(device: str) -> dict:
    import tood_ext

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "git_commit": _git_commit(),
        "tood_ext_build_info": tood_ext.build_info(),
        "perf_env": perf_env(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001
        info["torchvision"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update({
            "gpu_name": props.name,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_multiprocessors": props.multi_processor_count,
        })
    return info


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.4f}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def fmt_diff(d) -> str:
    if d is None:
        return "-"
    return "0" if d == 0 else f"{d:.1e}"


def _impl_cell(r: dict, name: str, key: str, fmt) -> str:
    e = r["impls"].get(name)
    if e is None:
        return ""
    if "error" in e:
        return "ERROR"
    return fmt(e.get(key))


def _disturbed(r: dict) -> bool:
    frac = r.get("foreign_cpu_frac")
    return frac is not None and frac > FOREIGN_CPU_WARN


def impl_names(results: list) -> list:
    """The implementations present in results: IMPL_ORDER first, then others as they appear."""
    names = [n for n in IMPL_ORDER if any(n in r["impls"] for r in results)]
    for r in results:
        names += [n for n in r["impls"] if n not in names]
    return names


def table_lines(results: list) -> list:
    """Markdown tables, one per op family (columns: the implementations that family has), one
    line per case."""
    families = []
    for r in results:
        if r.get("family") not in families:
            families.append(r.get("family"))
    lines = []
    for fam in families:
        rows = [r for r in results if r.get("family") == fam]
        if len(families) > 1:
            lines += ([""] if lines else []) + [f"### {fam}", ""]
        lines += _family_table(rows)
    return lines


def _family_table(results: list) -> list:
    present = impl_names(results)
    others = [n for n in present if n != BASELINE]
    # no maxdiff column for an implementation never cross-checked (a memory floor)
    checked = [n for n in others
               if any("max_abs_diff_vs_kernel" in r.get("impls", {}).get(n, {}) for r in results)]
    head = (["case", "pass", "dtype"] + [f"{n} ms" for n in present]
            + [f"{n}/{BASELINE}" for n in others]
            + [f"mem {n}" for n in present] + [f"maxdiff {n}" for n in checked])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['pass']} | {r['dtype']} | ERROR: {r['error']} |")
            continue
        row = [r["name"] + (" (!)" if _disturbed(r) else ""), r["pass"], r["dtype"]]
        row += [_impl_cell(r, n, "median_ms", fmt_ms) for n in present]
        row += [(f"{r['ratios'][f'{n}/{BASELINE}']:.2f}x"
                 if f"{n}/{BASELINE}" in r["ratios"] else "") for n in others]
        row += [_impl_cell(r, n, "peak_extra_mem_bytes", fmt_bytes) for n in present]
        row += [_impl_cell(r, n, "max_abs_diff_vs_kernel", fmt_diff) for n in checked]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def detail_lines(results: list) -> list:
    lines = ["| case | impl | median ms | min ms | IQR ms | repeats | sizes |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, e in r["impls"].items():
            if "error" in e:
                lines.append(f"| {r['name']} | {name} | ERROR: {e['error']} | | | | |")
                continue
            sizes = ", ".join(f"{k}={v}" for k, v in r["sizes"].items())
            lines.append(f"| {r['name']} | {name} | {fmt_ms(e['median_ms'])} | "
                         f"{fmt_ms(e['min_ms'])} | {fmt_ms(e['iqr_ms'])} | {len(e['times_ms'])} | "
                         f"{sizes} |")
    return lines


def markdown_report(doc: dict, plots: list | None = None) -> str:
    m = doc["machine"]
    bi = m["tood_ext_build_info"]
    out = [f"# tood-ext benchmarks: {doc['device_label']} ({doc['date']})", ""]
    if doc["quick"]:
        out += ["**--quick run (tiny sizes, smoke test only; numbers are not meaningful)**", ""]
    if doc.get("interrupted"):
        out += [f"**Interrupted run: {doc['interrupted']}**", ""]
    out += [
        "## Machine", "",
        f"- CPU: {m['cpu_model']} ({m['logical_cpus']} logical CPUs; torch threads: "
        f"{m['torch_num_threads']})",
    ]
    if "gpu_name" in m:
        out.append(f"- GPU: {m['gpu_name']} (sm_{m['gpu_capability'].replace('.', '')}, "
                   f"{m['gpu_memory_gib']} GiB, {m['gpu_multiprocessors']} SMs)")
    out += [
        f"- torch {m['torch']} (CUDA {m['torch_cuda']}), torchvision {m['torchvision']}, "
        f"Python {m['python']}, {m['platform']}",
        f"- tood_ext.build_info(): `{json.dumps(bi)}`",
        f"- environment: `{json.dumps(m.get('perf_env', {}))}`",
        f"- git commit: {m['git_commit']}",
        f"- command: `{doc['command']}`; total wall time {doc['wall_s']:.1f} s; load average "
        f"(1/5/15 min) before {doc.get('loadavg_before')}, after {doc.get('loadavg_after')}",
        "",
        "## Method", "",
        "- Time: per case, every implementation warmed up, then timed in interleaved rounds "
        "(order rotated each round; an implementation slower than "
        f"{TIME_BUDGET_S:.0f} s per {doc['settings']['repeats']} calls gets fewer calls, at least "
        f"{MIN_REPEATS}, unless --repeats is given) with time.perf_counter"
        + (" and torch.cuda.synchronize() before and after each call" if doc["device"] == "cuda"
           else "") + "; the table gives the median in ms (min, IQR and all samples in the JSON "
        "and the details below). Ratios are <impl> median / kernel median (> 1: kernel faster).",
        f"- Memory: {doc['memory_method']}",
        "- maxdiff <impl>: largest absolute difference of the implementation's outputs (forward "
        "outputs, plus input gradients for fwd+bwd) from the kernel's, first warm-up call.",
        "- Interference: the share of the machine's CPU time used by other processes while "
        "a case was timed (from /proc/stat minus this process) is stored per case as "
        f"foreign_cpu_frac (null when timing took < {FOREIGN_CPU_MIN_WALL_S} s: clock ticks "
        f"too coarse); cases above {FOREIGN_CPU_WARN:.0%} are marked (!).",
        "- Inputs: xyxy boxes with x1 uniform in [0, 1333), y1 in [0, 800), w, h uniform in "
        "[8, 300]; pred scores uniform in (0, 1); ~20% of GT slots padding; labels in [0, C).",
        "",
        "## Results", "",
    ]
    out += table_lines(doc["cases"])
    notes = [f"- {r['name']}: {r['note']}" for r in doc["cases"] if r.get("note")]
    notes += [f"- (!) {r['name']}: other processes used {100 * r['foreign_cpu_frac']:.0f}% of "
              "the machine's CPU time while it was timed: its numbers are disturbed"
              for r in doc["cases"] if _disturbed(r)]
    if notes:
        out += ["", "Notes:", ""] + notes
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    out += ["", "## Details", ""] + detail_lines(doc["cases"]) + [""]
    return "\n".join(out)


class Interrupted(BaseException):
    """Raised (by the SIGTERM handler of ``python -m benchmarks``) to end a run early:
    :func:`run_device` returns the cases measured so far, marked ``interrupted``. A
    BaseException, so that the per-implementation error handling does not swallow it."""


def default_counts(device: str, quick: bool) -> tuple:
    """(repeats, warmup) when neither --repeats/--warmup nor the case say otherwise."""
    if quick:
        return 2, 1
    return (25, 5) if device == "cuda" else (10, 2)


def run_device(device: str, cases: list, repeats: int | None, warmup: int | None, quick: bool,
               argv: list) -> dict:
    """Measure ``cases`` on ``device``. ``repeats``/``warmup`` given (CLI) override every case;
    None: the case's own counts, else :func:`default_counts`."""
    label = device_label(device)
    def_rep, def_wu = default_counts(device, quick)
    print(f"\n=== {label}: {len(cases)} cases, repeats={repeats or def_rep}, "
          f"warmup={def_wu if warmup is None else warmup} ===", flush=True)
    gc.collect()
    gc.freeze()  # imported modules out of the collector's way: later gc.collect() calls are cheap
    load_before = _loadavg()
    ticks, t_probe = _cpu_ticks(), time.perf_counter()
    time.sleep(1.0)  # idle probe: who else uses the CPU right now?
    foreign_before = foreign_cpu_fraction(ticks, _cpu_ticks(), time.perf_counter() - t_probe)
    if foreign_before is not None and foreign_before > FOREIGN_CPU_WARN:
        print(f"WARNING: other processes use {100 * foreign_before:.0f}% of the CPU before the "
              "run: timings will be noisy", flush=True)
    t_start = time.perf_counter()
    results = []
    interrupted = None
    for i, case in enumerate(cases, 1):
        try:
            reps = repeats if repeats is not None else (case.repeats if case.repeats and not quick
                                                        else def_rep)
            wu = warmup if warmup is not None else (case.warmup if case.warmup is not None
                                                    and not quick else def_wu)
            t0 = time.perf_counter()
            r = measure_case(case, device, reps, wu, budget=repeats is None)
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            parts = []
            for name, e in r["impls"].items():
                parts.append(f"{name} "
                             + ("ERROR" if "error" in e else f"{fmt_ms(e['median_ms'])} ms"))
            parts += [f"{k} {v:.2f}x" for k, v in r.get("ratios", {}).items()]
            print(f"[{i}/{len(cases)}] {case.name} ({case.passes}, {case.dtype}): "
                  + (r["error"] if "error" in r else ", ".join(parts))
                  + f"  [{r['wall_s']:.1f} s]"
                  + (f" (!) other processes used {100 * r['foreign_cpu_frac']:.0f}% of the CPU"
                     if _disturbed(r) else ""), flush=True)
        except Interrupted:
            interrupted = f"stopped during case {i} of {len(cases)} ({case.name}); " \
                          f"{len(results)} cases measured"
            print(f"INTERRUPTED: {interrupted}", flush=True)
            break
    return {
        "schema": 1,
        "device": device,
        "device_label": label,
        "date": datetime.date.today().isoformat(),
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "command": " ".join(["python -m benchmarks"] + argv),
        "settings": {"repeats": repeats if repeats is not None else def_rep,
                     "warmup": warmup if warmup is not None else def_wu,
                     "from_cli": {"repeats": repeats, "warmup": warmup}},
        "memory_method": MEMORY_METHODS[device],
        "wall_s": time.perf_counter() - t_start,
        "loadavg_before": load_before,
        "foreign_cpu_frac_before": foreign_before,
        "loadavg_after": _loadavg(),
        "machine": machine_info(device),
        "interrupted": interrupted,
        "cases": results,
    }


def _loadavg() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_report(doc: dict, out_dir: str) -> list:
    os.makedirs(out_dir, exist_ok=True)
    stem = f"{doc['device_label']}-{doc['date']}" + ("-quick" if doc["quick"] else "")
    if doc.get("interrupted"):
        stem += "-partial"  # never in place of a complete run's files
    json_path = os.path.join(out_dir, stem + ".json")
    md_path = os.path.join(out_dir, stem + ".md")
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=True)
        f.write("\n")
    from .plots import write_plots

    plots = write_plots(doc, out_dir, stem)
    with open(md_path, "w") as f:
        f.write(markdown_report(doc, [os.path.basename(p) for p in plots]))
    return [json_path, md_path] + plots


def has_errors(doc: dict) -> bool:
    if doc.get("interrupted"):
        return True
    return any("error" in r or any("error" in e for e in r["impls"].values())
               for r in doc["cases"])
