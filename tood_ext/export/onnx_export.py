"""ONNX: :func:`onnx_translation_table` (our ops as standard ONNX ops, written with
onnxscript) and :func:`export_onnx` (the torch.export-based exporter with that table). See
:mod:`tood_ext.export` for the decompositions and the outputs."""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from .. import _loader
from . import nms  # noqa: F401  (registers tood_ext_export::multiclass_nms, translated here)
from .wrapper import as_exportable, dynamic_shapes, eval_mode, example_inputs

__all__ = ["DEFORM_MODES", "export_onnx", "onnx_translation_table"]


DEFORM_MODES = ("grid_sample", "gather")


def onnx_translation_table(deform: str = "gather") -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: our ops as
    standard ONNX ops (see the module docstring). Needs onnxscript.

    ``deform``: how ``deform_sampling`` is decomposed: ``"grid_sample"`` (one ``GridSample``,
    positions converted to normalised coordinates and back: float32 rounding of about
    ``1e-7 * W`` pixels in the position) or ``"gather"`` (the kernel's own arithmetic: floor,
    four ``GatherElements`` and the bilinear weights; same rounding as the kernel).
    """
    if deform not in DEFORM_MODES:
        raise ValueError(f"deform must be one of {DEFORM_MODES}, got {deform!r}")
    from onnxscript import opset18 as op

    def ints(*v):
        return op.Constant(value_ints=list(v))

    def dim(shape, i):
        return op.Slice(shape, ints(i), ints(i + 1))

    def deform_sampling(input, offset, mask=None):
        # out[b, c, i, j] = mask * bilinear(input[b, c], i + dy, j + dx), zeros outside:
        # GridSample(align_corners=0) puts pixel x at normalised (2 x + 1) / W - 1.
        shape = op.Shape(input)
        B, H, W = dim(shape, 0), dim(shape, 2), dim(shape, 3)
        G = op.Div(dim(op.Shape(offset), 1), ints(2))
        off = op.Reshape(offset, op.Concat(B, G, ints(2), H, W, axis=0))
        dy = op.Squeeze(op.Slice(off, ints(0), ints(1), ints(2)), ints(2))  # (B, G, H, W)
        dx = op.Squeeze(op.Slice(off, ints(1), ints(2), ints(2)), ints(2))
        one, two = op.CastLike(1.0, offset), op.CastLike(2.0, offset)
        rows = op.CastLike(op.Range(0, op.Squeeze(H, ints(0)), 1), offset)
        cols = op.CastLike(op.Range(0, op.Squeeze(W, ints(0)), 1), offset)
        y = op.Add(op.Unsqueeze(rows, ints(1)), dy)
        x = op.Add(cols, dx)
        gx = op.Sub(op.Div(op.Add(op.Mul(two, x), one), op.CastLike(W, offset)), one)
        gy = op.Sub(op.Div(op.Add(op.Mul(two, y), one), op.CastLike(H, offset)), one)
        grid = op.Concat(op.Unsqueeze(gx, ints(-1)), op.Unsqueeze(gy, ints(-1)), axis=-1)
        BG = op.Mul(B, G)
        grid = op.Reshape(grid, op.Concat(BG, H, W, ints(2), axis=0))
        out = op.GridSample(op.Reshape(input, op.Concat(BG, ints(-1), H, W, axis=0)), grid,
                            mode="bilinear", padding_mode="zeros", align_corners=0)
        if mask is not None:
            out = op.Reshape(out, op.Concat(B, G, ints(-1), H, W, axis=0))
            out = op.Mul(out, op.Unsqueeze(mask, ints(2)))
        return op.Reshape(out, shape)

    def deform_sampling_gather(input, offset, mask=None):
        # The kernel's arithmetic (csrc/deform/deform_sampling_utils.h) written out: corners
        # (floor(y), floor(x)) and +1, weights hy*hx, hy*lx, ly*hx, ly*lx, summed in that
        # order; a sample outside (-1, H) x (-1, W) is 0, an invalid corner contributes 0.
        shape = op.Shape(input)
        B, H, W = dim(shape, 0), dim(shape, 2), dim(shape, 3)
        HW = op.Mul(H, W)
        G = op.Div(dim(op.Shape(offset), 1), ints(2))
        off = op.Reshape(offset, op.Concat(B, G, ints(2), H, W, axis=0))
        dy = op.Squeeze(op.Slice(off, ints(0), ints(1), ints(2)), ints(2))  # (B, G, H, W)
        dx = op.Squeeze(op.Slice(off, ints(1), ints(2), ints(2)), ints(2))
        zero, one = op.CastLike(0.0, offset), op.CastLike(1.0, offset)
        Hf, Wf = op.CastLike(H, offset), op.CastLike(W, offset)
        y = op.Add(op.Unsqueeze(op.CastLike(op.Range(0, op.Squeeze(H, ints(0)), 1), offset),
                                ints(1)), dy)
        x = op.Add(op.CastLike(op.Range(0, op.Squeeze(W, ints(0)), 1), offset), dx)
        m1, m2 = op.CastLike(-1.0, offset), op.CastLike(-2.0, offset)
        inside = op.And(op.And(op.Greater(y, m1), op.Less(y, Hf)),
                        op.And(op.Greater(x, m1), op.Less(x, Wf)))
        fill = op.Where(op.Or(op.IsNaN(y), op.IsNaN(x)), op.CastLike(float("nan"), offset), zero)
        ys, xs = op.Where(inside, y, m2), op.Where(inside, x, m2)
        yf, xf = op.Floor(ys), op.Floor(xs)
        ly, lx = op.Sub(ys, yf), op.Sub(xs, xf)
        hy, hx = op.Sub(one, ly), op.Sub(one, lx)
        y0, x0 = op.Cast(yf, to=7), op.Cast(xf, to=7)
        y1, x1 = op.Add(y0, ints(1)), op.Add(x0, ints(1))
        z = ints(0)

        def valid(c, n):
            return op.And(op.GreaterOrEqual(c, z), op.Less(c, n))

        planes = op.Reshape(input, op.Concat(B, G, ints(-1), HW, axis=0))  # (B, G, C/G, HW)
        gather_shape = op.Shape(planes)
        flat = op.Concat(B, G, ints(1), HW, axis=0)
        out = None
        for cy, cx, w in ((y0, x0, op.Mul(hy, hx)), (y0, x1, op.Mul(hy, lx)),
                          (y1, x0, op.Mul(ly, hx)), (y1, x1, op.Mul(ly, lx))):
            ok = op.And(valid(cy, H), valid(cx, W))
            idx = op.Where(ok, op.Add(op.Mul(cy, W), cx), z)
            v = op.GatherElements(planes, op.Expand(op.Reshape(idx, flat), gather_shape), axis=3)
            v = op.Where(op.Reshape(ok, flat), v, zero)
            term = op.Mul(op.Reshape(op.Where(inside, w, fill), flat), v)
            out = term if out is None else op.Add(out, term)
        if mask is not None:
            out = op.Mul(out, op.Reshape(mask, flat))
        return op.Reshape(out, shape)

    def box_iou(boxes1, boxes2, mode: str = "iou", aligned: bool = False, eps: float = 1e-7):
        if not aligned:  # (..., N, 1, 4) x (..., 1, M, 4)
            boxes1, boxes2 = op.Unsqueeze(boxes1, ints(-2)), op.Unsqueeze(boxes2, ints(-3))
        zero, e = op.CastLike(0.0, boxes1), op.CastLike(eps, boxes1)

        def coord(b, i):
            return op.Squeeze(op.Slice(b, ints(i), ints(i + 1), ints(-1)), ints(-1))

        def relu(t):
            return op.Max(t, zero)

        ax1, ay1, ax2, ay2 = (coord(boxes1, i) for i in range(4))
        bx1, by1, bx2, by2 = (coord(boxes2, i) for i in range(4))
        aw, ah = relu(op.Sub(ax2, ax1)), relu(op.Sub(ay2, ay1))
        bw, bh = relu(op.Sub(bx2, bx1)), relu(op.Sub(by2, by1))
        iw = relu(op.Sub(op.Min(ax2, bx2), op.Max(ax1, bx1)))
        ih = relu(op.Sub(op.Min(ay2, by2), op.Max(ay1, by1)))
        inter = op.Mul(iw, ih)
        union = op.Max(op.Sub(op.Add(op.Mul(aw, ah), op.Mul(bw, bh)), inter), e)
        iou = op.Div(inter, union)
        value = iou
        if mode != "iou":
            cw = relu(op.Sub(op.Max(ax2, bx2), op.Min(ax1, bx1)))
            ch = relu(op.Sub(op.Max(ay2, by2), op.Min(ay1, by1)))
            if mode == "giou":
                enclose = op.Max(op.Mul(cw, ch), e)
                value = op.Sub(iou, op.Div(op.Sub(enclose, union), enclose))
            else:
                cx = op.Sub(op.Add(ax1, ax2), op.Add(bx1, bx2))
                cy = op.Sub(op.Add(ay1, ay2), op.Add(by1, by2))
                rho2 = op.Div(op.Add(op.Mul(cx, cx), op.Mul(cy, cy)), op.CastLike(4.0, boxes1))
                diag = op.Add(op.Add(op.Mul(cw, cw), op.Mul(ch, ch)), e)
                value = op.Sub(iou, op.Div(rho2, diag))
                if mode == "ciou":
                    half_pi = op.CastLike(math.pi / 2, boxes1)

                    def atan2_nonneg(w, h):  # atan2(w, h) for w, h >= 0
                        safe = op.Where(op.Greater(h, zero), h, op.CastLike(1.0, boxes1))
                        edge = op.Where(op.Greater(w, zero), half_pi, zero)
                        return op.Where(op.Greater(h, zero), op.Atan(op.Div(w, safe)), edge)

                    d = op.Sub(atan2_nonneg(bw, bh), atan2_nonneg(aw, ah))
                    v = op.Mul(op.CastLike(4 / math.pi ** 2, boxes1), op.Mul(d, d))
                    alpha = op.Div(v, op.Add(op.Add(op.Sub(op.CastLike(1.0, boxes1), iou), v),
                                             e))
                    value = op.Sub(value, op.Mul(alpha, v))

        def finite(b):  # (..., 4) -> (...) all coordinates finite
            bad = op.Or(op.IsNaN(b), op.IsInf(b))
            return op.Not(op.Cast(op.ReduceMax(op.Cast(bad, to=7), ints(-1), keepdims=0), to=9))

        ok = op.And(finite(boxes1), finite(boxes2))
        return op.Where(ok, value, op.CastLike(float("nan"), boxes1))

    def nms(boxes, scores, labels, num_classes: int, iou_threshold: float,
            score_threshold: float, max_det: int):
        # class-wise NMS: (B, num_classes, K) scores, -inf outside each candidate's class
        classes = op.Reshape(ints(*range(num_classes)), ints(1, num_classes, 1))
        neg = op.CastLike(float("-inf"), scores)
        cls_scores = op.Where(op.Equal(op.Unsqueeze(labels, ints(1)), classes),
                              op.Unsqueeze(scores, ints(1)), neg)
        sel = op.NonMaxSuppression(boxes, cls_scores, ints(max_det),
                                   op.Constant(value_floats=[iou_threshold]),
                                   op.Constant(value_floats=[score_threshold]))  # (N, 3)
        b_k = op.Concat(op.Slice(sel, ints(0), ints(1), ints(1)),
                        op.Slice(sel, ints(2), ints(3), ints(1)), axis=1)  # (N, 2)
        kept = op.ScatterND(op.Expand(op.Constant(value_ints=[0]), op.Shape(labels)), b_k,
                            op.Expand(ints(1), op.Slice(op.Shape(sel), ints(0), ints(1))))
        kept = op.Cast(kept, to=9)  # bool (B, K)
        kept_scores = op.Where(kept, scores, neg)
        K = op.Slice(op.Shape(scores), ints(1), ints(2))
        k = op.Min(ints(max_det), K)
        top, idx = op.TopK(kept_scores, k, axis=1)  # sorted, descending
        valid = op.Greater(top, neg)
        out_scores = op.Where(valid, top, op.CastLike(0.0, scores))
        out_labels = op.Where(valid, op.GatherElements(labels, idx, axis=1), ints(-1))
        idx4 = op.Expand(op.Unsqueeze(idx, ints(2)), op.Concat(op.Shape(idx), ints(4), axis=0))
        out_boxes = op.Where(op.Unsqueeze(valid, ints(2)),
                             op.GatherElements(boxes, idx4, axis=1), op.CastLike(0.0, boxes))
        num = op.ReduceSum(op.Cast(valid, to=7), ints(1), keepdims=0)
        pad = op.Sub(ints(max_det), k)  # K < max_det: pad to the fixed size
        z = ints(0)
        out_boxes = op.Pad(out_boxes, op.Concat(z, z, z, z, pad, z, axis=0),
                           op.CastLike(0.0, boxes))
        out_scores = op.Pad(out_scores, op.Concat(z, z, z, pad, axis=0),
                            op.CastLike(0.0, scores))
        out_labels = op.Pad(out_labels, op.Concat(z, z, z, pad, axis=0), op.Constant(value_int=-1))
        return out_boxes, out_scores, out_labels, num

    table = {torch.ops.tood_ext_export.multiclass_nms.default: nms}
    if _loader.has_ops():
        table[torch.ops.tood_ext.deform_sampling.default] = (
            deform_sampling if deform == "grid_sample" else deform_sampling_gather)
        table[torch.ops.tood_ext.box_iou.default] = box_iou
    return table


def export_onnx(model: nn.Module, path: str, image_size=(640, 640), dynamic: bool = True,
                with_nms: bool = False, opset: int | None = None, deform: str = "gather",
                verbose: bool = False, output_names=None, **nms_kwargs):
    """Export the detector to an ONNX file (standard ONNX ops only, see the module docstring).

    ``dynamic``: batch, height and width are dynamic (H, W multiples of 128); else fixed to
    ``image_size`` with batch 1. ``opset``: ONNX opset (None: torch's default, 20 with torch
    2.14; at least 18). ``nms_kwargs``: ``score_thr``, ``nms_pre``, ``iou_thr``,
    ``max_per_img`` (default: the model's config). Input ``images``; outputs named as in
    :meth:`ExportableTOOD.output_names`. ``deform``: see :func:`onnx_translation_table`.
    ``model`` may also be an ExportedProgram of :func:`export_program` (then give its
    ``output_names``; size arguments are ignored). Returns the ``torch.onnx.ONNXProgram``.
    """
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs onnx and onnxscript (and onnxruntime to run the "
                          "result): pip install onnx onnxscript onnxruntime") from exc
    kwargs = {} if opset is None else {"opset_version": int(opset)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = onnx_translation_table(deform)
    if isinstance(model, torch.export.ExportedProgram):  # from export_program: shapes are set
        if output_names is None:
            raise ValueError("exporting an ExportedProgram needs output_names (see "
                             "ExportableTOOD.output_names)")
        return torch.onnx.export(model, (), path, dynamo=True, input_names=["images"],
                                 output_names=list(output_names), custom_translation_table=table,
                                 external_data=False, verbose=verbose, **kwargs)
    wrapper = as_exportable(model, with_nms, nms_kwargs)
    device = next(wrapper.parameters()).device
    args = example_inputs(image_size, 2 if dynamic else 1, device, dynamic)
    with eval_mode(wrapper), torch.no_grad():
        program = torch.onnx.export(
            wrapper, args, path, dynamo=True, input_names=["images"],
            output_names=wrapper.output_names(), dynamic_shapes=dynamic_shapes(dynamic),
            custom_translation_table=table, external_data=False, verbose=verbose, **kwargs)
    return program
