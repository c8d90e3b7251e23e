"""How often the patched ultralytics loss differs from ultralytics' own, at YOLOv8n's scale.

``python -m benchmarks.ultralytics_fidelity [--batches 28] [--seed 0]`` builds ultralytics'
``v8DetectionLoss`` for YOLOv8n's head (stride 8/16/32, C = 80, reg_max 16, box 7.5 / cls 0.5 /
dfl 1.5) once unpatched and once after ``patch_ultralytics()``, draws random raw head outputs
for B = 16 images of 640 px with 0-40 GTs each (normalised sides 0.01-0.26; image 0 without
GTs), and counts the batches whose loss or gradients differ beyond float rounding (a relative
1e-4 of the largest value): between the patched and the unpatched loss, and between the
unpatched loss and ultralytics itself with a lowest-index ``torch.topk`` (the order the adapter
reproduces; see ``tood_ext.compat.ultralytics``). A correctness report, not a timing: it writes
``benchmarks/results/ultralytics-fidelity-<cpu>-<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tood_ext.testing.ultralytics import random_v8_preds, tiny_v8_model


def _batch(gen, B: int, nc: int, size: int, reg_max: int = 16, max_gt: int = 40):
    preds = random_v8_preds(gen, B, nc, size, reg_max)
    counts = torch.randint(0, max_gt + 1, (B,), generator=gen)
    counts[0] = 0
    batch_idx = torch.repeat_interleave(torch.arange(B), counts).float()
    n = batch_idx.numel()
    wh = 0.01 + torch.rand(n, 2, generator=gen) * 0.25
    xy = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    batch = {"batch_idx": batch_idx, "cls": torch.randint(0, nc, (n, 1), generator=gen).float(),
             "bboxes": torch.cat((xy, wh), -1)}
    return preds, batch


def _run(loss_fn, preds, batch):
    leaves = (preds["boxes"], preds["scores"])
    for t in leaves:
        t.grad = None
    loss, _ = loss_fn(preds, batch)
    loss.sum().backward()
    return [loss.detach().clone()] + [t.grad.clone() for t in leaves]


def _max_rel(got, want) -> float:
    return max(float((g - w).abs().max() / w.abs().max().clamp(min=1e-30))
               for g, w in zip(got, want))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default under benchmarks/results)")
    args = p.parse_args(argv)

    import ultralytics
    import ultralytics.utils.loss as ul_loss

    from tood_ext.compat import ultralytics as tul

    model = tiny_v8_model(80)
    plain = ul_loss.v8DetectionLoss(model)
    with tul.patched_ultralytics():
        patched = ul_loss.v8DetectionLoss(model)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    start = time.time()
    for i in range(args.batches):
        preds, batch = _batch(gen, 16, 80, 640)
        want = _run(plain, preds, batch)
        got = _run(patched, preds, batch)
        with tul.lowest_index_topk():
            stable = _run(plain, preds, batch)
        rows.append({"batch": i, "gts": int(batch["bboxes"].shape[0]),
                     "loss": [float(v) for v in want[0]],
                     "patched_vs_ultralytics": _max_rel(got, want),
                     "patched_vs_lowest_index": _max_rel(got, stable),
                     "ultralytics_vs_lowest_index": _max_rel(want, stable)})
        print(json.dumps(rows[-1]))
    differ = {k: sum(r[k] > 1e-4 for r in rows) for k in
              ("patched_vs_ultralytics", "patched_vs_lowest_index", "ultralytics_vs_lowest_index")}
    report = {"what": "v8DetectionLoss, YOLOv8n head, B=16, 640 px, 0-40 GTs/image",
              "command": "python -m benchmarks.ultralytics_fidelity "
                         f"--batches {args.batches} --seed {args.seed}",
              "machine": platform.processor() or platform.machine(),
              "cpu": _cpu_name(), "torch": torch.__version__,
              "ultralytics": ultralytics.__version__, "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - start, 1),
              "batches": args.batches, "differ_beyond_1e-4": differ, "rows": rows}
    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" /
        f"ultralytics-fidelity-{_cpu_name().split()[0]}-{report['date']}.json")
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({"batches": args.batches, "differ_beyond_1e-4": differ, "out": str(out)}))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip().replace(" ", "-")
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
