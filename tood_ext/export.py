"""Deployment: export the TOOD detector to ONNX (onnxruntime, TensorRT, ...) and to torch.export.

mmdetection's TOOD cannot be exported (its deformable sampling goes through mmcv's
``DeformConv2dFunction``, which the exporters reject: mmdetection #8201, #11438, mmdeploy #161).
Here every op of the inference path is a dispatcher op with a fake kernel, so:

* :func:`export_pt2` runs ``torch.export.export`` on the detector (dynamic batch, height and
  width) and writes the program with ``torch.export.save``; the program calls
  ``torch.ops.tood_ext.deform_sampling`` (load it with ``import tood_ext.export`` first, which
  loads the kernels and, for ``with_nms=True``, registers ``tood_ext_export::multiclass_nms``).
* :func:`export_onnx` runs the torch.export-based ONNX exporter (``torch.onnx.export(...,
  dynamo=True)``, torch's default since 2.9) with a ``custom_translation_table`` that
  decomposes our ops into standard ONNX ops, so the graph has no custom domain:

  - ``tood_ext::deform_sampling`` -> by default (``deform="gather"``) the kernel's own
    arithmetic (``Floor``, four ``GatherElements``, bilinear weights; raw outputs within 1e-4
    of the PyTorch model), or with ``deform="grid_sample"`` one ``GridSample`` (bilinear, zeros
    padding, ``align_corners=0``) with the pixel -> normalised coordinate conversion written
    out (``gx = (2 (j + dx) + 1) / W - 1``, likewise y), the offset groups folded into the
    batch (``(B, C, H, W) -> (B G, C / G, H, W)``), the optional mask as a ``Mul``: compact,
    but the coordinate round trip moves samples by ~1e-7 * W px (box outputs off by up to
    ~1e-3 px);
  - ``tood_ext::box_iou`` (not on the inference path; for models that call it) -> elementwise
    ops (``Min``/``Max``/``Clip``/``Div``, ``Atan`` for CIoU, NaN for non-finite boxes);
  - ``tood_ext_export::multiclass_nms`` (``with_nms=True``) -> ``NonMaxSuppression`` on a
    (B, num_classes, K) score tensor (class-wise NMS, the eager op's decisions up to the
    rounding of IoUs at the threshold: the eager op moves classes apart by offsets), then
    ``ScatterND`` + ``TopK`` to keep the best ``max_per_img`` per image, padded.

Outputs of the exported graphs (``images``: (B, 3, H, W) normalised, H and W multiples of 128):

* ``with_nms=False``: ``cls_score_0..4`` (B, C, H_l, W_l) P_align probabilities and
  ``bbox_pred_0..4`` (B, 4, H_l, W_l) decoded xyxy boxes in input pixels, i.e. exactly
  ``model(images)``'s ``cls_scores`` / ``bbox_preds`` (box decoding is inside the graph).
* ``with_nms=True``: ``boxes`` (B, max_per_img, 4), ``scores`` (B, max_per_img), ``labels``
  (B, max_per_img) int64 and ``num_dets`` (B,) int64, sorted by score; rows past ``num_dets``
  are padding (boxes 0, score 0, label -1). This is ``model.predict`` with
  ``metas = [{"scale_factor": 1.0, "orig_size": (H, W)}]`` (the same
  :mod:`tood_ext.models.postprocess` steps): per level the best ``nms_pre`` (location, class)
  pairs above ``score_thr``, boxes clipped to the input image (``clip_to_image``, default on;
  off is mmdetection's behaviour), boxes of width or height ``<= min_bbox_size`` (0: the
  zero-size ones) dropped, class-wise NMS at ``iou_thr``. Divide the boxes by your resize
  factor (and clip to the original image) afterwards; ``min_bbox_size`` counts input pixels.

onnx, onnxruntime and onnxscript are optional (``pip install tood-ext[export]``); importing this
module does not need them.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from torch import nn

from . import _loader

__all__ = ["ExportableTOOD", "multiclass_nms", "onnx_translation_table", "export_onnx",
           "export_pt2", "load_model", "example_inputs", "dynamic_shapes",
           "add_export_subparser", "cmd_export", "main"]

SIZE_DIVISOR = 128  # the detector's input sizes: P7 has stride 128


# ---------------------------------------------------------------------------------------------
# fixed-size multi-class NMS as a custom op (eager: torchvision; ONNX: NonMaxSuppression)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("tood_ext_export::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                   num_classes: int, iou_threshold: float, score_threshold: float,
                   max_det: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-wise NMS of a batch of candidates, with fixed-size (padded) outputs.

    boxes (B, K, 4) xyxy, scores (B, K), labels (B, K) int64 in [0, num_classes). Candidates
    with ``score > score_threshold`` go through class-wise NMS
    (:func:`tood_ext.models.postprocess.batched_nms`: a box is suppressed by a higher-scoring
    box of its class with IoU > ``iou_threshold``); the best
    ``max_det`` survivors are kept. Returns ``(boxes (B, max_det, 4), scores (B, max_det),
    labels (B, max_det) int64, num_dets (B,) int64)``, sorted by score; padding rows are
    boxes 0, score 0, label -1.
    """
    from .models.postprocess import batched_nms

    B = scores.shape[0]
    out_boxes = boxes.new_zeros((B, max_det, 4))
    out_scores = scores.new_zeros((B, max_det))
    out_labels = torch.full((B, max_det), -1, dtype=torch.int64, device=scores.device)
    num = torch.zeros((B,), dtype=torch.int64, device=scores.device)
    for b in range(B):
        idx = (scores[b] > score_threshold).nonzero()[:, 0]
        keep = batched_nms(boxes[b, idx], scores[b, idx], labels[b, idx], iou_threshold)
        sel = idx[keep[:max_det]]
        n = sel.numel()
        out_boxes[b, :n], out_scores[b, :n] = boxes[b, sel], scores[b, sel]
        out_labels[b, :n], num[b] = labels[b, sel], n
    return out_boxes, out_scores, out_labels, num


@multiclass_nms.register_fake
def _multiclass_nms_fake(boxes, scores, labels, num_classes, iou_threshold, score_threshold,
                         max_det):
    B = scores.shape[0]
    return (boxes.new_empty((B, max_det, 4)), scores.new_empty((B, max_det)),
            scores.new_empty((B, max_det), dtype=torch.int64),
            scores.new_empty((B,), dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# the exported module
# ---------------------------------------------------------------------------------------------


class ExportableTOOD(nn.Module):
    """The detector with tensor outputs (what the exporters need); see the module docstring.

    ``score_thr``, ``nms_pre``, ``iou_thr``, ``max_per_img``, ``min_bbox_size`` and
    ``clip_to_image`` default to the model's config (used with ``with_nms=True`` only; the
    clipping is to the input image and the size filter is in input pixels, as the graph has
    no scale factor). ``raw_outputs`` (default: ``not with_nms``): also output the per-level
    head maps (after the detections when ``with_nms``).
    """

    def __init__(self, model: nn.Module, with_nms: bool = False, score_thr: float | None = None,
                 nms_pre: int | None = None, iou_thr: float | None = None,
                 max_per_img: int | None = None, raw_outputs: bool | None = None,
                 min_bbox_size: float | None = None, clip_to_image: bool | None = None):
        super().__init__()
        cfg = model.cfg
        if getattr(cfg, "head", "tood") != "tood":
            raise NotImplementedError(
                f"export supports the TOOD head only, got head={cfg.head!r} (the ATSS baseline "
                "scores with cls x centerness, which the exported outputs do not carry)")
        self.model, self.with_nms = model, with_nms
        self.raw_outputs = (not with_nms) if raw_outputs is None else bool(raw_outputs)
        if not (with_nms or self.raw_outputs):
            raise ValueError("nothing to output: with_nms=False needs raw_outputs")
        self.score_thr = float(cfg.score_thr if score_thr is None else score_thr)
        self.nms_pre = int(cfg.nms_pre if nms_pre is None else nms_pre)
        self.iou_thr = float(cfg.iou_thr if iou_thr is None else iou_thr)
        self.max_per_img = int(cfg.max_per_img if max_per_img is None else max_per_img)
        self.min_bbox_size = float(getattr(cfg, "min_bbox_size", 0.0) if min_bbox_size is None
                                   else min_bbox_size)
        self.clip_to_image = bool(getattr(cfg, "clip_to_image", True) if clip_to_image is None
                                  else clip_to_image)
        self.train(model.training)

    def output_names(self) -> list[str]:
        n = len(self.model.cfg.strides)
        names = ["boxes", "scores", "labels", "num_dets"] if self.with_nms else []
        if self.raw_outputs:
            names += [f"cls_score_{i}" for i in range(n)] + [f"bbox_pred_{i}" for i in range(n)]
        return names

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        res = self.postprocess(out, images.shape[-2], images.shape[-1]) if self.with_nms else ()
        if self.raw_outputs:
            res = (*res, *out["cls_scores"], *out["bbox_preds"])
        return res

    def postprocess(self, out: dict, height, width):
        """The candidates of ``TOOD.predict_by_feat`` on fixed-size tensors
        (:func:`~tood_ext.models.postprocess.dense_candidates`: per level the best ``nms_pre``
        (location, class) pairs, clipped to the input image with ``clip_to_image``, too small
        boxes scored ``-inf``; those <= score_thr are dropped by the NMS op), then NMS."""
        from .models.postprocess import dense_candidates

        boxes, scores, labels = dense_candidates(
            out["cls_scores"], out["bbox_preds"], self.nms_pre, height, width,
            clip_to_image=self.clip_to_image, min_bbox_size=self.min_bbox_size)
        return torch.ops.tood_ext_export.multiclass_nms(
            boxes, scores, labels, self.model.cfg.num_classes, self.iou_thr, self.score_thr,
            self.max_per_img)


def _check_size(image_size, dynamic: bool = False) -> tuple[int, int]:
    h, w = (int(v) for v in image_size)
    low = 2 * SIZE_DIVISOR if dynamic else SIZE_DIVISOR
    if h < low or w < low or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(f"image_size must be multiples of {SIZE_DIVISOR} (the P7 stride), at "
                         f"least {low}{' for a dynamic export' if dynamic else ''}; got {(h, w)}")
    return h, w


def example_inputs(image_size=(640, 640), batch: int = 2, device="cpu",
                   dynamic: bool = False) -> tuple[torch.Tensor]:
    """A (batch, 3, H, W) random image batch to trace with."""
    h, w = _check_size(image_size, dynamic)
    return (torch.randn(batch, 3, h, w, device=device),)


def dynamic_shapes(dynamic: bool = True, max_size: int = 4096):
    """``torch.export`` dynamic shapes of ``images``: batch, and H, W as 128 * k."""
    if not dynamic:
        return None
    Dim = torch.export.Dim
    k = max_size // SIZE_DIVISOR
    # H, W >= 256: at 128 the P7 map is 1 x 1, and torch.export specialises sizes of 1
    return {"images": {0: Dim("batch", min=1, max=1024),
                       2: SIZE_DIVISOR * Dim("h128", min=2, max=k),
                       3: SIZE_DIVISOR * Dim("w128", min=2, max=k)}}


def _prepare(model: nn.Module, with_nms: bool, nms_kwargs: dict) -> ExportableTOOD:
    if isinstance(model, ExportableTOOD):
        return model
    return ExportableTOOD(model, with_nms=with_nms, **nms_kwargs)


class _eval_mode:
    """Eval mode inside, every submodule's own train/eval flag restored on exit."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.flags = [(m, m.training) for m in module.modules()]

    def __enter__(self):
        self.module.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag


# ---------------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------------


def export_program(model: nn.Module, image_size=(640, 640), dynamic: bool = True,
                   with_nms: bool = False, batch: int = 2, **nms_kwargs):
    """``torch.export.export`` of :class:`ExportableTOOD` (eval mode): an ExportedProgram."""
    wrapper = _prepare(model, with_nms, nms_kwargs)
    device = next(wrapper.parameters()).device
    args = example_inputs(image_size, batch if dynamic else 1, device, dynamic)
    with _eval_mode(wrapper), torch.no_grad():
        return torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes(dynamic))


def export_pt2(model: nn.Module, path: str, image_size=(640, 640), dynamic: bool = True,
               with_nms: bool = False, **nms_kwargs):
    """torch.export the detector and ``torch.export.save`` it to ``path`` (.pt2).

    Load with ``import tood_ext.export; ep = torch.export.load(path)``, run with
    ``ep.module()(images)``. Returns the ExportedProgram.
    """
    ep = export_program(model, image_size, dynamic, with_nms, **nms_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.export.save(ep, path)
    return ep


# ---------------------------------------------------------------------------------------------
# ONNX: translations of our ops into standard ONNX ops (onnxscript, traced)
# ---------------------------------------------------------------------------------------------


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
    wrapper = _prepare(model, with_nms, nms_kwargs)
    device = next(wrapper.parameters()).device
    args = example_inputs(image_size, 2 if dynamic else 1, device, dynamic)
    with _eval_mode(wrapper), torch.no_grad():
        program = torch.onnx.export(
            wrapper, args, path, dynamo=True, input_names=["images"],
            output_names=wrapper.output_names(), dynamic_shapes=dynamic_shapes(dynamic),
            custom_translation_table=table, external_data=False, verbose=verbose, **kwargs)
    return program


# ---------------------------------------------------------------------------------------------
# checkpoints and the command line
# ---------------------------------------------------------------------------------------------


def load_model(checkpoint: str, **overrides) -> nn.Module:
    """The detector of a checkpoint, in eval mode on CPU: the model of
    :func:`tood_ext.engine.model_from_checkpoint` (``tood_ext.engine`` checkpoints, or plain
    ``{"config": TOODConfig as dict, "model": state_dict}`` files). ``overrides`` replace config
    fields (e.g. ``ops="reference"``, ``score_thr=0.3``; None values ignored)."""
    from .engine.checkpoint import model_from_checkpoint

    return model_from_checkpoint(checkpoint, "cpu", **overrides)[0]


def add_export_subparser(subparsers) -> argparse.ArgumentParser:
    """Adds ``export`` to an ``argparse`` subparsers object (``python -m tood_ext export``)."""
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX or torch.export (.pt2)",
                              description="Export a TOOD checkpoint (see tood_ext.export).")
    _add_export_args(p)
    return p


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="tood_ext.engine checkpoint, or {'config': ..., 'model': state_dict}")
    p.add_argument("--format", default="onnx", choices=("onnx", "pt2"))
    p.add_argument("--out", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--image-size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"),
                   help="example input size (multiples of 128); the fixed size with --static")
    p.add_argument("--static", action="store_true", help="fixed batch 1 and image size")
    p.add_argument("--with-nms", action="store_true",
                   help="NMS inside the graph: outputs boxes, scores, labels, num_dets")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument("--deform", default="gather", choices=DEFORM_MODES,
                   help="ONNX decomposition of deform_sampling: the kernel's arithmetic with "
                        "GatherElements (default, exact to ~1e-4) or one GridSample")
    p.add_argument("--score-thr", type=float, default=None)
    p.add_argument("--nms-pre", type=int, default=None)
    p.add_argument("--iou-thr", type=float, default=None)
    p.add_argument("--max-per-img", type=int, default=None)
    p.add_argument("--min-bbox-size", type=float, default=None,
                   help="drop boxes of width or height <= this (input pixels) before NMS "
                        "(default: the checkpoint's config, 0; negative: keep all)")
    p.add_argument("--clip", default=None, choices=("on", "off"),
                   help="clip boxes to the input image before NMS (default: the checkpoint's "
                        "config, on; mmdetection's TOOD: off)")
    p.add_argument("--ops", default=None, choices=("kernel", "reference"),
                   help="trace our kernels (default) or the pure-PyTorch references")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> str:
    model = load_model(args.checkpoint, ops=args.ops)
    nms = {k: getattr(args, k) for k in ("score_thr", "nms_pre", "iou_thr", "max_per_img",
                                         "min_bbox_size") if getattr(args, k) is not None}
    if args.clip is not None:
        nms["clip_to_image"] = args.clip == "on"
    common = dict(image_size=tuple(args.image_size), dynamic=not args.static,
                  with_nms=args.with_nms, **nms)
    if args.format == "onnx":
        export_onnx(model, args.out, opset=args.opset, deform=args.deform, **common)
    else:
        export_pt2(model, args.out, **common)
    print(f"wrote {args.out}")
    return args.out


def main(argv: list[str] | None = None):
    """``python -m tood_ext.export --checkpoint ... --format onnx|pt2 --out ...``."""
    parser = argparse.ArgumentParser(prog="python -m tood_ext.export",
                                     description="Export a TOOD checkpoint (see tood_ext.export).")
    _add_export_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    main()
