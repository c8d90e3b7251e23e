"""Bad input, walked over every public op (kernels and references), the adapters and every CLI
command (issue 23), against the error policy of tood_ext (README, "Reliability";
tood_ext/ops/_checks.py):

* TypeError: an argument of the wrong Python type (list, numpy array, None, a string for a
  number, a float for an int);
* ValueError: a bad value of a non-tensor argument (unknown mode, topk < 1, ...);
* RuntimeError: a tensor of the wrong shape, dtype or device (the C++ TORCH_CHECKs, the fake
  kernels, the references' checks alike);
* the CLI: exit status 2 for a bad option (argparse), 1 for unusable data, with a message naming
  the option or the file, and nothing written.

Every error message must name the argument. Valid-but-unusual inputs (non-contiguous tensors)
must give the result of the plain ones. The whole module runs in a few seconds.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import tood_ext
from tood_ext import reference as ref
from tood_ext.compat import mmdet as tmm
from tood_ext.compat.ultralytics import TaskAlignedAssigner as ULAssigner

from conftest import metric_inputs, random_boxes

F32 = torch.float32


# ---------------------------------------------------------------------------------------------
# the public ops: valid arguments, and which are tensors, numbers, ints, choices
# ---------------------------------------------------------------------------------------------


def _box_iou_args(gen):
    return dict(boxes1=random_boxes(gen, 2, 5), boxes2=random_boxes(gen, 2, 3))


def _loss_args(gen):
    return dict(pred=random_boxes(gen, 6), target=random_boxes(gen, 6),
                weight=torch.rand(6, generator=gen))


def _metric_args(gen):
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_labels", "gt_boxes", "gt_mask")
    return dict(zip(names, metric_inputs(gen, 2, 40, 3, 4)))


def _deform_args(gen):
    return dict(input=torch.randn(2, 4, 5, 6, generator=gen),
                offset=torch.randn(2, 4, 5, 6, generator=gen),
                mask=torch.rand(2, 2, 5, 6, generator=gen))


SPECS = {
    # name: (kernel op, reference, valid args, optional tensors, numbers, ints, choices)
    "box_iou": (tood_ext.box_iou, ref.box_iou, _box_iou_args, (), ("eps",), (),
                {"mode": tood_ext.IOU_MODES}),
    "iou_loss": (tood_ext.iou_loss, ref.iou_loss, _loss_args, ("weight",),
                 ("eps", "avg_factor"), (), {"mode": tood_ext.IOU_MODES,
                                             "reduction": ("none", "mean", "sum")}),
    "giou_loss": (tood_ext.giou_loss, ref.giou_loss, _loss_args, ("weight",),
                  ("eps", "avg_factor"), (), {"reduction": ("none", "mean", "sum")}),
    "alignment_metric": (tood_ext.alignment_metric, ref.alignment_metric, _metric_args, (),
                         ("alpha", "beta", "inside_eps", "eps"), (), {"iou_mode": ("iou",)}),
    "task_aligned_assign": (tood_ext.task_aligned_assign, ref.task_aligned_assign, _metric_args,
                            (), ("alpha", "beta", "inside_eps", "norm_eps", "min_inside_size"),
                            ("topk",), {"iou_mode": ("iou",), "candidates": ("x",),
                                        "conflict": ("x",)}),
    "deform_sampling": (tood_ext.deform_sampling, ref.deform_sampling, _deform_args, ("mask",),
                        (), ("groups",), {}),
}
IMPLS = [(name, impl) for name in SPECS for impl in ("kernel", "reference")]


def _fn(name, impl):
    return SPECS[name][0] if impl == "kernel" else SPECS[name][1]


def _wrong_dtype(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.bool:
        return t.float()
    if t.is_floating_point():
        return t.long()
    return t.float()


def _tensor_mutations(t: torch.Tensor, optional: bool):
    """(label, bad value, expected exception) for one tensor argument."""
    out = [("list", t.tolist(), TypeError), ("numpy", t.numpy(), TypeError),
           ("dtype", _wrong_dtype(t), RuntimeError),
           ("drop-dim", t[0] if t.dim() > 1 else t[None], RuntimeError)]
    if not optional:
        out.append(("None", None, TypeError))
    return out


def _expect(exc_type, name, call):
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    assert name in message, f"{exc_type.__name__} does not name {name!r}: {message}"
    return message


@pytest.mark.parametrize("name, impl", IMPLS)
def test_bad_tensors(gen, name, impl):
    """Each tensor argument replaced by a list, a numpy array, None, the wrong dtype, one
    dimension too few: a TypeError / RuntimeError naming it."""
    fn, make, optional = _fn(name, impl), SPECS[name][2], SPECS[name][3]
    args = make(gen)
    n = 0
    for arg, value in args.items():
        for label, bad, exc in _tensor_mutations(value, arg in optional):
            if label == "drop-dim" and name in ("box_iou", "iou_loss", "giou_loss") and \
                    value.shape[-1] == 4:
                bad = value[..., :3]  # (..., 3): a bad last dim (a dropped batch dim broadcasts)
            if label == "dtype" and arg == "weight" and impl == "kernel":
                bad = value.double()  # an int weight is rejected the same way; message differs
            kw = {**args, arg: bad}
            _expect(exc, arg, lambda: fn(**kw))
            n += 1
    assert n >= 4 * len(args)


@pytest.mark.parametrize("name", list(SPECS))
def test_mixed_devices_on_the_fake_kernels(gen, name):
    """A meta tensor among CPU tensors runs the fake kernel: it must raise the real kernels'
    device error (it returned uninitialised CPU memory before), naming the argument."""
    fn, make = SPECS[name][0], SPECS[name][2]
    args = make(gen)
    for arg, value in args.items():
        kw = {**args, arg: value.to("meta")}
        message = _expect(RuntimeError, arg, lambda: fn(**kw))
        assert "meta" in message and "same device" in message, message
    # the fake kernels themselves, called with fake tensors of one device, still trace
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) for k, v in args.items()}
        out = fn(**fake)
    first = out[0] if isinstance(out, tuple) else out
    assert first.device.type == "cpu"


@pytest.mark.parametrize("name, impl", IMPLS)
def test_bad_scalars_and_choices(gen, name, impl):
    """Numbers given as strings / None, ints as floats or strings, out-of-range ints, unknown
    mode strings: TypeError / ValueError naming the argument, before any kernel runs."""
    fn, make, _, numbers, ints, choices = (_fn(name, impl), *SPECS[name][2:])
    args = make(gen)
    for arg in numbers:
        for bad in ("3", [1.0], object()):
            _expect(TypeError, arg, lambda: fn(**args, **{arg: bad}))
        if arg != "avg_factor":  # None means "numel" there
            _expect(TypeError, arg, lambda: fn(**args, **{arg: None}))
    for arg in ints:
        for bad in ("2", 2.5, True):
            _expect(TypeError, arg, lambda: fn(**args, **{arg: bad}))
        if arg == "topk":
            _expect(TypeError, arg, lambda: fn(**args, topk=None))
            _expect(ValueError, arg, lambda: fn(**args, topk=0))
    for arg, _valid in choices.items():
        for bad in ("nope", 3, None):
            _expect(ValueError, arg, lambda: fn(**args, **{arg: bad}))
    if name == "deform_sampling":
        _expect(ValueError, "groups", lambda: fn(**args, groups=3))
        _expect(ValueError, "groups", lambda: fn(**args, groups=-1))
    if name == "task_aligned_assign":
        _expect(ValueError, "min_inside_size", lambda: fn(**args, min_inside_size=-1.0))


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_box_iou_batch_dims_that_do_not_broadcast(gen, impl):
    fn = _fn("box_iou", impl)
    message = _expect(RuntimeError, "boxes1",
                      lambda: fn(random_boxes(gen, 2, 3), random_boxes(gen, 3, 3)))
    assert "boxes2" in message and "(2,)" in message and "(3,)" in message
    # broadcastable ones are fine, and equal the expanded call
    a, b = random_boxes(gen, 1, 3), random_boxes(gen, 4, 5)
    torch.testing.assert_close(fn(a, b), fn(a.expand(4, 3, 4), b))


@pytest.mark.parametrize("name", list(SPECS))
def test_non_contiguous_inputs_give_the_plain_result(gen, name):
    """Valid, unusual: every tensor argument a strided view; the result is the contiguous one's."""
    fn, make = SPECS[name][0], SPECS[name][2]
    args = make(gen)
    strided = {}
    for k, v in args.items():
        big = torch.stack([v, torch.zeros_like(v)], -1)  # (..., 2): v is big[..., 0]
        strided[k] = big[..., 0]
        assert not strided[k].is_contiguous() or strided[k].numel() <= 1
    want, got = fn(**args), fn(**strided)
    for g, w in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, want))):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def test_ops_reject_before_anything_runs_issue_23_cases(gen):
    """The issue's vague cases, one by one, with the message they now give."""
    boxes = random_boxes(gen, 5)
    _expect(TypeError, "boxes1", lambda: tood_ext.box_iou(boxes.tolist(), boxes))
    _expect(TypeError, "boxes1", lambda: tood_ext.box_iou(boxes.numpy(), boxes))
    _expect(TypeError, "boxes2", lambda: tood_ext.box_iou(boxes, None))
    _expect(TypeError, "avg_factor", lambda: tood_ext.iou_loss(boxes, boxes, avg_factor="3"))
    args = _metric_args(gen)
    _expect(TypeError, "pred_scores", lambda: tood_ext.task_aligned_assign(
        **{**args, "pred_scores": args["pred_scores"].numpy()}))
    _expect(TypeError, "topk", lambda: tood_ext.task_aligned_assign(**args, topk=None))
    _expect(TypeError, "min_inside_size",
            lambda: tood_ext.task_aligned_assign(**args, min_inside_size="16"))
    d = _deform_args(gen)
    _expect(TypeError, "groups", lambda: tood_ext.deform_sampling(**d, groups="2"))


# ---------------------------------------------------------------------------------------------
# the adapters
# ---------------------------------------------------------------------------------------------


def _ul_args(gen):
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 60, 3, 4, pad_frac=0)
    return dict(pd_scores=ps, pd_bboxes=pb, anc_points=ap, gt_labels=gl[..., None].float(),
                gt_bboxes=gb, mask_gt=gm[..., None].float())


def _mmyolo_args(gen):
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 60, 3, 4, pad_frac=0)
    return dict(pred_bboxes=pb, pred_scores=ps, priors=torch.cat([ap, torch.ones_like(ap)], -1),
                gt_labels=gl[..., None], gt_bboxes=gb, pad_bbox_flag=gm[..., None].float())


def _mmdet_batch_args(gen):
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 60, 3, 4, pad_frac=0)
    return dict(pred_scores=ps, pred_bboxes=pb, priors=ap, gt_labels=gl, gt_bboxes=gb,
                gt_mask=gm)


ADAPTERS = {
    "ultralytics.TaskAlignedAssigner": (lambda: ULAssigner(num_classes=3), _ul_args),
    "mmdet.BatchTaskAlignedAssigner": (lambda: tmm.BatchTaskAlignedAssigner(num_classes=3),
                                       _mmyolo_args),
    "mmdet.TaskAlignedAssigner.batch_assign": (lambda: tmm.TaskAlignedAssigner(9).batch_assign,
                                               _mmdet_batch_args),
}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_adapters_bad_tensors(gen, adapter):
    build, make = ADAPTERS[adapter]
    fn, args = build(), make(gen)
    fn(**args)  # valid
    for arg, value in args.items():
        _expect(TypeError, arg, lambda: fn(**{**args, arg: value.tolist()}))
        _expect(TypeError, arg, lambda: fn(**{**args, arg: value.numpy()}))
        if arg != "gt_mask":  # None: all valid
            _expect(TypeError, arg, lambda: fn(**{**args, arg: None}))
        bad = value[:1] if value.dim() >= 2 and value.shape[0] > 1 else value[..., :1, :]
        if arg in ("priors", "anc_points"):
            bad = value[:, 0]
        elif arg in ("gt_labels", "mask_gt", "pad_bbox_flag", "gt_mask"):
            bad = value[:, :-1]  # one GT short (the issue's mask_gt of G - 1 GTs)
        _expect(RuntimeError, arg, lambda: fn(**{**args, arg: bad}))


def test_mmdet_assign_bad_inputs(gen):
    from types import SimpleNamespace as NS

    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 1, 60, 3, 4, pad_frac=0)
    pred = dict(priors=ap, bboxes=pb[0], scores=ps[0])
    gts = dict(bboxes=gb[0], labels=gl[0])
    assigner = tmm.TaskAlignedAssigner(9)
    assigner.assign(NS(**pred), NS(**gts))
    _expect(RuntimeError, "priors", lambda: assigner.assign(NS(**{**pred, "priors": ap[:, 0]}),
                                                            NS(**gts)))
    _expect(TypeError, "priors", lambda: assigner.assign(NS(**{**pred, "priors": ap.tolist()}),
                                                         NS(**gts)))
    _expect(RuntimeError, "bboxes", lambda: assigner.assign(NS(**{**pred, "bboxes": pb[0, :5]}),
                                                            NS(**gts)))
    _expect(RuntimeError, "scores", lambda: assigner.assign(NS(**{**pred, "scores": ps[0, 0]}),
                                                            NS(**gts)))
    _expect(RuntimeError, "labels", lambda: assigner.assign(NS(**pred),
                                                            NS(**{**gts, "labels": gl})))
    _expect(TypeError, "gt_instances", lambda: assigner.assign(NS(**pred), NS(bboxes=gb[0])))


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------


def _write_set(root, images, anns, categories, bad_image=None):
    """A COCO-format set of 32x32 images (``bad_image``: a file name written truncated)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for im in images:
        path = os.path.join(root, "images", im["file_name"])
        Image.new("RGB", (32, 32), (90, 40, 200)).save(path)
        if im["file_name"] == bad_image:
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[:len(data) // 2])
    ann = os.path.join(root, "annotations.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return ann


def _images(n):
    return [{"id": i + 1, "file_name": f"{i + 1:06d}.png", "width": 32, "height": 32}
            for i in range(n)]


def _cats(n):
    return [{"id": k + 1, "name": f"c{k}"} for k in range(n)]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Annotation files with the issue's problems, a tiny 2-class checkpoint."""
    from tood_ext.engine.checkpoint import save_checkpoint
    from tood_ext.models import TOODConfig, build_model

    root = tmp_path_factory.mktemp("cli")
    files = {}
    empty_list = root / "list.json"
    empty_list.write_text("[]")
    files["list"] = str(empty_list)
    box = {"image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "iscrowd": 0}
    files["bbox3"] = _write_set(str(root / "bbox3"), _images(1),
                                [{**box, "id": 1, "bbox": [2, 2, 20]}], _cats(1))
    # every image filtered: one without annotations, one crowd, one unknown category, one tiny
    files["filtered"] = _write_set(
        str(root / "filtered"), _images(4),
        [{**box, "id": 1, "image_id": 2, "iscrowd": 1},
         {**box, "id": 2, "image_id": 3, "category_id": 7},
         {**box, "id": 3, "image_id": 4, "bbox": [2, 2, 0.5, 9]}], _cats(1))
    files["one_class"] = _write_set(str(root / "one"), _images(1), [{**box, "id": 1}], _cats(1))
    files["truncated"] = _write_set(str(root / "trunc"), _images(1), [{**box, "id": 1}],
                                    _cats(2), bad_image="000001.png")
    files["truncated_png"] = str(root / "trunc" / "images" / "000001.png")
    cfg = TOODConfig(num_classes=2, depth=18, fpn_channels=8, feat_channels=8, stacked_convs=1,
                     num_groups=4)
    torch.manual_seed(0)
    files["ckpt"] = save_checkpoint(str(root / "two_class.pth"), build_model(cfg),
                                    model_config=cfg,
                                    classes={"names": ["a", "b"], "cat_ids": [1, 2],
                                             "scale": [64, 64]})
    return files


def _run_cli(argv, capsys):
    from tood_ext.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    err = capsys.readouterr().err
    message = code if isinstance(code, str) else err
    assert code not in (0, None), f"{argv} exited 0"
    return message


GENERATE_CASES = [
    (["--image-size", "0"], "--image-size"),
    (["--min-size", "0.8", "--max-size", "0.2"], "--min-size"),
    (["--num-classes", "9"], "--num-classes"),
    (["--max-objects", "0"], "--max-objects"),
    (["--train-images", "-1"], "--train-images"),
    (["--image-size", "abc"], "--image-size"),  # argparse: not an int
]


@pytest.mark.parametrize("extra, named", GENERATE_CASES)
def test_cli_generate_bad_options(tmp_path, capsys, extra, named):
    out = tmp_path / "gen"
    message = _run_cli(["generate", "--out", str(out), "--train-images", "1",
                        "--val-images", "1", *extra], capsys)
    assert named in message, message
    assert not out.exists(), "generate wrote files before rejecting its options"


def _train_argv(ann, work):
    return ["train", "--train-ann", ann, "--work-dir", str(work), "--depth", "18",
            "--fpn-channels", "8", "--feat-channels", "8", "--stacked-convs", "1",
            "--num-groups", "4", "--epochs", "1", "--scale", "64", "64", "--no-progress",
            "--device", "cpu"]


def test_cli_train_bad_data(tmp_path, capsys, cli_files):
    work = tmp_path / "work"
    message = _run_cli(_train_argv(cli_files["list"], work), capsys)
    assert cli_files["list"] in message and "not a COCO instances file" in message
    message = _run_cli(_train_argv(cli_files["bbox3"], work), capsys)
    assert "bbox must be 4 finite numbers" in message and "annotations[0]" in message
    message = _run_cli(_train_argv(cli_files["filtered"], work), capsys)
    assert "no usable training image" in message, message
    for part in ("0 of 4 images kept", "1 have no annotation", "3 lost every annotation",
                 "1 crowd/ignore", "1 of a category not in", "1 narrower or lower"):
        assert part in message, (part, message)
    message = _run_cli(_train_argv(str(tmp_path / "missing.json"), work), capsys)
    assert "missing.json" in message
    message = _run_cli(["train", "--work-dir", str(work)], capsys)
    assert "--train-ann" in message
    assert not work.exists(), "train wrote into its work dir before failing"


def test_engine_train_refuses_an_empty_set(tmp_path, cli_files):
    from tood_ext.data import CocoDetection, DataError
    from tood_ext.engine import TrainConfig, train

    ds = CocoDetection(cli_files["filtered"], os.path.join(os.path.dirname(
        cli_files["filtered"]), "images"), scale=(64, 64), train=True)
    assert len(ds) == 0 and ds.filter_report["kept"] == 0
    work = tmp_path / "w"
    with pytest.raises(DataError, match="no training image: 0 of 4 images kept"):
        train(torch.nn.Linear(1, 1), ds, TrainConfig(work_dir=str(work)))
    assert not work.exists()


def test_cli_eval_bad_data(tmp_path, capsys, cli_files):
    out = tmp_path / "metrics.json"
    common = ["--out", str(out), "--device", "cpu"]
    message = _run_cli(["eval", cli_files["ckpt"], "--val-ann", cli_files["list"], *common],
                       capsys)
    assert cli_files["list"] in message
    message = _run_cli(["eval", cli_files["ckpt"], "--val-ann", cli_files["one_class"],
                        *common], capsys)
    assert "predicts 2 classes but the set has 1" in message, message
    message = _run_cli(["eval", cli_files["ckpt"], "--val-ann", cli_files["truncated"],
                        *common], capsys)
    assert "cannot read image" in message and cli_files["truncated_png"] in message, message
    message = _run_cli(["eval", str(tmp_path / "nope.pth"), "--val-ann",
                        cli_files["one_class"], *common], capsys)
    assert "nope.pth" in message
    assert not out.exists(), "eval wrote metrics for a failed run"


def test_cli_predict_export_analyze_demo_bad_input(tmp_path, capsys, cli_files):
    out = tmp_path / "pred"
    message = _run_cli(["predict", cli_files["ckpt"], str(tmp_path / "nope.png"), "--out",
                        str(out), "--device", "cpu"], capsys)
    assert "nope.png" in message
    message = _run_cli(["predict", cli_files["ckpt"], cli_files["truncated_png"], "--out",
                        str(out), "--device", "cpu"], capsys)
    assert "cannot read image" in message and cli_files["truncated_png"] in message
    assert not any(out.glob("*.png")) if out.exists() else True
    onnx = tmp_path / "m.onnx"
    message = _run_cli(["export", "--checkpoint", str(tmp_path / "nope.pth"), "--out",
                        str(onnx)], capsys)
    assert "nope.pth" in message and not onnx.exists()
    rep = tmp_path / "rep"
    message = _run_cli(["analyze", "--checkpoint", cli_files["ckpt"], "--val-ann",
                        cli_files["one_class"], "--out", str(rep), "--device", "cpu"], capsys)
    assert "predicts 2 classes but the set has 1" in message and not rep.exists()
    message = _run_cli(["demo", "--out", str(tmp_path / "demo"), "--train-images", "0",
                        "--val-images", "1", "--epochs", "1"], capsys)
    assert "no training image" in message
    assert not (tmp_path / "demo" / "train").exists()


def test_generate_synthetic_coco_argument_errors(tmp_path):
    from tood_ext.data import generate_synthetic_coco

    for kw, exc, named in ((dict(image_size=0), ValueError, "image_size"),
                           (dict(image_size="64"), TypeError, "image_size"),
                           (dict(min_size=0.8, max_size=0.2), ValueError, "min_size"),
                           (dict(num_images=2.5), TypeError, "num_images"),
                           (dict(max_occlusion=2.0), ValueError, "max_occlusion")):
        kw = {"num_images": 1, **kw}
        with pytest.raises(exc, match=named):
            generate_synthetic_coco(str(tmp_path / "g"), **kw)
    assert not (tmp_path / "g").exists()
    assert isinstance(np.int64(3), np.integer)  # numpy ints are accepted as ints
    generate_synthetic_coco(str(tmp_path / "ok"), np.int64(1), image_size=32)


@pytest.mark.parametrize("content, named", [
    ("not json {", "not a JSON file"),
    ('{"annotations": []}', "'images' must be a list"),
    ('{"images": [{"file_name": "a.png"}]}', "images[0] must be an object with 'id'"),
    ('{"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]}',
     "annotations[0] must be an object with"),
    ('{"images": [], "annotations": [{"image_id": 1, "category_id": 1, '
     '"bbox": [0, 0, -1, 1]}]}', "w, h >= 0"),
    ('{"images": [], "annotations": [{"image_id": 1, "category_id": 1, '
     '"bbox": [0, 0, "1", 1]}]}', "4 finite numbers"),
    ('{"images": [], "categories": [{"name": "x"}]}', "categories[0] must be an object"),
])
def test_malformed_annotation_files(tmp_path, content, named):
    from tood_ext.data import CocoDetection, DataError

    ann = tmp_path / "a.json"
    ann.write_text(content)
    with pytest.raises(DataError) as info:
        CocoDetection(str(ann), str(tmp_path), train=True)
    assert named in str(info.value) and str(ann) in str(info.value)
    assert isinstance(info.value, ValueError)
