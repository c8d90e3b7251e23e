"""``python -m tood_ext export`` (and ``python -m tood_ext.export``): a checkpoint to ONNX or
torch.export."""
from __future__ import annotations

import argparse
import sys

from torch import nn

from .onnx_export import DEFORM_MODES, export_onnx
from .program import export_pt2

__all__ = ["add_export_subparser", "cmd_export", "load_model", "main"]


def load_model(checkpoint: str, **overrides) -> nn.Module:
    """The detector of a checkpoint, in eval mode on CPU: the model of
    :func:`tood_ext.engine.model_from_checkpoint` (``tood_ext.engine`` checkpoints, or plain
    ``{"config": TOODConfig as dict, "model": state_dict}`` files). ``overrides`` replace config
    fields (e.g. ``ops="reference"``, ``score_thr=0.3``; None values ignored)."""
    from ..engine.checkpoint import model_from_checkpoint

    return model_from_checkpoint(checkpoint, "cpu", **overrides)[0]


def add_export_subparser(subparsers) -> argparse.ArgumentParser:
    """Adds ``export`` to an ``argparse`` subparsers object (``python -m tood_ext export``)."""
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX or torch.export (.pt2)",
                              description="Export a TOOD checkpoint (see tood_ext.export).")
    _add_export_args(p)
    return p


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="tood_ext.engine checkpoint, or {'config': ..., 'model': state_dict}")
    p.add_argument("--format", default="onnx", choices=("onnx", "pt2"))
    p.add_argument("--out", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--image-size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"),
                   help="example input size (multiples of 128); the fixed size with --static")
    p.add_argument("--static", action="store_true", help="fixed batch 1 and image size")
    p.add_argument("--with-nms", action="store_true",
                   help="NMS inside the graph: outputs boxes, scores, labels, num_dets")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument("--deform", default="gather", choices=DEFORM_MODES,
                   help="ONNX decomposition of deform_sampling: the kernel's arithmetic with "
                        "GatherElements (default, exact to ~1e-4) or one GridSample")
    p.add_argument("--score-thr", type=float, default=None)
    p.add_argument("--nms-pre", type=int, default=None)
    p.add_argument("--iou-thr", type=float, default=None)
    p.add_argument("--max-per-img", type=int, default=None)
    p.add_argument("--min-bbox-size", type=float, default=None,
                   help="drop boxes of width or height <= this (input pixels) before NMS "
                        "(default: the checkpoint's config, 0; negative: keep all)")
    p.add_argument("--clip", default=None, choices=("on", "off"),
                   help="clip boxes to the input image before NMS (default: the checkpoint's "
                        "config, on; mmdetection's TOOD: off)")
    p.add_argument("--ops", default=None, choices=("kernel", "reference"),
                   help="trace our kernels (default) or the pure-PyTorch references")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> str:
    model = load_model(args.checkpoint, ops=args.ops)
    nms = {k: getattr(args, k) for k in ("score_thr", "nms_pre", "iou_thr", "max_per_img",
                                         "min_bbox_size") if getattr(args, k) is not None}
    if args.clip is not None:
        nms["clip_to_image"] = args.clip == "on"
    common = dict(image_size=tuple(args.image_size), dynamic=not args.static,
                  with_nms=args.with_nms, **nms)
    if args.format == "onnx":
        export_onnx(model, args.out, opset=args.opset, deform=args.deform, **common)
    else:
        export_pt2(model, args.out, **common)
    print(f"wrote {args.out}")
    return args.out


def main(argv: list[str] | None = None):
    """``python -m tood_ext.export --checkpoint ... --format onnx|pt2 --out ...``."""
    parser = argparse.ArgumentParser(prog="python -m tood_ext.export",
                                     description="Export a TOOD checkpoint (see tood_ext.export).")
    _add_export_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)

