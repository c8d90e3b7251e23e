"""Box-metric ops backed by the C++/CUDA kernels: IoU family, IoU losses, alignment metric.

Boxes are ``xyxy``. Semantics shared by the kernels (csrc/box_ops/box_iou_utils.h) and the
pure-PyTorch references (:mod:`tood_ext.reference.box_ops`):

* A box's width and height are clamped at 0: a degenerate box (x2 < x1 or y2 < y1, or zero
  area) has area 0 and IoU 0 with every box; it never produces NaN.
* ``iou = inter / max(union, eps)``; ``giou = iou - (C - U) / max(C, eps)`` with C the area of
  the enclosing box and U the clamped union; ``diou = iou - rho^2 / (c^2 + eps)`` with rho the
  centre distance and c the enclosing diagonal; ``ciou = diou - alpha * v`` with
  ``v = 4/pi^2 (atan2(w2, h2) - atan2(w1, h1))^2`` and ``alpha = v / (1 - iou + v + eps)``,
  alpha treated as a constant in the gradient (as torchvision and ultralytics do).
* A pair with any non-finite coordinate (NaN, +-inf) gives NaN, value and gradient; other
  pairs are unaffected.
* Empty inputs (N, M, G, A or batch = 0) give empty outputs.
* dtypes: float32/float64 on CPU; float16/bfloat16/float32/float64 on CUDA, computed in
  float32 for the half types. Inputs of any strides are accepted (copied to contiguous when
  they are not).
* All ops are deterministic: every output element and every gradient sum is computed by one
  thread in a fixed order (no atomics).

Autograd is registered with ``torch.library.register_autograd`` (an ``autograd.Function``
under the hood) whose backward calls the private ``_box_iou_backward`` / ``_iou_loss_backward``
ops; double backward raises. Fake (meta) kernels make every op traceable by
``torch.compile`` and ``torch.export``.
"""
from __future__ import annotations

import torch

from .. import _loader
from .._reduction import reduce_loss
from . import _box_spec as spec
from ._box_spec import IOU_MODES
from ._checks import broadcast_leading, check_tensors

__all__ = ["IOU_MODES", "box_iou", "iou_loss", "giou_loss", "alignment_metric"]


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, mode: str = "iou", aligned: bool = False,
            eps: float = 1e-7) -> torch.Tensor:
    """IoU-family overlap of xyxy boxes, differentiable w.r.t. both box sets.

    Pairwise (default): ``(..., N, 4) x (..., M, 4) -> (..., N, M)``; leading dims broadcast.
    ``aligned=True``: ``(..., N, 4) x (..., N, 4) -> (..., N)``.
    ``mode``: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"`` (see the module docstring).

    Extra memory: none beyond the output (forward); backward allocates only the two input
    gradients (the pairwise backward recomputes each pair instead of storing (N, M) partials).
    """
    spec.check_box_iou_args("box_iou", boxes1, boxes2, mode, aligned, eps)
    _loader.check_inputs("box_iou", boxes1=boxes1, boxes2=boxes2)
    if not aligned and boxes1.dim() >= 2 and boxes2.dim() >= 2 and boxes1.shape[:-2] != boxes2.shape[:-2]:
        boxes1, boxes2 = broadcast_leading(boxes1, boxes2)
    return torch.ops.tood_ext.box_iou(boxes1, boxes2, mode, bool(aligned), eps)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             mode: str = "giou", reduction: str = "mean",
             avg_factor: float | torch.Tensor | None = None, eps: float = 1e-7) -> torch.Tensor:
    """IoU-family regression loss ``weight * (1 - iou_mode(pred, target))`` of aligned boxes.

    ``pred``, ``target``: (..., 4) xyxy; ``weight``: (...) or None. One fused kernel computes
    overlap, loss and weighting per element (forward), one fused kernel all three gradients
    (backward; ``weight`` is differentiable too). ``reduction``: ``"none"`` | ``"sum"`` |
    ``"mean"`` (sum / ``avg_factor`` when given, else / numel; 0 for no elements), as
    mmdetection's losses.

    Extra memory: one value per box pair (the unreduced loss) in forward; the input
    gradients in backward. A scalar upstream gradient (``loss.sum()``) is read with stride 0,
    never expanded.
    """
    spec.check_iou_loss_args("iou_loss", pred, target, weight, mode, eps, reduction, avg_factor)
    _loader.check_inputs("iou_loss", pred=pred, target=target, weight=weight)
    loss = torch.ops.tood_ext.iou_loss(pred, target, weight, mode, eps)
    return reduce_loss(loss, reduction, avg_factor)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
              reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
              eps: float = 1e-7) -> torch.Tensor:
    """GIoU loss, TOOD's regression loss: :func:`iou_loss` with ``mode="giou"``."""
    return iou_loss(pred, target, weight, mode="giou", reduction=reduction,
                    avg_factor=avg_factor, eps=eps)


def alignment_metric(pred_scores: torch.Tensor, pred_boxes: torch.Tensor,
                     anchor_points: torch.Tensor, gt_labels: torch.Tensor,
                     gt_boxes: torch.Tensor, gt_mask: torch.Tensor, alpha: float = 1.0,
                     beta: float = 6.0, iou_mode: str = "iou", inside_eps: float = 0.01,
                     eps: float = 1e-7):
    """TOOD's task-alignment quantities for every (image, GT, anchor), in one fused pass.

    Args:
        pred_scores: (B, A, C) class probabilities (already sigmoided).
        pred_boxes: (B, A, 4) predicted xyxy boxes.
        anchor_points: (A, 2) anchor centres (x, y).
        gt_labels: (B, G) int64 class of each GT; must lie in [0, C) where ``gt_mask``.
        gt_boxes: (B, G, 4) xyxy. gt_mask: (B, G) bool, False for padding GTs.
        alpha, beta: exponents of ``t = s**alpha * u**beta``.
        iou_mode: overlap u of (pred box, GT): ``"iou"`` (TOOD / mmdetection) or ``"ciou"``
            (ultralytics), ``"giou"``, ``"diou"``; clamped at 0.
        inside_eps: the centre is inside when min(cx - x1, cy - y1, x2 - cx, y2 - cy) >
            inside_eps (0.01 in mmdetection's TaskAlignedAssigner); False when any of the
            six coordinates is NaN (the NaN-propagating min of the references, mmdetection
            and ultralytics).

    Returns:
        ``(metric, overlaps, inside)``, each (B, G, A): t (dtype of the scores), u, and the
        centre-inside test (bool). Rows of padding GTs are 0 / 0 / False.

    No gradient: the outputs are marked non-differentiable (TAL treats the metric as a
    constant). This is the dense form; the TAL assignment op uses the same device functions
    without materialising (B, G, A). Extra memory: the three outputs, 9 bytes per (b, g, a)
    in float32 (plus one device sync on CUDA to validate labels).
    """
    spec.check_alignment_metric_args("alignment_metric", pred_scores, pred_boxes, anchor_points,
                                     gt_labels, gt_boxes, gt_mask, alpha, beta, iou_mode,
                                     inside_eps, eps)
    _loader.check_inputs("alignment_metric", pred_scores=pred_scores, pred_boxes=pred_boxes,
                         anchor_points=anchor_points, gt_labels=gt_labels, gt_boxes=gt_boxes,
                         gt_mask=gt_mask)
    return torch.ops.tood_ext.alignment_metric(pred_scores, pred_boxes, anchor_points, gt_labels,
                                               gt_boxes, gt_mask, alpha, beta, iou_mode,
                                               inside_eps, eps)


# ---------------------------------------------------------------------------------------------
# fake (meta) kernels: shapes only, for torch.compile / torch.export
# ---------------------------------------------------------------------------------------------


def register_no_double_backward(name: str) -> None:
    """Autograd of the backward op ``tood_ext::name`` (box_iou's, iou_loss's, probiou's ...):
    a RuntimeError, double backward is not supported."""
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"tood_ext: double backward through {name} is not supported")

    torch.library.register_autograd("tood_ext::" + name, backward, setup_context=setup)


def _register():
    lib = "tood_ext::"

    @torch.library.register_fake(lib + "box_iou")
    def _box_iou_fake(boxes1, boxes2, mode="iou", aligned=False, eps=spec.EPS):
        spec.check_box_iou_args("box_iou", boxes1, boxes2, mode, aligned, eps)
        shape, _, _ = spec.box_iou_shape(boxes1, boxes2, aligned)
        return boxes1.new_empty(shape)

    @torch.library.register_fake(lib + "_box_iou_backward")
    def _box_iou_backward_fake(grad, boxes1, boxes2, mode, aligned, eps):
        spec.check_box_iou_args("_box_iou_backward", boxes1, boxes2, mode, aligned, eps)
        check_tensors("_box_iou_backward", grad=grad)
        spec.box_iou_grad_shape(grad, boxes1, boxes2, aligned)
        return torch.empty_like(boxes1, memory_format=torch.contiguous_format), \
            torch.empty_like(boxes2, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "iou_loss")
    def _iou_loss_fake(pred, target, weight=None, mode="giou", eps=spec.EPS):
        spec.check_iou_loss_args("iou_loss", pred, target, weight, mode, eps)
        return pred.new_empty(spec.iou_loss_shape(pred, target, weight))

    @torch.library.register_fake(lib + "_iou_loss_backward")
    def _iou_loss_backward_fake(grad, pred, target, weight, mode, eps):
        spec.check_iou_loss_args("_iou_loss_backward", pred, target, weight, mode, eps)
        check_tensors("_iou_loss_backward", grad=grad)
        spec.iou_loss_grad_shape(grad, pred, target, weight)
        return (torch.empty_like(pred, memory_format=torch.contiguous_format),
                torch.empty_like(target, memory_format=torch.contiguous_format),
                pred.new_empty(pred.shape[:-1]))

    @torch.library.register_fake(lib + "alignment_metric")
    def _alignment_metric_fake(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                               gt_mask, alpha=1.0, beta=6.0, iou_mode="iou", inside_eps=0.01,
                               eps=spec.EPS):
        spec.check_alignment_metric_args("alignment_metric", pred_scores, pred_boxes,
                                         anchor_points, gt_labels, gt_boxes, gt_mask, alpha,
                                         beta, iou_mode, inside_eps, eps)
        B, A, _, G = spec.alignment_metric_shape(pred_scores, pred_boxes, anchor_points,
                                                 gt_labels, gt_boxes, gt_mask)
        shape = (B, G, A)
        return (pred_scores.new_empty(shape), pred_scores.new_empty(shape),
                pred_scores.new_empty(shape, dtype=torch.bool))

    # ---- autograd ------------------------------------------------------------------------

    def _box_iou_setup(ctx, inputs, output):
        boxes1, boxes2, mode, aligned, eps = inputs
        ctx.save_for_backward(boxes1, boxes2)
        ctx.mode, ctx.aligned, ctx.eps = mode, aligned, eps

    def _box_iou_backward(ctx, grad):
        boxes1, boxes2 = ctx.saved_tensors
        g1, g2 = torch.ops.tood_ext._box_iou_backward(grad, boxes1, boxes2, ctx.mode,
                                                       ctx.aligned, ctx.eps)
        return (g1 if ctx.needs_input_grad[0] else None,
                g2 if ctx.needs_input_grad[1] else None, None, None, None)

    torch.library.register_autograd(lib + "box_iou", _box_iou_backward,
                                    setup_context=_box_iou_setup)

    def _iou_loss_setup(ctx, inputs, output):
        pred, target, weight, mode, eps = inputs
        ctx.save_for_backward(pred, target, weight)
        ctx.mode, ctx.eps = mode, eps

    def _iou_loss_backward(ctx, grad):
        pred, target, weight = ctx.saved_tensors
        gp, gt, gw = torch.ops.tood_ext._iou_loss_backward(grad, pred, target, weight, ctx.mode,
                                                           ctx.eps)
        return (gp if ctx.needs_input_grad[0] else None,
                gt if ctx.needs_input_grad[1] else None,
                gw if weight is not None and ctx.needs_input_grad[2] else None, None, None)

    torch.library.register_autograd(lib + "iou_loss", _iou_loss_backward,
                                    setup_context=_iou_loss_setup)

    register_no_double_backward("_box_iou_backward")
    register_no_double_backward("_iou_loss_backward")

    def _metric_setup(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    def _metric_backward(ctx, *grads):
        return (None,) * 11

    torch.library.register_autograd(lib + "alignment_metric", _metric_backward,
                                    setup_context=_metric_setup)


if _loader.has_ops():
    _register()
