"""The detectors' classification losses go through the fused op ``sparse_target_cls_loss`` (on
TAL's / ATSS's sparse labels and scores): the same values and gradients, to float rounding, as
the dense formulas the detectors used before (tood_ext.models.losses' ``quality_focal_loss``,
``focal_loss``, atss_head's ``quality_focal_loss_with_logits`` and torchvision's
``sigmoid_focal_loss`` on a one-hot target), on random head outputs, with images without GTs and
batches without any GT; with the kernels and with the reference ops; empty inputs (no image,
no anchor) at the loss level (the detectors' forward does not take a batch of 0 images). And the
memory this saves."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

import tood_ext
from tood_ext.models import TOODConfig, build_model, focal_loss, quality_focal_loss
from tood_ext.models.atss_head import quality_focal_loss_with_logits
from tood_ext.testing.memory import peak_extra_memory

# (head, epoch): TOOD and ATSS, each in its ATSS epochs (0) and TAL epochs (initial_epoch = 4)
CASES = [("tood", 0), ("tood", 4), ("atss", 0), ("atss", 4)]
CASE_IDS = [f"{h}-{'atss' if e == 0 else 'tal'}" for h, e in CASES]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = dict(num_classes=5, depth=18, fpn_channels=32, feat_channels=32, stacked_convs=2,
               num_groups=8)
    return {h: build_model(TOODConfig(head=h, **cfg)) for h in ("tood", "atss")}


def random_outputs(model, gen, B):
    """The model's outputs on random images, with the classification outputs replaced by random
    leaves of a wide spread (logits ~ N(0, 2^2); TOOD's P_align, probabilities, from them)."""
    with torch.no_grad():
        out = dict(model(torch.randn(B, 3, 128, 128, generator=gen)))
    leaves = []
    for key in ("cls_logits", "cls_scores"):
        if key not in out:
            continue
        new = [(torch.randn(s.shape, generator=gen) * 2) for s in out[key]]
        if key == "cls_scores":
            new = [x.sigmoid() for x in new]
        new = [x.requires_grad_() for x in new]
        out[key] = new
        leaves += new
        break  # ATSS: cls_scores follow from the logits
    if "cls_logits" in out:
        out["cls_scores"] = [x.sigmoid() for x in out["cls_logits"]]
    return out, leaves


def random_targets(gen, B, C, empty_images=()):
    targets = []
    for b in range(B):
        n = 0 if b in empty_images else int(torch.randint(1, 6, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 90
        wh = 12 + torch.rand(n, 2, generator=gen) * 60
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(0, C, (n,), generator=gen)})
    return targets


def dense_loss_cls(model, out, targets, epoch):
    """loss_cls by the formulas the detectors used before the fused op (a dense (N, C) target)."""
    cfg = model.cfg
    tg = model.get_targets(out, targets, epoch)
    labels, fg = tg["labels"], tg["fg_mask"]
    key = "cls_logits" if cfg.head == "atss" else "cls_scores"
    B, C = out[key][0].shape[:2]
    pred = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, C) for s in out[key]], 1)
    flat, lab = pred.reshape(-1, C), labels.reshape(-1)
    if epoch < cfg.initial_epoch:
        factor = fg.sum().float().clamp(min=1)
        if cfg.head == "atss":
            onehot = torch.zeros_like(pred)
            onehot[fg, labels[fg]] = 1.0
            total = sigmoid_focal_loss(pred, onehot, alpha=cfg.focal_alpha, gamma=cfg.gamma,
                                       reduction="sum")
        else:
            total = focal_loss(flat, lab, cfg.gamma, cfg.focal_alpha)
    else:
        factor = tg["soft_target"].sum().clamp(min=1)
        qfl = quality_focal_loss_with_logits if cfg.head == "atss" else quality_focal_loss
        total = qfl(flat, lab, tg["soft_target"].reshape(-1), cfg.gamma)
    return cfg.loss_cls_weight * total / factor


def loss_and_grads(loss, leaves):
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


@pytest.mark.parametrize("ops", ["kernel", "reference"])
@pytest.mark.parametrize("batch", ["mixed", "no GT"])
@pytest.mark.parametrize("head,epoch", CASES, ids=CASE_IDS)
def test_cls_loss_equals_the_dense_formula(models, gen, head, epoch, batch, ops):
    model = models[head]
    model.set_ops(ops)
    try:
        B = {"mixed": 3, "no GT": 2}[batch]
        empty = {"mixed": (1,), "no GT": (0, 1)}[batch]
        C = model.cfg.num_classes
        out, leaves = random_outputs(model, gen, B)
        targets = random_targets(gen, B, C, empty)
        got = loss_and_grads(model.loss_by_feat(out, targets, epoch)["loss_cls"], leaves)
        want = loss_and_grads(dense_loss_cls(model, out, targets, epoch), leaves)
    finally:
        model.set_ops("kernel")
    if batch == "mixed":  # the assignment found positives: the case is not vacuous
        assert model.get_targets(out, targets, epoch)["fg_mask"].any()
    assert got[0].dtype == want[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=1e-7)
    for g, w in zip(got[1], want[1]):
        scale = max(float(w.abs().max()), 1e-30) if w.numel() else 1.0
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("head,epoch", CASES, ids=CASE_IDS)
def test_training_step_gradients_equal_the_dense_formula(models, gen, head, epoch, monkeypatch):
    """The whole step (backbone, head, assignment, all losses, backward): every parameter's
    gradient with the fused classification loss equals the one with the dense formula."""
    from tood_ext.models import detector

    model = models[head]
    images = torch.randn(2, 3, 128, 128, generator=gen)
    targets = random_targets(gen, 2, model.cfg.num_classes, empty_images=(1,))
    res = []
    for fused in (True, False):
        if not fused:  # the detectors' loss_cls through the dense formulas instead
            def dense(ops, pred, labels, scores, kind, gamma=2.0, alpha=0.25, activated=False):
                return dense_formula(pred, labels, scores, kind, gamma, alpha, activated)
            monkeypatch.setattr(detector, "sparse_cls_loss", dense)
        model.zero_grad()
        losses = model.loss(images, targets, epoch)
        losses["loss"].backward()
        res.append(({k: v.detach() for k, v in losses.items()},
                    {n: p.grad.clone() for n, p in model.named_parameters()
                     if p.grad is not None}))
    (lf, gf), (ld, gd) = res
    for k in lf:
        torch.testing.assert_close(lf[k], ld[k], rtol=2e-6, atol=1e-7, msg=k)
    assert gf.keys() == gd.keys() and gf
    for name in gf:
        scale = max(float(gd[name].abs().max()), 1e-3)
        torch.testing.assert_close(gf[name], gd[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def dense_formula(pred, labels, scores, kind, gamma, alpha, activated):
    C = pred.shape[-1]
    flat, lab, sc = pred.reshape(-1, C), labels.reshape(-1), scores.reshape(-1)
    if kind == "qfl":
        f = quality_focal_loss if activated else quality_focal_loss_with_logits
        return f(flat, lab, sc, gamma)
    if activated:
        return focal_loss(flat, lab, gamma, alpha)
    onehot = torch.zeros_like(flat)
    fg = lab >= 0
    onehot[fg, lab[fg]] = 1.0
    return sigmoid_focal_loss(flat, onehot, alpha=alpha, gamma=gamma, reduction="sum")


LOSS_KINDS = [("qfl", True), ("qfl", False), ("focal", True), ("focal", False)]


@pytest.mark.parametrize("kind,activated", LOSS_KINDS)
@pytest.mark.parametrize("shape", [(2, 300, 7), (0, 300, 7), (2, 0, 7), (3, 40, 1)])
@pytest.mark.parametrize("ops", ["kernel", "reference"])
def test_sparse_cls_loss_equals_the_dense_formula(gen, kind, activated, shape, ops):
    """models.losses.sparse_cls_loss (the detectors' call) on random (B, A, C) outputs, labels
    with background, scores in [0, 1]: the dense formula's value and gradient; 0 and an empty
    gradient for B = 0 or A = 0."""
    from tood_ext.models._ops import get_ops
    from tood_ext.models.losses import sparse_cls_loss

    x = torch.randn(shape, generator=gen) * 3
    x = (x.sigmoid() if activated else x).requires_grad_()
    C = shape[-1]
    labels = torch.randint(-1, C, shape[:-1], generator=gen)
    if kind == "focal":  # the ATSS epochs' hard labels (the dense formulas' one-hot target)
        scores = (labels >= 0).float()
    else:
        scores = torch.rand(shape[:-1], generator=gen)
        scores.view(-1)[:3] = torch.tensor([0.0, 1.0, 0.5])[:scores.numel()]
    kw = dict(gamma=float(torch.rand((), generator=gen)) + 1.0, alpha=0.25)
    got = loss_and_grads(sparse_cls_loss(get_ops(ops), x, labels, scores, kind,
                                         activated=activated, **kw), [x])
    if x.numel() == 0:
        assert float(got[0]) == 0.0 and got[1][0].shape == x.shape
        return
    want = loss_and_grads(dense_formula(x, labels, scores, kind, kw["gamma"], kw["alpha"],
                                        activated), [x])
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(got[1][0], want[1][0], rtol=1e-5, atol=1e-7)


def test_memory_saved(gen):
    """The fused loss (forward + backward) takes the gradient plus O(B*A); the dense formula
    also builds (N, C) targets, per-element losses and their autograd buffers."""
    B, A, C = 2, 4000, 80
    p = torch.rand(B, A, C, generator=gen).requires_grad_()
    labels = torch.randint(-1, C, (B, A), generator=gen)
    scores = torch.rand(B, A, generator=gen)

    def fused():
        return torch.autograd.grad(tood_ext.sparse_target_cls_loss(p, labels, scores, "qfl",
                                                                   activated=True), p)

    def dense():
        return torch.autograd.grad(quality_focal_loss(p.view(-1, C), labels.view(-1),
                                                      scores.view(-1)), p)

    grad_bytes = p.numel() * 4
    peak_fused, peak_dense = peak_extra_memory(fused, "cpu"), peak_extra_memory(dense, "cpu")
    assert peak_fused <= grad_bytes + B * A * 8 * 3 + 64 * 1024, peak_fused
    assert peak_dense >= 3 * peak_fused, (peak_dense, peak_fused)
