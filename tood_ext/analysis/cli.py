"""``python -m tood_ext analyze``: the alignment report of checkpoints on a COCO-format set."""
from __future__ import annotations

import argparse
import json
import os

from .output import format_reports, plot_score_vs_iou
from .predictions import analyze_model

__all__ = ["add_analyze_subparser", "cmd_analyze"]


def add_analyze_subparser(subparsers) -> argparse.ArgumentParser:
    """Adds ``analyze`` to an ``argparse`` subparsers object (``python -m tood_ext analyze``)."""
    p = subparsers.add_parser(
        "analyze", help="task-alignment report of checkpoints (PCC, top-10 IoU, NMS counts)",
        description="Alignment report (tood_ext.analysis.alignment_report) of one or more "
                    "checkpoints on a COCO-format set: printed, written as JSON, plus a "
                    "score-vs-IoU scatter coloured by model.")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints")
    p.add_argument("--names", nargs="+",
                   help="a name per checkpoint (default: file stems, or their folders' names)")
    p.add_argument("--data", help="a folder written by `generate` (uses DATA/val)")
    p.add_argument("--val-ann", help="instances JSON (instead of --data)")
    p.add_argument("--val-images", help="image folder (default: next to --val-ann/images)")
    p.add_argument("--out", default="runs/analyze", help="folder of report.json, score_vs_iou.png")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="resize bounds (default: the checkpoint's training scale)")
    p.add_argument("--score", default="nms", choices=("nms", "cls"),
                   help="score ranked: what NMS ranks (default) or the cls probability alone")
    p.add_argument("--topk", type=int, default=50)
    p.add_argument("--top-iou-k", type=int, default=10)
    p.add_argument("--det-score-thr", type=float, default=0.0,
                   help="post-NMS counts over detections with score >= this")
    p.add_argument("--ops", default=None, choices=("kernel", "reference"))
    p.add_argument("--max-points", type=int, default=4000, help="per model, in the plot")
    p.set_defaults(func=cmd_analyze)
    return p


def _val_paths(args) -> tuple[str, str]:
    if args.val_ann:
        return args.val_ann, args.val_images or os.path.join(os.path.dirname(args.val_ann),
                                                               "images")
    if args.data:
        root = os.path.join(args.data, "val")
        return os.path.join(root, "annotations.json"), os.path.join(root, "images")
    raise SystemExit("analyze: give --data ROOT or --val-ann (and --val-images)")


def _default_names(paths: list[str]) -> list[str]:
    """File stems; the parent folder's name when stems repeat (runs/a/latest.pth -> a);
    else the paths."""
    for names in ([os.path.splitext(os.path.basename(p))[0] for p in paths],
                  [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]):
        if len(set(names)) == len(names):
            return names
    return list(paths)


def cmd_analyze(args) -> dict:
    import torch

    from ..data import CocoDetection
    from ..engine import model_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    names = args.names or _default_names(args.checkpoint)
    if len(names) != len(args.checkpoint) or len(set(names)) != len(names):
        raise SystemExit("analyze: --names needs one distinct name per checkpoint")
    ann, img_dir = _val_paths(args)
    reports = {}
    for name, ckpt in zip(names, args.checkpoint):
        model, state = model_from_checkpoint(ckpt, device, ops=args.ops)
        scale = args.scale or (state.get("classes") or {}).get("scale") or (1333, 800)
        dataset = CocoDetection(ann, img_dir, scale=tuple(scale))
        from ..engine.evaluate import check_classes
        problem = check_classes(model, dataset, state.get("classes"))
        if problem:
            raise SystemExit(f"analyze: {ckpt} does not fit {ann}: {problem}")
        reports[name] = analyze_model(model, dataset, device, args.batch_size, args.score,
                                      args.max_images, topk=args.topk, top_iou_k=args.top_iou_k,
                                      det_score_thr=args.det_score_thr, return_pairs=True)
        reports[name]["checkpoint"] = ckpt
        reports[name]["head"] = model.cfg.head
    print(format_reports(reports))
    os.makedirs(args.out, exist_ok=True)
    plot = plot_score_vs_iou(reports, os.path.join(args.out, "score_vs_iou.png"),
                             args.max_points)
    out_json = os.path.join(args.out, "report.json")
    with open(out_json, "w") as f:
        json.dump(reports, f)
    print(f"report -> {out_json}\nplot -> {plot}")
    return reports
