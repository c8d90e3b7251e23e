"""Engine: COCO evaluation on hand-made cases, the schedule, checkpoint round trip, DDP with two
CPU processes, and a short real training run through the CLI that must reach a measured AP50."""
from __future__ import annotations

import importlib.util
import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from tood_ext.engine import TrainConfig, coco_bbox_metrics, have_pycocotools, lr_factor
from tood_ext.engine.coco_eval import METRIC_NAMES

HAS_MODELS = importlib.util.find_spec("tood_ext.models") is not None
needs_models = pytest.mark.skipif(not HAS_MODELS, reason="tood_ext.models is not there yet")
BACKENDS = ["numpy", pytest.param("pycocotools", marks=pytest.mark.skipif(
    not have_pycocotools(), reason="pycocotools not installed"))]


# ------------------------------------------------------------------ COCO evaluation by hand
def _gt(boxes_per_image, cat=1, area=None, crowd=None):
    anns, images = [], []
    for i, boxes in enumerate(boxes_per_image):
        images.append({"id": i + 1, "width": 400, "height": 400})
        for j, b in enumerate(boxes):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": b,
                         "area": area if area is not None else b[2] * b[3],
                         "iscrowd": int(bool(crowd and crowd[i][j]))})
    return {"images": images, "annotations": anns, "categories": [{"id": cat, "name": "x"}]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_perfect_predictions(backend):
    boxes = [[[10, 10, 20, 20], [50, 60, 100, 80]], [[0, 0, 200, 150]], [[5, 5, 40, 40]]]
    gt = _gt(boxes, cat=3)
    for a in gt["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    dets = [{"image_id": i + 1, "category_id": 3, "bbox": b, "score": 0.5 + 0.1 * j}
            for i, bs in enumerate(boxes) for j, b in enumerate(bs)]
    m = coco_bbox_metrics(gt, dets, backend)
    # small (400 px^2), medium (1600, 8000) and large (30000) objects, all found
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert m[k] == pytest.approx(1.0), k
    assert m["backend"] == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_shifted_boxes(backend):
    """Two 100x100 GTs. Detections: a false positive (score .95), an exact box (.9), and a box
    shifted by 16 px (.8): IoU = 84 / 116 = 0.724, a match at IoU thresholds .50-.70 (5 of 10).

    Thresholds <= .70: ranks FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the
    interpolated precision is 2/3 at every recall point: AP_t = 2/3.
    Thresholds >= .75: FP, TP, FP -> the interpolated precision is 1/2 up to recall 1/2
    (51 of the 101 recall points) and 0 beyond: AP_t = 0.5 * 51 / 101.
    The FP is 50x50 (area 2500 < 96^2): outside the 'large' range, it is ignored there, so
    APl is 1 at the first 5 thresholds and 51/101 at the others."""
    gt = _gt([[[0, 0, 100, 100]], [[0, 0, 100, 100]]])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [16, 0, 100, 100], "score": 0.8},
            {"image_id": 2, "category_id": 1, "bbox": [200, 200, 50, 50], "score": 0.95}]
    m = coco_bbox_metrics(gt, dets, backend)
    low, high = 2 / 3, 0.5 * 51 / 101
    assert m["AP50"] == pytest.approx(low)
    assert m["AP75"] == pytest.approx(high)
    assert m["AP"] == pytest.approx((5 * low + 5 * high) / 10)
    assert m["APl"] == pytest.approx((5 * 1.0 + 5 * 51 / 101) / 10)
    assert m["APs"] == -1 and m["APm"] == -1  # no GT in those ranges
    assert m["AR1"] == pytest.approx(0.5)     # top-1 per image: image 2's is the FP
    assert m["AR100"] == pytest.approx((5 * 1.0 + 5 * 0.5) / 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_crowd_and_empty(backend):
    """A detection inside a crowd region is neither TP nor FP; no detections give AP 0."""
    gt = _gt([[[0, 0, 100, 100], [200, 200, 150, 150]]], crowd=[[0, 1]])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [210, 210, 50, 50], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [220, 220, 50, 50], "score": 0.8}]
    assert coco_bbox_metrics(gt, dets, backend)["AP"] == pytest.approx(1.0)
    m = coco_bbox_metrics(gt, [], backend)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_bbox_metrics(gt, [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1],
                                "score": 1.0}], backend)


@pytest.mark.skipif(not have_pycocotools(), reason="pycocotools not installed")
def test_numpy_eval_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(15):
        nimg, ncat = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        gt = {"images": [{"id": i + 1} for i in range(nimg)],
              "categories": [{"id": 2 * c + 1} for c in range(ncat)], "annotations": []}
        dets = []
        for i in range(nimg):
            for _ in range(int(rng.integers(0, 6))):
                x, y = rng.uniform(0, 300, 2)
                w, h = rng.uniform(5, 150, 2)
                c = 2 * int(rng.integers(0, ncat)) + 1
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                          "category_id": c, "bbox": [x, y, w, h],
                                          "area": w * h, "iscrowd": int(rng.random() < 0.1)})
                for _ in range(int(rng.integers(0, 3))):
                    j = rng.normal(0, 10, 4)
                    dets.append({"image_id": i + 1, "category_id": c,
                                 "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])],
                                 "score": float(np.round(rng.random(), 1))})
            for _ in range(int(rng.integers(0, 110))):
                x, y = rng.uniform(0, 300, 2)
                dets.append({"image_id": i + 1, "category_id": 2 * int(rng.integers(0, ncat)) + 1,
                             "bbox": [x, y, *rng.uniform(2, 150, 2)],
                             "score": float(np.round(rng.random(), 2))})
        if dets:
            a = coco_bbox_metrics(gt, dets, "numpy")
            b = coco_bbox_metrics(gt, dets, "pycocotools")
            for k in METRIC_NAMES:
                assert a[k] == pytest.approx(b[k], abs=1e-12), k


# ------------------------------------------------------------------ schedule
def test_lr_schedule():
    cfg = TrainConfig(epochs=12, warmup_iters=10, warmup_ratio=0.1, schedule="step",
                      milestones=[8, 11], gamma=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 100, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(799, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(800, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(1100, 100, cfg) == pytest.approx(0.01)
    cfg = TrainConfig(epochs=2, warmup_iters=0, schedule="cosine", min_lr_ratio=0.01)
    assert lr_factor(0, 50, cfg) == pytest.approx(1.0)
    assert lr_factor(50, 50, cfg) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 50, cfg) == pytest.approx(0.01)


# ------------------------------------------------------------------ training helpers
TINY = dict(depth=18, fpn_channels=16, feat_channels=16, stacked_convs=2, num_groups=8,
            initial_epoch=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tood_ext.data import generate_synthetic_coco
    root = tmp_path_factory.mktemp("tiny")
    kw = dict(image_size=128, num_classes=1, max_objects=2, min_size=0.3, max_size=0.7,
              clutter=4)
    generate_synthetic_coco(str(root / "train"), 16, seed=0, **kw)
    generate_synthetic_coco(str(root / "val"), 5, seed=1, **kw)
    return root


def _sets(root, split="train", train=True):
    from tood_ext.data import CocoDetection
    d = os.path.join(root, split)
    return CocoDetection(os.path.join(d, "annotations.json"), os.path.join(d, "images"),
                         scale=(128, 128), train=train)


def _tiny_model(seed=0):
    from tood_ext.models import TOODConfig, build_model
    torch.manual_seed(seed)
    cfg = TOODConfig(num_classes=1, **TINY)
    return build_model(cfg), cfg


# ------------------------------------------------------------------ checkpoint round trip
@needs_models
def test_checkpoint_resume_is_exact(tiny_data, tmp_path):
    """2 epochs straight == 1 epoch, checkpoint, resume for the 2nd: identical weights and
    optimizer state, bit for bit. Resuming the weights without the optimizer state does not
    reproduce the run (the comparison can fail)."""
    from tood_ext.engine import load_checkpoint, model_from_checkpoint, train

    def cfg(epochs, work):
        return TrainConfig(epochs=epochs, batch_size=2, optimizer="adamw", lr=1e-3,
                           weight_decay=0.05, warmup_iters=3, schedule="step", milestones=[1],
                           max_iters_per_epoch=2, work_dir=str(tmp_path / work),
                           progress_bar=False)

    quiet = lambda *_: None  # noqa: E731
    ds = _sets(tiny_data)
    a, mcfg = _tiny_model()
    train(a, ds, cfg(2, "a"), model_config=mcfg, log=quiet)
    b, _ = _tiny_model()
    train(b, ds, cfg(1, "b"), model_config=mcfg, log=quiet)
    b2, _ = _tiny_model(seed=123)  # a different init: everything must come from the checkpoint
    r = train(b2, ds, cfg(2, "b"), resume=str(tmp_path / "b" / "latest.pth"),
              model_config=mcfg, log=quiet)
    assert len(r["history"]) == 1 and r["history"][0]["epoch"] == 2
    sa, sb = a.state_dict(), b2.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ca = torch.load(tmp_path / "a" / "latest.pth", weights_only=False)
    cb = torch.load(tmp_path / "b" / "latest.pth", weights_only=False)
    assert ca["epoch"] == cb["epoch"] == 2 and ca["global_iter"] == cb["global_iter"] == 4
    assert ca["scheduler"] == cb["scheduler"]
    for pa, pb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        for k in pa:
            assert torch.equal(pa[k], pb[k])
    # a model rebuilt from the checkpoint alone equals the trained one
    m, state = model_from_checkpoint(str(tmp_path / "a" / "latest.pth"))
    for k, v in m.state_dict().items():
        assert torch.equal(v, sa[k]), k
    assert state["classes"]["cat_ids"] == [1] and state["classes"]["scale"] == [128, 128]
    # negative control: the same weights with a fresh optimizer take a different 2nd epoch
    c, _ = _tiny_model()
    load_checkpoint(str(tmp_path / "b" / "epoch_1.pth"), c)
    state1 = torch.load(tmp_path / "b" / "epoch_1.pth", weights_only=False)
    c_cfg = cfg(2, "c")
    from tood_ext.engine.checkpoint import save_checkpoint
    save_checkpoint(str(tmp_path / "c" / "latest.pth"), c, epoch=1,
                    global_iter=state1["global_iter"], model_config=mcfg)
    train(c, ds, c_cfg, resume="auto", model_config=mcfg, log=quiet)
    assert any(not torch.equal(v, sa[k]) for k, v in c.state_dict().items())


# ------------------------------------------------------------------ DDP, 2 CPU processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist

    from tood_ext.engine import train
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, mcfg = _tiny_model(seed=rank)  # different inits: DDP must broadcast rank 0's
        init0 = torch.cat([p.detach().flatten() for p in _tiny_model(seed=0)[0].parameters()])
        cfg = TrainConfig(epochs=1, batch_size=1, optimizer="sgd", lr=0.01, warmup_iters=0,
                          max_iters_per_epoch=3, work_dir=os.path.join(out, "work"),
                          progress_bar=False)
        r = train(model, _sets(root), cfg, val_set=_sets(root, "val", train=False),
                  model_config=mcfg, log=lambda *_: None)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            torch.save({"params": torch.stack(gathered), "init0": init0,
                        "losses": [h["loss"] for h in r["history"]]}, os.path.join(out, "r0.pt"))
        torch.save({"metrics": r["metrics"], "loss": r["history"][0]["loss"]},
                   os.path.join(out, f"m{rank}.pt"))
    finally:
        dist.destroy_process_group()


@needs_models
def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    """torch.multiprocessing.spawn, gloo: a few steps keep the replicas identical (and moved
    away from the initial weights); the distributed evaluation equals a single-process one."""
    import torch.multiprocessing as mp

    from tood_ext.engine import evaluate, model_from_checkpoint
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path)), nprocs=2,
             join=True)
    r0 = torch.load(tmp_path / "r0.pt")
    params = r0["params"]
    assert torch.equal(params[0], params[1])
    assert not torch.equal(params[0], r0["init0"])
    m0, m1 = torch.load(tmp_path / "m0.pt"), torch.load(tmp_path / "m1.pt")
    assert m0["metrics"] == m1["metrics"]        # every process gets the gathered result
    assert m0["loss"] != m1["loss"]              # ... from different shards of the data
    model, _ = model_from_checkpoint(str(tmp_path / "work" / "latest.pth"))
    single = evaluate(model, _sets(tiny_data, "val", train=False), batch_size=2,
                      log=lambda *_: None, progress_bar=False)
    assert single["num_dets"] == m0["metrics"]["num_dets"]  # 5 images over 2 shards, each once
    for k in METRIC_NAMES:
        assert single[k] == pytest.approx(m0["metrics"][k], abs=1e-6), k


# ------------------------------------------------------------------ a short real training run
# Measured (CPU, torch 2.14.1, this config, AP50 on the 16 training images of one class):
# untrained ~0.0; after 80 iterations (20 epochs x 4 batches of 4): 0.762 (2 threads) / 0.785
# (1 thread) with the test's seed 0, 0.688 and 0.851 with init seeds 1 and 2. The threshold leaves room for platform rounding
# (which changes the trajectory) while an untrained or broken detector stays far below it.
AP50_THRESHOLD = 0.5


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    from tood_ext.__main__ import main
    work = tmp_path_factory.mktemp("work")
    args = ["train", "--data", str(tiny_data), "--work-dir", str(work), "--device", "cpu",
            "--scale", "128", "128", "--depth", "18", "--fpn-channels", "32",
            "--feat-channels", "32", "--stacked-convs", "2", "--num-groups", "8",
            "--initial-epoch", "1", "--epochs", "20", "--batch-size", "4",
            "--optimizer", "adamw", "--lr", "2e-3", "--weight-decay", "0.05",
            "--warmup-iters", "10", "--schedule", "cosine", "--no-progress",
            "--ckpt-interval", "20"]
    result = main(args)
    return result, str(work)


@needs_models
def test_training_reduces_loss_and_reaches_ap50(trained, tiny_data, tmp_path):
    from tood_ext.__main__ import main
    result, work = trained
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert [h["assigner"] for h in result["history"][:2]] == ["atss", "tal"]
    # AP50 on the training images (a memorisation test: it must learn, quickly)
    metrics = main(["eval", os.path.join(work, "latest.pth"), "--val-ann",
                    str(tiny_data / "train" / "annotations.json"), "--device", "cpu",
                    "--out", str(tmp_path / "m.json")])
    print("AP50 after the short run:", metrics["AP50"])
    assert metrics["AP50"] >= AP50_THRESHOLD, metrics
    assert json.load(open(tmp_path / "m.json"))["AP50"] == metrics["AP50"]
    # the untrained detector does not pass
    from tood_ext.engine import evaluate
    model, _ = _tiny_model()
    untrained = evaluate(model, _sets(tiny_data, train=False), batch_size=4,
                         log=lambda *_: None, progress_bar=False)
    assert untrained["AP50"] < AP50_THRESHOLD / 2


@needs_models
def test_cli_eval_and_predict(trained, tiny_data, tmp_path):
    from tood_ext.__main__ import main
    _, work = trained
    ckpt = os.path.join(work, "latest.pth")
    metrics = main(["eval", ckpt, "--data", str(tiny_data), "--device", "cpu",
                    "--out", str(tmp_path / "val.json"), "--dets-out", str(tmp_path / "d.json")])
    assert set(METRIC_NAMES) <= set(metrics) and metrics["num_images"] == 5
    dets = json.load(open(tmp_path / "d.json"))
    assert len(dets) == metrics["num_dets"] and {d["category_id"] for d in dets} <= {1}
    # predict clips (clip_to_image, default), evaluate adds no clip of its own
    sizes = {im["id"]: (im["width"], im["height"])
             for im in json.load(open(tiny_data / "val" / "annotations.json"))["images"]}
    for d in dets:
        x, y, w, h = d["bbox"]
        W, H = sizes[d["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= W + 1e-3 and y + h <= H + 1e-3 and w > 0 < h
    off = main(["eval", ckpt, "--data", str(tiny_data), "--device", "cpu", "--clip", "off",
                "--min-bbox-size", "-1", "--out", str(tmp_path / "off.json")])
    assert off["num_images"] == 5
    img_dir = tiny_data / "val" / "images"
    written = main(["predict", ckpt, str(img_dir), "--out", str(tmp_path / "pred"),
                    "--device", "cpu", "--limit", "2", "--score-thr", "0.05"])
    assert len(written) == 2
    for path in written:
        src = img_dir / os.path.basename(path)
        with Image.open(path) as out, Image.open(src) as inp:
            assert out.size == inp.size  # drawn on the original image
            assert not np.array_equal(np.asarray(out.convert("RGB")), np.asarray(inp))


def test_cli_generate(tmp_path):
    from tood_ext.__main__ import main
    main(["generate", "--out", str(tmp_path), "--train-images", "3", "--val-images", "2",
          "--image-size", "96"])
    for split, n in (("train", 3), ("val", 2)):
        data = json.load(open(tmp_path / split / "annotations.json"))
        assert len(data["images"]) == n
        assert len(os.listdir(tmp_path / split / "images")) == n


def test_cli_head_option_builds_the_baseline():
    from tood_ext.__main__ import _model_config, build_parser

    for head in ("tood", "atss"):
        args = build_parser().parse_args(["train", "--data", "unused", "--head", head])
        assert _model_config(args, 5).head == head
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--head", "fcos"])
