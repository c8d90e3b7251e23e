"""The reports as a Markdown table and as a score-vs-IoU scatter plot."""
from __future__ import annotations

import os

import numpy as np

__all__ = ["format_reports", "plot_score_vs_iou"]


def format_reports(reports: dict[str, dict], metrics: dict[str, dict] | None = None) -> str:
    """A Markdown table, one row per model (``reports``: name -> :func:`alignment_report`;
    ``metrics``: optional name -> COCO metrics with AP, AP50, AP75 in [0, 1])."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    cols = ["model"]
    if metrics:
        cols += ["AP", "AP50", "AP75"]
    cols += ["PCC top-50", "IoU top-10", "correct", "redundant", "error", "background", "GTs"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in reports.items():
        row = [name]
        if metrics:
            m = metrics.get(name) or {}
            row += [f(None if m.get(k) is None else 100 * m[k], ".1f")
                    for k in ("AP", "AP50", "AP75")]
        pre, post = r["pre_nms"], r["post_nms"]
        row += [f(pre["pcc"], ".3f"), f(pre["top_iou"], ".3f"), str(post["correct"]),
                str(post["redundant"]), str(post["error"]), str(post["background"]),
                str(r["num_gts"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_score_vs_iou(reports: dict[str, dict], path: str, max_points: int = 4000,
                      seed: int = 0) -> str:
    """Scatter of (IoU with the GT, score) of every model's top pre-NMS predictions per GT
    (the ``pairs`` of :func:`alignment_report` with ``return_pairs=True``), one colour per
    model, at most ``max_points`` per model (a seeded random subset). Writes ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    for k, (name, r) in enumerate(reports.items()):
        pairs = r.get("pairs")
        if not pairs:
            raise ValueError(f"report {name!r} has no pairs: use return_pairs=True")
        u, s = np.asarray(pairs["iou"]), np.asarray(pairs["score"])
        if len(u) > max_points:
            sel = rng.choice(len(u), max_points, replace=False)
            u, s = u[sel], s[sel]
        pcc, top = r["pre_nms"]["pcc"], r["pre_nms"]["top_iou"]
        label = (f"{name} (PCC {'-' if pcc is None else f'{pcc:.2f}'}, "
                 f"top-10 IoU {'-' if top is None else f'{top:.2f}'})")
        ax.scatter(u, s, s=5, alpha=0.35, color=f"C{k}", label=label, edgecolors="none")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("IoU with the assigned GT")
    ax.set_ylabel("score")
    ax.set_title("top-50 pre-NMS predictions per GT")
    ax.legend(loc="upper left", fontsize=7, markerscale=3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
