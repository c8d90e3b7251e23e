"""TOOD's ablation (head x assignment) at small scale, on the synthetic COCO-format set.

Four arms, the same backbone, FPN, data, seed and schedule (tood_ext.engine's API):

  parallel+ATSS   TOODConfig(head="atss", initial_epoch=epochs)   ATSS's head and training
  T-head+ATSS     TOODConfig(head="tood", initial_epoch=epochs)   T-head, ATSS training only
  parallel+TAL    TOODConfig(head="atss", initial_epoch=k)        parallel head, TAL after k
  T-head+TAL      TOODConfig(head="tood", initial_epoch=k)        TOOD

(``initial_epoch >= epochs``: every epoch uses the ATSS assigner; ``k``: ATSS warm-up epochs,
then TAL, as TOOD's own schedule.) Each arm is trained, evaluated (COCO AP, AP50, AP75) and
analysed (:func:`tood_ext.analysis.alignment_report`); the script writes
``benchmarks/results/ablation.{md,json}`` and the score-vs-IoU scatter
``ablation_score_vs_iou.png`` (``--quick``: ``ablation-quick.*`` in ``WORK_DIR/quick``, a
smoke test whose numbers mean nothing).

    python -m benchmarks.ablation --threads 1          # full size: the demo's data/model
    python -m benchmarks.ablation --quick --threads 1  # tiny set, 2 epochs: ~15 s

Full size: 960 iterations per arm at ~0.85 s each on one busy EPYC core (measured), i.e. about
15 minutes per arm and an hour for the four. ``--threads 1`` on a shared 2-core machine: two
torch threads competing with other processes made small steps 2-40x slower here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ARMS = (  # name, head, assigner
    ("parallel+ATSS", "atss", "atss"),
    ("T-head+ATSS", "tood", "atss"),
    ("parallel+TAL", "atss", "tal"),
    ("T-head+TAL", "tood", "tal"),
)

# full size: the data, model and optimiser of `python -m tood_ext demo`, with 16 epochs instead
# of its 12 (a little more training separates the arms better; ~15 min per arm on one busy core);
# quick: a smoke test of the whole pipeline
MODES = {
    "full": {
        "data": {"train_images": 240, "val_images": 48, "image_size": 256, "num_classes": 4,
                 "max_objects": 4, "min_size": 0.15, "max_size": 0.55},
        "model": {"depth": 18, "fpn_channels": 64, "feat_channels": 64, "num_groups": 16},
        # T-head: 3 shared convs; parallel head: 2 per branch (4 in all), the paper's
        # 6 shared vs 2 x 4 at a third of the size
        "stacked_convs": {"tood": 3, "atss": 2},
        "initial_epoch": 1,
        "train": {"epochs": 16, "batch_size": 4, "optimizer": "adamw", "lr": 2e-3,
                  "weight_decay": 0.05, "warmup_iters": 60, "schedule": "cosine"},
    },
    "quick": {
        "data": {"train_images": 16, "val_images": 8, "image_size": 128, "num_classes": 3,
                 "max_objects": 3, "min_size": 0.2, "max_size": 0.6},
        "model": {"depth": 18, "fpn_channels": 32, "feat_channels": 32, "num_groups": 8},
        "stacked_convs": {"tood": 3, "atss": 2},
        "initial_epoch": 1,
        "train": {"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 2e-3,
                  "weight_decay": 0.05, "warmup_iters": 4, "schedule": "cosine"},
    },
}

# the paper's claims (TOOD, Tables 1-3 and the alignment analysis), checked on our numbers
AP_CLAIMS = (("T-head+ATSS", "parallel+ATSS"), ("T-head+TAL", "parallel+TAL"),
             ("parallel+TAL", "parallel+ATSS"), ("T-head+TAL", "T-head+ATSS"),
             ("T-head+TAL", "parallel+ATSS"))
ALIGN_CLAIMS = (("pcc", "higher"), ("top_iou", "higher"), ("correct", "higher"),
                ("redundant", "lower"), ("error", "lower"))


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except Exception:
        return None


def arm_configs(mode: str, num_classes: int, seed: int, epochs: int | None = None):
    """(name, TOODConfig, TrainConfig) of each arm, in :data:`ARMS` order."""
    from tood_ext.engine import TrainConfig
    from tood_ext.models import TOODConfig

    m = MODES[mode]
    tr = dict(m["train"])
    if epochs is not None:
        tr["epochs"] = epochs
    out = []
    for name, head, assigner in ARMS:
        init = tr["epochs"] if assigner == "atss" else m["initial_epoch"]
        mcfg = TOODConfig(num_classes=num_classes, head=head,
                          stacked_convs=m["stacked_convs"][head], initial_epoch=init,
                          **m["model"])
        tcfg = TrainConfig(seed=seed, progress_bar=False, ckpt_interval=tr["epochs"], **tr)
        out.append((name, mcfg, tcfg))
    return out


def _ensure_data(root: str, d: dict, seed: int) -> dict:
    from tood_ext.data import generate_synthetic_coco

    splits = {}
    for split, n, s in (("train", d["train_images"], seed), ("val", d["val_images"], seed + 1)):
        ann = os.path.join(root, split, "annotations.json")
        if not os.path.exists(ann) or len(json.load(open(ann))["images"]) != n:
            generate_synthetic_coco(os.path.join(root, split), n, seed=s,
                                    image_size=d["image_size"], num_classes=d["num_classes"],
                                    max_objects=d["max_objects"], min_size=d["min_size"],
                                    max_size=d["max_size"])
        splits[split] = (ann, os.path.join(root, split, "images"))
    return splits


def run(args) -> dict:
    from tood_ext.analysis import analyze_model, format_reports, plot_score_vs_iou
    from tood_ext.data import CocoDetection
    from tood_ext.engine import evaluate, train
    from tood_ext.models import build_model

    t_all = time.perf_counter()
    mode = "quick" if args.quick else "full"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    m = MODES[mode]
    work = os.path.join(args.work_dir, mode)
    if args.out is None:
        args.out = work if args.quick else os.path.join(ROOT, "benchmarks", "results")
    splits = _ensure_data(os.path.join(work, "data"), m["data"], args.seed)
    scale = (m["data"]["image_size"],) * 2
    train_set = CocoDetection(*splits["train"], scale=scale, train=True, seed=args.seed)
    val_set = CocoDetection(*splits["val"], scale=scale)
    arms = [a for a in arm_configs(mode, train_set.num_classes, args.seed, args.epochs)
            if not args.arms or a[0] in args.arms]
    print(f"ablation ({mode}): {len(train_set)} train / {len(val_set)} val images, "
          f"{len(arms)} arms, device {device}, {torch.get_num_threads()} threads", flush=True)

    results, reports, metrics = [], {}, {}
    for name, mcfg, tcfg in arms:
        t0 = time.perf_counter()
        tcfg.work_dir = os.path.join(work, name.replace("+", "_"))
        torch.manual_seed(args.seed)  # the same initial backbone/FPN weights in every arm
        model = build_model(mcfg)
        n_params = sum(p.numel() for p in model.parameters())
        n_head = sum(p.numel() for p in model.head.parameters())

        def log(msg, _name=name):
            print(f"[{_name}] {msg}", flush=True)
        res = train(model, train_set, tcfg, device=device, model_config=mcfg, log=log)
        t_train = time.perf_counter() - t0
        met = evaluate(model, val_set, device=device, batch_size=tcfg.batch_size,
                       out_json=os.path.join(tcfg.work_dir, "metrics.json"),
                       log=lambda _m: None, progress_bar=False)
        rep = analyze_model(model, val_set, device, tcfg.batch_size, return_pairs=True)
        with open(os.path.join(tcfg.work_dir, "alignment.json"), "w") as f:
            json.dump(rep, f)
        reports[name], metrics[name] = rep, met
        assigner = "ATSS" if mcfg.initial_epoch >= tcfg.epochs else \
            f"ATSS {mcfg.initial_epoch} ep, then TAL"
        results.append({
            "name": name, "head": mcfg.head, "assigner": assigner,
            "model_config": mcfg.to_dict(), "train_config": {
                k: getattr(tcfg, k) for k in ("epochs", "batch_size", "optimizer", "lr",
                                              "weight_decay", "warmup_iters", "schedule",
                                              "seed")},
            "params": n_params, "head_params": n_head, "checkpoint": res["checkpoint"],
            "train_time_s": round(t_train, 1),
            "total_time_s": round(time.perf_counter() - t0, 1),
            "metrics": {k: met[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
                        if k in met},
            "alignment": {k: v for k, v in rep.items() if k != "pairs"},
            "history": [{k: v for k, v in h.items() if k != "val"} for h in res["history"]],
        })
        print(f"[{name}] AP {100 * met['AP']:.1f} AP50 {100 * met['AP50']:.1f} "
              f"AP75 {100 * met['AP75']:.1f}; PCC {rep['pre_nms']['pcc']}, top-10 IoU "
              f"{rep['pre_nms']['top_iou']}; {time.perf_counter() - t0:.0f}s", flush=True)

    table = format_reports(reports, metrics)
    print(table)
    stem = "ablation" if mode == "full" else "ablation-quick"
    os.makedirs(args.out, exist_ok=True)
    plot = plot_score_vs_iou(reports, os.path.join(args.out, f"{stem}_score_vs_iou.png"))
    claims = check_claims(results)
    doc = {
        "mode": mode, "date": datetime.date.today().isoformat(), "seed": args.seed,
        "command": "python -m benchmarks.ablation " + " ".join(sys.argv[1:]),
        "commands": reproduce_commands(mode, args, work),
        "settings": {k: v for k, v in m.items()}, "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "git_commit": _git_commit(),
        "total_time_s": round(time.perf_counter() - t_all, 1),
        "arms": results, "claims": claims, "plot": os.path.basename(plot),
    }
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(markdown(doc, table))
    print(f"results -> {os.path.join(args.out, stem)}.{{md,json}}, plot -> {plot}; "
          f"total {doc['total_time_s']:.0f}s")
    return doc


def reproduce_commands(mode: str, args, work: str) -> list[str]:
    q = " --quick" if mode == "quick" else ""
    q += f" --threads {args.threads}" if args.threads else ""
    q += f" --epochs {args.epochs}" if args.epochs else ""
    ckpts = " ".join(os.path.join(work, a[0].replace("+", "_"), "latest.pth") for a in ARMS)
    names = " ".join(a[0] for a in ARMS)
    return [f"python -m benchmarks.ablation{q} --seed {args.seed} --work-dir {args.work_dir}",
            f"python -m tood_ext analyze --checkpoint {ckpts} --names {names} "
            f"--data {os.path.join(work, 'data')} --out {os.path.join(work, 'analyze')}"]


def _value(arm: dict, key: str):
    if key in ("pcc", "top_iou"):
        return arm["alignment"]["pre_nms"][key]
    if key in ("correct", "redundant", "error"):
        return arm["alignment"]["post_nms"][key]
    return arm["metrics"][key]


def check_claims(results: list[dict]) -> list[dict]:
    """Each of the paper's pairwise claims that both arms here allow: holds or not."""
    by = {r["name"]: r for r in results}
    out = []
    for hi, lo in AP_CLAIMS:
        if hi in by and lo in by:
            for k in ("AP", "AP75"):
                a, b = _value(by[hi], k), _value(by[lo], k)
                out.append({"claim": f"{k}: {hi} > {lo}", "values": [a, b], "holds": a > b})
    if "T-head+TAL" in by and "parallel+ATSS" in by:
        for k, direction in ALIGN_CLAIMS:
            a, b = _value(by["T-head+TAL"], k), _value(by["parallel+ATSS"], k)
            holds = None if a is None or b is None else (a > b if direction == "higher"
                                                         else a < b)
            sign = ">" if direction == "higher" else "<"
            out.append({"claim": f"{k}: T-head+TAL {sign} parallel+ATSS", "values": [a, b],
                        "holds": holds})
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(doc: dict, table: str) -> str:
    s = doc["settings"]
    lines = [f"# TOOD ablation at small scale ({doc['mode']}, {doc['date']})", ""]
    if doc["mode"] == "quick":
        lines += ["**Quick mode: a smoke test of the pipeline (a few images, "
                  f"{s['train']['epochs']} epochs). The numbers below mean nothing.**", ""]
    lines += [
        "Synthetic COCO-format set (`tood_ext.data.generate_synthetic_coco`, seed "
        f"{doc['seed']} / {doc['seed'] + 1}): {s['data']['train_images']} train and "
        f"{s['data']['val_images']} val images, {s['data']['image_size']} px, "
        f"{s['data']['num_classes']} classes. Every arm: ResNet-{s['model']['depth']} (random "
        f"init, seed {doc['seed']}), FPN {s['model']['fpn_channels']} ch, head "
        f"{s['model']['feat_channels']} ch; {s['train']['epochs']} epochs, batch "
        f"{s['train']['batch_size']}, {s['train']['optimizer']} lr {s['train']['lr']} "
        f"({s['train']['schedule']}, warm-up {s['train']['warmup_iters']} it). T-head: "
        f"{s['stacked_convs']['tood']} shared convs; parallel head: "
        f"{s['stacked_convs']['atss']} convs per branch + centerness. \"+ATSS\": "
        "`initial_epoch = epochs` (ATSS assigner, focal loss, centerness-weighted GIoU "
        f"throughout); \"+TAL\": `initial_epoch = {s['initial_epoch']}` (ATSS warm-up, then "
        "TAL: QFL on t_hat, t_hat-weighted GIoU).",
        "",
        f"Device {doc['device']} ({doc['machine']}, {doc['threads']} threads), torch "
        f"{doc['torch']}, commit {doc['git_commit']}; total {_duration(doc['total_time_s'])}.",
        "",
        "## Results (val set)",
        "",
        "AP in %. Alignment (`tood_ext.analysis.alignment_report`): PCC = mean over GTs of the "
        "Pearson correlation of score rank and IoU rank of its 50 most confident assigned "
        "pre-NMS predictions; IoU top-10 = mean IoU of the 10 most confident; after NMS "
        "(the model's own detections, score > 0.05), correct (IoU >= 0.5, one per GT), "
        "redundant (further IoU >= 0.5), error (0.1 < IoU < 0.5), background, summed over "
        "the val set. Scores: what NMS ranks (T-head: P_align; parallel head: "
        "sigmoid(cls) * sigmoid(centerness)).",
        "",
        table,
        "",
        "| arm | head | assignment | parameters | head parameters | training time |",
        "|---|---|---|---|---|---|",
    ]
    for a in doc["arms"]:
        lines.append(f"| {a['name']} | {a['head']} | {a['assigner']} | "
                     f"{a['params'] / 1e6:.2f} M | {a['head_params'] / 1e3:.0f} k | "
                     f"{_duration(a['train_time_s'])} |")
    lines += ["", f"Score vs IoU of the top-50 predictions per GT: `{doc['plot']}` (next to "
              "this file).", "",
              "## The paper's ordering here", ""]
    for c in doc["claims"]:
        v = ", ".join("-" if x is None else f"{x:.3f}" for x in c["values"])
        mark = {True: "holds", False: "does NOT hold", None: "undefined"}[c["holds"]]
        lines.append(f"- {c['claim']}: {mark} ({v})")
    n_ok = sum(c["holds"] is True for c in doc["claims"])
    lines += ["", f"{n_ok} of {len(doc['claims'])} claims hold on this run (one seed, a small "
              "synthetic set: differences of a point or two AP are within run-to-run noise)."
              if doc["mode"] == "full" else
              "(Quick mode: not evidence either way.)", "",
              "## Reproduce", "", "```bash"] + doc["commands"] + ["```", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny set, 2 epochs (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the mode's epochs")
    p.add_argument("--arms", nargs="+", choices=[a[0] for a in ARMS], default=None)
    p.add_argument("--work-dir", default="runs/ablation", help="data, checkpoints, logs")
    p.add_argument("--out", default=None, help="where the .md/.json/.png go (default: "
                   "benchmarks/results; --quick: WORK_DIR/quick)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 recommended on a shared machine)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
