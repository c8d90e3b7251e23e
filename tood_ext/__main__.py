"""Command line: ``python -m tood_ext {generate,train,eval,predict,demo,export} ...``.

  generate  write a synthetic COCO-format dataset (ROOT/train, ROOT/val: images/ + annotations.json)
  train     train TOOD on a COCO-format set (single process, or under torchrun for DDP)
  eval      COCO bbox AP of a checkpoint on a COCO-format set (table printed, JSON written)
  predict   draw a checkpoint's detections on images, as PNG files
  demo      generate a small synthetic set, train, evaluate, draw a few predictions
  export    a checkpoint to ONNX or torch.export (tood_ext/export/), when available
  analyze   alignment report (score-rank vs IoU-rank PCC, correct/redundant/error) of checkpoints

``python -m tood_ext <command> -h`` lists each command's options.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

DEMO = {  # the demo's defaults: ~10 minutes on 2 CPU cores (see README)
    "train_images": 240, "val_images": 48, "image_size": 256, "num_classes": 4,
    "max_objects": 4, "min_size": 0.15, "max_size": 0.55,
    "depth": 18, "fpn_channels": 64, "feat_channels": 64, "stacked_convs": 3, "num_groups": 16,
    "epochs": 16, "initial_epoch": 1, "batch_size": 4, "optimizer": "adamw", "lr": 2e-3,
    "weight_decay": 0.05, "warmup_iters": 60, "schedule": "cosine",
    # M-first priors (P_align still starts at 0.01): with mmdetection's 0.01 / 0.01, P
    # saturates for every class from scratch at this scale (TOODHead's docstring)
    "cls_prior": 2e-4, "m_prior": 0.5,
}
# The demo's thread count. CPU results are bit-reproducible for a fixed thread count (and CPU
# type and torch version) but not across thread counts (README), so the demo fixes it rather
# than taking the core count: the documented figure is then the one any 2+-core machine of the
# same kind gets. --threads N trains as well, along another rounding path.
DEMO_THREADS = 2


# ----------------------------------------------------------------------------- arguments
# Option types that reject a bad value at parse time (exit status 2, argparse's message
# naming the option: "argument --epochs: must be an integer >= 1, got 0"), before any file
# is read or written.
def _int(lo: int):
    def parse(text: str) -> int:
        value = int(text)  # a ValueError: argparse's "invalid int value"
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text}")
        return value
    parse.__name__ = "int"
    return parse


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False):
    def parse(text: str) -> float:
        value = float(text)
        bad = not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else
                                                               value < lo)) \
            or (hi is not None and (value >= hi if hi_open else value > hi))
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            what = " and ".join(x for x in (lo_s, hi_s) if x)
            raise argparse.ArgumentTypeError(
                f"must be a finite number{' ' + what if what else ''}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


def _device(text: str) -> str:
    if text == "auto":
        return text
    import torch
    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _add_data_args(p: argparse.ArgumentParser, split: str, required: bool = False) -> None:
    p.add_argument("--data", help="a folder written by `generate` (uses DATA/train, DATA/val)")
    p.add_argument(f"--{split}-ann", help=f"instances JSON of the {split} set")
    p.add_argument(f"--{split}-images", help=f"image folder of the {split} set")


def _split_paths(args, split: str) -> tuple[str, str] | None:
    ann = getattr(args, f"{split}_ann", None)
    img = getattr(args, f"{split}_images", None)
    if ann:
        return ann, img or os.path.join(os.path.dirname(ann), "images")
    if getattr(args, "data", None):
        root = os.path.join(args.data, split)
        if os.path.exists(os.path.join(root, "annotations.json")):
            return os.path.join(root, "annotations.json"), os.path.join(root, "images")
    return None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (TOODConfig)")
    g.add_argument("--depth", type=int, default=50, choices=(18, 34, 50))
    g.add_argument("--weights", help="local backbone weights (torchvision ResNet state dict)")
    g.add_argument("--fpn-channels", type=_int(1), default=256)
    g.add_argument("--feat-channels", type=_int(1), default=256)
    g.add_argument("--stacked-convs", type=_int(1), default=6)
    g.add_argument("--num-groups", type=_int(1), default=32, help="GroupNorm groups of the head")
    g.add_argument("--anchor-type", default="anchor_free", choices=("anchor_free", "anchor_based"))
    g.add_argument("--head", default="tood", choices=("tood", "atss"),
                   help="tood: the T-head; atss: ATSS's parallel head with centerness (baseline)")
    g.add_argument("--initial-epoch", type=_int(0), default=4, help="ATSS epochs before TAL")
    g.add_argument("--cls-prior", type=_float(0, 1, True, True), default=0.01,
                   help="T-head: prior probability of P's bias (mmdetection 0.01)")
    g.add_argument("--m-prior", type=_float(0, 1, True, True), default=0.01,
                   help="T-head: prior probability of the alignment map M's bias (mmdetection "
                        "0.01; 0.5 with --cls-prior 2e-4 trains better from scratch)")
    g.add_argument("--topk", type=_int(1), default=13)
    g.add_argument("--alpha", type=_float(0), default=1.0)
    g.add_argument("--beta", type=_float(0), default=6.0)
    g.add_argument("--ops", default="kernel", choices=("kernel", "reference"))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (TrainConfig)")
    g.add_argument("--epochs", type=_int(1), default=12)
    g.add_argument("--batch-size", type=_int(1), default=2, help="per process")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    g.add_argument("--lr", type=_float(0, lo_open=True), default=0.01)
    g.add_argument("--momentum", type=_float(0, 1, hi_open=True), default=0.9)
    g.add_argument("--weight-decay", type=_float(0), default=1e-4)
    g.add_argument("--warmup-iters", type=_int(0), default=500)
    g.add_argument("--warmup-ratio", type=_float(0, 1), default=0.001)
    g.add_argument("--schedule", default="step", choices=("step", "cosine"))
    g.add_argument("--milestones", type=_int(1), nargs="*", default=[8, 11], help="epochs (step)")
    g.add_argument("--gamma", type=_float(0, lo_open=True), default=0.1)
    g.add_argument("--min-lr-ratio", type=_float(0, 1), default=0.01, help="cosine's final lr / lr")
    g.add_argument("--clip-grad", type=_float(0), default=35.0, help="max grad norm; 0: off")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
    g.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"))
    g.add_argument("--workers", type=_int(0), default=0, help="data loader processes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ckpt-interval", type=_int(0), default=1)
    g.add_argument("--eval-interval", type=_int(0), default=0, help="epochs; 0: at the end only")
    g.add_argument("--max-iters-per-epoch", type=_int(1), default=None)
    g.add_argument("--resume", help="checkpoint path, or 'auto' for WORK_DIR/latest.pth")
    g.add_argument("--no-progress", action="store_true")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=_device, help="auto | cpu | cuda")
    p.add_argument("--scale", type=_int(1), nargs=2, default=[1333, 800], metavar=("LONG", "SHORT"),
                   help="keep-ratio resize bounds")
    p.add_argument("--threads", type=_int(1), default=None, help="torch CPU threads")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tood_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a synthetic COCO-format dataset")
    p.add_argument("--out", required=True, help="root folder (OUT/train, OUT/val)")
    p.add_argument("--train-images", type=int, default=DEMO["train_images"])
    p.add_argument("--val-images", type=int, default=DEMO["val_images"])
    p.add_argument("--seed", type=int, default=0, help="val uses seed + 1")
    p.add_argument("--image-size", type=int, default=DEMO["image_size"])
    p.add_argument("--num-classes", type=int, default=DEMO["num_classes"])
    p.add_argument("--max-objects", type=int, default=DEMO["max_objects"])
    p.add_argument("--min-size", type=float, default=DEMO["min_size"])
    p.add_argument("--max-size", type=float, default=DEMO["max_size"])

    p = sub.add_parser("train", help="train TOOD (torchrun --nproc_per_node N -m tood_ext train ...)")
    _add_data_args(p, "train")
    p.add_argument("--val-ann")
    p.add_argument("--val-images")
    p.add_argument("--work-dir", default="runs/train")
    _add_common(p)
    _add_model_args(p)
    _add_train_args(p)

    p = sub.add_parser("eval", help="COCO bbox AP of a checkpoint")
    p.add_argument("checkpoint")
    _add_data_args(p, "val")
    _add_common(p)
    p.add_argument("--batch-size", type=_int(1), default=2)
    p.add_argument("--out", help="metrics JSON (default: next to the checkpoint)")
    p.add_argument("--dets-out", help="also write the detections (COCO results JSON)")
    p.add_argument("--score-thr", type=_float(0, 1), default=None, help="override the model's")
    p.add_argument("--min-bbox-size", type=_float(), default=None,
                   help="override the model's (0: drop zero-size boxes; negative: keep all)")
    p.add_argument("--clip", default=None, choices=("on", "off"),
                   help="clip boxes to the image before NMS (default: the model's, on; "
                        "mmdetection's TOOD: off)")
    p.add_argument("--ops", default=None, choices=("kernel", "reference"))
    p.add_argument("--backend", default="auto", choices=("auto", "pycocotools", "numpy"))

    p = sub.add_parser("predict", help="draw detections on images")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", default="runs/predict")
    p.add_argument("--score-thr", type=_float(0, 1), default=0.3, help="drawn if score >= this")
    p.add_argument("--limit", type=_int(1), default=None, help="at most this many images")
    _add_common(p)

    p = sub.add_parser("demo", help="synthetic data -> train -> eval -> predictions")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=_int(1), default=DEMO["epochs"])
    p.add_argument("--train-images", type=int, default=DEMO["train_images"])
    p.add_argument("--val-images", type=int, default=DEMO["val_images"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", type=_device)
    p.add_argument("--threads", type=_int(1), default=DEMO_THREADS,
                   help="torch CPU threads (default %(default)s whatever the core count: the "
                        "result depends on it, see README)")
    p.add_argument("--ops", default="kernel", choices=("kernel", "reference"))
    p.add_argument("--num-predictions", type=_int(0), default=6)
    _add_plugin_commands(sub)
    return parser


# Subcommands that live in their own packages: command -> module, whose
# add_<command>_subparser(subparsers) adds the parser and sets ``func``
# (see tood_ext/export/cli.py).
PLUGINS = {"export": "tood_ext.export", "analyze": "tood_ext.analysis"}


def _add_plugin_commands(sub) -> None:
    import importlib
    for name, module_name in PLUGINS.items():
        try:
            module = importlib.import_module(module_name)
            getattr(module, f"add_{name}_subparser")(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                _broken_plugin(sub, name, module_name, exc)
        except Exception as exc:  # a broken plugin must not take the other commands down
            _broken_plugin(sub, name, module_name, exc)


def _broken_plugin(sub, name: str, module_name: str, exc: Exception) -> None:
    def fail(_args):
        sys.exit(f"{name}: {module_name} could not be loaded: {exc!r}")
    p = sub.add_parser(name, help=f"(unavailable: {type(exc).__name__})")
    p.set_defaults(func=fail)


# ----------------------------------------------------------------------------- commands
def _setup(args):
    import torch

    from .engine import dist as D
    if args.threads:
        torch.set_num_threads(args.threads)
    device = D.init_from_env(args.device)
    return device


def _model_config(args, num_classes: int):
    from .models import TOODConfig
    return TOODConfig(num_classes=num_classes, depth=args.depth, weights=args.weights,
                      fpn_channels=args.fpn_channels, feat_channels=args.feat_channels,
                      stacked_convs=args.stacked_convs, num_groups=args.num_groups,
                      anchor_type=args.anchor_type, head=getattr(args, "head", "tood"),
                      initial_epoch=args.initial_epoch, cls_prior=args.cls_prior,
                      m_prior=args.m_prior, topk=args.topk, alpha=args.alpha, beta=args.beta,
                      ops=args.ops)


def _train_config(args):
    from .engine import TrainConfig
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                       lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                       warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_ratio,
                       schedule=args.schedule, milestones=list(args.milestones),
                       gamma=args.gamma, min_lr_ratio=args.min_lr_ratio,
                       clip_grad=args.clip_grad or None, amp=not args.no_amp,
                       amp_dtype=args.amp_dtype, workers=args.workers, seed=args.seed,
                       work_dir=args.work_dir, ckpt_interval=args.ckpt_interval,
                       eval_interval=args.eval_interval,
                       max_iters_per_epoch=args.max_iters_per_epoch,
                       progress_bar=not args.no_progress)


def cmd_generate(args) -> None:
    from .data import generate_synthetic_coco
    from .data.synthetic import check_generate_args
    kw = dict(image_size=args.image_size, num_classes=args.num_classes,
              max_objects=args.max_objects, min_size=args.min_size, max_size=args.max_size)
    try:  # every argument checked before anything is written
        for n in (args.train_images, args.val_images):
            check_generate_args(num_images=n, **kw)
    except (TypeError, ValueError) as exc:
        sys.exit(f"generate: {_option_names(str(exc))}")
    for split, n, seed in (("train", args.train_images, args.seed),
                           ("val", args.val_images, args.seed + 1)):
        if n > 0:
            path = generate_synthetic_coco(os.path.join(args.out, split), n, seed=seed, **kw)
            print(f"{split}: {n} images -> {path}")


def cmd_train(args) -> dict:
    import torch

    from .data import CocoDetection
    from .engine import dist as D
    from .engine import train
    from .models import build_model

    device = _setup(args)
    tr = _split_paths(args, "train")
    if tr is None:
        sys.exit("train: give --data ROOT or --train-ann (and --train-images)")
    va = _split_paths(args, "val")
    scale = tuple(args.scale)
    train_set = CocoDetection(tr[0], tr[1], scale=scale, train=True, seed=args.seed)
    if len(train_set) == 0:
        sys.exit(f"train: no usable training image in {tr[0]}: "
                 f"{train_set.describe_filter()}")
    val_set = CocoDetection(va[0], va[1], scale=scale) if va else None
    if not os.path.isdir(tr[1]):  # found before the work dir is made, not at the first batch
        sys.exit(f"train: image folder not found: {tr[1]}")
    if list(args.milestones) != sorted(set(args.milestones)):
        sys.exit(f"train: --milestones must be increasing epochs, got {args.milestones}")
    try:  # the model's options that only its constructors check (--num-groups, --weights)
        mcfg = _model_config(args, train_set.num_classes)
        tcfg = _train_config(args)
        torch.manual_seed(args.seed)  # the same initial weights in every process and every run
        model = build_model(mcfg)
    except FileNotFoundError:
        raise
    except Exception as exc:
        sys.exit(f"train: bad model/training options: {type(exc).__name__}: {exc}")
    if D.is_main():
        n = sum(p.numel() for p in model.parameters())
        print(f"TOOD-R{mcfg.depth}: {n / 1e6:.2f} M parameters; {len(train_set)} training images,"
              f" {train_set.num_classes} classes; {D.world_size()} process(es) on {device}")
    try:
        return train(model, train_set, tcfg, device=device, val_set=val_set, resume=args.resume,
                     model_config=mcfg)
    finally:
        D.cleanup()


def cmd_eval(args) -> dict:
    from .data import CocoDetection
    from .engine import evaluate, model_from_checkpoint
    from .engine.evaluate import check_classes

    device = _setup(args)
    va = _split_paths(args, "val")
    if va is None:
        sys.exit("eval: give --data ROOT or --val-ann (and --val-images)")
    model, state = model_from_checkpoint(
        args.checkpoint, device, score_thr=args.score_thr, ops=args.ops,
        min_bbox_size=args.min_bbox_size,
        clip_to_image=None if args.clip is None else args.clip == "on")
    scale = _ckpt_scale(state, args.scale)
    dataset = CocoDetection(va[0], va[1], scale=scale)
    problem = check_classes(model, dataset, state.get("classes"))
    if problem:
        sys.exit(f"eval: {args.checkpoint} does not fit {va[0]}: {problem}")
    out = args.out or os.path.splitext(args.checkpoint)[0] + "_metrics.json"
    metrics = evaluate(model, dataset, device=device, batch_size=args.batch_size, out_json=out,
                       dets_json=args.dets_out, backend=args.backend)
    print(f"metrics -> {out}")
    return metrics


def _ckpt_scale(state, default):
    scale = (state.get("classes") or {}).get("scale")
    return tuple(scale) if scale else tuple(default)


def _image_paths(items: list[str], limit: int | None) -> list[str]:
    paths = []
    for it in items:
        if os.path.isdir(it):
            for ext in ("png", "jpg", "jpeg", "bmp"):
                paths += glob.glob(os.path.join(it, f"*.{ext}"))
        else:
            paths.append(it)
    paths = sorted(set(paths)) if any(os.path.isdir(i) for i in items) else paths
    return paths[:limit] if limit else paths


def cmd_predict(args) -> list[str]:
    from .engine import model_from_checkpoint, predict_images

    device = _setup(args)
    model, state = model_from_checkpoint(args.checkpoint, device,
                                         score_thr=min(args.score_thr, 0.05))
    names = (state.get("classes") or {}).get("names")
    paths = _image_paths(args.images, args.limit)
    if not paths:
        sys.exit(f"predict: no image found in {args.images}")
    written = predict_images(model, paths, args.out, scale=_ckpt_scale(state, args.scale),
                             class_names=names, score_thr=args.score_thr, device=device)
    print(f"{len(written)} images -> {args.out}")
    return written


def cmd_demo(args) -> dict:
    """Everything in one process; prints where each output went and the AP table."""
    import torch

    from .data import CocoDetection, generate_synthetic_coco
    from .engine import TrainConfig, evaluate, predict_images, train
    from .engine.repro import run_conditions
    from .engine.train import loss_digest, state_digest
    from .models import TOODConfig, build_model

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    root = os.path.join(args.out, "data")
    splits = {}
    gen_kw = {k: DEMO[k] for k in ("image_size", "num_classes", "max_objects", "min_size",
                                   "max_size")}
    for split, n, seed in (("train", args.train_images, args.seed),
                           ("val", args.val_images, args.seed + 1)):
        ann = os.path.join(root, split, "annotations.json")
        # a rerun reuses the set only if it was made with the same arguments (seed included)
        spec = {"num_images": n, "seed": seed, **gen_kw}
        spec_path = os.path.join(root, split, "demo_spec.json")
        if not (os.path.exists(ann) and os.path.exists(spec_path)
                and json.load(open(spec_path)) == spec):
            generate_synthetic_coco(os.path.join(root, split), n, seed=seed, **gen_kw)
            with open(spec_path, "w") as f:
                json.dump(spec, f)
        splits[split] = (ann, os.path.join(root, split, "images"))
    print(f"data: {args.train_images} train / {args.val_images} val synthetic images in {root} "
          f"({time.perf_counter() - t_start:.0f}s)")
    scale = (DEMO["image_size"], DEMO["image_size"])
    train_set = CocoDetection(*splits["train"], scale=scale, train=True, seed=args.seed)
    val_set = CocoDetection(*splits["val"], scale=scale)
    mcfg = TOODConfig(num_classes=train_set.num_classes, depth=DEMO["depth"],
                      fpn_channels=DEMO["fpn_channels"], feat_channels=DEMO["feat_channels"],
                      stacked_convs=DEMO["stacked_convs"], num_groups=DEMO["num_groups"],
                      initial_epoch=DEMO["initial_epoch"], cls_prior=DEMO["cls_prior"],
                      m_prior=DEMO["m_prior"], ops=args.ops)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=DEMO["batch_size"],
                       optimizer=DEMO["optimizer"], lr=DEMO["lr"],
                       weight_decay=DEMO["weight_decay"], warmup_iters=DEMO["warmup_iters"],
                       schedule=DEMO["schedule"], seed=args.seed,
                       work_dir=os.path.join(args.out, "train"), ckpt_interval=args.epochs)
    torch.manual_seed(args.seed)
    model = build_model(mcfg)
    print(f"model: TOOD-R{mcfg.depth}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"parameters, device {device}, {torch.get_num_threads()} threads")
    result = train(model, train_set, tcfg, device=device, model_config=mcfg)
    t_train = time.perf_counter() - t_start
    metrics_path = os.path.join(args.out, "metrics.json")
    metrics = evaluate(model, val_set, device=device, batch_size=DEMO["batch_size"],
                       out_json=metrics_path,
                       dets_json=os.path.join(args.out, "detections.json"))
    # what the numbers depend on, and bit-exact fingerprints of the run: two runs under the
    # same conditions must agree on every one of them (README)
    metrics["demo"] = {
        "args": {k: v for k, v in vars(args).items() if k not in ("command", "func")},
        "threads": torch.get_num_threads(),
        "conditions": run_conditions(device),
        "data_digest": _files_digest([splits[k][0] for k in ("train", "val")]
                                     + [os.path.join(splits[k][1], im["file_name"])
                                        for k, ds in (("train", train_set), ("val", val_set))
                                        for im in ds.coco.images]),
        "loss_digests": [h["loss_digest"] for h in result["history"]],
        "loss_digest": loss_digest(result["iter_losses"]),
        "weights_digest": state_digest(model),
        "train_s": round(t_train, 1),
    }
    paths = [os.path.join(splits["val"][1], im["file_name"])
             for im in val_set.images[:args.num_predictions]]
    written = predict_images(model, paths, os.path.join(args.out, "predictions"), scale=scale,
                             class_names=train_set.class_names, score_thr=0.3, device=device)
    total = time.perf_counter() - t_start
    metrics["demo"]["total_s"] = round(total, 1)
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)
    d, c = metrics["demo"], metrics["demo"]["conditions"]
    print(f"fingerprint: losses {d['loss_digest']}, weights {d['weights_digest']} "
          f"({d['threads']} threads, {c['cpu_model']}, torch {c['torch']}, "
          f"ATen {c['torch_cpu_capability']})")
    print(f"demo done in {total / 60:.1f} min (data + training {t_train / 60:.1f} min): "
          f"AP {100 * metrics['AP']:.1f}, AP50 {100 * metrics['AP50']:.1f}; "
          f"checkpoint {result['checkpoint']}, metrics {os.path.join(args.out, 'metrics.json')}, "
          f"{len(written)} prediction images in {os.path.join(args.out, 'predictions')}")
    return metrics


def _files_digest(paths: list[str]) -> str:
    """16 hex digits of the SHA-256 of the files' bytes, in the given order."""
    import hashlib
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "eval": cmd_eval,
            "predict": cmd_predict, "demo": cmd_demo}


def _option_names(message: str) -> str:
    """generate's argument names as its command-line options (min_size -> --min-size)."""
    for name in ("num_images", "image_size", "num_classes", "max_objects", "min_size",
                 "max_size"):
        message = message.replace(name, "--" + name.replace("_", "-"))
    return message.replace("--num-images", "--train-images/--val-images")


def main(argv: list[str] | None = None):
    """Runs a command. Bad options exit with status 2 (argparse); unusable data (a malformed
    annotations file, an unreadable image, no usable training image, a checkpoint whose
    classes do not fit the set, a corrupt or foreign checkpoint, model options its
    constructors reject) exits with status 1 and a message naming the file or option and
    the problem, before anything is written."""
    from .data.coco import DataError
    from .engine.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        return args.func(args)
    except (DataError, CheckpointError, OSError) as exc:  # OSError: not found, a directory...
        sys.exit(f"{args.command}: {exc}")


if __name__ == "__main__":
    main()
