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
# opt-in arms (--arms NAME ...; merged into the committed results with --merge): the T-head
# with the "M-first" priors (TOODHead's cls_prior / m_prior), the diagnosis of the T-head gap
M_FIRST = {"cls_prior": 2e-4, "m_prior": 0.5}
EXTRA_ARMS = (
    ("T-head-Mfirst+ATSS", "tood", "atss", M_FIRST),
    ("T-head-Mfirst+TAL", "tood", "tal", M_FIRST),
)

# full size: the data, model, optimiser and 16 epochs of `python -m tood_ext demo` (whose TOOD is
# the T-head-Mfirst+TAL arm: the demo uses the M-first priors; ~15 min per arm on one busy core);
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
    """(name, TOODConfig, TrainConfig) of each arm, :data:`ARMS` then :data:`EXTRA_ARMS`."""
    from tood_ext.engine import TrainConfig
    from tood_ext.models import TOODConfig

    m = MODES[mode]
    tr = dict(m["train"])
    if epochs is not None:
        tr["epochs"] = epochs
    out = []
    for name, head, assigner, *extra in ARMS + EXTRA_ARMS:
        init = tr["epochs"] if assigner == "atss" else m["initial_epoch"]
        mcfg = TOODConfig(num_classes=num_classes, head=head,
                          stacked_convs=m["stacked_convs"][head], initial_epoch=init,
                          **m["model"], **(extra[0] if extra else {}))
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
    default = {a[0] for a in ARMS}
    arms = [a for a in arm_configs(mode, train_set.num_classes, args.seed, args.epochs)
            if (a[0] in args.arms if args.arms else a[0] in default)]
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
            "factors": head_factors(model, val_set, tcfg.batch_size),
            "history": [{k: v for k, v in h.items() if k != "val"} for h in res["history"]],
        })
        print(f"[{name}] AP {100 * met['AP']:.1f} AP50 {100 * met['AP50']:.1f} "
              f"AP75 {100 * met['AP75']:.1f}; PCC {rep['pre_nms']['pcc']}, top-10 IoU "
              f"{rep['pre_nms']['top_iou']}; {time.perf_counter() - t0:.0f}s", flush=True)

    stem = "ablation" if mode == "full" else "ablation-quick"
    previous = os.path.join(args.out, f"{stem}.json")
    runs = []
    if args.merge and os.path.exists(previous):
        # keep the committed arms not run now (their reports from their work dirs' files)
        with open(previous) as f:
            old = json.load(f)
        ran = {r["name"] for r in results}
        kept = [a for a in old["arms"] if a["name"] not in ran]
        runs = old.get("runs") or [_run_summary(old, [a["name"] for a in old["arms"]])]
        runs = [dict(r, arms=[n for n in r["arms"] if n not in ran]) for r in runs]
        runs = [r for r in runs if r["arms"]]
        for a in kept:
            with open(os.path.join(os.path.dirname(a["checkpoint"]), "alignment.json")) as f:
                reports[a["name"]] = json.load(f)
            metrics[a["name"]] = a["metrics"]
            if "factors" not in a:  # results of an older version of this script
                from tood_ext.engine import model_from_checkpoint
                a["factors"] = head_factors(model_from_checkpoint(a["checkpoint"], device)[0],
                                            val_set)
        order = [a[0] for a in ARMS + EXTRA_ARMS]
        results = sorted(kept + results, key=lambda r: order.index(r["name"]))
        reports = {r["name"]: reports[r["name"]] for r in results}
        metrics = {r["name"]: metrics[r["name"]] for r in results}
    table = format_reports(reports, metrics)
    print(table)
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
    doc["runs"] = runs + [_run_summary(doc, [a[0] for a in arms])]
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
    extra = " ".join(a[0] for a in EXTRA_ARMS)
    return [f"python -m benchmarks.ablation{q} --seed {args.seed} --work-dir {args.work_dir}",
            f"python -m benchmarks.ablation{q} --seed {args.seed} --work-dir {args.work_dir} "
            f"--arms {extra} --merge",
            f"python -m tood_ext analyze --checkpoint {ckpts} --names {names} "
            f"--data {os.path.join(work, 'data')} --out {os.path.join(work, 'analyze')}"]


def _run_summary(doc: dict, arms: list[str]) -> dict:
    """Where and how one invocation trained its arms (a merged file lists several)."""
    return {k: doc.get(k) for k in ("date", "command", "device", "machine", "threads", "torch",
                                    "git_commit", "total_time_s")} | {"arms": arms}


def _value(arm: dict, key: str):
    if key in ("pcc", "top_iou"):
        return arm["alignment"]["pre_nms"][key]
    if key in ("correct", "redundant", "error"):
        return arm["alignment"]["post_nms"][key]
    return arm["metrics"][key]


def head_factors(model, dataset, batch_size: int = 4) -> dict | None:
    """The two factors of the T-head's score ``P_align = sqrt(P * M)`` where it matters: per
    val GT of class k, at the anchor (any level, centre inside the GT) of highest P_align of
    class k, the class probability ``P_k``, the highest other-class ``P_j`` and the
    class-agnostic ``M``; means over the GTs, the fraction of GTs where some other class has
    ``P_j >= P_k`` ("confused"), and where ``P_j > 0.9`` ("saturated"). None for a head without
    M (the parallel head). Read through forward hooks on the head's two convs."""
    from torch.utils.data import DataLoader

    from tood_ext.data import collate
    from tood_ext.models import grid_priors

    head = model.head
    if not hasattr(head, "cls_prob_module"):
        return None
    seen = {"P": [], "M": []}
    hooks = [head.tood_cls.register_forward_hook(lambda m, i, o: seen["P"].append(o)),
             head.cls_prob_module.register_forward_hook(lambda m, i, o: seen["M"].append(o))]
    rows = []
    model.eval()
    try:
        for images, targets, _metas in DataLoader(dataset, batch_size=batch_size,
                                                  shuffle=False, collate_fn=collate):
            seen["P"].clear()
            seen["M"].clear()
            with torch.no_grad():
                out = model(images)
            B, C = out["cls_scores"][0].shape[:2]
            flat = lambda maps, c: torch.cat([x.permute(0, 2, 3, 1).reshape(B, -1, c)
                                              for x in maps], 1).float()
            P, M = flat(seen["P"], C).sigmoid(), flat(seen["M"], 1).sigmoid()[..., 0]
            Z = flat(out["cls_scores"], C)
            pri = torch.cat(grid_priors([tuple(x.shape[-2:]) for x in out["cls_scores"]],
                                        head.strides))
            cx, cy = (pri[:, 0] + pri[:, 2]) / 2, (pri[:, 1] + pri[:, 3]) / 2
            for b, t in enumerate(targets):
                for box, k in zip(t["boxes"].float(), t["labels"].tolist()):
                    inside = (cx > box[0]) & (cx < box[2]) & (cy > box[1]) & (cy < box[3])
                    if not inside.any():
                        continue
                    a = torch.where(inside, Z[b, :, k], -1.0).argmax()
                    other = torch.cat([P[b, a, :k], P[b, a, k + 1:]]).max()
                    rows.append((float(P[b, a, k]), float(other), float(M[b, a])))
    finally:
        for h in hooks:
            h.remove()
    if not rows:
        return None
    r = torch.tensor(rows, dtype=torch.float64)
    return {"gts": len(rows), "P_true": float(r[:, 0].mean()), "P_other": float(r[:, 1].mean()),
            "M": float(r[:, 2].mean()), "confused": float((r[:, 1] >= r[:, 0]).double().mean()),
            "saturated": float((r[:, 1] > 0.9).double().mean())}


def check_claims(results: list[dict]) -> list[dict]:
    """Each of the paper's pairwise claims that both arms here allow: holds or not (also with
    the M-first T-head arms in place of the T-head ones, when they ran)."""
    by = {r["name"]: r for r in results}
    out = []
    sub = lambda n: n.replace("T-head+", "T-head-Mfirst+")
    ap_claims = AP_CLAIMS + tuple((sub(a), sub(b)) for a, b in AP_CLAIMS
                                  if (sub(a), sub(b)) != (a, b))
    for hi, lo in ap_claims:
        if hi in by and lo in by:
            for k in ("AP", "AP75"):
                a, b = _value(by[hi], k), _value(by[lo], k)
                out.append({"claim": f"{k}: {hi} > {lo}", "values": [a, b], "holds": a > b})
    for tood in ("T-head+TAL", "T-head-Mfirst+TAL"):
        if tood not in by or "parallel+ATSS" not in by:
            continue
        for k, direction in ALIGN_CLAIMS:
            a, b = _value(by[tood], k), _value(by["parallel+ATSS"], k)
            holds = None if a is None or b is None else (a > b if direction == "higher"
                                                         else a < b)
            sign = ">" if direction == "higher" else "<"
            out.append({"claim": f"{k}: {tood} {sign} parallel+ATSS", "values": [a, b],
                        "holds": holds})
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


DIAGNOSIS = [
    "Reading: through z = sqrt(P * M) each factor gets the gradient z (1 - factor) / 2 of "
    "the loss, so whichever factor saturates first stops learning. With mmdetection's priors "
    "(0.01 for both) P, one conv on normalised features, rises faster than M, two convs of "
    "std 0.01 in series: from scratch, P goes to ~1 for *every* class at objects (objectness "
    "is learned before the classes), it can no longer move, and the class-agnostic M settles "
    "where the one positive and C - 1 negatives of the focal loss balance (M ~ 0.1, P_align "
    "capped near 0.4). Scores then do not separate classes and AP collapses while boxes are "
    "fine. The M-first priors (P 2e-4, M 0.5: the same initial P_align 0.01) make M saturate "
    "instead and leave P free to classify. With an ImageNet-pretrained backbone (mmdetection's "
    "setting) class features exist from the start; we cannot test that here (nothing is "
    "downloaded).",
]


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
        "TAL: QFL on t_hat, t_hat-weighted GIoU)." + (
            " \"T-head-Mfirst\": the same T-head with the priors "
            f"cls_prior={M_FIRST['cls_prior']:g}, m_prior={M_FIRST['m_prior']:g} instead of "
            "mmdetection's 0.01 / 0.01 (see the diagnosis below)."
            if any("Mfirst" in a["name"] for a in doc["arms"]) else ""),
        "",
    ]
    for r in doc.get("runs") or [_run_summary(doc, [a["name"] for a in doc["arms"]])]:
        lines.append(
            f"- {', '.join(r['arms'])}: `{r['command']}` on {r['date']}, device {r['device']} "
            f"({r['machine']}, {r['threads']} threads), torch {r['torch']}, commit "
            f"{r['git_commit']}; total {_duration(r['total_time_s'])}.")
    lines += [
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
              "this file).", ""]
    fac = [a for a in doc["arms"] if a.get("factors")]
    if fac:
        lines += ["## T-head diagnosis: the two factors of P_align = sqrt(P * M)", "",
                  "Per val GT of class k, at the anchor (centre inside the GT, any level) of "
                  "highest P_align of class k: P_k, the highest other-class P_j, and M; "
                  "means over GTs; confused = share of GTs with some P_j >= P_k; saturated = "
                  "share with some P_j > 0.9 (`head_factors` in benchmarks/ablation.py).", "",
                  "| arm | cls_prior / m_prior | AP | P_k | max P_j | M | confused | "
                  "saturated |", "|---|---|---|---|---|---|---|---|"]
        for a in fac:
            f, mc = a["factors"], a["model_config"]
            lines.append(f"| {a['name']} | {mc.get('cls_prior', 0.01):g} / "
                         f"{mc.get('m_prior', 0.01):g} | {100 * a['metrics']['AP']:.1f} | "
                         f"{f['P_true']:.3f} | {f['P_other']:.3f} | {f['M']:.3f} | "
                         f"{f['confused']:.2f} | {f['saturated']:.2f} |")
        lines += [""] + (DIAGNOSIS if doc["mode"] == "full" else []) + [""]
    lines += [
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
    p.add_argument("--arms", nargs="+", choices=[a[0] for a in ARMS + EXTRA_ARMS],
                   default=None, help="arms to train (default: the four of the paper's table)")
    p.add_argument("--merge", action="store_true",
                   help="add the arms run now to the existing results file (replacing arms "
                        "of the same name) instead of overwriting it")
    p.add_argument("--work-dir", default="runs/ablation", help="data, checkpoints, logs")
    p.add_argument("--out", default=None, help="where the .md/.json/.png go (default: "
                   "benchmarks/results; --quick: WORK_DIR/quick)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 recommended on a shared machine)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
