"""``python -m benchmarks``: time tood-ext's kernels against the references and torchvision.

Writes ``<out>/<device-label>-<YYYY-MM-DD>.json`` and ``.md`` per device (``--quick`` runs add
``-quick`` to the name and are written only to an explicitly given ``--out`` other than the
committed results directory). On SIGTERM (e.g. from ``timeout``) the run stops at once and the
cases measured so far are written, marked ``interrupted``. Exit status: 0, or 1 when some case
or implementation failed or the run was interrupted, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import torch

from . import harness

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="where to run (default: all available: cpu, plus cuda when present)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and 2 repeats: a smoke test, not a measurement")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per implementation (default: 10 on CPU, 25 on CUDA, "
                        "2 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per implementation first (default: 2 on CPU, 5 on CUDA, "
                        "1 with --quick)")
    p.add_argument("--filter", default=None, metavar="SUBSTRING",
                   help="only cases whose name contains SUBSTRING")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"directory for the JSON/markdown results (default: {DEFAULT_OUT}; "
                        "with --quick nothing is written unless --out is given)")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        print("--repeats must be >= 1", file=sys.stderr)
        return 2
    if args.warmup is not None and args.warmup < 0:
        print("--warmup must be >= 0", file=sys.stderr)
        return 2

    cuda_ok = torch.cuda.is_available()
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if cuda_ok else [])
    elif args.device == "cuda" and not cuda_ok:
        print("--device cuda: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    else:
        devices = [args.device]

    if args.list:
        for dev in devices:
            for case in harness.collect_cases(dev, args.quick, args.filter):
                print(f"{dev}\t{case.name}\t{case.passes}\t{case.dtype}")
        return 0

    write = not args.no_write
    out_dir = os.path.abspath(args.out) if args.out else DEFAULT_OUT
    if write and args.quick:
        if args.out is None:
            write = False
            print("--quick without --out: no files written", flush=True)
        elif os.path.realpath(out_dir) == os.path.realpath(DEFAULT_OUT):
            write = False
            print(f"--quick: refusing to write into the committed results ({DEFAULT_OUT}); "
                  "give another --out", file=sys.stderr, flush=True)

    import tood_ext

    print(f"torch {torch.__version__}, tood_ext.build_info() = {tood_ext.build_info()}",
          flush=True)
    failed = False
    t0 = time.perf_counter()

    def _stop(signum, frame):  # SIGTERM (e.g. `timeout`): report what was measured, then exit
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise harness.Interrupted()

    signal.signal(signal.SIGTERM, _stop)
    for dev in devices:
        cases = harness.collect_cases(dev, args.quick, args.filter)
        if not cases:
            print(f"{dev}: no case matches --filter {args.filter!r}", flush=True)
            continue
        doc = harness.run_device(dev, cases, args.repeats, args.warmup, args.quick, argv)
        failed |= harness.has_errors(doc)
        print(f"\n## {doc['device_label']} ({doc['date']}), times in ms (median of "
              f"{doc['settings']['repeats']} unless noted), ratios = impl / kernel\n")
        print("\n".join(harness.table_lines(doc["cases"])))
        print(f"\nmemory: {doc['memory_method']}", flush=True)
        if write:
            for path in harness.write_report(doc, out_dir):
                print(f"wrote {path}", flush=True)
        if doc.get("interrupted"):
            break
    print(f"\ntotal {time.perf_counter() - t0:.1f} s" + ("; SOME CASES FAILED" if failed else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
