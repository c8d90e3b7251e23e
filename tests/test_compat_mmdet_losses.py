"""tood_ext.compat.mmdet's QualityFocalLoss, VarifocalLoss and FocalLoss against mmdetection
3.x's own formulas, transcribed here from its source semantics (mmdet is not installed):
``quality_focal_loss`` / ``quality_focal_loss_with_prob`` / ``quality_focal_loss_tensor_target``,
``varifocal_loss``, ``py_sigmoid_focal_loss`` / ``py_focal_loss_with_prob`` and
``weight_reduce_loss``. Values and gradients on random inputs, with per-anchor and per-element
weights, avg_factor, every reduction and reduction_override, loss_weight, background label C or
-1, empty inputs; which inputs take the fused op; the memory saved; bad arguments."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tood_ext.compat import mmdet_losses
from tood_ext.compat.mmdet import FocalLoss, QualityFocalLoss, VarifocalLoss
from tood_ext.testing.memory import peak_extra_memory

F64 = torch.float64
EPS = torch.finfo(torch.float32).eps


# ---- mmdetection 3.x, transcribed ---------------------------------------------------------------


def mm_weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + EPS)
    if reduction != "none":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def mm_quality_focal_loss(pred, target, beta, activated):
    """quality_focal_loss (logits) / quality_focal_loss_with_prob: (N,) per anchor."""
    label, score = target
    prob = pred if activated else pred.sigmoid()
    bce = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    loss = bce(pred, prob.new_zeros(pred.shape), reduction="none") * prob.pow(beta)
    bg = pred.size(1)
    pos = ((label >= 0) & (label < bg)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    factor = score[pos] - prob[pos, pos_label]
    loss[pos, pos_label] = bce(pred[pos, pos_label], score[pos], reduction="none") \
        * factor.abs().pow(beta)
    return loss.sum(dim=1)


def mm_quality_focal_loss_tensor_target(pred, target, beta, activated):
    prob = pred if activated else pred.sigmoid()
    bce = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    target = target.type_as(pred)
    loss = bce(pred, prob.new_zeros(pred.shape), reduction="none") * prob.pow(beta)
    pos = target != 0
    factor = target[pos] - prob[pos]
    loss[pos] = bce(pred[pos], target[pos], reduction="none") * factor.abs().pow(beta)
    return loss.sum(dim=1)


def mm_qfl_module(pred, target, weight, avg_factor, reduction, beta, activated, loss_weight):
    f = mm_quality_focal_loss_tensor_target if isinstance(target, torch.Tensor) \
        else mm_quality_focal_loss
    return loss_weight * mm_weight_reduce_loss(f(pred, target, beta, activated), weight,
                                               reduction, avg_factor)


def mm_varifocal_loss(pred, target, weight, alpha, gamma, iou_weighted, reduction, avg_factor):
    assert pred.size() == target.size()
    s = pred.sigmoid()
    target = target.type_as(pred)
    pos_w = target if iou_weighted else torch.ones_like(target)
    focal_weight = pos_w * (target > 0.0).float() + \
        alpha * (s - target).abs().pow(gamma) * (target <= 0.0).float()
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return mm_weight_reduce_loss(loss, weight, reduction, avg_factor)


def mm_focal_weight(weight, loss):
    if weight is not None and weight.shape != loss.shape:
        if weight.size(0) == loss.size(0):
            weight = weight.view(-1, 1)
        else:
            assert weight.numel() == loss.numel()
            weight = weight.view(loss.size(0), -1)
    return weight


def mm_focal_module(pred, target, weight, avg_factor, reduction, gamma, alpha, activated,
                    loss_weight):
    """FocalLoss.forward: py_focal_loss_with_prob (activated) or py_sigmoid_focal_loss on the
    one-hot of labels (one_hot with C + 1 classes, the last dropped)."""
    C = pred.size(1)
    if pred.dim() != target.dim():
        target = F.one_hot(target, num_classes=C + 1)[:, :C]
    target = target.type_as(pred)
    prob = pred if activated else pred.sigmoid()
    pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    bce = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    loss = bce(pred, target, reduction="none") * focal_weight
    return loss_weight * mm_weight_reduce_loss(loss, mm_focal_weight(weight, loss), reduction,
                                               avg_factor)


# ---- inputs -------------------------------------------------------------------------------------


def draw(gen, N, C, activated, fg=0.4, bg="C"):
    x = torch.randn(N, C, generator=gen, dtype=F64) * 3
    if activated:
        x = x.sigmoid()
    labels = torch.randint(0, C, (N,), generator=gen)
    background = torch.rand(N, generator=gen) >= fg
    labels[background] = C if bg == "C" else -1
    scores = torch.rand(N, generator=gen, dtype=F64)
    return x, labels, scores


def value_and_grad(f, x):
    x = x.detach().clone().requires_grad_()
    out = f(x)
    (g,) = torch.autograd.grad(out.sum(), x)  # "none": the gradient of the sum
    return out.detach(), g


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


REDUCTION_CASES = [("mean", None, None), ("sum", None, None), ("none", None, None),
                   ("mean", 3.7, None), ("mean", "tensor", None), ("none", 2.0, None),
                   ("sum", None, "mean"), ("mean", None, "sum"), ("mean", 5.0, "none")]
REDUCTION_IDS = ["mean", "sum", "none", "mean-avg", "mean-avg-tensor", "none-avg",
                 "override-mean", "override-sum", "override-none-avg"]


def _avg(avg):
    return torch.tensor(7.25, dtype=F64) if avg == "tensor" else avg


def _weight(gen, kind, N, C):
    if kind is None:
        return None
    shape = {"anchor": (N,), "anchor-col": (N, 1), "element": (N, C), "flat": (N * C,)}[kind]
    return torch.rand(shape, generator=gen, dtype=F64) * 2


# ---- QualityFocalLoss ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction,avg,override", REDUCTION_CASES, ids=REDUCTION_IDS)
@pytest.mark.parametrize("weight", [None, "anchor"])
@pytest.mark.parametrize("activated", [False, True])
def test_qfl_matches_mmdetection(gen, reduction, avg, override, weight, activated):
    N, C = 300, 7
    x, labels, scores = draw(gen, N, C, activated, bg="C" if weight else "-1")
    beta, loss_weight = 1.5, 0.5
    w = _weight(gen, weight, N, C)
    mod = QualityFocalLoss(beta=beta, reduction=reduction, loss_weight=loss_weight,
                           activated=activated)
    got = value_and_grad(lambda p: mod(p, (labels, scores), w, _avg(avg), override), x)
    mm_labels = torch.where(labels < 0, torch.full_like(labels, C), labels)
    want = value_and_grad(lambda p: mm_qfl_module(p, (mm_labels, scores), w, _avg(avg),
                                                  override or reduction, beta, activated,
                                                  loss_weight), x)
    assert_same(got, want)


@pytest.mark.parametrize("activated", [False, True])
def test_qfl_dense_target(gen, activated):
    """mmdet's one-hot-with-soft-weights tensor target: the dense formula."""
    N, C = 120, 5
    x, labels, scores = draw(gen, N, C, activated)
    target = torch.zeros(N, C, dtype=F64)
    fg = labels < C
    target[fg, labels[fg]] = scores[fg]
    target[0, :] = 0.3  # several non-zeros in a row: beyond the sparse form
    mod = QualityFocalLoss(activated=activated)
    got = value_and_grad(lambda p: mod(p, target, avg_factor=4.0), x)
    want = value_and_grad(lambda p: mm_qfl_module(p, target, None, 4.0, "mean", 2.0, activated,
                                                  1.0), x)
    assert_same(got, want)


# ---- VarifocalLoss ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction,avg,override", REDUCTION_CASES, ids=REDUCTION_IDS)
@pytest.mark.parametrize("weight", [None, "anchor", "element"])
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_vfl_matches_mmdetection(gen, reduction, avg, override, weight, iou_weighted):
    N, C = 250, 6
    x, labels, scores = draw(gen, N, C, False)
    scores[:4] = 0.0  # foreground anchors of score 0: negatives of mmdet's dense target
    labels[:4] = 2
    w = _weight(gen, weight, N, C)
    alpha, gamma, loss_weight = 0.6, 1.5, 2.0
    mod = VarifocalLoss(alpha=alpha, gamma=gamma, iou_weighted=iou_weighted,
                        reduction=reduction, loss_weight=loss_weight)
    dense = torch.zeros(N, C, dtype=F64)
    fg = labels < C
    dense[fg, labels[fg]] = scores[fg]
    mm_w = w.view(N, 1) if weight == "anchor" else w  # mmdet's weight broadcasts on (N, C)
    want = value_and_grad(lambda p: loss_weight * mm_varifocal_loss(
        p, dense, mm_w, alpha, gamma, iou_weighted, override or reduction, _avg(avg)), x)
    for target in ((labels, scores), dense):  # TAL's sparse pair, mmdet's own dense target
        got = value_and_grad(lambda p: mod(p, target, w, _avg(avg), override), x)
        assert_same(got, want)


# ---- FocalLoss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction,avg,override", REDUCTION_CASES, ids=REDUCTION_IDS)
@pytest.mark.parametrize("weight", [None, "anchor", "element", "flat"])
@pytest.mark.parametrize("activated", [False, True])
def test_focal_matches_mmdetection(gen, reduction, avg, override, weight, activated):
    N, C = 260, 6
    x, labels, _ = draw(gen, N, C, activated)
    w = _weight(gen, weight, N, C)
    gamma, alpha, loss_weight = 2.0, 0.3, 1.5
    mod = FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction, loss_weight=loss_weight,
                    activated=activated)
    want = value_and_grad(lambda p: mm_focal_module(p, labels, w, _avg(avg),
                                                    override or reduction, gamma, alpha,
                                                    activated, loss_weight), x)
    onehot = F.one_hot(labels, C + 1)[:, :C]
    minus_one = torch.where(labels == C, torch.full_like(labels, -1), labels)
    for target in (labels, minus_one, onehot):
        got = value_and_grad(lambda p: mod(p, target, w, _avg(avg), override), x)
        assert_same(got, want)


# ---- which path, memory, empty inputs, float32 ---------------------------------------------------


def _no_dense(monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("the dense formula ran")
    for cls in (QualityFocalLoss, VarifocalLoss, FocalLoss):
        monkeypatch.setattr(cls, "_dense", refuse)


def test_sparse_targets_take_the_fused_op(gen, monkeypatch):
    N, C = 50, 4
    x, labels, scores = draw(gen, N, C, False)
    w = torch.rand(N, generator=gen, dtype=F64)
    _no_dense(monkeypatch)
    for mod, target in ((QualityFocalLoss(), (labels, scores)),
                        (QualityFocalLoss(activated=True, loss_weight=2.0),
                         (labels, scores)),
                        (VarifocalLoss(), (labels, scores)), (FocalLoss(), labels),
                        (FocalLoss(activated=True), labels)):
        p = x.sigmoid() if getattr(mod, "activated", False) else x
        for weight in (None, w, w[:, None]):
            assert torch.isfinite(mod(p, target, weight, avg_factor=3.0))
    with pytest.raises(AssertionError, match="dense formula"):
        VarifocalLoss(iou_weighted=False)(x, (labels, scores))
    with pytest.raises(AssertionError, match="dense formula"):
        QualityFocalLoss()(x, (labels, scores), reduction_override="none")


def test_memory_is_the_gradient_plus_o_of_anchors(gen):
    N, C = 8000, 80
    x, labels, scores = draw(gen, N, C, False)
    x = x.float().requires_grad_()
    scores = scores.float()
    mod = QualityFocalLoss()

    def fused():
        return torch.autograd.grad(mod(x, (labels, scores), avg_factor=10.0), x)

    def dense():
        return torch.autograd.grad(
            mm_qfl_module(x, (labels, scores), None, 10.0, "mean", 2.0, False, 1.0), x)

    grad_bytes = x.numel() * 4
    peak = peak_extra_memory(fused, "cpu")
    assert grad_bytes <= peak <= grad_bytes + N * 8 * 4 + 64 * 1024, peak
    assert peak_extra_memory(dense, "cpu") > 3 * peak


@pytest.mark.parametrize("cls", [QualityFocalLoss, VarifocalLoss, FocalLoss])
def test_empty_input(cls):
    """0 for "sum"; mmdet's "mean" over nothing is NaN, and so is ours (0 / 0)."""
    x = torch.zeros(0, 5, dtype=F64, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    target = labels if cls is FocalLoss else (labels, torch.zeros(0, dtype=F64))
    mod = cls()
    total = mod(x, target, reduction_override="sum")
    assert float(total.detach()) == 0.0
    (g,) = torch.autograd.grad(total, x)
    assert g.shape == x.shape
    assert torch.isnan(mod(x, target))
    assert float(mod(x, target, avg_factor=1.0).detach()) == 0.0


def test_float32_matches_float64(gen):
    N, C = 400, 9
    x, labels, scores = draw(gen, N, C, False)
    for mod, target in ((QualityFocalLoss(), (labels, scores)),
                        (VarifocalLoss(), (labels, scores)), (FocalLoss(), labels)):
        want = value_and_grad(lambda p: mod(p, target, avg_factor=5.0), x)
        t32 = target if isinstance(target, torch.Tensor) else (labels, scores.float())
        got = value_and_grad(lambda p: mod(p, t32, avg_factor=5.0), x.float())
        torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got[1].double(), want[1], rtol=1e-4, atol=1e-7)


# ---- bad arguments ------------------------------------------------------------------------------


def test_bad_arguments(gen):
    N, C = 10, 4
    x, labels, scores = draw(gen, N, C, False)
    qfl, vfl, focal = QualityFocalLoss(), VarifocalLoss(), FocalLoss()
    over = labels.clone()
    over[3] = C + 1
    cases = [
        (lambda: QualityFocalLoss(use_sigmoid=False), ValueError, "use_sigmoid"),
        (lambda: VarifocalLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: FocalLoss(alpha=-0.1), ValueError, "alpha"),
        (lambda: QualityFocalLoss(beta="2"), TypeError, "beta"),
        (lambda: FocalLoss(activated=1), TypeError, "activated"),
        (lambda: qfl(x, (labels, scores), reduction_override="elementwise"), ValueError,
         "reduction_override"),
        (lambda: qfl(x, (labels, scores), avg_factor=2.0, reduction_override="sum"),
         ValueError, "avg_factor"),
        (lambda: qfl(x, (labels, scores), avg_factor="2"), TypeError, "avg_factor"),
        (lambda: qfl(x, (over, scores)), IndexError, "labels"),
        (lambda: focal(x, over), IndexError, "target"),
        (lambda: qfl(x, (labels.float(), scores)), RuntimeError, "labels"),
        (lambda: qfl(x, (labels[:5], scores)), RuntimeError, "labels"),
        (lambda: qfl(x, (labels, scores[:5])), RuntimeError, "scores"),
        (lambda: qfl(x, (labels, scores, scores)), TypeError, "target"),
        (lambda: qfl(x, (labels, scores), torch.ones(N, C)), RuntimeError, "weight"),
        (lambda: vfl(x, (labels, scores), torch.ones(3, C)), RuntimeError, "weight"),
        (lambda: vfl(x, torch.zeros(N, C + 1)), RuntimeError, "target"),
        (lambda: focal(x[None], labels), RuntimeError, "pred"),
        (lambda: focal([[1.0]], labels), TypeError, "pred"),
        (lambda: vfl(x, (labels, scores + 1.0)), ValueError, "scores"),
    ]
    for i, (call, exc, text) in enumerate(cases):
        with pytest.raises(exc, match=text):
            call()
