"""The host contracts of the box-metric, TAL, deformable-sampling and loss op families
(csrc/box_ops/box_ops.h, csrc/tal/tal.h, csrc/deform/deform_sampling.h, csrc/losses/losses.h),
checked on every backend kernel: the CPU kernels (``torch.ops.tood_ext``) and
the CUDA kernels compiled for the emulator (``torch.ops.tood_ext_emu``, tests/emu_build.py), or
the real CUDA kernels on a machine with a GPU.

Each op, the backward ops included, is called straight at its backend kernel (``redispatch``
past autograd and the fake kernels, so that a 'meta' tensor among CPU ones reaches the
kernel's device check) with one bad argument at a time. Each must raise the documented
exception type (README, "Reliability"; ``tood_ext/ops/_checks.py``): RuntimeError for a tensor
of the wrong shape, dtype or device, ValueError for a bad mode string or scalar value,
IndexError for a label out of range -- with the argument's name in the message, and without
touching the inputs. Non-contiguous and expanded inputs give the contiguous inputs' bits.
"""
from __future__ import annotations

import pytest
import torch

import tood_ext  # noqa: F401  (registers torch.ops.tood_ext)

from conftest import HAS_CUDA, metric_inputs, random_boxes, random_obbs

BACKENDS = [
    "cpu",
    pytest.param("emu", marks=pytest.mark.skipif(
        HAS_CUDA, reason="a GPU is present: the real CUDA kernels are checked instead")),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")),
]


@pytest.fixture(scope="module")
def emu_lib():
    from emu_build import load_emulator
    return load_emulator()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _kernel(backend: str, name: str, request):
    """(call, device): call(*args) runs the backend kernel of op `name` directly."""
    if backend == "emu":
        lib, key, device = request.getfixturevalue("emu_lib"), torch._C.DispatchKey.CPU, "cpu"
    else:
        lib = torch.ops.tood_ext
        key = torch._C.DispatchKey.CUDA if backend == "cuda" else torch._C.DispatchKey.CPU
        device = backend
    op = getattr(lib, name).default
    keys = torch._C.DispatchKeySet(key)
    return (lambda *args: op.redispatch(keys, *args)), device


# ---- valid arguments of each op, in schema order --------------------------------------------


def _metric_args(gen):
    ps, pb, ap, gl, gb, gm = metric_inputs(gen, 2, 20, 3, 4)
    gm[:, 0] = True  # a valid GT in each image (label checks), of a valid class
    gl[:, 0] = gl[:, 0].remainder(3)
    return dict(pred_scores=ps, pred_boxes=pb, anchor_points=ap, gt_labels=gl, gt_boxes=gb,
                gt_mask=gm)


def _rotated_args(gen):
    """_metric_args with oriented boxes (cx, cy, w, h, angle)."""
    args = _metric_args(gen)
    for name in ("pred_boxes", "gt_boxes"):
        b = args[name]
        angle = (torch.rand(*b.shape[:-1], 1, generator=gen) - 0.5) * 3.0
        args[name] = torch.cat(((b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2], angle),
                               -1)
    return args


def valid_args(op: str, gen) -> dict:
    b1, b2, b2a = random_boxes(gen, 2, 3), random_boxes(gen, 2, 5), random_boxes(gen, 2, 3)
    pred, target = random_boxes(gen, 6), random_boxes(gen, 6)
    weight = torch.rand(6, generator=gen)
    if op == "box_iou":
        return dict(boxes1=b1, boxes2=b2, mode="iou", aligned=False, eps=1e-7)
    if op == "box_iou_aligned":
        return dict(boxes1=b1, boxes2=b2a, mode="diou", aligned=True, eps=1e-7)
    if op == "_box_iou_backward":
        return dict(grad=torch.rand(2, 3, 5, generator=gen), boxes1=b1, boxes2=b2, mode="giou",
                    aligned=False, eps=1e-7)
    if op == "_box_iou_backward_aligned":
        return dict(grad=torch.rand(2, 3, generator=gen), boxes1=b1, boxes2=b2a, mode="ciou",
                    aligned=True, eps=1e-7)
    if op == "iou_loss":
        return dict(pred=pred, target=target, weight=weight, mode="giou", eps=1e-7)
    if op == "_iou_loss_backward":
        return dict(grad=torch.rand(6, generator=gen), pred=pred, target=target, weight=weight,
                    mode="ciou", eps=1e-7)
    if op == "alignment_metric":
        return dict(**_metric_args(gen), alpha=1.0, beta=6.0, iou_mode="iou", inside_eps=0.01,
                    eps=1e-7)
    if op == "task_aligned_assign":
        return dict(**_metric_args(gen), topk=5, alpha=1.0, beta=6.0,
                    candidates="topk_then_inside", iou_mode="ciou", inside_eps=0.01,
                    norm_eps=1e-7, conflict="all_gts", min_inside_size=0.0)
    if op == "task_aligned_assign_rotated":
        return dict(**_rotated_args(gen), topk=5, alpha=0.5, beta=6.0,
                    candidates="inside_then_topk", norm_eps=1e-9, conflict="all_gts",
                    min_inside_size=16.0, probiou_eps=1e-7)
    if op in ("deform_sampling", "_deform_sampling_backward"):  # B 2, C 4, G 2, 3 x 5
        x = torch.randn(2, 4, 3, 5, generator=gen)
        off = torch.randn(2, 4, 3, 5, generator=gen) * 2
        mask = torch.rand(2, 2, 3, 5, generator=gen)
        if op == "deform_sampling":
            return dict(input=x, offset=off, mask=mask)
        return dict(grad=torch.randn(2, 4, 3, 5, generator=gen), input=x, offset=off, mask=mask)
    if op in ("sparse_target_cls_loss", "_sparse_target_cls_loss_backward"):  # (2, 7) anchors, C 5
        pred = torch.randn(2, 7, 5, generator=gen) * 3
        labels = torch.randint(-1, 5, (2, 7), generator=gen)
        labels[0, 0] = 2  # a foreground anchor (the score checks)
        args = dict(pred=pred, labels=labels, scores=torch.rand(2, 7, generator=gen),
                    kind="vfl", gamma=2.0, alpha=0.75, activated=False,
                    class_weight=torch.rand(5, generator=gen) + 0.5,
                    weight=torch.rand(2, 7, generator=gen))
        if op == "sparse_target_cls_loss":
            return args
        return dict(grad=torch.tensor(0.7), **args)
    if op in ("dfl_loss", "_dfl_loss_backward"):  # (3, 2) rows of 6 bins
        args = dict(pred_dist=torch.randn(3, 2, 6, generator=gen) * 2,
                    target=torch.rand(3, 2, generator=gen) * 6 - 0.5,
                    weight=torch.rand(3, 2, generator=gen))
        if op == "dfl_loss":
            return args
        return dict(grad=torch.tensor(1.3), **args)
    if op.startswith(("probiou", "_probiou")):
        return _probiou_args(op, gen)
    raise AssertionError(op)


def _probiou_args(op: str, gen) -> dict:
    b1, b2, b2a = random_obbs(gen, 2, 3), random_obbs(gen, 2, 5), random_obbs(gen, 2, 3)
    pred, target = random_obbs(gen, 6), random_obbs(gen, 6)
    weight = torch.rand(6, generator=gen)
    scalars = dict(eps=1e-7, floor=0.01, ciou=True)
    if op == "probiou":
        return dict(b1=b1, b2=b2, aligned=False, **scalars)
    if op == "probiou_aligned":
        return dict(b1=b1, b2=b2a, aligned=True, **scalars)
    if op == "_probiou_backward":
        return dict(grad=torch.rand(2, 3, 5, generator=gen), b1=b1, b2=b2, aligned=False,
                    **scalars)
    if op == "_probiou_backward_aligned":
        return dict(grad=torch.rand(2, 3, generator=gen), b1=b1, b2=b2a, aligned=True, **scalars)
    if op == "probiou_loss":
        return dict(pred=pred, target=target, weight=weight, **scalars)
    if op == "_probiou_loss_backward":
        return dict(grad=torch.rand(6, generator=gen), pred=pred, target=target, weight=weight,
                    **scalars)
    raise AssertionError(op)


OPS = ["box_iou", "box_iou_aligned", "_box_iou_backward", "_box_iou_backward_aligned", "iou_loss",
       "_iou_loss_backward", "alignment_metric", "task_aligned_assign", "deform_sampling",
       "_deform_sampling_backward", "probiou", "probiou_aligned", "_probiou_backward",
       "_probiou_backward_aligned", "probiou_loss", "_probiou_loss_backward",
       "task_aligned_assign_rotated", "sparse_target_cls_loss",
       "_sparse_target_cls_loss_backward", "dfl_loss", "_dfl_loss_backward"]
# integer arguments: True where any integer dtype is accepted (the loss ops' labels: int8 to
# int64, read as int64), False where only int64 is (TAL's gt_labels)
INT_ARGS = {"gt_labels": False, "labels": True}
BOOL_ARGS = {"gt_mask"}


def _schema_name(op: str) -> str:
    return op.removesuffix("_aligned")


# ---- the bad arguments ------------------------------------------------------------------------


def _tensor_cases(args: dict):
    """(label, arg, transform, exception) for every tensor argument."""
    cases = []
    floats = [n for n, v in args.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    ref = floats[0] if "grad" not in floats else floats[1]  # the dtype/device reference
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            continue
        cases += [("drop-dim", name, lambda t: t[0] if t.dim() > 1 else t[None]),
                  ("meta", name, lambda t: t.to("meta"))]
        if t.dim():
            cases.append(("narrow", name, lambda t: t.narrow(0, 0, t.shape[0] - 1)))
        if name in INT_ARGS:
            cases += [("float", name, lambda t: t.float()), ("bool", name, lambda t: t.bool())]
            if not INT_ARGS[name]:
                cases.append(("int32", name, lambda t: t.int()))
        elif name in BOOL_ARGS:
            cases += [("uint8", name, lambda t: t.to(torch.uint8)),
                      ("int64", name, lambda t: t.long())]
        else:
            cases += [("int32", name, lambda t: t.int()), ("bool", name, lambda t: t.bool()),
                      ("int64", name, lambda t: t.long()),
                      ("float64", name, lambda t: t.double())]
            if t.dim() >= 1 and t.shape[-1] == 4 and name not in ("grad",):
                cases.append(("last-dim-3", name, lambda t: t[..., :3]))
            if t.dim() >= 1 and t.shape[-1] == 5 and name not in ("grad",):  # oriented boxes
                cases.append(("last-dim-4", name, lambda t: t[..., :4]))
            if name == ref:
                cases.append(("float16", name, lambda t: t.half()))
    return [(label, name, fn, RuntimeError) for label, name, fn in cases]


SCALAR_CASES = {
    "mode": [("eiou", ValueError), ("IoU", ValueError), ("", ValueError)],
    "iou_mode": [("eiou", ValueError), ("", ValueError)],
    "candidates": [("inside", ValueError)],
    "conflict": [("everyone", ValueError)],
    "topk": [(0, ValueError), (-3, ValueError)],
    "min_inside_size": [(-1.0, ValueError), (float("inf"), ValueError),
                        (float("nan"), ValueError)],
    "floor": [(-0.5, ValueError), (float("inf"), ValueError), (float("nan"), ValueError)],
    "probiou_eps": [(-1.0, ValueError), (float("nan"), ValueError)],
    "kind": [("eiou", ValueError), ("QFL", ValueError), ("", ValueError)],
    "activated": [(True, ValueError)],  # probabilities: not with valid_args' kind="vfl"
}
# scalar cases of one op family only (TAL's alpha / beta are other numbers)
OP_SCALAR_CASES = {
    "sparse_target_cls_loss": {
        "gamma": [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError)],
        "alpha": [(-0.5, ValueError), (float("nan"), ValueError)],
    },
}


def _cases(op: str):
    args = valid_args(op, torch.Generator().manual_seed(0))
    cases = [(f"{name}-{label}", name, fn, exc) for label, name, fn, exc in _tensor_cases(args)]
    scalar_cases = {**SCALAR_CASES, **OP_SCALAR_CASES.get(_schema_name(op).lstrip("_")
                                                         .removesuffix("_backward"), {})}
    for name, bad in scalar_cases.items():
        if name in args:
            cases += [(f"{name}={value!r}", name, (lambda _, v=value: v), exc)
                      for value, exc in bad]
    return cases


ALL_CASES = [pytest.param(op, name, fn, exc, id=f"{op}-{label}")
             for op in OPS for label, name, fn, exc in _cases(op)]


def _snapshot(args: dict) -> dict:
    return {k: v.clone() for k, v in args.items()
            if isinstance(v, torch.Tensor) and v.device.type != "meta"}


def _assert_unchanged(args: dict, before: dict) -> None:
    for k, v in before.items():
        assert torch.equal(args[k], v), f"{k} was written"


def _to(args: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.parametrize("op, arg, transform, exc", ALL_CASES)
def test_bad_argument_raises_naming_it(request, backend, gen, op, arg, transform, exc):
    call, device = _kernel(backend, _schema_name(op), request)
    args = _to(valid_args(op, gen), device)
    bad = transform(args[arg])
    if backend == "cuda" and isinstance(bad, torch.Tensor) and bad.dtype in (torch.half,):
        pytest.skip("float16 is a CUDA dtype")
    args[arg] = bad
    before = _snapshot(args)
    with pytest.raises(Exception) as err:
        call(*args.values())
    assert type(err.value) is exc, (type(err.value), str(err.value))
    message = str(err.value)
    assert arg in message, message
    assert "expected scalar type" not in message, message
    _assert_unchanged(args, before)


@pytest.mark.parametrize("value", [-1, 3])  # C = 3 classes
@pytest.mark.parametrize("op", ["alignment_metric", "task_aligned_assign",
                                "task_aligned_assign_rotated"])
def test_label_out_of_range_is_an_index_error(request, backend, gen, op, value):
    call, device = _kernel(backend, op, request)
    args = _to(valid_args(op, gen), device)
    args["gt_labels"][1, 0] = value  # gt_mask[:, 0] is True
    before = _snapshot(args)
    with pytest.raises(IndexError, match=f"gt_labels holds class {value} for a valid GT"):
        call(*args.values())
    _assert_unchanged(args, before)
    # a padding GT may hold any label
    args["gt_mask"][1, 0] = False
    call(*args.values())


def test_topk_beyond_the_cuda_limit(request, backend, gen):
    """topk <= 64 on CUDA (the per-lane candidate lists): a ValueError naming topk there; the
    CPU kernel takes any topk >= 1 (k = min(topk, A))."""
    call, device = _kernel(backend, "task_aligned_assign", request)
    args = _to(valid_args("task_aligned_assign", gen), device)
    args["topk"] = 65
    if backend == "cpu":
        want = call(*args.values())
        args["topk"] = 2**40
        assert all(torch.equal(a, b) for a, b in zip(call(*args.values()), want))
        return
    with pytest.raises(ValueError, match="topk <= 64, got 65"):
        call(*args.values())


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (every other element of a wider tensor)."""
    if t.dim() == 0 or t.numel() <= 1:
        return t
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() and torch.equal(out, t)
    return out


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return all(_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs_give_the_same_bits(request, backend, gen, op):
    call, device = _kernel(backend, _schema_name(op), request)
    args = _to(valid_args(op, gen), device)
    want = call(*args.values())
    strided = {k: _non_contiguous(v) if isinstance(v, torch.Tensor) else v
               for k, v in args.items()}
    got = call(*strided.values())
    if op == "_deform_sampling_backward" and backend != "cpu":
        # CUDA's grad_input adds by atomics, in no fixed order (README): equal to rounding
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
        return
    assert _equal(got, want)
    if "grad" in args:  # a broadcast scalar gradient (loss.sum()) is read with stride 0
        g = args["grad"]
        scalar = torch.full((), 0.75, dtype=g.dtype, device=device)
        expanded = call(*{**args, "grad": scalar.expand(g.shape)}.values())
        assert _equal(expanded, call(*{**args, "grad": scalar.expand(g.shape).clone()}.values()))


def test_empty_inputs(request, backend, gen):
    """Zero-size dims are valid: outputs of the contract's shapes (the box_iou backward's
    gradients zero where no pair reaches them, TAL's outputs all background)."""
    def call(name, *args):
        return _kernel(backend, name, request)[0](*_to(dict(enumerate(args)), device).values())

    device = "cuda" if backend == "cuda" else "cpu"
    b = random_boxes(gen, 2, 3)
    e = b[:, :0]
    assert call("box_iou", e, b, "iou", False, 1e-7).shape == (2, 0, 3)
    assert call("box_iou", e[0], e[0], "giou", True, 1e-7).shape == (0,)
    g1, g2 = call("_box_iou_backward", torch.ones(2, 3, 0), b, e, "ciou", False, 1e-7)
    assert g1.shape == (2, 3, 4) and not g1.any() and g2.shape == (2, 0, 4)
    assert call("iou_loss", e[0], e[0], None, "giou", 1e-7).shape == (0,)
    outs = call("_iou_loss_backward", torch.ones(0), e[0], e[0], torch.ones(0), "diou", 1e-7)
    assert [o.shape for o in outs] == [(0, 4), (0, 4), (0,)]
    args = _metric_args(gen)
    no_anchors = {**args, "pred_scores": args["pred_scores"][:, :0],
                  "pred_boxes": args["pred_boxes"][:, :0],
                  "anchor_points": args["anchor_points"][:0]}
    outs = call("alignment_metric", *no_anchors.values(), 1.0, 6.0, "iou", 0.01, 1e-7)
    assert [o.shape for o in outs] == [(2, 4, 0)] * 3
    no_gts = {**args, "gt_labels": args["gt_labels"][:, :0], "gt_boxes": args["gt_boxes"][:, :0],
              "gt_mask": args["gt_mask"][:, :0]}
    out = call("task_aligned_assign", *no_gts.values(), 13, 1.0, 6.0, "topk_then_inside", "iou",
               0.01, 1e-7, "candidates", 0.0)
    assert (out[0] == -1).all() and not out[1].any() and (out[2] == -1).all()
    assert all(not o.any() for o in out[3:]) and out[3].shape == (2, 20, 4)
    rot = _rotated_args(gen)
    no_gts = {**rot, "gt_labels": rot["gt_labels"][:, :0], "gt_boxes": rot["gt_boxes"][:, :0],
              "gt_mask": rot["gt_mask"][:, :0]}
    out = call("task_aligned_assign_rotated", *no_gts.values(), 10, 0.5, 6.0,
               "inside_then_topk", 1e-9, "all_gts", 16.0, 1e-7)
    assert (out[0] == -1).all() and not out[1].any() and out[3].shape == (2, 20, 5)
    no_images = {k: v[:0] if k != "anchor_points" else v for k, v in rot.items()}
    out = call("task_aligned_assign_rotated", *no_images.values(), 10, 0.5, 6.0,
               "inside_then_topk", 1e-9, "all_gts", 16.0, 1e-7)
    assert out[0].shape == (0, 20) and out[3].shape == (0, 20, 5)


def test_probiou_empty_inputs(request, backend, gen):
    """probiou's zero-size dims: outputs of the contract's shapes, gradients of boxes that no
    pair reaches zero."""
    device = "cuda" if backend == "cuda" else "cpu"

    def call(name, *args):
        return _kernel(backend, name, request)[0](*_to(dict(enumerate(args)), device).values())

    b = random_obbs(gen, 2, 3)
    e = b[:, :0]
    s = (1e-7, 0.0, True)
    assert call("probiou", e, b, False, *s).shape == (2, 0, 3)
    assert call("probiou", b, e, False, *s).shape == (2, 3, 0)
    assert call("probiou", e[0], e[0], True, *s).shape == (0,)
    assert call("probiou", b[:0], b[:0], False, *s).shape == (0, 3, 3)
    g1, g2 = call("_probiou_backward", torch.ones(2, 3, 0), b, e, False, *s)
    assert g1.shape == (2, 3, 5) and not g1.any() and g2.shape == (2, 0, 5)
    g1, g2 = call("_probiou_backward", torch.ones(2, 0, 3), e, b, False, *s)
    assert g2.shape == (2, 3, 5) and not g2.any() and g1.shape == (2, 0, 5)
    assert call("probiou_loss", e[0], e[0], None, *s).shape == (0,)
    outs = call("_probiou_loss_backward", torch.ones(0), e[0], e[0], torch.ones(0), *s)
    assert [o.shape for o in outs] == [(0, 5), (0, 5), (0,)]


@pytest.mark.parametrize("op", ["sparse_target_cls_loss", "_sparse_target_cls_loss_backward"])
def test_labels_of_any_integer_dtype(request, backend, gen, op):
    """The loss ops read labels of any signed integer dtype as int64 (the table's generic
    int32 case refuses TAL's gt_labels, not these): the same bits as int64 labels."""
    call, device = _kernel(backend, op, request)
    args = _to(valid_args(op, gen), device)
    want = call(*args.values())
    for dtype in (torch.int8, torch.int16, torch.int32):
        got = call(*{**args, "labels": args["labels"].to(dtype)}.values())
        assert _equal(got, want), dtype
