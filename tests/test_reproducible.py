"""The demo is bit-reproducible on the CPU: two runs with the same seed and thread count give
the same per-iteration losses, the same weights, the same detections and the same AP table
(README, "The detector, end to end"). Short runs of the real ``python -m tood_ext demo`` (tiny
synthetic set, 2 epochs: ATSS, then TAL), plus a negative control: another seed must change
every fingerprint, or the comparisons could not fail.

Not tested here, because it does not hold: other thread counts or CPU instruction-set paths
give other bits (README); the test runs at the demo's fixed default of 2 threads.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from tood_ext.engine import loss_digest
from tood_ext.engine.coco_eval import METRIC_NAMES

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tood_ext.models") is None,
                                reason="tood_ext.models is not there yet")

# 8 training images = 2 iterations of batch 4 per epoch; 4 validation images
SHORT = ["--epochs", "2", "--train-images", "8", "--val-images", "4", "--num-predictions", "1",
         "--device", "cpu"]


def _demo(out, *extra):
    """One demo run; its metrics, training log and the detections of its checkpoint at score
    threshold 0 (the short run's own detections are empty: its scores are all below 0.05)."""
    from tood_ext.__main__ import main
    from tood_ext.engine import inference, model_from_checkpoint
    from tood_ext.data import CocoDetection
    threads = torch.get_num_threads()
    try:
        metrics = main(["demo", "--out", str(out), *SHORT, *extra])
        model, _ = model_from_checkpoint(os.path.join(out, "train", "latest.pth"), score_thr=0.0)
        val = os.path.join(out, "data", "val")
        dets = inference(model, CocoDetection(os.path.join(val, "annotations.json"),
                                              os.path.join(val, "images"), scale=(256, 256)),
                         batch_size=4, progress_bar=False)
    finally:
        torch.set_num_threads(threads)  # the demo sets the process-wide thread count
    with open(os.path.join(out, "metrics.json")) as f:
        written = json.load(f)
    log = [json.loads(line) for line in open(os.path.join(out, "train", "log.jsonl"))]
    return metrics, written, log, dets


def test_loss_digest_is_bitwise():
    a = [[[2.5, 1.0, 1.5]], [[0.1, 0.2, 0.3]]]
    b = [[[2.5, 1.0, 1.5]], [[0.1, 0.2, 0.30000000000000004]]]  # one ulp away
    assert loss_digest(a) == loss_digest(json.loads(json.dumps(a)))
    assert loss_digest(a) != loss_digest(b)
    assert loss_digest(a) != loss_digest([a[1], a[0]])  # order matters


def test_demo_rerun_gives_identical_losses_weights_and_ap(tmp_path):
    """Same seed, the default thread count: every per-iteration loss, the weights, the
    detections and all 12 COCO numbers agree exactly. The rerun goes into the same folder: it
    reuses the data set (same arguments) and starts a fresh training log."""
    m1, w1, log1, dets1 = _demo(tmp_path / "a")
    m2, w2, log2, dets2 = _demo(tmp_path / "a")
    d1, d2 = m1["demo"], m2["demo"]
    assert d1["threads"] == d2["threads"] == 2  # the demo's fixed default
    assert [r["epoch"] for r in log2] == [1, 2] and [r["assigner"] for r in log2] == ["atss", "tal"]
    assert all(len(r["iter_losses"]) == 2 for r in log1)
    assert [r["iter_losses"] for r in log2] == [r["iter_losses"] for r in log1]
    for k in ("loss_digests", "loss_digest", "weights_digest", "data_digest"):
        assert d2[k] == d1[k], k
    assert len(dets1) > 0 and dets2 == dets1
    for k in METRIC_NAMES:
        assert m2[k] == m1[k], k
    # metrics.json holds the same numbers and the conditions they depend on
    assert {k: w2[k] for k in METRIC_NAMES} == {k: m1[k] for k in METRIC_NAMES}
    cond = w2["demo"]["conditions"]
    assert cond["torch"] == torch.__version__ and cond["torch_num_threads"] == 2
    assert w2["demo"]["weights_digest"] == d1["weights_digest"]
    # negative control: another seed (other data, init and order) changes every fingerprint
    m3, _, log3, dets3 = _demo(tmp_path / "c", "--seed", "1")
    d3 = m3["demo"]
    for k in ("loss_digest", "weights_digest", "data_digest"):
        assert d3[k] != d1[k], k
    assert [r["iter_losses"] for r in log3] != [r["iter_losses"] for r in log1]
    assert dets3 != dets1
