"""ProbIoU of oriented boxes backed by the C++/CUDA kernels: ``probiou`` and its fused loss.

Boxes are ``(cx, cy, w, h, angle)`` (radians), ultralytics' ``xywhr``. The value is
ultralytics' ``probiou`` (``ultralytics/utils/metrics.py``, with ``_get_covariance_matrix``),
the Gaussian Bhattacharyya similarity of arXiv 2106.06072, in the same order of operations
(csrc/box_ops/probiou_utils.h, shared by the CPU and CUDA kernels; the pure-PyTorch reference
is :mod:`tood_ext.reference.probiou`):

* each box is the Gaussian of covariance ``R diag(w^2/12 + floor, h^2/12 + floor) R^T``;
* ``bd = clamp(t1 + t2 + t3, eps, 100)`` with the Mahalanobis terms ``t1 + t2`` over
  ``det(S1 + S2) + eps`` and ``t3 = log(det(S1 + S2) / (4 sqrt(max(det S1, 0) max(det S2, 0))
  + eps) + eps) / 2``; ``probiou = 1 - sqrt(1 - exp(-bd) + eps)``, in ``[~0, 1 - sqrt(eps)]``
  (identical boxes: ~0.99955 at eps = 1e-7; boxes far apart: bd clamped at 100, ~0);
* ``ciou=True``: minus ultralytics' aspect term ``alpha v``, ``v = 4/pi^2 (atan(w2/h2) -
  atan(w1/h1))^2``, ``alpha = v / (v - iou + 1 + eps)`` a constant of the gradient.

Gradients are those torch's autograd gives ultralytics' function (the clamps pass none at or
outside their bounds: a pair whose bd is clamped, e.g. boxes far apart, has zero gradient).
Degenerate boxes (w or h = 0 at ``floor = 0``) have a zero determinant, whose square root
has an infinite derivative: their gradients are non-finite there, as upstream's; ultralytics'
``RotatedBboxLoss`` passes ``floor=0.01`` for that reason. Non-finite inputs are computed
through like any other: a NaN, or an infinite angle, gives NaN.

Empty inputs (N, M or batch 0) give empty outputs. dtypes: float32/float64 on CPU, also
float16/bfloat16 on CUDA (computed in float32). Deterministic: every output and every gradient
sum is computed by one thread in a fixed order (no atomics). Fake kernels make the ops
traceable by ``torch.compile`` / ``torch.export``; double backward raises.
"""
from __future__ import annotations

import torch

from .. import _loader
from .._reduction import reduce_loss
from . import _probiou_spec as spec
from ._checks import check_tensors
from .box_ops import register_no_double_backward

__all__ = ["probiou", "probiou_loss"]


def probiou(b1: torch.Tensor, b2: torch.Tensor, aligned: bool = False, eps: float = 1e-7,
            floor: float = 0.0, ciou: bool = False) -> torch.Tensor:
    """ProbIoU of oriented boxes ``(cx, cy, w, h, angle)``, differentiable w.r.t. both sets.

    Pairwise (default): ``(..., N, 5) x (..., M, 5) -> (..., N, M)``; leading dims broadcast.
    ``aligned=True``: ``(..., N, 5) x (..., N, 5) -> (..., N)``, ultralytics'
    ``probiou(b1, b2, CIoU=ciou, eps=eps, floor=floor).squeeze(-1)``. See the module docstring.

    Extra memory: forward, the output; on CPU the pairwise form also takes 32 bytes (float32;
    64 in float64) per input box (each box's Gaussian, prepared once). Backward: the input
    gradients (and on CPU the same per-box buffers); the pairwise backward recomputes each
    pair instead of storing (N, M) partials. A scalar upstream gradient is read with stride 0.
    """
    spec.check_probiou_args("probiou", b1, b2, aligned, eps, floor, ciou)
    _loader.check_inputs("probiou", b1=b1, b2=b2)
    if not aligned and b1.dim() >= 2 and b2.dim() >= 2 and b1.shape[:-2] != b2.shape[:-2]:
        b1, b2 = spec.broadcast_obb_leading(b1, b2)
    return torch.ops.tood_ext.probiou(b1, b2, bool(aligned), float(eps), float(floor),
                                      bool(ciou))


def probiou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
                 eps: float = 1e-7, floor: float = 0.0, ciou: bool = False) -> torch.Tensor:
    """ProbIoU regression loss ``weight * (1 - probiou(pred, target))`` of aligned oriented
    boxes, the IoU term of ultralytics' ``RotatedBboxLoss``.

    ``pred``, ``target``: (..., 5) ``(cx, cy, w, h, angle)``; ``weight``: (...) or None
    (differentiable too). One fused kernel computes value, loss and weighting per pair
    (forward), one all three gradients (backward). ``reduction``: ``"none"`` | ``"sum"`` |
    ``"mean"`` (sum / ``avg_factor`` when given, else / numel; 0 for no elements), as
    :func:`tood_ext.iou_loss`. ultralytics' ``RotatedBboxLoss`` IoU term is
    ``probiou_loss(pred_bboxes[fg], target_bboxes[fg], target_scores[fg].sum(-1),
    avg_factor=target_scores_sum, floor=0.01)``.

    Extra memory: one value per box pair (the unreduced loss) in forward; the input gradients
    in backward. A scalar upstream gradient (``loss.sum()``) is read with stride 0.
    """
    spec.check_probiou_loss_args("probiou_loss", pred, target, weight, eps, floor, ciou,
                                 reduction, avg_factor)
    _loader.check_inputs("probiou_loss", pred=pred, target=target, weight=weight)
    loss = torch.ops.tood_ext.probiou_loss(pred, target, weight, float(eps), float(floor),
                                           bool(ciou))
    return reduce_loss(loss, reduction, avg_factor)


# ---------------------------------------------------------------------------------------------
# fake (meta) kernels and autograd
# ---------------------------------------------------------------------------------------------


def _register():
    lib = "tood_ext::"

    @torch.library.register_fake(lib + "probiou")
    def _probiou_fake(b1, b2, aligned=False, eps=spec.EPS, floor=spec.FLOOR, ciou=False):
        spec.check_probiou_args("probiou", b1, b2, aligned, eps, floor, ciou)
        shape, _, _ = spec.probiou_shape(b1, b2, aligned)
        return b1.new_empty(shape)

    @torch.library.register_fake(lib + "_probiou_backward")
    def _probiou_backward_fake(grad, b1, b2, aligned, eps, floor, ciou):
        spec.check_probiou_args("_probiou_backward", b1, b2, aligned, eps, floor, ciou)
        check_tensors("_probiou_backward", grad=grad)
        spec.probiou_grad_shape(grad, b1, b2, aligned)
        return (torch.empty_like(b1, memory_format=torch.contiguous_format),
                torch.empty_like(b2, memory_format=torch.contiguous_format))

    @torch.library.register_fake(lib + "probiou_loss")
    def _probiou_loss_fake(pred, target, weight=None, eps=spec.EPS, floor=spec.FLOOR,
                           ciou=False):
        spec.check_probiou_loss_args("probiou_loss", pred, target, weight, eps, floor, ciou)
        return pred.new_empty(spec.probiou_loss_shape(pred, target, weight))

    @torch.library.register_fake(lib + "_probiou_loss_backward")
    def _probiou_loss_backward_fake(grad, pred, target, weight, eps, floor, ciou):
        spec.check_probiou_loss_args("_probiou_loss_backward", pred, target, weight, eps, floor,
                                     ciou)
        check_tensors("_probiou_loss_backward", grad=grad)
        spec.probiou_loss_grad_shape(grad, pred, target, weight)
        return (torch.empty_like(pred, memory_format=torch.contiguous_format),
                torch.empty_like(target, memory_format=torch.contiguous_format),
                pred.new_empty(pred.shape[:-1]))

    def _probiou_setup(ctx, inputs, output):
        b1, b2, aligned, eps, floor, ciou = inputs
        ctx.save_for_backward(b1, b2)
        ctx.args = (aligned, eps, floor, ciou)

    def _probiou_backward(ctx, grad):
        b1, b2 = ctx.saved_tensors
        g1, g2 = torch.ops.tood_ext._probiou_backward(grad, b1, b2, *ctx.args)
        return (g1 if ctx.needs_input_grad[0] else None,
                g2 if ctx.needs_input_grad[1] else None, None, None, None, None)

    torch.library.register_autograd(lib + "probiou", _probiou_backward,
                                    setup_context=_probiou_setup)

    def _loss_setup(ctx, inputs, output):
        pred, target, weight, eps, floor, ciou = inputs
        ctx.save_for_backward(pred, target, weight)
        ctx.args = (eps, floor, ciou)

    def _loss_backward(ctx, grad):
        pred, target, weight = ctx.saved_tensors
        gp, gt, gw = torch.ops.tood_ext._probiou_loss_backward(grad, pred, target, weight,
                                                               *ctx.args)
        return (gp if ctx.needs_input_grad[0] else None,
                gt if ctx.needs_input_grad[1] else None,
                gw if weight is not None and ctx.needs_input_grad[2] else None, None, None, None)

    torch.library.register_autograd(lib + "probiou_loss", _loss_backward,
                                    setup_context=_loss_setup)

    register_no_double_backward("_probiou_backward")
    register_no_double_backward("_probiou_loss_backward")


if _loader.has_ops():
    _register()
