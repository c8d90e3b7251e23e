"""Fused losses backed by the C++/CUDA kernels (csrc/losses): the classification loss of a
task-aligned assignment's sparse output, without a dense (..., C) target.

Semantics shared by the kernels (csrc/losses/sparse_cls_loss_utils.h) and the pure-PyTorch
reference (:mod:`tood_ext.reference.losses`), for ``pred`` (..., C), ``labels`` (...) and
``scores`` (...): the target of element (..., c) is ``t = scores[...]`` where
``c == labels[...]`` and 0 elsewhere (``labels == -1``: background, an all-zero target; the
background anchors' scores are never read). With ``s = sigmoid(x)`` and
``bce(x, t) = (1 - t) x - min(x, 0) + log(1 + exp(-|x|))`` (PyTorch's
``binary_cross_entropy_with_logits``):

* ``kind="bce"``: ``bce(x, t)`` (ultralytics' ``v8DetectionLoss`` on its dense
  ``target_scores``). Any real score is accepted.
* ``kind="qfl"``: ``|t - s|^gamma * bce(x, t)`` (mmdetection's ``QualityFocalLoss``,
  ``use_sigmoid=True``, ``beta=gamma``). ``activated=True``: pred holds probabilities p
  (TOOD's P_align), ``|t - p|^gamma * bce_p(p, t)`` with PyTorch's ``binary_cross_entropy``
  (logs clamped at -100; its gradient ``(p - t) / max(p (1 - p), 1e-12 as a float32)``); a p outside
  [0, 1] gives NaN in its element. Scores must lie in [0, 1].
* ``kind="vfl"``: ``w * bce(x, t)`` with ``w = t`` where ``t > 0``, else
  ``alpha * |s - t|^gamma`` (mmdetection's ``VarifocalLoss``, ``iou_weighted=True``; the
  PP-YOLOE / RT-DETR form). Scores must lie in [0, 1].
* ``kind="focal"``: ``(alpha t + (1 - alpha)(1 - t)) * pt^gamma * bce(x, t)`` with
  ``pt = (1 - s) t + s (1 - t)`` (mmdetection's ``FocalLoss(use_sigmoid=True)``,
  ``py_sigmoid_focal_loss``; with scores 1 its hard one-hot target, with scores in [0, 1] the
  same formula on a soft target). ``activated=True``: pred holds probabilities p,
  ``pt = (1 - p) t + p (1 - t)`` and ``bce_p`` as for qfl (mmdetection's
  ``FocalLoss(activated=True)``, TOOD's loss of its ATSS epochs). ``1 - s`` is computed as
  ``sigmoid(-x)`` (no cancellation at large logits). Scores must lie in [0, 1], alpha in [0, 1].

``alpha=None`` (the default) takes the kind's own default: 0.25 for ``focal`` (mmdetection's
``FocalLoss``), 0.75 for ``vfl`` (``VarifocalLoss``, PP-YOLOE); bce and qfl ignore alpha. An
explicit alpha is used as given. (The registered op ``torch.ops.tood_ext.sparse_target_cls_loss``
takes ``alpha: float? = None`` with the same rule.)

The focal factors are differentiated (as mmdetection's autograd does). ``class_weight`` (C,)
multiplies each class's terms (ultralytics' ``class_weights``); ``weight`` (...) multiplies
each anchor's whole row of terms (mmdetection's ``label_weights``; any real value, 0 ignores
the anchor's finite terms; None: no extra work), and the gradient's row alike. The op returns
the sum over all elements, in pred's dtype (float32 for float16/bfloat16 inputs, which are
computed in float32: CUDA only); ``reduction="mean"`` divides it by ``avg_factor`` when given,
else by ``pred.numel()`` (1 at least). (mmdetection's ``weight_reduce_loss`` divides by
``avg_factor + eps``, eps = float32's: a drop-in passes that sum as avg_factor.) A NaN in
pred makes the loss NaN and only its own element's gradient NaN (a NaN weight: its row's).
Empty inputs give 0 and an empty gradient. ``labels``, ``scores``, ``class_weight`` and
``weight`` are constants: no gradient flows to them (as mmdetection's label weights, which
never require one).

Layouts: ``pred`` row-major (its classes contiguous; any other layout is copied to it first),
or class-major, read in place: a (..., A, C) view of a contiguous (..., C, A) tensor (a detection
head's (B, C, A) output ``.permute(0, 2, 1)``), whose gradient is then written in the same
layout (no copy of either). The same gradient bits in both; the loss summed in another order
(csrc/cpu/losses_cpu.cpp documents both orders): equal to float rounding.

Deterministic: the forward sums fixed chunks of rows into a buffer of partial sums added in a
fixed order (CPU: chunks independent of the thread count; CUDA: per-block slots, no atomics).
The backward computes each element's gradient in one pass and writes only ``grad_pred``. The
CPU loops run 8-wide on AVX2 CPUs (a clone picked at run time; ``TOOD_EXT_CPU_ISA=generic``:
the baseline), with the same bits as the baseline.
Extra memory: O(rows) (the int64 copy of non-int64 labels, the label checks, the partial sums,
a contiguous copy of a strided ``weight``) in forward; the gradient in backward. Validating
labels and scores reads them (one device sync on CUDA).
"""
from __future__ import annotations

import torch

from .. import _loader
from ._losses_spec import (CLS_LOSS_KINDS, check_cls_loss_args, check_cls_loss_tensors,
                           check_dfl_args, check_dfl_tensors, loss_dtype, reduce_sum,
                           resolve_alpha)

__all__ = ["CLS_LOSS_KINDS", "dfl_loss", "sparse_target_cls_loss"]


def sparse_target_cls_loss(pred: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                           kind: str = "bce", *, gamma: float = 2.0, alpha: float | None = None,
                           activated: bool = False, class_weight: torch.Tensor | None = None,
                           weight: torch.Tensor | None = None, reduction: str = "sum",
                           avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Classification loss of a sparse (label, score) target per anchor, fused fwd + bwd.

    Args:
        pred: (..., C) logits (probabilities for ``kind="qfl", activated=True``).
        labels: (...) integer class of each anchor in [-1, C); -1 is background.
        scores: (...) target score of each anchor's label (TAL's ``soft_target``), pred's dtype.
        kind: ``"bce"`` | ``"qfl"`` | ``"vfl"`` | ``"focal"`` (module docstring).
        gamma: focusing exponent (qfl, vfl, focal).
        alpha: the VFL negatives' factor / the focal loss's positive share; None: the kind's
            default (0.75 for vfl, 0.25 for focal).
        activated: pred holds probabilities (qfl and focal only).
        class_weight: (C,) per-class weight, or None.
        weight: (...) per-anchor weight (pred.shape[:-1], pred's dtype and device), or None.
        reduction: ``"sum"`` | ``"mean"`` (sum / avg_factor, else sum / pred.numel()).

    Returns the 0-d loss. Nothing of size (..., C) is allocated besides the gradient.
    """
    check_cls_loss_args(pred, labels, scores, kind, gamma, alpha, activated, class_weight,
                        reduction, avg_factor, weight)
    _loader.check_inputs("sparse_target_cls_loss", pred=pred, labels=labels, scores=scores,
                         class_weight=class_weight, weight=weight)
    total = torch.ops.tood_ext.sparse_target_cls_loss(
        pred, labels, scores, kind, float(gamma), float(resolve_alpha(kind, alpha)), activated,
        class_weight, weight)
    return reduce_sum(total, pred.numel(), reduction, avg_factor)


def dfl_loss(pred_dist: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             *, reduction: str = "sum",
             avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Distribution focal loss (ultralytics' ``DFLoss``, GFL's DFL), fused fwd + bwd.

    Args:
        pred_dist: (..., reg_max) logits over the distance bins 0 .. reg_max - 1.
        target: (...) distances (in bins), clamped to [0, reg_max - 1 - 0.01] as ultralytics
            does (never modified in place).
        weight: (...) per-row weight, or None.
        reduction: ``"sum"`` | ``"mean"`` (sum / avg_factor, else / the number of rows).

    Per row: ``l = floor(y)``, ``w_l = l + 1 - y``, ``w_r = 1 - w_l``;
    ``L = -(w_l log_softmax(x)_l + w_r log_softmax(x)_{l+1})``, times the weight; the op
    returns the sum over rows (0-d; float32 for float16/bfloat16 inputs, CUDA only). A NaN in a
    row (logit or target) makes the loss NaN and only that row's gradient NaN. No gradient
    flows to target or weight. ultralytics' per-anchor DFL (the mean over the 4 sides, times
    the anchor's weight) is ``dfl_loss(pred_dist.view(n, 4, reg_max), target (n, 4),
    (weight / 4)[:, None].expand(n, 4))``.

    Deterministic (fixed-order partial sums, as :func:`sparse_target_cls_loss`). Extra memory:
    O(rows) forward; the gradient backward (no (..., reg_max) log-softmax is kept).
    """
    check_dfl_args(pred_dist, target, weight, reduction, avg_factor)
    _loader.check_inputs("dfl_loss", pred_dist=pred_dist, target=target, weight=weight)
    total = torch.ops.tood_ext.dfl_loss(pred_dist, target, weight)
    rows = pred_dist.numel() // pred_dist.shape[-1] if pred_dist.dim() and pred_dist.shape[-1] \
        else 0
    return reduce_sum(total, rows, reduction, avg_factor)


# ---------------------------------------------------------------------------------------------
# fake (meta) kernels and autograd
# ---------------------------------------------------------------------------------------------


def _class_major(pred: torch.Tensor) -> bool:
    """Whether the kernels read pred in place as class-major: a (..., A, C) view of a
    contiguous (..., C, A) tensor (csrc/losses/losses.h, SparseClsLossPlan)."""
    return pred.dim() >= 2 and not pred.is_contiguous() and \
        pred.transpose(-1, -2).is_contiguous()


def _grad_pred_like(pred: torch.Tensor) -> torch.Tensor:
    """An empty gradient in the layout the kernels write: pred's if class-major, else
    contiguous."""
    if _class_major(pred):
        return torch.empty_like(pred.transpose(-1, -2),
                                memory_format=torch.contiguous_format).transpose(-1, -2)
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _register():
    lib = "tood_ext::"

    @torch.library.register_fake(lib + "sparse_target_cls_loss")
    def _fake(pred, labels, scores, kind="bce", gamma=2.0, alpha=None, activated=False,
              class_weight=None, weight=None):
        check_cls_loss_tensors(pred, labels, scores, kind, class_weight, values=False,
                               weight=weight)
        return pred.new_empty((), dtype=loss_dtype(pred.dtype))

    @torch.library.register_fake(lib + "_sparse_target_cls_loss_backward")
    def _backward_fake(grad, pred, labels, scores, kind, gamma, alpha, activated, class_weight,
                       weight):
        check_cls_loss_tensors(pred, labels, scores, kind, class_weight, values=False,
                               weight=weight)
        torch._check(grad.dim() == 0, lambda: "grad (of the 0-d loss) must be 0-d")
        if grad.device != pred.device:
            raise RuntimeError(f"grad is on {grad.device} but pred is on {pred.device}; all "
                               "inputs must be on the same device")
        return _grad_pred_like(pred)

    def _setup(ctx, inputs, output):
        pred, labels, scores, kind, gamma, alpha, activated, class_weight, weight = inputs
        ctx.save_for_backward(pred, labels, scores, class_weight, weight)
        ctx.args = (kind, gamma, alpha, activated)

    def _backward(ctx, grad):
        pred, labels, scores, class_weight, weight = ctx.saved_tensors
        grad_pred = None
        if ctx.needs_input_grad[0]:
            grad_pred = torch.ops.tood_ext._sparse_target_cls_loss_backward(
                grad, pred, labels, scores, *ctx.args, class_weight, weight)
        return grad_pred, None, None, None, None, None, None, None, None

    torch.library.register_autograd(lib + "sparse_target_cls_loss", _backward,
                                    setup_context=_setup)

    def _no_double_setup(ctx, inputs, output):
        pass

    def _no_double(ctx, grad):
        raise RuntimeError("tood_ext: double backward through sparse_target_cls_loss is not "
                           "supported")

    torch.library.register_autograd(lib + "_sparse_target_cls_loss_backward", _no_double,
                                    setup_context=_no_double_setup)

    # ---- dfl_loss ----

    @torch.library.register_fake(lib + "dfl_loss")
    def _dfl_fake(pred_dist, target, weight=None):
        check_dfl_tensors(pred_dist, target, weight)
        return pred_dist.new_empty((), dtype=loss_dtype(pred_dist.dtype))

    @torch.library.register_fake(lib + "_dfl_loss_backward")
    def _dfl_backward_fake(grad, pred_dist, target, weight):
        check_dfl_tensors(pred_dist, target, weight)
        torch._check(grad.dim() == 0, lambda: "grad (of the 0-d loss) must be 0-d")
        if grad.device != pred_dist.device:
            raise RuntimeError(f"grad is on {grad.device} but pred_dist is on "
                               f"{pred_dist.device}; all inputs must be on the same device")
        return torch.empty_like(pred_dist, memory_format=torch.contiguous_format)

    def _dfl_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _dfl_backward(ctx, grad):
        pred_dist, target, weight = ctx.saved_tensors
        grad_pred = None
        if ctx.needs_input_grad[0]:
            grad_pred = torch.ops.tood_ext._dfl_loss_backward(grad, pred_dist, target, weight)
        return grad_pred, None, None

    torch.library.register_autograd(lib + "dfl_loss", _dfl_backward, setup_context=_dfl_setup)

    def _dfl_no_double(ctx, grad):
        raise RuntimeError("tood_ext: double backward through dfl_loss is not supported")

    torch.library.register_autograd(lib + "_dfl_loss_backward", _dfl_no_double,
                                    setup_context=_no_double_setup)


if _loader.has_ops():
    _register()
