"""Plots of a benchmark run (matplotlib, Agg backend), written beside its JSON and markdown.

* ``<stem>-speedup.png``: per case, how many times slower each other implementation is than the
  kernel (median / kernel median, log scale), one bar group per case.
* ``<stem>-tal-time.png`` and ``<stem>-tal-memory.png``: the TAL sweep, time and peak extra
  memory against the number of GTs G, one line per (implementation, A), one panel per flavour.

Plots are optional: without matplotlib :func:`write_plots` writes nothing and says why.
"""
from __future__ import annotations

import os
import re


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - plots are optional
        return None, f"{type(exc).__name__}: {exc}"
    return plt, None


def _ok(entry) -> bool:
    return entry is not None and "error" not in entry


def speedup_series(cases: list) -> tuple:
    """(case names, {impl: [ratio or None per case]}) of every case with a kernel timing."""
    names, series = [], {}
    rows = [r for r in cases if "error" not in r and r.get("ratios")]
    for r in rows:
        names.append(r["name"])
    for i, r in enumerate(rows):
        for key, ratio in r["ratios"].items():
            impl = key.split("/")[0]
            series.setdefault(impl, [None] * len(rows))[i] = ratio
    return names, series


def tal_sweep(cases: list, key: str) -> dict:
    """{flavour: {(impl, A): [(G, value), ...] sorted by G}} from the TAL cases; key is
    "median_ms" or "peak_extra_mem_bytes"."""
    out: dict = {}
    for r in cases:
        if r.get("family") != "tal" or "error" in r or r.get("dtype") != "float32":
            continue
        m = re.match(r"task_aligned_assign\.(\w+) ", r["name"])
        if m is None or "G" not in r["sizes"] or "A" not in r["sizes"]:
            continue
        flavour = m.group(1)
        for impl, e in r["impls"].items():
            if not _ok(e) or e.get(key) is None:
                continue
            out.setdefault(flavour, {}).setdefault((impl, r["sizes"]["A"]), []).append(
                (r["sizes"]["G"], e[key]))
    for curves in out.values():
        for pts in curves.values():
            pts.sort()
    return out


def _plot_speedup(plt, doc: dict, path: str) -> bool:
    names, series = speedup_series(doc["cases"])
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.6))
    impls = sorted(series)
    h = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        ys = [i + (k - (len(impls) - 1) / 2) * h for i in range(len(names))]
        vals = [v if v is not None else 0 for v in series[impl]]
        label = f"{impl} / kernel"
        if impl == "floor":
            label += " (memory floor: < 1 is time left)"
        ax.barh(ys, vals, height=h, label=label)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio (median / kernel median; > 1: kernel faster)")
    ax.set_title(f"tood-ext speed-up, {doc['device_label']} ({doc['date']})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_tal(plt, doc: dict, key: str, ylabel: str, path: str, scale: float) -> bool:
    sweep = tal_sweep(doc["cases"], key)
    if not sweep:
        return False
    flavours = sorted(sweep)
    fig, axes = plt.subplots(1, len(flavours), figsize=(5.5 * len(flavours), 4.2), squeeze=False)
    for ax, flavour in zip(axes[0], flavours):
        for (impl, A), pts in sorted(sweep[flavour].items()):
            style = {"kernel": "-o", "reference": "--s"}.get(impl, ":^")
            ax.plot([g for g, _ in pts], [v * scale for _, v in pts], style,
                    label=f"{impl}, A={A}", ms=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("GTs per image G (B = 16)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"task_aligned_assign, {flavour} flavour")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['device_label']} ({doc['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(doc: dict, out_dir: str, stem: str) -> list:
    """Writes the plots of doc into out_dir; returns their paths (none without matplotlib)."""
    plt, why = _pyplot()
    if plt is None:
        print(f"plots skipped (matplotlib unavailable: {why})")
        return []
    paths = []
    p = os.path.join(out_dir, f"{stem}-speedup.png")
    if _plot_speedup(plt, doc, p):
        paths.append(p)
    p = os.path.join(out_dir, f"{stem}-tal-time.png")
    if _plot_tal(plt, doc, "median_ms", "time per call (ms)", p, 1.0):
        paths.append(p)
    p = os.path.join(out_dir, f"{stem}-tal-memory.png")
    if _plot_tal(plt, doc, "peak_extra_mem_bytes", "peak extra memory (MiB)", p, 1 / 2**20):
        paths.append(p)
    return paths
