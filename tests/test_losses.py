"""tood_ext.sparse_target_cls_loss (csrc/losses): against its pure-PyTorch reference and against
each peer's own formula on the dense target (ultralytics' v8DetectionLoss BCE with
class_weights; mmdetection's quality_focal_loss / varifocal_loss / py_sigmoid_focal_loss /
py_focal_loss_with_prob with label weights, transcribed here from their semantics), values and
gradients, random and edge inputs, the per-anchor weight, opcheck, gradcheck, thread-count
determinism, the bad-input table and the memory bound."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tood_ext
from tood_ext import reference as ref
from tood_ext.testing.memory import peak_extra_memory
from tood_ext.reference.losses import dense_cls_target

from conftest import DEVICES, assert_close, dtypes_for
from loss_cases import KIND_IDS, KINDS, bad_cases, draw, loss_grad_per_thread_count

F64 = torch.float64


def value_and_grad(f, x):
    """(f(x), d f / d x) for a scalar function of the logits / probabilities x."""
    x = x.detach().clone().requires_grad_()
    loss = f(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def loss_and_grad(fn, x, lab, sc, kind, **kw):
    return value_and_grad(lambda t: fn(t, lab, sc, kind, **kw), x)


def assert_same_value_and_grad(got, want):
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


# ---- peers, on the dense target -----------------------------------------------------------------


def ultralytics_bce(pred, labels, scores, class_weights=None):
    """v8DetectionLoss's classification term: BCEWithLogits(reduction="none") on target_scores
    (one-hot label x normalised alignment metric, zero on background), times class_weights
    viewed (1, 1, C), summed, divided by max(target_scores.sum(), 1)."""
    fg = labels >= 0
    target_labels = labels.clamp(min=0)
    target_scores = torch.zeros(*labels.shape, pred.shape[-1], dtype=torch.int8,
                                device=pred.device)
    target_scores.scatter_(-1, target_labels.unsqueeze(-1), 1)
    target_scores = target_scores * fg[..., None] * scores[..., None]
    target_scores_sum = target_scores.sum().clamp(min=1)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")(pred, target_scores.to(pred.dtype))
    if class_weights is not None:
        bce = bce * class_weights.view(1, 1, -1)
    return bce.sum() / target_scores_sum, target_scores_sum


def mmdet_qfl(pred, labels, scores, beta=2.0, activated=False):
    """mmdetection's quality_focal_loss (use_sigmoid) / quality_focal_loss_with_prob on
    pred (N, C), target (label (N,), score (N,)) with background label C; summed."""
    C = pred.shape[1]
    label = torch.where(labels >= 0, labels, torch.full_like(labels, C))
    prob = pred if activated else pred.sigmoid()
    zero = prob.new_zeros(pred.shape)
    if activated:
        loss = F.binary_cross_entropy(pred, zero, reduction="none") * prob.pow(beta)
    else:
        loss = F.binary_cross_entropy_with_logits(pred, zero, reduction="none") * prob.pow(beta)
    pos = ((label >= 0) & (label < C)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    factor = scores[pos] - prob[pos, pos_label]
    if activated:
        pos_loss = F.binary_cross_entropy(pred[pos, pos_label], scores[pos], reduction="none")
    else:
        pos_loss = F.binary_cross_entropy_with_logits(pred[pos, pos_label], scores[pos],
                                                      reduction="none")
    loss[pos, pos_label] = pos_loss * factor.abs().pow(beta)
    return loss.sum(dim=1).sum()


def mmdet_focal(pred, target, weight=None, gamma=2.0, alpha=0.25, activated=False,
                avg_factor=None):
    """mmdetection's py_sigmoid_focal_loss (logits) / py_focal_loss_with_prob (probabilities)
    on pred (N, C) and target: (N,) labels with background C (one-hot, the background column
    dropped) or a dense (N, C) float target; weight (N,) (label_weights, viewed (N, 1)); then
    the sum, / avg_factor when given (weight_reduce_loss divides by avg_factor + float32 eps:
    the op divides by the avg_factor it is given)."""
    if target.dim() != pred.dim():
        target = F.one_hot(target, num_classes=pred.size(1) + 1)[:, :pred.size(1)]
    target = target.type_as(pred)
    p = pred if activated else pred.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    if activated:
        loss = F.binary_cross_entropy(pred, target, reduction="none") * focal_weight
    else:
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    if weight is not None:
        loss = loss * weight.view(-1, 1)
    return loss.sum() / avg_factor if avg_factor is not None else loss.sum()


def mmdet_vfl(pred, target, alpha=0.75, gamma=2.0):
    """mmdetection's varifocal_loss (iou_weighted=True) on the dense target; summed."""
    pred_sigmoid = pred.sigmoid()
    focal_weight = target * (target > 0.0).float() + \
        alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).float()
    return (F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            * focal_weight).sum()


# ---- against the reference ----------------------------------------------------------------------


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("shape", [(3, 50), (70,), (2, 3, 7)])
@pytest.mark.parametrize("weighted", ["none", "class", "anchor", "both"])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(gen, kind, activated, shape, weighted, device):
    for dtype in dtypes_for(device):
        C = int(torch.randint(1, 40, (1,), generator=gen))
        x, lab, sc = draw(gen, shape, C, dtype, device, activated=activated)
        cast = dict(dtype=dtype, device=device)
        cw = (torch.rand(C, generator=gen, dtype=F64) * 2).to(**cast) \
            if weighted in ("class", "both") else None
        w = (torch.rand(shape, generator=gen, dtype=F64) * 2).to(**cast) \
            if weighted in ("anchor", "both") else None
        if w is not None and w.numel() > 3:
            w.view(-1)[:3] = 0.0  # ignored anchors (mmdetection's label_weights = 0)
        kw = dict(activated=activated, class_weight=cw, weight=w,
                  gamma=1.5 if kind in ("vfl", "focal") else 2.0)
        got, g = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, kind, **kw)
        as64 = (lambda t: t.double() if t is not None else None)
        want, gw = loss_and_grad(ref.sparse_target_cls_loss, x.double(), lab, sc.double(), kind,
                                 **{**kw, "class_weight": as64(cw), "weight": as64(w)})
        assert got.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
        assert g.dtype == dtype and g.shape == x.shape
        rtol = 1e-10 if dtype == F64 else 1e-4
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * want.numel())
        assert_close(g, gw, msg=f"{kind} {dtype}")


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
def test_reductions(gen, kind, activated):
    x, lab, sc = draw(gen, (4, 30), 9, F64, activated=activated)
    total = tood_ext.sparse_target_cls_loss(x, lab, sc, kind, activated=activated)
    mean = tood_ext.sparse_target_cls_loss(x, lab, sc, kind, activated=activated,
                                           reduction="mean")
    torch.testing.assert_close(mean, total / x.numel())
    for avg in (3.5, torch.tensor(7.25, dtype=F64)):
        got = tood_ext.sparse_target_cls_loss(x, lab, sc, kind, activated=activated,
                                              reduction="mean", avg_factor=avg)
        torch.testing.assert_close(got, total / avg)
        want = ref.sparse_target_cls_loss(x, lab, sc, kind, activated=activated,
                                          reduction="mean", avg_factor=avg)
        torch.testing.assert_close(got, want)


# ---- against the peers' own formulas ------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bce_matches_ultralytics(gen, weighted, dtype):
    B, A, C = 3, 200, 11
    x, lab, sc = draw(gen, (B, A), C, dtype)
    cw = torch.rand(C, generator=gen, dtype=F64).to(dtype) * 2 if weighted else None
    ts_sum = ultralytics_bce(x, lab, sc, cw)[1]
    want = value_and_grad(lambda t: ultralytics_bce(t, lab, sc, cw)[0], x)
    got = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, "bce", class_weight=cw,
                        reduction="mean", avg_factor=ts_sum)
    assert_same_value_and_grad(got, want)


@pytest.mark.parametrize("activated", [False, True])
@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_qfl_matches_mmdetection(gen, activated, beta):
    x, lab, sc = draw(gen, (300,), 13, F64, activated=activated)
    want = value_and_grad(lambda t: mmdet_qfl(t, lab, sc, beta, activated), x)
    got = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, "qfl", gamma=beta,
                        activated=activated)
    assert_same_value_and_grad(got, want)


@pytest.mark.parametrize("alpha,gamma", [(0.75, 2.0), (0.25, 1.5)])
def test_vfl_matches_mmdetection(gen, alpha, gamma):
    x, lab, sc = draw(gen, (5, 60), 8, F64)
    sc[0, :5] = 0.0  # a foreground anchor with score 0: a negative of the dense target
    lab[0, :5] = 3
    target = dense_cls_target(lab, sc, 8, F64)
    want = value_and_grad(lambda t: mmdet_vfl(t, target, alpha, gamma), x)
    got = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, "vfl", alpha=alpha,
                        gamma=gamma)
    assert_same_value_and_grad(got, want)


@pytest.mark.parametrize("activated", [False, True])
@pytest.mark.parametrize("alpha,gamma", [(None, 2.0), (0.4, 1.5)])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_matches_mmdetection(gen, activated, alpha, gamma, weighted):
    """Hard labels (scores 1, background C): mmdetection's FocalLoss, with label_weights and an
    avg_factor; alpha=None is mmdetection's default 0.25."""
    N, C = 300, 13
    x, lab, _ = draw(gen, (N,), C, F64, activated=activated, fg=0.4)
    ones = torch.ones(N, dtype=F64)
    w = torch.rand(N, generator=gen, dtype=F64) if weighted else None
    if weighted:
        w[:20] = 0.0
    mm_label = torch.where(lab >= 0, lab, torch.full_like(lab, C))
    want = value_and_grad(lambda t: mmdet_focal(t, mm_label, w, gamma, 0.25 if alpha is None
                                                else alpha, activated, avg_factor=17.0), x)
    got = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, ones, "focal", gamma=gamma,
                        alpha=alpha, activated=activated, weight=w, reduction="mean",
                        avg_factor=17.0)
    assert_same_value_and_grad(got, want)


@pytest.mark.parametrize("activated", [False, True])
def test_focal_soft_target_matches_mmdetection_formula(gen, activated):
    """Scores in [0, 1]: mmdetection's focal formula on the dense soft target."""
    x, lab, sc = draw(gen, (5, 60), 8, F64, activated=activated)
    sc[0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64)
    target = dense_cls_target(lab, sc, 8, F64)
    w = torch.rand(5, 60, generator=gen, dtype=F64)
    want = value_and_grad(lambda t: mmdet_focal(t.view(-1, 8), target.view(-1, 8), w.view(-1),
                                                alpha=0.3, activated=activated), x)
    got = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, "focal", alpha=0.3,
                        activated=activated, weight=w)
    assert_same_value_and_grad(got, want)


def test_alpha_default_is_the_kinds(gen):
    """alpha=None: 0.25 for focal, 0.75 for vfl (the raw op's schema default None alike); an
    explicit alpha is used as given."""
    x, lab, sc = draw(gen, (4, 50), 6, F64)
    op, raw = tood_ext.sparse_target_cls_loss, torch.ops.tood_ext.sparse_target_cls_loss
    for kind, default in (("focal", 0.25), ("vfl", 0.75)):
        want = op(x, lab, sc, kind, alpha=default)
        assert torch.equal(op(x, lab, sc, kind), want)
        assert torch.equal(raw(x, lab, sc, kind), want)
        assert torch.equal(ref.sparse_target_cls_loss(x, lab, sc, kind), ref.sparse_target_cls_loss(
            x, lab, sc, kind, alpha=default))
        other = op(x, lab, sc, kind, alpha=0.5)
        assert not torch.equal(other, want)
        torch.testing.assert_close(other, ref.sparse_target_cls_loss(x, lab, sc, kind, alpha=0.5))
    # alpha at focal's bounds
    for a in (0.0, 1.0):
        torch.testing.assert_close(op(x, lab, sc, "focal", alpha=a),
                                   ref.sparse_target_cls_loss(x, lab, sc, "focal", alpha=a))


# ---- the per-anchor weight ---------------------------------------------------------------------


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
def test_weight_zeros_and_ones(gen, kind, activated):
    """weight = 1: the unweighted bits; weight = 0 on some anchors: those anchors' terms and
    gradient rows vanish (the loss of the other anchors alone); all zeros: 0 and a zero
    gradient."""
    x, lab, sc = draw(gen, (3, 90), 11, torch.float32, activated=activated)
    op = tood_ext.sparse_target_cls_loss
    base = loss_and_grad(op, x, lab, sc, kind, activated=activated)
    ones = loss_and_grad(op, x, lab, sc, kind, activated=activated, weight=torch.ones(3, 90))
    assert torch.equal(ones[1], base[1])
    torch.testing.assert_close(ones[0], base[0], rtol=1e-6, atol=0)
    keep = torch.rand(3, 90, generator=gen) < 0.5
    loss, g = loss_and_grad(op, x, lab, sc, kind, activated=activated, weight=keep.float())
    assert torch.equal(g[~keep], torch.zeros_like(g[~keep]))
    assert torch.equal(g[keep], base[1][keep])
    sub = op(x[keep], lab[keep], sc[keep], kind, activated=activated)
    torch.testing.assert_close(loss, sub, rtol=1e-5, atol=0)
    loss, g = loss_and_grad(op, x, lab, sc, kind, activated=activated, weight=torch.zeros(3, 90))
    assert float(loss) == 0.0 and not g.any()


@pytest.mark.parametrize("kind,activated", [("focal", False), ("qfl", True), ("bce", False)])
def test_weight_scales_rows(gen, kind, activated):
    """A random weight: the loss is sum_a w_a * loss_a, each gradient row scaled by w_a; a
    strided (non-contiguous) weight gives the same; NaN in one anchor's weight makes the loss
    NaN and only that row's gradient."""
    x, lab, sc = draw(gen, (4, 70), 9, F64, activated=activated)
    w = torch.rand(4, 70, generator=gen, dtype=F64) * 3
    op = tood_ext.sparse_target_cls_loss
    loss, g = loss_and_grad(op, x, lab, sc, kind, activated=activated, weight=w)
    rows = torch.stack([op(x[i, j:j + 1], lab[i, j:j + 1], sc[i, j:j + 1], kind,
                           activated=activated) for i in range(4) for j in range(70)])
    torch.testing.assert_close(loss, (rows * w.flatten()).sum(), rtol=1e-12, atol=0)
    _, g1 = loss_and_grad(op, x, lab, sc, kind, activated=activated)
    torch.testing.assert_close(g, g1 * w[..., None], rtol=1e-12, atol=0)
    wt = w.t().contiguous().t()  # the same values, strided
    assert not wt.is_contiguous()
    got = loss_and_grad(op, x, lab, sc, kind, activated=activated, weight=wt)
    assert torch.equal(got[0], loss) and torch.equal(got[1], g)
    w[2, 5] = float("nan")
    loss, g = loss_and_grad(op, x, lab, sc, kind, activated=activated, weight=w)
    nan = torch.isnan(g)
    assert torch.isnan(loss) and nan[2, 5].all() and int(nan.sum()) == 9


def test_weight_needs_no_gradient_and_gets_none(gen):
    """No gradient flows to weight (documented): a weight that requires grad is a constant."""
    x, lab, sc = draw(gen, (2, 30), 5, F64)
    w = torch.rand(2, 30, generator=gen, dtype=F64, requires_grad=True)
    x.requires_grad_()
    loss = tood_ext.sparse_target_cls_loss(x, lab, sc, "focal", weight=w)
    gx, gw = torch.autograd.grad(loss, (x, w), allow_unused=True, materialize_grads=True)
    assert not gw.any() and gx.abs().sum() > 0


# ---- edge inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_edge_inputs(gen, kind, activated, dtype):
    B, A, C = 2, 40, 6
    x, lab, sc = draw(gen, (B, A), C, dtype, activated=activated)
    cases = {
        "all background": (x, torch.full_like(lab, -1), sc),
        "every anchor positive": (x, torch.randint(0, C, (B, A), generator=gen), sc),
        "scores 0 and 1": (x, lab, (torch.rand(B, A, generator=gen) < 0.5).to(dtype)),
    }
    extreme = x.clone()
    flat = extreme.view(-1)
    if activated:  # probabilities exactly 0 and 1: the log clamp at -100
        flat[::3], flat[1::3] = 0.0, 1.0
    else:
        flat[::3], flat[1::3] = 100.0, -100.0
    cases["extreme"] = (extreme, lab, sc)
    for name, (xi, li, si) in cases.items():
        got, g = loss_and_grad(tood_ext.sparse_target_cls_loss, xi, li, si, kind,
                               activated=activated)
        want, gw = loss_and_grad(ref.sparse_target_cls_loss, xi.double(), li, si.double(), kind,
                                 activated=activated)
        assert torch.isfinite(got) and torch.isfinite(g).all(), name
        torch.testing.assert_close(got.double(), want, rtol=1e-5 if dtype != F64 else 1e-10,
                                   atol=1e-6, msg=name)
        assert_close(g, gw, msg=name)


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
def test_nan_stays_in_its_element(gen, kind, activated):
    x, lab, sc = draw(gen, (3, 20), 5, F64, activated=activated)
    x[1, 7, 2] = float("nan")
    loss, g = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, kind,
                            activated=activated)
    assert torch.isnan(loss)
    nan = torch.isnan(g)
    assert nan[1, 7, 2] and int(nan.sum()) == 1
    _, gw = loss_and_grad(ref.sparse_target_cls_loss, x, lab, sc, kind, activated=activated)
    mask = ~nan
    assert_close(g[mask], gw[mask])


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("shape", [(0, 50, 7), (4, 0, 7), (0,), (3, 5, 0)])
def test_empty(kind, activated, shape):
    x = torch.zeros(*shape, requires_grad=True) if shape != (0,) else \
        torch.zeros(0, 7, requires_grad=True)
    lead = x.shape[:-1]
    lab = torch.full(lead, -1, dtype=torch.long)
    loss = tood_ext.sparse_target_cls_loss(x, lab, torch.zeros(lead), kind, activated=activated)
    assert loss.shape == () and float(loss) == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert g.shape == x.shape
    mean = tood_ext.sparse_target_cls_loss(x, lab, torch.zeros(lead), kind, activated=activated,
                                           reduction="mean")
    assert float(mean) == 0.0


def test_labels_of_any_integer_dtype_and_strides(gen):
    x, lab, sc = draw(gen, (6, 40), 9, F64)
    want = tood_ext.sparse_target_cls_loss(x, lab, sc, "qfl")
    for dt in (torch.int32, torch.int16, torch.int8):
        torch.testing.assert_close(tood_ext.sparse_target_cls_loss(x, lab.to(dt), sc, "qfl"), want)
    # non-contiguous views: the same loss and gradient
    xt, lt, st = x.transpose(0, 1).contiguous(), lab.t().contiguous(), sc.t().contiguous()
    got, g = loss_and_grad(tood_ext.sparse_target_cls_loss, xt.transpose(0, 1), lt.t(), st.t(),
                           "qfl")
    _, gw = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, "qfl")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(g, gw, rtol=0, atol=0)


# ---- registration: opcheck, gradcheck, determinism ---------------------------------------------


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
def test_opcheck(gen, kind, activated):
    ops = torch.ops.tood_ext
    x, lab, sc = draw(gen, (2, 9), 5, F64, activated=activated)
    cw = torch.rand(5, generator=gen, dtype=F64)
    w = torch.rand(2, 9, generator=gen, dtype=F64)
    torch.library.opcheck(ops.sparse_target_cls_loss.default,
                          (x.requires_grad_(), lab, sc, kind, 2.0, 0.75, activated, cw, None))
    torch.library.opcheck(ops.sparse_target_cls_loss.default,
                          (x.detach().requires_grad_(), lab, sc, kind, 2.0, None, activated,
                           None, w))
    torch.library.opcheck(ops.sparse_target_cls_loss.default,
                          (x.detach().float(), lab, sc.float(), kind, 1.5, 0.5, activated, None,
                           w.float()))
    torch.library.opcheck(ops._sparse_target_cls_loss_backward.default,
                          (torch.tensor(0.5, dtype=F64), x.detach(), lab, sc, kind, 2.0, 0.75,
                           activated, cw, w))


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_gradcheck(gen, kind, activated, gamma):
    x, lab, sc = draw(gen, (3, 4), 5, F64, activated=activated, fg=0.6)
    if activated:
        x = x.clamp(0.05, 0.95)  # finite differences stay inside [0, 1]
    cw = torch.rand(5, generator=gen, dtype=F64) + 0.5
    w = torch.rand(3, 4, generator=gen, dtype=F64) * 2
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: tood_ext.sparse_target_cls_loss(p, lab, sc, kind, gamma=gamma,
                                                  activated=activated, class_weight=cw,
                                                  weight=w, reduction="mean", avg_factor=2.0),
        (x,))


def test_double_backward_refused(gen):
    x, lab, sc = draw(gen, (2, 9), 5, F64)
    x.requires_grad_()
    loss = tood_ext.sparse_target_cls_loss(x, lab, sc, "qfl")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
def test_thread_count_does_not_change_bits(gen, kind, activated):
    x, lab, sc = draw(gen, (4, 3000), 37, torch.float32, activated=activated)
    cw = torch.rand(37, generator=gen)
    for w in (None, torch.rand(4, 3000, generator=gen)):
        for pred in (x, class_major(x)):  # both layouts of the kernels
            out = loss_grad_per_thread_count(tood_ext.sparse_target_cls_loss, pred, lab, sc,
                                             kind, activated=activated, class_weight=cw,
                                             weight=w)
            for loss, g in out[1:]:
                assert torch.equal(loss, out[0][0]) and torch.equal(g, out[0][1])


# ---- class-major pred: a (B, A, C) view of a contiguous (B, C, A) tensor, read in place ----------


def class_major(x):
    """x's values as a class-major (..., A, C) view of a contiguous (..., C, A) tensor."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("kind,activated", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_class_major_layout(gen, kind, activated, dtype):
    """The class-major view gives the row-major layout's loss (summed in another order: to
    rounding) and its gradient bit for bit, written in pred's layout (no copy of pred or of
    the gradient), with and without the weights; 2-d and 4-d views too."""
    x, lab, sc = draw(gen, (3, 1100), 7, dtype, activated=activated)  # lines of 1100 anchors
    x[0, 5, 2] = 1.0 if activated else 100.0  # an extreme element, background or not
    lab[0, 5] = 2
    cw = torch.rand(7, generator=gen, dtype=F64).to(dtype) + 0.5
    w = torch.rand(3, 1100, generator=gen, dtype=F64).to(dtype)
    rtol = 1e-12 if dtype == F64 else 2e-6
    for class_weight, weight in ((None, None), (cw, None), (None, w), (cw, w)):
        kw = dict(activated=activated, class_weight=class_weight, weight=weight)
        want, gw = loss_and_grad(tood_ext.sparse_target_cls_loss, x, lab, sc, kind, **kw)
        xc = class_major(x)
        assert not xc.is_contiguous()
        got, g = loss_and_grad(tood_ext.sparse_target_cls_loss, xc, lab, sc, kind, **kw)
        torch.testing.assert_close(got, want, rtol=rtol, atol=0)
        assert g.stride() == xc.stride()
        assert torch.equal(g, gw)
        r = ref.sparse_target_cls_loss(x.double(), lab, sc.double(), kind, activated=activated,
                                       class_weight=None if class_weight is None
                                       else class_weight.double(),
                                       weight=None if weight is None else weight.double())
        assert_close(got.double(), r, dtype=dtype)
    for xs, ls, ss in ((x[0], lab[0], sc[0]),  # 2-d (A, C), and 4-d: rows l * A + a
                       (x.reshape(3, 2, 550, 7), lab.reshape(3, 2, 550), sc.reshape(3, 2, 550))):
        want, gw = loss_and_grad(tood_ext.sparse_target_cls_loss, xs, ls, ss, kind,
                                 activated=activated)
        got, g = loss_and_grad(tood_ext.sparse_target_cls_loss, class_major(xs), ls, ss, kind,
                               activated=activated)
        torch.testing.assert_close(got, want, rtol=rtol, atol=0)
        assert torch.equal(g, gw) and g.stride() == class_major(xs).stride()


def test_class_major_nan_and_memory(gen):
    """A NaN in the class-major view: NaN loss, only its element's gradient NaN; the op's
    extra memory is the gradient (no copy of pred)."""
    x, lab, sc = draw(gen, (2, 3000), 40, torch.float32)
    xc = class_major(x)
    xc.data[1, 17, lab[1, 17].clamp(0)] = float("nan")
    loss, g = loss_and_grad(tood_ext.sparse_target_cls_loss, xc, lab, sc, "bce")
    assert loss.isnan()
    nan = g.isnan()
    assert nan.sum() == 1 and nan[1, 17, lab[1, 17].clamp(0)]
    xc = class_major(x).requires_grad_()

    def step():
        loss = tood_ext.sparse_target_cls_loss(xc, lab, sc, "bce")
        return torch.autograd.grad(loss, xc)
    extra = peak_extra_memory(step, "cpu")
    assert extra <= x.numel() * 4 + 64 * lab.numel() + (1 << 16)  # gradient + O(rows)


def test_avx2_and_baseline_give_the_same_bits(gen, tmp_path):
    """The CPU loops' AVX2 clone (picked when the CPU has it) and the baseline build
    (TOOD_EXT_CPU_ISA=generic, in a subprocess) give the same loss and gradient bits, both
    layouts, every kind; and dfl_loss's (reg_max 16: the compile-time path, and 7)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "isa.py"
    script.write_text(
        "import sys, torch, tood_ext\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from loss_cases import KINDS, draw\n"
        "gen = torch.Generator().manual_seed(7)\n"
        "out = []\n"
        "for kind, act in KINDS:\n"
        "    x, lab, sc = draw(gen, (2, 1030), 23, torch.float32, activated=act)\n"
        "    w = torch.rand(2, 1030, generator=gen)\n"
        "    for xin in (x, x.transpose(1, 2).contiguous().transpose(1, 2)):\n"
        "        xin = xin.detach().requires_grad_()\n"
        "        loss = tood_ext.sparse_target_cls_loss(xin, lab, sc, kind, activated=act,\n"
        "                                               weight=w)\n"
        "        out.append((loss.detach(), *torch.autograd.grad(loss, xin)))\n"
        "for R in (16, 7):\n"
        "    pd = (torch.randn(3001, 4, R, generator=gen) * 3).requires_grad_()\n"
        "    t = torch.rand(3001, 4, generator=gen) * R\n"
        "    loss = tood_ext.dfl_loss(pd, t, torch.rand(3001, 4, generator=gen))\n"
        "    out.append((loss.detach(), *torch.autograd.grad(loss, pd)))\n"
        "torch.save(out, sys.argv[1])\n")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests_dir)
    results = []
    for isa in ("generic", "auto"):
        env = dict(os.environ, TOOD_EXT_CPU_ISA=isa,
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        path = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, str(script), str(path), tests_dir], env=env, check=True)
        results.append(torch.load(path))
    for a, b in zip(*results):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


# ---- bad input ---------------------------------------------------------------------------------



@pytest.mark.parametrize("impl", ["op", "reference"])
def test_bad_input(gen, impl):
    fn = tood_ext.sparse_target_cls_loss if impl == "op" else ref.sparse_target_cls_loss
    cases, ok = bad_cases(gen)
    for what, over, exc, text in cases:
        kw = {**ok, "kind": "bce", **over}
        args = [kw.pop("pred"), kw.pop("labels"), kw.pop("scores"), kw.pop("kind")]
        snapshot = [a.clone() if isinstance(a, torch.Tensor) and a.device.type != "meta" else a
                    for a in args]
        with pytest.raises(exc, match=text) as info:
            fn(*args, **kw)
        assert "Traceback" not in str(info.value), what
        for a, s in zip(args, snapshot):  # nothing written
            if isinstance(a, torch.Tensor) and a.device.type != "meta":
                assert torch.equal(a, s), what
    # bce takes any real score
    sc = ok["scores"].clone()
    sc[0, 0] = 1.5
    assert torch.isfinite(fn(ok["pred"], ok["labels"], sc, "bce"))


# ---- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_memory_is_the_gradient_plus_o_of_rows(gen, device):
    B, A, C = 4, 2000, 80
    x, lab, sc = draw(gen, (B, A), C, torch.float32, device)
    x.requires_grad_()
    grad_bytes = x.numel() * 4
    rows_bytes = B * A * 8 * 3  # label copies / checks, partial sums: O(B * A)

    def fused():
        loss = tood_ext.sparse_target_cls_loss(x, lab, sc, "bce", reduction="mean",
                                               avg_factor=7.0)
        return torch.autograd.grad(loss, x)

    def dense():
        loss, _ = ultralytics_bce(x, lab, sc)
        return torch.autograd.grad(loss, x)

    peak = peak_extra_memory(fused, device)
    assert grad_bytes <= peak <= grad_bytes + rows_bytes + 64 * 1024, peak
    assert peak_extra_memory(dense, device) > 3 * peak
