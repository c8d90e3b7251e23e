"""The error policy (README, "Reliability"; tood_ext/ops/_checks.py) walked over every
implementation of each op, and the public surface fuzzed as a new user would (issue 18).

One bad input must raise the same exception type, naming the argument, from

* ``wrapper``: the public op (``tood_ext.box_iou`` ...),
* ``raw``: the compiled op itself (``torch.ops.tood_ext.box_iou``; the C++ checks),
* ``reference``: the pure-PyTorch twin (``tood_ext.reference.box_iou`` ...),
* ``fake``: the fake kernel, under ``FakeTensorMode`` (what torch.compile / torch.export run),
* ``meta``: the same op on meta tensors (the fake kernel through the Meta dispatch key).

Python *types* (a list for a tensor, a string for a number) are the wrappers' and references'
business: ``torch.ops`` parses its arguments against the op schema first and raises torch's own
RuntimeError ("Expected a value of type 'Tensor' for argument 'boxes1'"). Label values
(IndexError) are data: the fake kernels cannot see them. Valid but unusual inputs
(channels-last, expanded, empty) must give the plain input's result. The CLI is driven in
process; every bad option exits before a file is written. The module runs in a few seconds.
"""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import tood_ext
from tood_ext import reference as ref

from conftest import metric_inputs, random_boxes

OPS = ("box_iou", "iou_loss", "alignment_metric", "task_aligned_assign", "deform_sampling")
ALL = ("wrapper", "raw", "reference", "fake", "meta")
PY = ("wrapper", "reference", "fake", "meta")  # Python-side value checks the C++ op leaves out
TYPES = ("wrapper", "reference")  # Python types (torch.ops parses its own)
DATA = ("wrapper", "raw", "reference")  # label values: invisible to the fake kernels
NAN, INF = float("nan"), float("inf")


def _args(op: str, gen: torch.Generator) -> dict:
    if op == "box_iou":
        return dict(boxes1=random_boxes(gen, 2, 5), boxes2=random_boxes(gen, 2, 3))
    if op == "iou_loss":
        return dict(pred=random_boxes(gen, 6), target=random_boxes(gen, 6),
                    weight=torch.rand(6, generator=gen))
    if op == "deform_sampling":
        return dict(input=torch.randn(2, 4, 5, 6, generator=gen),
                    offset=torch.randn(2, 4, 5, 6, generator=gen),
                    mask=torch.rand(2, 2, 5, 6, generator=gen))
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_labels", "gt_boxes", "gt_mask")
    args = dict(zip(names, metric_inputs(gen, 2, 30, 3, 4)))
    args["gt_mask"][:, 0] = True  # a valid GT in each image (padding ones hold label -7)
    args["gt_labels"][:, 0] = args["gt_labels"][:, 0].clamp(min=0)
    return args


def _schema_names(op: str) -> set[str]:
    return {a.name for a in getattr(torch.ops.tood_ext, op).default._schema.arguments}


def _call(op: str, impl: str, kw: dict):
    if impl == "wrapper":
        return getattr(tood_ext, op)(**kw)
    if impl == "reference":
        return getattr(ref, op)(**kw)
    raw = getattr(torch.ops.tood_ext, op)
    kw = {k: v for k, v in kw.items() if k in _schema_names(op)}
    if impl == "raw":
        return raw(**kw)
    if impl == "meta":
        return raw(**{k: v.to("meta") if isinstance(v, torch.Tensor) else v
                      for k, v in kw.items()})
    with FakeTensorMode() as mode:
        return raw(**{k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
                      for k, v in kw.items()})


def _expect(exc, name: str, fn):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"the message does not name {name!r}: {info.value}"


def _labels_shifted(a):
    return {"gt_labels": torch.where(a["gt_mask"], torch.full_like(a["gt_labels"], 3),
                                     a["gt_labels"])}


def _half(a):
    return {k: v.half() if v.is_floating_point() else v for k, v in a.items()}


# (op, case, the changed arguments (from the valid ones), exception, the argument the message
# names, the implementations that must raise it)
CASES = [
    # --- ValueError: non-tensor values (C++: TORCH_CHECK_VALUE) ---
    ("box_iou", "mode", lambda a: {"mode": "eiou"}, ValueError, "mode", ALL),
    ("iou_loss", "mode", lambda a: {"mode": "IOU"}, ValueError, "mode", ALL),
    ("alignment_metric", "iou_mode", lambda a: {"iou_mode": "x"}, ValueError, "iou_mode", ALL),
    ("task_aligned_assign", "iou_mode", lambda a: {"iou_mode": ""}, ValueError, "iou_mode", ALL),
    ("task_aligned_assign", "topk=0", lambda a: {"topk": 0}, ValueError, "topk", ALL),
    ("task_aligned_assign", "topk<0", lambda a: {"topk": -3}, ValueError, "topk", ALL),
    ("task_aligned_assign", "candidates", lambda a: {"candidates": "topk"}, ValueError,
     "candidates", ALL),
    ("task_aligned_assign", "conflict", lambda a: {"conflict": "max"}, ValueError, "conflict",
     ALL),
    ("task_aligned_assign", "min_inside_size<0", lambda a: {"min_inside_size": -1.0},
     ValueError, "min_inside_size", ALL),
    ("task_aligned_assign", "min_inside_size=inf", lambda a: {"min_inside_size": INF},
     ValueError, "min_inside_size", ALL),
    ("task_aligned_assign", "min_inside_size=nan", lambda a: {"min_inside_size": NAN},
     ValueError, "min_inside_size", ALL),
    # Python-side only (the C++ op accepts them; see the README)
    ("box_iou", "eps=nan", lambda a: {"eps": NAN}, ValueError, "eps", PY),
    ("box_iou", "eps<0", lambda a: {"eps": -1e-7}, ValueError, "eps", PY),
    ("iou_loss", "eps=inf", lambda a: {"eps": INF}, ValueError, "eps", PY),
    ("alignment_metric", "alpha=nan", lambda a: {"alpha": NAN}, ValueError, "alpha", PY),
    ("alignment_metric", "beta<0", lambda a: {"beta": -6.0}, ValueError, "beta", PY),
    ("alignment_metric", "inside_eps=inf", lambda a: {"inside_eps": INF}, ValueError,
     "inside_eps", PY),
    ("task_aligned_assign", "norm_eps<0", lambda a: {"norm_eps": -1.0}, ValueError, "norm_eps",
     PY),
    ("task_aligned_assign", "beta=inf", lambda a: {"beta": INF}, ValueError, "beta", PY),
    ("task_aligned_assign", "topk>=2**63", lambda a: {"topk": 2 ** 63}, ValueError, "topk",
     TYPES),
    ("iou_loss", "avg_factor=0", lambda a: {"avg_factor": 0}, ValueError, "avg_factor", TYPES),
    ("iou_loss", "avg_factor=nan", lambda a: {"avg_factor": NAN}, ValueError, "avg_factor",
     TYPES),
    ("deform_sampling", "groups", lambda a: {"groups": 1}, ValueError, "groups", TYPES),
    # --- TypeError: Python types ---
    ("box_iou", "aligned=1", lambda a: {"aligned": 1}, TypeError, "aligned", TYPES),
    ("box_iou", "aligned=None", lambda a: {"aligned": None}, TypeError, "aligned", TYPES),
    ("box_iou", "numpy", lambda a: {"boxes2": a["boxes2"].numpy()}, TypeError, "boxes2", TYPES),
    ("iou_loss", "list weight", lambda a: {"weight": a["weight"].tolist()}, TypeError, "weight",
     TYPES),
    ("alignment_metric", "None", lambda a: {"gt_mask": None}, TypeError, "gt_mask", TYPES),
    ("task_aligned_assign", "topk=2.0", lambda a: {"topk": 2.0}, TypeError, "topk", TYPES),
    ("task_aligned_assign", "topk=np.bool_", lambda a: {"topk": np.bool_(True)}, TypeError,
     "topk", TYPES),
    ("deform_sampling", "tuple offset", lambda a: {"offset": tuple(a["offset"])}, TypeError,
     "offset", TYPES),
    # --- RuntimeError: tensors of the wrong shape / dtype / device (C++: TORCH_CHECK) ---
    ("box_iou", "0-d", lambda a: {"boxes1": torch.tensor(1.0)}, RuntimeError, "boxes1", ALL),
    ("box_iou", "(..., 3)", lambda a: {"boxes2": a["boxes2"][..., :3]}, RuntimeError, "boxes2",
     ALL),
    ("box_iou", "int64", lambda a: {k: v.long() for k, v in a.items()}, RuntimeError, "boxes1",
     ALL),
    ("box_iou", "bool", lambda a: {k: v.bool() for k, v in a.items()}, RuntimeError, "boxes1",
     ALL),
    ("box_iou", "mixed dtype", lambda a: {"boxes2": a["boxes2"].double()}, RuntimeError,
     "boxes2", ALL),
    ("box_iou", "aligned shapes", lambda a: {"aligned": True}, RuntimeError, "boxes1", ALL),
    ("box_iou", "float16 on CPU", lambda a: {k: v.half() for k, v in a.items()}, RuntimeError,
     "boxes1", ("wrapper", "raw", "fake")),
    ("iou_loss", "target shape", lambda a: {"target": a["target"][:5]}, RuntimeError, "target",
     ALL),
    ("iou_loss", "weight shape", lambda a: {"weight": a["weight"][:, None]}, RuntimeError,
     "weight", ALL),
    ("iou_loss", "bool weight", lambda a: {"weight": a["weight"] > 0.5}, RuntimeError, "weight",
     ALL),
    ("alignment_metric", "scores 2-D", lambda a: {"pred_scores": a["pred_scores"][0]},
     RuntimeError, "pred_scores", ALL),
    ("alignment_metric", "int32 labels", lambda a: {"gt_labels": a["gt_labels"].int()},
     RuntimeError, "gt_labels", ALL),
    ("alignment_metric", "float mask", lambda a: {"gt_mask": a["gt_mask"].float()},
     RuntimeError, "gt_mask", ALL),
    ("task_aligned_assign", "anchors (A, 3)", lambda a: {"anchor_points": a["pred_boxes"][0, :, :3]},
     RuntimeError, "anchor_points", ALL),
    ("task_aligned_assign", "float16 on CPU", _half, RuntimeError, "pred_scores",
     ("wrapper", "raw", "fake")),
    ("task_aligned_assign", "mask meta", lambda a: {"gt_mask": a["gt_mask"].to("meta")},
     RuntimeError, "gt_mask", ("wrapper", "raw", "fake")),
    ("deform_sampling", "3-D input", lambda a: {"input": a["input"][0]}, RuntimeError, "input",
     ALL),
    ("deform_sampling", "odd offset", lambda a: {"offset": a["offset"][:, :3]}, RuntimeError,
     "offset", ALL),
    ("deform_sampling", "C % G", lambda a: {"input": a["input"][:, :3]}, RuntimeError,
     "input", ALL),
    ("deform_sampling", "offset batch", lambda a: {"offset": a["offset"][:1]}, RuntimeError,
     "offset", ALL),
    ("deform_sampling", "mask groups", lambda a: {"mask": a["mask"][:, :1]}, RuntimeError,
     "mask", ALL),
    ("deform_sampling", "int64 mask", lambda a: {"mask": a["mask"].long()}, RuntimeError,
     "mask", ALL),
    # --- IndexError: a valid GT's label outside [0, C) ---
    ("alignment_metric", "label = C", _labels_shifted, IndexError, "gt_labels", DATA),
    ("task_aligned_assign", "label = -1",
     lambda a: {"gt_labels": torch.where(a["gt_mask"], -1, a["gt_labels"])}, IndexError,
     "gt_labels", DATA),
]
ROWS = [pytest.param(op, case, change, exc, name, impl, id=f"{op}-{case}-{impl}")
        for op, case, change, exc, name, impls in CASES for impl in impls]


@pytest.mark.parametrize("op, case, change, exc, name, impl", ROWS)
def test_one_bad_input_one_exception(gen, op, case, change, exc, name, impl):
    args = _args(op, gen)
    kw = {**args, **change(args)}
    _expect(exc, name, lambda: _call(op, impl, kw))


BACKWARD = [  # (op, grad maker, the forward's tensors)
    ("_box_iou_backward", lambda a: torch.ones(2, 5, 3),
     lambda g: [random_boxes(g, 2, 5), random_boxes(g, 2, 3), "giou", False, 1e-7]),
    ("_iou_loss_backward", lambda a: torch.ones(6),
     lambda g: [random_boxes(g, 6), random_boxes(g, 6), torch.rand(6, generator=g), "giou",
                1e-7]),
    ("_deform_sampling_backward", lambda a: torch.ones(2, 4, 5, 6),
     lambda g: [torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g),
                torch.rand(2, 2, 5, 6, generator=g)]),
]
GRADS = [("float64", lambda t: t.double()), ("shape", lambda t: t[:1]),
         ("meta", lambda t: t.to("meta"))]


@pytest.mark.parametrize("impl", ["raw", "fake"])
@pytest.mark.parametrize("bad, spoil", GRADS, ids=[g[0] for g in GRADS])
@pytest.mark.parametrize("op, grad, inputs", BACKWARD, ids=[b[0] for b in BACKWARD])
def test_backward_rejects_a_bad_grad(gen, op, grad, inputs, bad, spoil, impl):
    """The private backward ops check the upstream gradient's shape, dtype and device (issue
    18: the CPU box_iou backward never checked the device; the iou_loss backward's dtype
    error named no argument)."""
    args = inputs(gen)
    g = spoil(grad(args))
    fn = getattr(torch.ops.tood_ext, op)
    if impl == "raw":
        _expect(RuntimeError, "grad", lambda: fn(g, *args))
    else:
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            fake = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x
                    for x in [g, *args]]
            _expect(RuntimeError, "grad", lambda: fn(*fake))


@pytest.mark.parametrize("op", OPS)
def test_fake_kernels_give_the_real_shapes(gen, op):
    """The fake kernels now check what the real ones do; on valid inputs they must still give
    the real outputs' shapes and dtypes (torch.compile / torch.export rely on them)."""
    args = _args(op, gen)
    real = _call(op, "raw", args)
    fake = _call(op, "fake", args)
    for r, f in zip(*(o if isinstance(o, tuple) else (o,) for o in (real, fake))):
        assert (r.shape, r.dtype) == (f.shape, f.dtype)


def test_reference_signatures_are_the_ops():
    for op in (*OPS, "giou_loss"):
        assert inspect.signature(getattr(ref, op)) == inspect.signature(getattr(tood_ext, op)), op
    # one home for the modes
    from tood_ext.ops import _box_spec, _tal_spec, tal
    from tood_ext.reference import tal as ref_tal

    assert tood_ext.IOU_MODES is _box_spec.IOU_MODES
    assert tal.CANDIDATE_MODES is ref_tal.CANDIDATE_MODES is _tal_spec.CANDIDATE_MODES
    assert tal.CONFLICT_MODES is ref_tal.CONFLICT_MODES is _tal_spec.CONFLICT_MODES


# ---------------------------------------------------------------------------------------------
# valid but unusual inputs
# ---------------------------------------------------------------------------------------------


def _layouts(op, args):
    """(label, args) of the same values in other memory layouts."""
    out = [("expanded", {k: v[:1].expand_as(v) if v.dim() and v.shape[0] > 1 else v
                         for k, v in args.items()})]
    if op == "deform_sampling":
        out.append(("channels_last", {k: v.to(memory_format=torch.channels_last)
                                      for k, v in args.items()}))
    else:
        out.append(("transposed", {k: v.mT.contiguous().mT if v.dim() >= 2 else v.flip(0).flip(0)
                                   for k, v in args.items()}))
    return out


@pytest.mark.parametrize("op", OPS)
def test_other_layouts_give_the_contiguous_result(gen, op):
    args = _args(op, gen)
    for label, other in _layouts(op, args):
        plain = {k: v.contiguous() for k, v in other.items()}
        want, got = _call(op, "wrapper", plain), _call(op, "wrapper", other)
        for g, w in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, want))):
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=label)


def test_expanded_inputs_get_the_summed_gradient(gen):
    """A stride-0 (expanded) box and deform input: the gradient sums over the broadcast copies,
    as the reference's autograd does."""
    b, others = random_boxes(gen, 1), random_boxes(gen, 3)
    grads = []
    for fn in (tood_ext.box_iou, ref.box_iou):
        x = b.clone().requires_grad_()
        fn(x.expand(4, 4), others, mode="ciou").sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    inp = torch.randn(1, 4, 5, 6, generator=gen)
    off = torch.randn(2, 4, 5, 6, generator=gen)
    grads = []
    for fn in (tood_ext.deform_sampling, ref.deform_sampling):
        x = inp.clone().requires_grad_()
        fn(x.expand(2, 4, 5, 6), off).square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


EMPTY = {
    "box_iou": [dict(boxes1=torch.zeros(0, 4), boxes2=torch.zeros(3, 4)),
                dict(boxes1=torch.zeros(0, 2, 4), boxes2=torch.zeros(0, 5, 4)),
                dict(boxes1=torch.zeros(2, 0, 4), boxes2=torch.zeros(2, 0, 4), aligned=True)],
    "iou_loss": [dict(pred=torch.zeros(0, 4), target=torch.zeros(0, 4), reduction="none"),
                 dict(pred=torch.zeros(3, 0, 4), target=torch.zeros(3, 0, 4),
                      weight=torch.zeros(3, 0), reduction="none")],
    "deform_sampling": [dict(input=torch.zeros(0, 4, 3, 3), offset=torch.zeros(0, 2, 3, 3)),
                        dict(input=torch.zeros(1, 4, 0, 3), offset=torch.zeros(1, 4, 0, 3)),
                        dict(input=torch.zeros(1, 0, 3, 3), offset=torch.zeros(1, 0, 3, 3))],
}


@pytest.mark.parametrize("op", list(EMPTY))
def test_zero_size_dims_give_empty_outputs(op):
    for kw in EMPTY[op]:
        outs = [_call(op, impl, kw) for impl in ("wrapper", "reference", "fake")]
        assert outs[0].shape == outs[1].shape == outs[2].shape, kw
        torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("dims", [(0, 30, 4), (2, 0, 4), (2, 30, 0)], ids=["B=0", "A=0", "G=0"])
def test_tal_zero_size_dims(gen, dims):
    B, A, G = dims
    args = dict(zip(("pred_scores", "pred_boxes", "anchor_points", "gt_labels", "gt_boxes",
                     "gt_mask"), metric_inputs(gen, B, A, 3, G)))
    got, want = tood_ext.task_aligned_assign(**args), ref.task_aligned_assign(**args)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g, w)
    assert not got.fg_mask.any()


def test_huge_topk_is_all_anchors(gen):
    args = _args("task_aligned_assign", gen)
    A = args["pred_scores"].shape[1]
    for fn in (tood_ext.task_aligned_assign, ref.task_aligned_assign):
        huge, exact = fn(**args, topk=2 ** 62), fn(**args, topk=A)
        for h, e in zip(huge, exact):
            assert torch.equal(h, e)


def test_infinite_offsets_sample_zero_in_the_reference_too(gen):
    """Found by fuzzing: the reference gave NaN (grid_sample of an infinite grid) where the
    semantics and the kernels give 0."""
    x = torch.randn(1, 4, 5, 6, generator=gen)
    off = torch.randn(1, 4, 5, 6, generator=gen)
    off[0, 0, 1, 1], off[0, 1, 2, 3], off[0, 2, 0, 0], off[0, 3, 4, 5] = INF, -INF, NAN, 1e30
    kernel, reference = tood_ext.deform_sampling(x, off), ref.deform_sampling(x, off)
    torch.testing.assert_close(kernel, reference, equal_nan=True)
    assert (kernel[0, :2, 1, 1] == 0).all() and (kernel[0, :2, 2, 3] == 0).all()
    assert kernel[0, 2:, 0, 0].isnan().all()


def test_float16_on_cpu(gen):
    """Half inputs: the kernels implement them on CUDA only (RuntimeError naming the argument
    and the device); the references compute them in float32 on any device."""
    b1, b2 = random_boxes(gen, 5), random_boxes(gen, 3)
    _expect(RuntimeError, "CUDA-only", lambda: tood_ext.box_iou(b1.half(), b2.half()))
    torch.testing.assert_close(ref.box_iou(b1.half(), b2.half()).float(),
                               ref.box_iou(b1.half().float(), b2.half().float()),
                               rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# the adapters
# ---------------------------------------------------------------------------------------------


def test_adapter_options(gen):
    from types import SimpleNamespace as NS

    from tood_ext.compat import mmdet as tmm
    from tood_ext.compat.ultralytics import TaskAlignedAssigner as UL

    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 40, 3, 4, pad_frac=0)
    ul = dict(pd_scores=ps, pd_bboxes=pb, anc_points=ap, gt_labels=gl[..., None].float(),
              gt_bboxes=gb, mask_gt=gm[..., None].float())
    _expect(RuntimeError, "num_classes", lambda: UL(num_classes=5)(**ul))
    _expect(ValueError, "num_classes", lambda: UL(num_classes=0)(**ul))
    _expect(TypeError, "num_classes", lambda: UL(num_classes="3")(**ul))
    _expect(ValueError, "topk", lambda: UL(num_classes=3, topk=0)(**ul))
    mm = dict(pred_bboxes=pb, pred_scores=ps, priors=torch.cat([ap, torch.ones_like(ap)], -1),
              gt_labels=gl[..., None], gt_bboxes=gb, pad_bbox_flag=gm[..., None].float())
    _expect(ValueError, "num_classes", lambda: tmm.BatchTaskAlignedAssigner(-1)(**mm))
    _expect(RuntimeError, "num_classes", lambda: tmm.BatchTaskAlignedAssigner(80)(**mm))
    _expect(TypeError, "iou_calculator",
            lambda: tmm.TaskAlignedAssigner(9, iou_calculator="BboxOverlaps2D"))
    assigner = tmm.TaskAlignedAssigner(9)
    pred = NS(priors=ap, bboxes=pb[0], scores=ps[0])
    _expect(TypeError, "alpha", lambda: assigner.assign(pred, NS(bboxes=gb[0], labels=gl[0]),
                                                         alpha="1"))
    _expect(IndexError, "gt_labels", lambda: assigner.assign(
        pred, NS(bboxes=gb[0], labels=torch.full_like(gl[0], 3))))


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    from PIL import Image

    from tood_ext.engine.checkpoint import save_checkpoint
    from tood_ext.models import TOODConfig, build_model

    root = tmp_path_factory.mktemp("fuzzcli")
    (root / "images").mkdir()
    Image.new("RGB", (32, 32), (9, 99, 199)).save(root / "images" / "000001.png")
    ann = root / "ann.json"
    ann.write_text('{"images": [{"id": 1, "file_name": "000001.png", "width": 32, "height": 32}],'
                   ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
                   '"bbox": [2, 2, 20, 20], "iscrowd": 0}], "categories": [{"id": 1, '
                   '"name": "a"}]}')
    cfg = TOODConfig(num_classes=1, depth=18, fpn_channels=8, feat_channels=8, stacked_convs=1,
                     num_groups=4)
    torch.manual_seed(0)
    model = build_model(cfg)
    files = {"root": root, "ann": str(ann), "images": str(root / "images"),
             "image": str(root / "images" / "000001.png")}
    files["ckpt"] = save_checkpoint(str(root / "ok.pth"), model, model_config=cfg)
    (root / "garbage.pth").write_bytes(bytes(range(256)) * 3)
    (root / "empty.pth").write_bytes(b"")
    torch.save(model.state_dict(), root / "state_dict.pth")  # no config
    wrong = TOODConfig(num_classes=1, depth=18, fpn_channels=16, feat_channels=8,
                       stacked_convs=1, num_groups=4).to_dict()
    torch.save({"model": model.state_dict(), "model_config": wrong}, root / "misfit.pth")
    (root / "text.png").write_text("not an image")
    return files


def _run(argv, capsys, code):
    from tood_ext.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    got = info.value.code
    message = got if isinstance(got, str) else capsys.readouterr().err
    assert (1 if isinstance(got, str) else got) == code, (argv, got, message)
    return message


TRAIN_OPTIONS = [  # (extra options, the option the message names)
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--topk", "0"], "--topk"),
    (["--alpha", "inf"], "--alpha"), (["--scale", "0", "0"], "--scale"),
    (["--threads", "-2"], "--threads"), (["--device", "gpu7"], "--device"),
    (["--fpn-channels", "0"], "--fpn-channels"), (["--workers", "-1"], "--workers"),
    (["--warmup-ratio", "2"], "--warmup-ratio"), (["--gamma", "-1"], "--gamma"),
    (["--clip-grad", "-1"], "--clip-grad"), (["--max-iters-per-epoch", "0"],
                                             "--max-iters-per-epoch"),
    (["--cls-prior", "1.5"], "--cls-prior"), (["--momentum", "1"], "--momentum"),
    (["--initial-epoch", "-1"], "--initial-epoch"), (["--epochs", "two"], "--epochs"),
]


@pytest.mark.parametrize("extra, named", TRAIN_OPTIONS, ids=[t[1] + "=" + t[0][1]
                                                             for t in TRAIN_OPTIONS])
def test_cli_train_option_ranges(tmp_path, capsys, cli, extra, named):
    work = tmp_path / "w"
    message = _run(["train", "--train-ann", cli["ann"], "--train-images", cli["images"],
                    "--work-dir", str(work), "--no-progress", *extra], capsys, 2)
    assert named in message, message
    assert not work.exists()


def _train(cli, work, *extra):
    return ["train", "--train-ann", cli["ann"], "--train-images", cli["images"], "--work-dir",
            str(work), "--depth", "18", "--fpn-channels", "8", "--feat-channels", "8",
            "--stacked-convs", "1", "--num-groups", "4", "--epochs", "1", "--scale", "64", "64",
            "--no-progress", "--device", "cpu", *extra]


def test_cli_train_bad_values_and_files(tmp_path, capsys, cli):
    work = tmp_path / "w"
    root = cli["root"]
    for extra, words in (
            (["--milestones", "5", "2"], ["--milestones", "increasing"]),
            (["--num-groups", "3"], ["num_groups=3", "8 channels"]),
            (["--weights", str(root / "garbage.pth")], ["garbage.pth", "not a readable"]),
            (["--resume", str(root / "garbage.pth")], ["garbage.pth", "not a readable"]),
            (["--resume", str(root / "nope.pth")], ["nope.pth"])):
        message = _run(_train(cli, work, *extra), capsys, 1)
        assert all(w in message for w in words), (extra, message)
        assert not work.exists(), extra
    argv = _train(cli, work)
    argv[argv.index("--train-images") + 1] = str(root / "no_such_folder")
    assert "no_such_folder" in _run(argv, capsys, 1)
    argv[argv.index("--train-ann") + 1] = cli["images"]  # a folder
    assert cli["images"] in _run(argv, capsys, 1)
    assert not work.exists()


@pytest.mark.parametrize("bad", ["garbage.pth", "empty.pth", "state_dict.pth", "misfit.pth",
                                 "images"])
def test_cli_bad_checkpoint_files(tmp_path, capsys, cli, bad):
    """A corrupt, empty, config-less or misfitting checkpoint (or a folder): exit 1 naming the
    file from every command that loads one, nothing written."""
    path = str(cli["root"] / bad)
    out = tmp_path / "out"
    for argv in (["eval", path, "--val-ann", cli["ann"], "--val-images", cli["images"],
                  "--out", str(out), "--device", "cpu"],
                 ["predict", path, cli["image"], "--out", str(out), "--device", "cpu"],
                 ["export", "--checkpoint", path, "--out", str(out)]):
        message = _run(argv, capsys, 1)
        assert path in message, (argv[0], message)
        assert not out.exists(), argv[0]


def test_cli_eval_predict_option_ranges(tmp_path, capsys, cli):
    out = tmp_path / "out"
    for argv, named in (
            (["eval", cli["ckpt"], "--val-ann", cli["ann"], "--batch-size", "0"], "--batch-size"),
            (["eval", cli["ckpt"], "--val-ann", cli["ann"], "--score-thr", "nan"], "--score-thr"),
            (["predict", cli["ckpt"], cli["image"], "--score-thr", "2"], "--score-thr"),
            (["predict", cli["ckpt"], cli["image"], "--limit", "0"], "--limit"),
            (["predict", cli["ckpt"], cli["image"], "--device", "tpu"], "--device")):
        assert named in _run([*argv, "--out", str(out)], capsys, 2)
    message = _run(["predict", cli["ckpt"], cli["image"], str(cli["root"] / "text.png"),
                    "--out", str(out), "--device", "cpu"], capsys, 1)
    assert "text.png" in message and "cannot read image" in message
    assert not out.exists(), "predict wrote images before finding a file that is no image"
    assert os.path.isfile(cli["image"])
