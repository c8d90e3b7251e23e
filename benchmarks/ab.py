"""``python -m benchmarks.ab OLD NEW``: the kernels of two checkouts, timed back to back.

For a change that must not slow the kernels down (a refactor, a new build flag), the two builds
cannot be loaded into one process (both register the library ``tood_ext``), so each round runs
one short subprocess per checkout, alternating OLD, NEW, NEW, OLD, ... (the order flips every
round, so a slow drift of the machine's load hits both alike). Each subprocess imports
``benchmarks`` and ``tood_ext`` from its own checkout (each must hold a built extension), sets up
the cases matching ``--filter`` with that checkout's case definitions, warms the ``kernel``
implementation up and times it ``--repeats`` times. The report gives, per case, both medians
over all rounds and NEW / OLD (< 1: NEW faster), and is written as JSON and markdown to ``--out``
(default: benchmarks/results/ab-<device label>-<date>.{json,md}).

Only the kernel is timed; references and peers do not change with a refactor. Exit status 0,
1 when a case failed in either checkout, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

# Runs inside each checkout: times the kernel implementation of every matching case.
_WORKER = r"""
import gc, json, sys, time
import torch
from benchmarks import harness
device, filters, repeats, warmup = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
quick = sys.argv[5] == "1"
out = {}
cases = [c for c in harness.collect_cases(device, quick, None)
         if not filters or any(f in c.name for f in filters)]
for case in cases:
    gc.collect()
    try:
        fn = case.setup()["kernel"]
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            harness._sync(device)
            t0 = time.perf_counter()
            fn()
            harness._sync(device)
            ts.append((time.perf_counter() - t0) * 1e3)
        out[case.name] = {"ms": ts}
    except Exception as exc:  # reported per case
        out[case.name] = {"error": f"{type(exc).__name__}: {exc}"}
    del case
print("AB-RESULT " + json.dumps(out))
"""


def _run(tree: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, args.device, json.dumps(args.filter or []), str(args.repeats),
         str(args.warmup), "1" if args.quick else "0"],
        cwd=tree, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("AB-RESULT "):
            return json.loads(line[len("AB-RESULT "):])
    raise RuntimeError(f"{tree}: worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _git(tree: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", help="checkout of the baseline (with its extension built)")
    p.add_argument("new", help="checkout of the change (with its extension built)")
    p.add_argument("--filter", action="append", default=None, metavar="SUBSTRING",
                   help="cases whose name holds it (repeatable: any of them)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rounds", type=int, default=4, help="subprocesses per checkout (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per case and round")
    p.add_argument("--quick", action="store_true",
                   help="the cases' tiny sizes: a smoke test of the tool, not a measurement")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="path prefix of the .json/.md report (default under benchmarks/results)")
    args = p.parse_args(argv)
    if min(args.rounds, args.repeats) < 1 or args.warmup < 0:
        p.error("--rounds and --repeats must be >= 1, --warmup >= 0")
    for tree in (args.old, args.new):
        if not os.path.isdir(os.path.join(tree, "benchmarks")):
            p.error(f"{tree} is not a tood-ext checkout (no benchmarks/)")

    from . import harness

    samples: dict = {"old": {}, "new": {}}
    errors: dict = {}
    for r in range(args.rounds):
        for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
            res = _run(getattr(args, side), args)
            for name, v in res.items():
                if "error" in v:
                    errors[f"{side}: {name}"] = v["error"]
                else:
                    samples[side].setdefault(name, []).extend(v["ms"])
            print(f"round {r + 1}/{args.rounds} {side}: {len(res)} cases", file=sys.stderr)

    rows = []
    for name in samples["old"]:
        if name not in samples["new"]:
            continue
        mo, mn = statistics.median(samples["old"][name]), statistics.median(samples["new"][name])
        rows.append({"name": name, "old_ms": mo, "new_ms": mn, "new_over_old": mn / mo,
                     "old_samples": samples["old"][name], "new_samples": samples["new"][name]})
    doc = {
        "command": "python -m benchmarks.ab " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": harness.machine_info(args.device),
        "old": {"tree": os.path.abspath(args.old), "commit": _git(args.old)},
        "new": {"tree": os.path.abspath(args.new), "commit": _git(args.new)},
        "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup,
        "rows": rows, "errors": errors,
    }
    lines = [f"# kernel A/B: {doc['old']['commit']} (old) vs {doc['new']['commit']} (new)", "",
             f"- machine: {harness.device_label(args.device)}; command: `{doc['command']}`",
             f"- {args.rounds} alternating rounds x {args.repeats} timed calls per checkout; "
             "medians over all calls", "",
             "| case | old ms | new ms | new/old |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {harness.fmt_ms(r['old_ms'])} | {harness.fmt_ms(r['new_ms'])} "
              f"| {r['new_over_old']:.3f} |" for r in rows]
    lines += [f"- error {k}: {v}" for k, v in errors.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    prefix = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"ab-{harness.device_label(args.device)}-{datetime.date.today().isoformat()}")
    with open(prefix + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(prefix + ".md", "w") as f:
        f.write(report)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
