"""Smoke test of the benchmark entry point: `python -m benchmarks --quick --device cpu`."""
from __future__ import annotations

import glob
import importlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _expected_case_names() -> list:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    harness = importlib.import_module("benchmarks.harness")
    return [c.name for c in harness.collect_cases("cpu", quick=True)]


def test_benchmarks_quick_cpu(tmp_path):
    out_dir = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--out", str(out_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "THP_MEM_ALLOC_ENABLE": "1"},
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    jsons = glob.glob(str(out_dir / "cpu-*.json"))
    assert len(jsons) == 1, f"expected one JSON result in {out_dir}, found {jsons}"
    md = jsons[0][: -len(".json")] + ".md"
    assert os.path.isfile(md), f"markdown report {md} missing"
    assert "| case |" in open(md).read()

    with open(jsons[0]) as f:
        doc = json.load(f)
    assert doc["device"] == "cpu" and doc["quick"] is True
    assert doc["machine"]["tood_ext_build_info"]["ops_loaded"] is True
    # settings that change the numbers are recorded (here: PyTorch's huge-page allocator)
    assert doc["machine"]["perf_env"]["THP_MEM_ALLOC_ENABLE"] == "1"
    assert '"THP_MEM_ALLOC_ENABLE": "1"' in open(md).read()
    by_name = {c["name"]: c for c in doc["cases"]}
    expected = _expected_case_names()
    assert expected, "no benchmark case registered"
    assert sorted(by_name) == sorted(expected)
    for name, case in by_name.items():
        assert "error" not in case, (name, case["error"])
        assert "kernel" in case["impls"] and "reference" in case["impls"], name
        for impl, entry in case["impls"].items():
            assert "error" not in entry, (name, impl, entry)
            assert entry["median_ms"] > 0, (name, impl)
            assert 1 <= len(entry["times_ms"]) <= case["repeats"]
            assert entry["peak_extra_mem_bytes"] is None or entry["peak_extra_mem_bytes"] >= 0
        for ratio in case["ratios"].values():
            assert ratio > 0
        if case["op"] == "deform_sampling":
            # the memory floor is timed and rated but never cross-checked (not the op's output)
            assert "floor" in case["impls"] and "floor/kernel" in case["ratios"], name
            assert "max_abs_diff_vs_kernel" not in case["impls"]["floor"], name
            assert "max_abs_diff_vs_kernel" in case["impls"]["reference"], name


def test_benchmarks_sigterm_writes_the_cases_measured(tmp_path):
    # a device lease ends runs with `timeout`: what was measured by then must be written
    import signal

    out_dir = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--out", str(out_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[2/"):
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 1, log[-4000:]
    assert "INTERRUPTED" in log, log[-4000:]
    jsons = glob.glob(str(out_dir / "cpu-*.json"))
    assert len(jsons) == 1 and jsons[0].endswith("-quick-partial.json"), (jsons, log[-4000:])
    with open(jsons[0]) as f:
        doc = json.load(f)
    assert doc["interrupted"] and "stopped during case" in doc["interrupted"]
    total = len(_expected_case_names())
    assert 2 <= len(doc["cases"]) < total
    assert all("error" not in c and c["impls"]["kernel"]["median_ms"] > 0 for c in doc["cases"])
    md = jsons[0][: -len(".json")] + ".md"
    assert "Interrupted run" in open(md).read()


def test_ab_same_checkout_twice(tmp_path):
    """`python -m benchmarks.ab`: both sides run, every matching case gets two medians."""
    prefix = tmp_path / "ab"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", ROOT, ROOT, "--quick", "--filter", "giou_loss",
         "--rounds", "1", "--repeats", "2", "--warmup", "0", "--out", str(prefix)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    with open(f"{prefix}.json") as f:
        doc = json.load(f)
    expected = [n for n in _expected_case_names() if "giou_loss" in n]
    assert expected and sorted(r["name"] for r in doc["rows"]) == sorted(expected)
    for r in doc["rows"]:
        assert len(r["old_samples"]) == len(r["new_samples"]) == 2  # 1 round x 2 calls
        assert r["old_ms"] > 0 and r["new_ms"] > 0
    assert doc["errors"] == {}
    assert "| case | old ms | new ms | new/old |" in open(f"{prefix}.md").read()
