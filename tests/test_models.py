"""Tests of the TOOD detector (tood_ext.models): head outputs and gradients, kernel vs reference
ops, training targets and losses against independent computations, ATSS on hand-computed
cases, inference in original-image coordinates.

Small on purpose (feat_channels 32, stacked_convs 2, ResNet-18, 128-pixel images): the whole
file runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from tood_ext.models import (TOOD, TOODConfig, TOODHead, atss_assign, build_model,
                             centerness_target, grid_priors, sigmoid_geometric_mean)

ANCHOR_TYPES = ["anchor_free", "anchor_based"]
STRIDES = (8, 16, 32, 64, 128)


def small_cfg(**kw) -> TOODConfig:
    base = dict(num_classes=3, depth=18, fpn_channels=32, feat_channels=32, stacked_convs=2,
                num_groups=8)
    base.update(kw)
    return TOODConfig(**base)


def small_head(anchor_type="anchor_free", ops="kernel", **kw) -> TOODHead:
    return TOODHead(num_classes=3, in_channels=16, feat_channels=32, stacked_convs=2,
                    strides=STRIDES, anchor_type=anchor_type, num_groups=8, ops=ops, **kw)


def head_feats(gen, size=128, channels=16, dtype=torch.float32):
    return [torch.randn(2, channels, size // s, size // s, generator=gen, dtype=torch.float64)
            .to(dtype) for s in STRIDES]


def spread_offsets(head: TOODHead, gen) -> None:
    """Offsets of up to about +-1 px so that deform sampling really interpolates (the
    mmdetection init, std 0.001, leaves them near 0; beyond 1 px a 1x1 level samples only
    zeros)."""
    with torch.no_grad():
        head.reg_offset_module[-1].bias.copy_(
            (torch.rand(8, generator=gen, dtype=torch.float64) * 1.8 - 0.9).float())
        head.reg_offset_module[-1].weight.normal_(0, 0.05, generator=gen)


# ---------------------------------------------------------------------------------------------
# head
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_head_shapes_values_and_gradients(anchor_type, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    head = small_head(anchor_type)
    spread_offsets(head, gen)
    feats = [f.requires_grad_() for f in head_feats(gen)]
    out = head(feats)
    assert len(out["cls_scores"]) == len(out["bbox_preds"]) == len(STRIDES)
    for s, b, f in zip(out["cls_scores"], out["bbox_preds"], feats):
        assert s.shape == (2, 3, *f.shape[-2:]) and b.shape == (2, 4, *f.shape[-2:])
        assert s.dtype == b.dtype == torch.float32
        assert ((s > 0) & (s < 1)).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()  # fallback of #7567
    # every output (each level, cls and boxes separately) is differentiable w.r.t. its input
    for key in ("cls_scores", "bbox_preds"):
        for level in range(len(STRIDES)):
            x = out[key][level]
            g, = torch.autograd.grad((x * torch.randn(x.shape, generator=gen)).sum(),
                                     feats[level], retain_graph=True)
            assert torch.isfinite(g).all() and g.abs().sum() > 0, (key, level)
    # every parameter gets a finite, non-zero gradient from the two outputs together
    w = [torch.randn(x.shape, generator=gen) for x in out["cls_scores"] + out["bbox_preds"]]
    loss = sum((x * wi).sum() for x, wi in zip(out["cls_scores"] + out["bbox_preds"], w))
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_head_initialisation():
    torch.manual_seed(0)
    head = small_head()
    prior = -math.log(99)
    assert torch.allclose(head.tood_cls.bias, torch.full_like(head.tood_cls.bias, prior))
    assert torch.allclose(head.cls_prob_module[-1].bias, torch.tensor([prior]))
    assert head.reg_offset_module[-1].bias.abs().max() == 0
    assert head.reg_offset_module[-1].weight.std() < 0.0015  # N(0, 0.001)
    assert all(float(s.scale.detach()) == 1.0 for s in head.scales)
    # the initial P_align is about sqrt(0.01 * 0.01) = 0.01 everywhere
    feats = [torch.randn(1, 16, 128 // s, 128 // s) for s in STRIDES]
    scores = head(feats)["cls_scores"]
    assert all((s - 0.01).abs().max() < 2e-3 for s in scores)
    # zero offsets: aligned boxes are exactly the unsampled decoded boxes (anchor-free: a
    # square of side 2 * scale * exp(0) strides around each location, up to the tiny weights)
    head0 = small_head(offset_init_std=0.0)
    assert head0.reg_offset_module[-1].weight.abs().max() == 0


@pytest.mark.parametrize("cls_prior,m_prior", [(2e-4, 0.5), (0.05, 0.2)])
def test_head_priors(cls_prior, m_prior):
    """cls_prior / m_prior set the biases of P's conv and M's last conv; the initial P_align is
    about sqrt(cls_prior * m_prior); out-of-range priors are refused by name."""
    torch.manual_seed(0)
    head = small_head(cls_prior=cls_prior, m_prior=m_prior)
    assert torch.allclose(head.tood_cls.bias.sigmoid(),
                          torch.full_like(head.tood_cls.bias, cls_prior), rtol=1e-5)
    assert torch.allclose(head.cls_prob_module[-1].bias.sigmoid(), torch.tensor([m_prior]),
                          rtol=1e-5)
    feats = [torch.randn(1, 16, 128 // s, 128 // s) for s in STRIDES]
    want = math.sqrt(cls_prior * m_prior)
    for s in head(feats)["cls_scores"]:
        assert (s / want - 1).abs().max() < 0.2
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="m_prior"):
            small_head(m_prior=bad)
        with pytest.raises(ValueError, match="cls_prior"):
            small_head(cls_prior=bad)


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_head_box_decoding(anchor_type):
    """Boxes from a regression conv with known output, zero offsets, against hand decoding."""
    head = small_head(anchor_type, offset_init_std=0.0)
    reg = torch.tensor([0.1, -0.2, 0.3, 0.05])
    with torch.no_grad():
        head.tood_reg.weight.zero_()
        head.tood_reg.bias.copy_(reg)
        head.scales[1].scale.fill_(1.5)
    feats = [torch.randn(1, 16, 128 // s, 128 // s) for s in STRIDES]
    boxes = head(feats)["bbox_preds"]
    for level, s in enumerate(STRIDES):
        h, w = 128 // s, 128 // s
        scale = 1.5 if level == 1 else 1.0
        i, j = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        cx, cy = j * s, i * s
        if anchor_type == "anchor_free":  # (l, t, r, b) = scale * exp(reg) strides
            d = scale * reg.exp() * s
            exp = torch.stack([cx - d[0], cy - d[1], cx + d[2], cy + d[3]])
        else:  # deltas * (.1, .1, .2, .2) against the 8s-square prior
            d = scale * reg * torch.tensor([0.1, 0.1, 0.2, 0.2])
            side = 8 * s
            gx, gy = cx + side * d[0], cy + side * d[1]
            gw, gh = side * d[2].exp(), side * d[3].exp()
            exp = torch.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2])
        torch.testing.assert_close(boxes[level][0], exp, rtol=1e-5, atol=1e-4)


def test_deform_offset_layout():
    """Offset channels (2c, 2c+1) = (dy, dx) of box side c: an integer offset shifts one side."""
    head = small_head(offset_init_std=0.0)
    with torch.no_grad():
        head.reg_offset_module[-1].bias.copy_(torch.tensor([0., 0., 1., 0., 0., -1., 0., 0.]))
    feats = [torch.randn(1, 16, 128 // s, 128 // s) for s in STRIDES]
    ref = small_head(offset_init_std=0.0)
    ref.load_state_dict(head.state_dict())
    with torch.no_grad():
        ref.reg_offset_module[-1].bias.zero_()
        b = head(feats)["bbox_preds"][0][0]  # (4, 16, 16)
        b0 = ref(feats)["bbox_preds"][0][0]
    # side y1 (c = 1) reads the row below: dy = +1; side x2 (c = 2) the column left: dx = -1
    torch.testing.assert_close(b[0], b0[0])
    torch.testing.assert_close(b[1, :-1], b0[1, 1:])
    torch.testing.assert_close(b[2, :, 1:], b0[2, :, :-1])
    torch.testing.assert_close(b[3], b0[3])


def test_sigmoid_geometric_mean_gradient():
    x = torch.tensor([-30.0, -2.0, 0.0, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([-50.0, 1.0, 0.0, -4.0, 40.0], dtype=torch.float64, requires_grad=True)
    z = sigmoid_geometric_mean(x, y)
    torch.testing.assert_close(z, (x.sigmoid() * y.sigmoid()).sqrt())
    gx, gy = torch.autograd.grad(z.sum(), (x, y))
    torch.testing.assert_close(gx, z * (1 - x.sigmoid()) / 2)
    torch.testing.assert_close(gy, z * (1 - y.sigmoid()) / 2)
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_head_gradcheck_float64(anchor_type, gen):
    """Analytic gradients of both outputs (kernel ops) w.r.t. the input features, float64."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    head = TOODHead(num_classes=2, in_channels=4, feat_channels=8, stacked_convs=2,
                    strides=(8, 16), anchor_type=anchor_type, num_groups=4).double()
    spread_offsets(head, gen)
    head.double()
    feats = [torch.randn(1, 4, n, n, generator=gen, dtype=torch.float64, requires_grad=True)
             for n in (4, 2)]

    def fn(*xs):
        out = head(list(xs))
        return tuple(out["cls_scores"]) + tuple(out["bbox_preds"])

    assert torch.autograd.gradcheck(fn, tuple(feats), eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_head_kernel_equals_reference(anchor_type, gen):
    """Same weights, same input: our ops and the PyTorch references agree in the outputs and in
    every parameter gradient (float32: rtol 1e-4, atol 1e-5 on outputs, atol 1e-5 relative to
    the largest gradient of each parameter)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    head = small_head(anchor_type, ops="kernel")
    spread_offsets(head, gen)
    feats = head_feats(gen)
    w = None
    results = []
    for ops in ("kernel", "reference"):
        head.set_ops(ops)
        head.zero_grad()
        out = head(feats)
        flat = out["cls_scores"] + out["bbox_preds"]
        if w is None:
            w = [torch.randn(x.shape, generator=gen) for x in flat]
        sum((x * wi).sum() for x, wi in zip(flat, w)).backward()
        results.append(([x.detach() for x in flat],
                        {n: p.grad.clone() for n, p in head.named_parameters()}))
    (out_k, grad_k), (out_r, grad_r) = results
    for a, b in zip(out_k, out_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for name in grad_k:
        scale = max(float(grad_r[name].abs().max()), 1e-3)
        torch.testing.assert_close(grad_k[name], grad_r[name], rtol=1e-4, atol=1e-5 * scale,
                                   msg=name)


# ---------------------------------------------------------------------------------------------
# detector: losses and targets
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1234)
    return build_model(small_cfg())


def one_gt_batch(gen):
    images = torch.randn(2, 3, 128, 128, generator=gen)
    targets = [{"boxes": torch.tensor([[20.0, 24.0, 68.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return images, targets


def test_tal_targets_one_gt(model, gen):
    """One GT: positives only inside it, at most topk; t_hat in [0, 1], its max is the largest
    IoU of a positive's predicted box with the GT, and t_hat = t / max t * max u with
    t = s * u^6 recomputed here from the outputs (torchvision IoU)."""
    images, targets = one_gt_batch(gen)
    out = model(images)
    tg = model.get_targets(out, targets, epoch=model.cfg.initial_epoch)
    fg, anchors, gt = tg["fg_mask"], tg["anchors"], targets[0]["boxes"][0]
    assert not fg[1].any()  # the image without GTs
    n = int(fg[0].sum())
    assert 1 <= n <= model.cfg.topk
    centres = (anchors[fg[0], :2] + anchors[fg[0], 2:]) / 2
    assert ((centres > gt[:2] + 0.01) & (centres < gt[2:] - 0.01)).all()
    assert (tg["labels"][0, fg[0]] == 1).all() and (tg["labels"][~fg] == -1).all()
    torch.testing.assert_close(tg["boxes"][0, fg[0]], gt.expand(n, 4))

    t_hat = tg["soft_target"]
    assert (t_hat >= 0).all() and (t_hat <= 1).all() and (t_hat[~fg] == 0).all()
    scores = torch.cat([s[0].permute(1, 2, 0).reshape(-1, 3) for s in out["cls_scores"]])
    boxes = torch.cat([b[0].permute(1, 2, 0).reshape(-1, 4) for b in out["bbox_preds"]])
    u = torchvision.ops.box_iou(boxes[fg[0]].detach(), gt[None])[:, 0]
    t = scores[fg[0], 1].detach() * u ** 6
    # max t_hat = max u * t_max / (t_max + 1e-7): the GT's max IoU up to mmdetection's eps
    # (relative 1e-7 / t_max, visible here since t = s * u^6 is ~1e-5 for an untrained model)
    torch.testing.assert_close(t_hat[0].max(), u.max() * t.max() / (t.max() + 1e-7),
                               rtol=1e-5, atol=1e-7)
    assert t_hat[0].max() <= u.max() and u.max() - t_hat[0].max() <= 2e-7 / t.max()
    torch.testing.assert_close(t_hat[0, fg[0]], t / (t.max() + 1e-7) * u.max(),
                               rtol=1e-4, atol=1e-9)
    # the positives are the top-k of t over all anchors, restricted to the inside ones
    all_u = torchvision.ops.box_iou(boxes.detach(), gt[None])[:, 0]
    all_t = scores[:, 1].detach() * all_u ** 6
    top = all_t.topk(model.cfg.topk).indices
    c = (anchors[top, :2] + anchors[top, 2:]) / 2
    inside = ((c > gt[:2] + 0.01) & (c < gt[2:] - 0.01)).all(1) & (all_t[top] > 0)
    assert set(top[inside].tolist()) == set(fg[0].nonzero()[:, 0].tolist())


def naive_qfl(p, labels, score):
    loss = -(1 - p).clamp_min(1e-45).log().clamp_min(-100) * p ** 2
    for n in (labels >= 0).nonzero()[:, 0].tolist():
        c, s, q = int(labels[n]), float(score[n]), p[n, int(labels[n])]
        bce = -(s * q.log().clamp_min(-100) + (1 - s) * (1 - q).log().clamp_min(-100))
        loss[n, c] = bce * (s - q).abs() ** 2
    return loss.sum()


def test_tal_loss_normalisation(model, gen):
    """loss_cls = QFL sum / max(sum t_hat, 1), loss_bbox = 2 sum t_hat (1 - GIoU) / max(sum
    t_hat, 1), recomputed naively (QFL by its formula, GIoU by torchvision)."""
    images, targets = one_gt_batch(gen)
    out = model(images)
    losses = model.loss_by_feat(out, targets, epoch=model.cfg.initial_epoch)
    tg = model.get_targets(out, targets, epoch=model.cfg.initial_epoch)
    B = images.shape[0]
    scores = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, 3) for s in out["cls_scores"]], 1)
    boxes = torch.cat([b.permute(0, 2, 3, 1).reshape(B, -1, 4) for b in out["bbox_preds"]], 1)
    fg, t_hat = tg["fg_mask"], tg["soft_target"]
    factor = max(float(t_hat.sum()), 1.0)
    exp_cls = naive_qfl(scores.reshape(-1, 3).detach().double(), tg["labels"].reshape(-1),
                        t_hat.reshape(-1).double()) / factor
    giou = torchvision.ops.generalized_box_iou(boxes[fg].detach().double(),
                                               tg["boxes"][fg].double()).diagonal()
    exp_bbox = 2.0 * (t_hat[fg].double() * (1 - giou)).sum() / factor
    torch.testing.assert_close(losses["loss_cls"].double(), exp_cls, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(losses["loss_bbox"].double(), exp_bbox, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(losses["loss"], losses["loss_cls"] + losses["loss_bbox"])
    # the DDP-friendly entry point gives the same losses
    via_forward = model(images, targets, epoch=model.cfg.initial_epoch)
    for k in losses:
        torch.testing.assert_close(via_forward[k], losses[k])


def test_atss_loss_normalisation(model, gen):
    """ATSS epochs: focal loss (alpha .25, gamma 2) / num positives, GIoU weighted by
    centerness / sum of centerness, recomputed naively."""
    images, targets = one_gt_batch(gen)
    out = model(images)
    losses = model.loss_by_feat(out, targets, epoch=0)
    tg = model.get_targets(out, targets, epoch=0)
    B = images.shape[0]
    p = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, 3) for s in out["cls_scores"]], 1)
    boxes = torch.cat([b.permute(0, 2, 3, 1).reshape(B, -1, 4) for b in out["bbox_preds"]], 1)
    p = p.detach().double()
    fg = tg["fg_mask"]
    y = torch.zeros_like(p)
    y[fg, tg["labels"][fg]] = 1
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    focal = ((0.25 * y + 0.75 * (1 - y)) * (y * (1 - p) + (1 - y) * p) ** 2 * bce).sum()
    npos = int(fg.sum())
    assert npos > 0
    anchors = tg["anchors"].expand(B, -1, 4)[fg]
    c = centerness_target(anchors, tg["boxes"][fg]).double()
    giou = torchvision.ops.generalized_box_iou(boxes[fg].detach().double(),
                                               tg["boxes"][fg].double()).diagonal()
    torch.testing.assert_close(losses["loss_cls"].double(), focal / max(npos, 1), rtol=1e-4,
                               atol=1e-7)
    torch.testing.assert_close(losses["loss_bbox"].double(),
                               2 * (c * (1 - giou)).sum() / max(float(c.sum()), 1.0),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("epoch", [0, 4])
def test_no_gt_gives_negative_cls_loss_only(model, gen, epoch):
    images = torch.randn(2, 3, 128, 128, generator=gen)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    model.zero_grad()
    losses = model.loss(images, [empty, empty], epoch=epoch)
    assert losses["loss_bbox"].item() == 0 and losses["loss_bbox"].requires_grad
    with torch.no_grad():
        p = torch.cat([s.permute(0, 2, 3, 1).reshape(-1, 3)
                       for s in model(images)["cls_scores"]]).double()
    weight = 0.75 if epoch < model.cfg.initial_epoch else 1.0  # (1 - alpha) of the focal loss
    neg = (weight * p ** 2 * -(1 - p).log()).sum()  # normaliser max(0, 1) = 1
    torch.testing.assert_close(losses["loss_cls"].double(), neg, rtol=1e-4, atol=1e-7)
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("epoch,anchor_type", [(0, "anchor_free"), (4, "anchor_free"),
                                               (4, "anchor_based")])
def test_model_loss_kernel_equals_reference(gen, epoch, anchor_type):
    """The whole training step (assignment, losses, backward) with our ops equals the one with
    the reference ops: losses to rtol 1e-4, every gradient to 1e-5 of its parameter's largest."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = build_model(small_cfg(anchor_type=anchor_type))
    spread_offsets(m.head, gen)
    images = torch.randn(2, 3, 128, 128, generator=gen)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 50.0, 120.0, 100.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[30.0, 40.0, 50.0, 64.0]]), "labels": torch.tensor([1])}]
    res = []
    for ops in ("kernel", "reference"):
        m.set_ops(ops)
        m.zero_grad()
        losses = m.loss(images, targets, epoch)
        losses["loss"].backward()
        res.append(({k: v.detach() for k, v in losses.items()},
                    {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (lk, gk), (lr, gr) = res
    assert lk["loss_bbox"] > 0
    for k in lk:
        torch.testing.assert_close(lk[k], lr[k], rtol=1e-4, atol=1e-6, msg=k)
    assert gk.keys() == gr.keys()
    for name in gk:
        scale = max(float(gr[name].abs().max()), 1e-3)
        torch.testing.assert_close(gk[name], gr[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("epoch", [0, 4])
def test_loss_normalisers_are_averaged_over_processes(model, gen, monkeypatch, epoch):
    """With a process group, both normalisers are the mean over processes (all_reduce of
    value / world size): a fake group of 2 whose other process contributes 10."""
    import torch.distributed as dist

    images, targets = one_gt_batch(gen)
    with torch.no_grad():
        out = model(images)
        local = model.loss_by_feat(out, targets, epoch)
        tg = model.get_targets(out, targets, epoch)
    other = 10.0

    def fake_all_reduce(t, op=None):
        t.add_(other / 2)  # t holds value / 2 already

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    with torch.no_grad():
        shared = model.loss_by_feat(out, targets, epoch)
    if epoch < model.cfg.initial_epoch:
        cls_f, bbox_f = float(tg["fg_mask"].sum()), float(tg["weights"].sum())
    else:
        cls_f = bbox_f = float(tg["soft_target"].sum())
    for key, f in (("loss_cls", cls_f), ("loss_bbox", bbox_f)):
        expected = local[key] * max(f, 1.0) / max((f + other) / 2, 1.0)
        torch.testing.assert_close(shared[key], expected, rtol=1e-5, atol=1e-8, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("epoch", [0, 4])
def test_model_cuda_matches_cpu(gen, epoch):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = build_model(small_cfg())
    spread_offsets(m.head, gen)
    images, targets = one_gt_batch(gen)
    res = []
    for device in ("cpu", "cuda"):
        m.to(device).zero_grad()
        losses = m.loss(images.to(device), targets, epoch)
        losses["loss"].backward()
        res.append((losses["loss"].detach().cpu(),
                    {n: p.grad.cpu() for n, p in m.head.named_parameters()}))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-3, atol=1e-5)
    for name in res[0][1]:
        scale = max(float(res[0][1][name].abs().max()), 1e-3)
        torch.testing.assert_close(res[1][1][name], res[0][1][name], rtol=1e-3,
                                   atol=1e-4 * scale, msg=name)


# ---------------------------------------------------------------------------------------------
# ATSS
# ---------------------------------------------------------------------------------------------

# five anchors of side 10 in a row (centres x = 5, 15, ..., 45; y = 5)
ROW = torch.tensor([[10.0 * k, 0.0, 10.0 * k + 10, 10.0] for k in range(5)])


def test_atss_hand_case_threshold():
    # GT [0, 0, 18, 10]: IoUs 100/180 = .5556, 80/200 = .4, 0, 0, 0 (all five candidates)
    # mean .19111, unbiased std .26741, threshold .45852: only anchor 0 (centre (5, 5) inside)
    gt = torch.tensor([[0.0, 0.0, 18.0, 10.0]])
    for topk in (5, 9):  # more than the level holds: min(topk, 5)
        assert atss_assign(ROW, [5], gt, topk=topk).tolist() == [0, -1, -1, -1, -1]
    # top-2 by distance (anchors 0, 1): mean .4778 + std .1100 > .5556: no positive at all
    assert atss_assign(ROW, [5], gt, topk=2).tolist() == [-1] * 5


def test_atss_hand_case_conflict_and_inside():
    # GT 1 = [0, 0, 10, 12] has IoU 100/120 = .8333 with anchor 0 (threshold .5393, positive);
    # anchor 0 is positive for both GTs and goes to GT 1, the higher IoU.
    gts = torch.tensor([[0.0, 0.0, 18.0, 10.0], [0.0, 0.0, 10.0, 12.0]])
    assert atss_assign(ROW, [5], gts, topk=5).tolist() == [1, -1, -1, -1, -1]
    # GT [0, 0, 5, 10]: IoU .5 with anchor 0 (above the threshold) but anchor 0's centre
    # x = 5 lies on the GT's border (distance 0 < 0.01): no positive
    assert atss_assign(ROW, [5], torch.tensor([[0.0, 0.0, 5.0, 10.0]]), topk=5).tolist() == \
        [-1] * 5
    # no GT
    assert atss_assign(ROW, [5], torch.zeros(0, 4), topk=5).tolist() == [-1] * 5


def brute_force_atss(anchors, num_level, gts, topk):
    """Plain-Python ATSS (loops over GTs and levels), an independent re-implementation."""
    A = len(anchors)
    best = [(-1.0, -1)] * A
    iou = torchvision.ops.box_iou(anchors.double(), gts.double())
    ac = ((anchors[:, :2] + anchors[:, 2:]) / 2).double()
    for g in range(len(gts)):
        gc = ((gts[g, :2] + gts[g, 2:]) / 2).double()
        d = ((ac - gc) ** 2).sum(1).sqrt()
        cand, start = [], 0
        for n in num_level:
            order = sorted(range(start, start + n), key=lambda a: (float(d[a]), a))
            cand += order[:min(topk, n)]
            start += n
        vals = [float(iou[a, g]) for a in cand]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        for a, v in zip(cand, vals):
            x, y = float(ac[a, 0]), float(ac[a, 1])
            inside = min(x - gts[g, 0], y - gts[g, 1], gts[g, 2] - x, gts[g, 3] - y) > 0.01
            if v >= mean + std and inside and v > best[a][0]:
                best[a] = (v, g)
    return [g for _, g in best]


def test_atss_matches_brute_force(gen):
    sizes = [(16, 16), (8, 8), (4, 4)]
    priors = grid_priors(sizes, (8, 16, 32))
    anchors = torch.cat(priors)
    # distinct random offsets avoid ties in distance (torch.topk's tie order is unspecified)
    anchors = anchors + torch.rand(len(anchors), 1, generator=gen) * 0.01
    xy = torch.rand(6, 2, generator=gen) * 100
    gts = torch.cat([xy, xy + 8 + torch.rand(6, 2, generator=gen) * 60], 1)
    got = atss_assign(anchors, [p.shape[0] for p in priors], gts, topk=9)
    assert got.tolist() == brute_force_atss(anchors, [p.shape[0] for p in priors], gts, 9)
    assert (got >= 0).sum() > 0


def test_centerness_target():
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0]])  # centre (10, 10)
    gt = torch.tensor([[4.0, 6.0, 30.0, 12.0]])  # l 6, r 20, t 4, b 2
    torch.testing.assert_close(centerness_target(anchors, gt),
                               torch.tensor([math.sqrt(6 / 20 * 2 / 4)]))


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------


def fake_outputs(B=1, C=3, size=128):
    """Head outputs with low scores and 16-px boxes, to be edited by the tests."""
    cls = [torch.full((B, C, size // s, size // s), 0.01) for s in STRIDES]
    boxes = []
    for s in STRIDES:
        n = size // s
        i, j = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
        boxes.append(torch.stack([j * s - 8, i * s - 8, j * s + 8, i * s + 8])[None]
                     .repeat(B, 1, 1, 1))
    return {"cls_scores": cls, "bbox_preds": boxes}


def test_predict_original_coordinates_nms_and_limits(model):
    out = fake_outputs()
    # level 0: a detection at (2, 3) (box [16, 8, 32, 24] + 8 px to the right) and an
    # overlapping weaker duplicate of the same class, plus one of another class
    out["bbox_preds"][0][0, :, 2, 3] = torch.tensor([16.0, 8.0, 40.0, 24.0])
    out["bbox_preds"][0][0, :, 2, 4] = torch.tensor([17.0, 8.0, 41.0, 24.0])
    out["cls_scores"][0][0, 1, 2, 3] = 0.9
    out["cls_scores"][0][0, 1, 2, 4] = 0.8  # IoU 23/25 > 0.6 with the first: suppressed
    out["cls_scores"][0][0, 2, 2, 4] = 0.7  # other class: kept
    # level 2: a box reaching outside the image, clipped to the original size
    out["bbox_preds"][2][0, :, 3, 3] = torch.tensor([100.0, 90.0, 140.0, 130.0])
    out["cls_scores"][2][0, 0, 3, 3] = 0.6
    meta = {"scale_factor": 2.0, "orig_size": (60, 64)}
    res = model.predict_by_feat(out, [meta])[0]
    assert res["labels"].tolist() == [1, 2, 0]
    torch.testing.assert_close(res["scores"], torch.tensor([0.9, 0.7, 0.6]))
    torch.testing.assert_close(res["boxes"], torch.tensor([[8.0, 4.0, 20.0, 12.0],
                                                           [8.5, 4.0, 20.5, 12.0],
                                                           [50.0, 45.0, 64.0, 60.0]]))
    # (w, h) scale factors, max_per_img and the score threshold
    cfg = model.cfg
    old = cfg.max_per_img, cfg.score_thr
    try:
        cfg.max_per_img = 1
        res = model.predict_by_feat(out, [{"scale_factor": (2.0, 4.0), "orig_size": (60, 64)}])
        torch.testing.assert_close(res[0]["boxes"], torch.tensor([[8.0, 2.0, 20.0, 6.0]]))
        cfg.max_per_img, cfg.score_thr = 100, 0.95
        assert model.predict_by_feat(out, [meta])[0]["boxes"].shape == (0, 4)
    finally:
        cfg.max_per_img, cfg.score_thr = old


def test_predict_nms_pre_is_per_level(model):
    out = fake_outputs()
    # 5 disjoint boxes on level 0 with scores .5 ... .9; nms_pre 2 keeps the best two
    for k in range(5):
        out["bbox_preds"][0][0, :, 2 * k, 2 * k] = torch.tensor([16.0 * k, 16.0 * k,
                                                                   16.0 * k + 10, 16.0 * k + 10])
        out["cls_scores"][0][0, 0, 2 * k, 2 * k] = 0.5 + 0.1 * k
    out["cls_scores"][1][0, 0, 1, 1] = 0.55  # another level keeps its own quota
    old = model.cfg.nms_pre
    try:
        model.cfg.nms_pre = 2
        res = model.predict_by_feat(out, [{"scale_factor": 1.0, "orig_size": (128, 128)}])[0]
    finally:
        model.cfg.nms_pre = old
    torch.testing.assert_close(res["scores"], torch.tensor([0.9, 0.8, 0.55]))


def test_predict_end_to_end(model, gen):
    images = torch.randn(2, 3, 128, 256, generator=gen)
    metas = [{"scale_factor": 0.5, "orig_size": (256, 512)},
             {"scale_factor": 0.25, "orig_size": (512, 1024)}]
    old = model.cfg.score_thr
    model.eval()
    try:
        model.cfg.score_thr = 0.0  # untrained scores are ~0.01
        res = model.predict(images, metas)
    finally:
        model.cfg.score_thr = old
        model.train()
    assert len(res) == 2
    for r, meta in zip(res, metas):
        n = r["boxes"].shape[0]
        assert 0 < n <= model.cfg.max_per_img
        assert r["scores"].shape == (n,) and r["labels"].dtype == torch.int64
        h, w = meta["orig_size"]
        assert (r["boxes"][:, 0::2] <= w).all() and (r["boxes"][:, 1::2] <= h).all()
        assert (r["boxes"] >= 0).all()
        assert (r["scores"][:-1] >= r["scores"][1:]).all()


# ---------------------------------------------------------------------------------------------
# configuration and backbone
# ---------------------------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    cfg = small_cfg(anchor_type="anchor_based", ops="reference")
    assert TOODConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TOODConfig.from_dict({"num_clases": 3})
    with pytest.raises(ValueError, match="ops"):
        build_model(small_cfg(ops="fast"))
    with pytest.raises(ValueError, match="head"):
        build_model(small_cfg(head="fcos"))
    with pytest.raises(FileNotFoundError):
        build_model(small_cfg(weights="/nonexistent/resnet18.pth"))


def test_backbone_weights_file_and_freezing(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    m = build_model(small_cfg(weights=str(path)))
    assert isinstance(m, TOOD)
    torch.testing.assert_close(m.backbone.layer3[0].conv1.weight, net.layer3[0].conv1.weight)
    # with weights: mmdetection's frozen_stages=1 and norm_eval
    assert not any(p.requires_grad for p in m.backbone.stem.parameters())
    assert not any(p.requires_grad for p in m.backbone.layer1.parameters())
    assert all(p.requires_grad for p in m.backbone.layer2.parameters())
    m.train()
    assert not m.backbone.layer3[0].bn1.training and m.head.training
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="do not match"):
        build_model(small_cfg(weights=str(tmp_path / "bad.pth")))


# ---------------------------------------------------------------------------------------------
# inference parity with mmdetection's post-processing
# ---------------------------------------------------------------------------------------------


def _mmdet_nms(boxes, scores, iou_thr):
    """mmcv's CPU ``nms`` (offset 0): indices sorted by ``scores.sort(descending=True)``, each
    kept box suppresses the later ones with inter / (area_i + area_j - inter) > iou_thr."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(0, descending=True)[1]
    select = torch.ones(len(order), dtype=torch.bool)
    for a in range(len(order)):
        if not select[a]:
            continue
        i, rest = order[a], order[a + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        select[a + 1:] &= ~(ovr > iou_thr)
    return order[select]


def _mmdet_tood_postprocess(cls_scores, bbox_preds, img_meta, score_thr, nms_pre, iou_thr,
                            max_per_img, min_bbox_size=0):
    """Transcription of mmdetection 3.3's TOOD inference for one image (``rescale=True``,
    ``with_nms=True``): ``TOODHead._predict_by_feat_single`` (per level
    ``filter_scores_and_topk`` on the P_align scores; boxes already decoded, no clipping),
    ``BaseDenseHead._bbox_post_process`` (rescale by ``1 / scale_factor``, the min_bbox_size
    filter, ``batched_nms``, ``[:max_per_img]``), mmcv's ``batched_nms`` (classes moved apart by
    ``label * (max + 1)``; one nms below split_thr=10000 boxes). cls_scores [(C, H, W)],
    bbox_preds [(4, H, W)] xyxy input pixels."""
    mlvl_bboxes, mlvl_scores, mlvl_labels = [], [], []
    for cls_score, bbox_pred in zip(cls_scores, bbox_preds):
        C = cls_score.shape[0]
        bbox_pred = bbox_pred.permute(1, 2, 0).reshape(-1, 4)
        scores = cls_score.permute(1, 2, 0).reshape(-1, C)
        valid_mask = scores > score_thr
        scores = scores[valid_mask]
        valid_idxs = torch.nonzero(valid_mask)
        num_topk = min(nms_pre, valid_idxs.size(0))
        scores, idxs = scores.sort(descending=True)
        scores = scores[:num_topk]
        keep_idxs, labels = valid_idxs[idxs[:num_topk]].unbind(dim=1)
        mlvl_bboxes.append(bbox_pred[keep_idxs])
        mlvl_scores.append(scores)
        mlvl_labels.append(labels)
    bboxes, scores, labels = (torch.cat(v) for v in (mlvl_bboxes, mlvl_scores, mlvl_labels))
    scale_factor = [1 / s for s in img_meta["scale_factor"]]
    bboxes = bboxes * bboxes.new_tensor(scale_factor).repeat((1, 2))
    if min_bbox_size >= 0:
        w, h = bboxes[:, 2] - bboxes[:, 0], bboxes[:, 3] - bboxes[:, 1]
        valid = (w > min_bbox_size) & (h > min_bbox_size)
        if not valid.all():
            bboxes, scores, labels = bboxes[valid], scores[valid], labels[valid]
    if bboxes.numel() > 0:
        offsets = labels.to(bboxes) * (bboxes.max() + torch.tensor(1).to(bboxes))
        keep = _mmdet_nms(bboxes + offsets[:, None], scores, iou_thr)
        bboxes, scores, labels = bboxes[keep], scores[keep], labels[keep]
        bboxes, scores, labels = bboxes[:max_per_img], scores[:max_per_img], labels[:max_per_img]
    return {"boxes": bboxes, "scores": scores, "labels": labels}


def random_head_maps(gen, B, C, H, W, zero_frac=0.1):
    """Head outputs of a random TOOD head: distinct scores (no ties: ties are ordered by each
    library's sort), boxes of 1-4 strides per side around the location (leaving the image at
    the borders), a ``zero_frac`` of the locations with x1 = x2 = 0 (both x sides sampled
    outside the map) and as many with y1 = y2 = 0."""
    cls, boxes = [], []
    for s in STRIDES:
        h, w = H // s, W // s
        n = B * C * h * w
        v = (torch.randperm(n, generator=gen).double() + 0.5
             + 0.4 * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)) / n
        cls.append((v ** 1.5).float().reshape(B, C, h, w))
        i, j = torch.meshgrid(torch.arange(h) * float(s), torch.arange(w) * float(s),
                              indexing="ij")
        ltrb = torch.exp(torch.rand(B, 4, h, w, generator=gen) * math.log(4.0)) * s
        b = torch.stack([j - ltrb[:, 0], i - ltrb[:, 1], j + ltrb[:, 2], i + ltrb[:, 3]], 1)
        zx = torch.rand(B, h, w, generator=gen) < zero_frac
        zy = torch.rand(B, h, w, generator=gen) < zero_frac
        b[:, 0][zx], b[:, 2][zx] = 0.0, 0.0
        b[:, 1][zy], b[:, 3][zy] = 0.0, 0.0
        boxes.append(b)
    return {"cls_scores": cls, "bbox_preds": boxes}


def _near_threshold(dets_input, thr, margin):
    """Whether two same-class candidates have an IoU within ``margin`` of the NMS threshold,
    where float rounding (ours divides by the scale factor, mmdetection multiplies by its
    reciprocal; different class offsets) may decide."""
    boxes, labels = dets_input
    for c in labels.unique():
        b = boxes[labels == c].double()
        iou = torchvision.ops.box_iou(b, b)
        if ((iou - thr).abs() < margin).any():
            return True
    return False


def _ties_ordered(det: dict) -> dict:
    """``det`` (scores descending) with the detections of equal score ordered by label, then
    by x1, y1 (a stable sort per key, the most significant last)."""
    idx = torch.arange(len(det["scores"]))
    for key in (det["boxes"][:, 1], det["boxes"][:, 0], det["labels"].double(),
                -det["scores"].double()):
        idx = idx[torch.sort(key[idx], stable=True).indices]
    return {k: v[idx] for k, v in det.items()}


@pytest.mark.parametrize("max_per_img", [100, 100000])
def test_predict_equals_mmdetection_postprocess(model, gen, max_per_img):
    """With clip_to_image=False (and min_bbox_size 0, mmdetection's TOOD test_cfg), predict's
    detections (scores, labels exactly; boxes to float32 rounding, exactly for power-of-two
    scale factors) equal the transcription of mmdetection's post-processing, uncut and top
    100; the inputs have zero-size boxes (dropped) and boxes leaving the image (kept)."""
    B, C, H, W = 2, 3, 128, 256
    cfg = model.cfg
    old = (cfg.clip_to_image, cfg.min_bbox_size, cfg.max_per_img, cfg.nms_pre, cfg.score_thr,
           cfg.iou_thr)
    metas = [{"scale_factor": (0.8, 0.6), "ori_shape": (213, 320)},  # mmdetection's keys
             {"scale_factor": (0.5, 0.25), "ori_shape": (512, 512)}]
    for _ in range(20):  # redraw while rounding could decide an NMS comparison
        out = random_head_maps(gen, B, C, H, W)
        want = []
        for b in range(B):
            want.append(_mmdet_tood_postprocess([s[b] for s in out["cls_scores"]],
                                                [x[b] for x in out["bbox_preds"]], metas[b],
                                                0.05, 200, 0.6, max_per_img))
        cand = [_mmdet_tood_postprocess([s[b] for s in out["cls_scores"]],
                                        [x[b] for x in out["bbox_preds"]], metas[b], 0.05, 200,
                                        2.0, 10 ** 9) for b in range(B)]  # all, no suppression
        if not any(_near_threshold((c["boxes"], c["labels"]), 0.6, 1e-4) for c in cand):
            break
    else:
        pytest.fail("no input without near-threshold IoUs in 20 draws")
    try:
        cfg.clip_to_image, cfg.min_bbox_size, cfg.max_per_img = False, 0.0, max_per_img
        cfg.nms_pre, cfg.score_thr, cfg.iou_thr = 200, 0.05, 0.6
        got = model.predict_by_feat(out, metas)
    finally:
        (cfg.clip_to_image, cfg.min_bbox_size, cfg.max_per_img, cfg.nms_pre, cfg.score_thr,
         cfg.iou_thr) = old
    for b, (g, w) in enumerate(zip(got, want)):
        # detections of exactly equal score (sigmoids near 1 are 6e-8 apart: ties happen, seed
        # 2111112105) come in each sort's own order: compared in one order of the ties
        g, w = _ties_ordered(g), _ties_ordered(w)
        assert len(w["scores"]) > 0 and torch.equal(g["labels"], w["labels"])
        assert torch.equal(g["scores"], w["scores"])
        if b == 1:  # 1 / 0.5 and 1 / 0.25 are exact: same boxes bit for bit
            assert torch.equal(g["boxes"], w["boxes"])
        else:
            torch.testing.assert_close(g["boxes"], w["boxes"], rtol=3e-7, atol=0)
        boxes = g["boxes"]
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()  # no zero-size box
        if max_per_img == 100:
            assert len(w["scores"]) == 100
        else:  # uncut: boxes leaving the image are kept (mmdetection does not clip)
            assert len(w["scores"]) > 100
            h, w_ = metas[b]["ori_shape"]
            assert ((boxes[:, :2] < 0).any(1) | (boxes[:, 2] > w_) | (boxes[:, 3] > h)).any()
    # the candidates held zero-size boxes, which the filter removed
    n_zero = sum(int(((x[:, 2] <= x[:, 0]) | (x[:, 3] <= x[:, 1])).sum())
                 for x in out["bbox_preds"])
    assert n_zero > 0


def test_predict_meta_keys_and_errors(model, gen):
    """mmdetection's meta keys (ori_shape, (w, h) or (w, h, w, h) scale factors) give what
    orig_size gives; conflicting or malformed metas, and clipping without a size, are refused
    with the argument named."""
    import numpy as np

    out = random_head_maps(gen, 2, 3, 128, 128)
    ours = [{"scale_factor": (0.5, 0.4), "orig_size": (320, 256)},
            {"scale_factor": 0.75, "orig_size": (170, 171)}]
    mmdet3 = [{"scale_factor": (0.5, 0.4), "ori_shape": (320, 256), "img_shape": (128, 128)},
              {"scale_factor": (0.75, 0.75), "ori_shape": (170, 171, 3)}]
    mmdet2 = [{"scale_factor": np.array([0.5, 0.4, 0.5, 0.4], np.float32),
               "ori_shape": (320, 256, 3)},
              {"scale_factor": np.array([0.75] * 4, np.float32), "ori_shape": (170, 171),
               "orig_size": (170, 171)}]
    want = model.predict_by_feat(out, ours)
    assert all(len(w["scores"]) > 0 for w in want)
    for metas in (mmdet3, mmdet2):
        for g, w in zip(model.predict_by_feat(out, metas), want):
            for k in ("boxes", "scores", "labels"):
                assert torch.equal(g[k], w[k]), k
    # the size is used: boxes within (w, h) = (256, 320) resp. (171, 170)
    assert (want[0]["boxes"][:, 0::2] <= 256).all() and (want[1]["boxes"][:, 1::2] <= 170).all()
    bad = [({"scale_factor": 1.0, "orig_size": (128, 128), "ori_shape": (128, 127)}, "disagree"),
           ({"scale_factor": (1.0, 1.0, 1.0), "orig_size": (128, 128)},
            r"metas\[0\]\['scale_factor'\]"),
           ({"scale_factor": 0.0, "orig_size": (128, 128)}, "scale_factor"),
           ({"scale_factor": 1.0, "orig_size": (128,)}, "orig_size"),
           ({"scale_factor": 1.0}, "clip_to_image=True needs")]
    for meta, match in bad:
        with pytest.raises(ValueError, match=match):
            model.predict_by_feat(out, [meta, ours[1]])
    with pytest.raises(ValueError, match="list of 2"):
        model.predict_by_feat(out, ours[:1])
    old = model.cfg.clip_to_image
    try:  # without clipping no size is needed
        model.cfg.clip_to_image = False
        res = model.predict_by_feat(out, [{"scale_factor": 0.5}, {}])
    finally:
        model.cfg.clip_to_image = old
    assert all(len(r["scores"]) > 0 for r in res)


def test_one_checkpoint_loader(model, tmp_path):
    """engine.model_from_checkpoint reads both checkpoint layouts (export.load_model is it);
    configs written before min_bbox_size / clip_to_image existed get their defaults."""
    from tood_ext.engine import model_from_checkpoint
    from tood_ext.export import load_model

    old_cfg = {k: v for k, v in model.cfg.to_dict().items()
               if k not in ("min_bbox_size", "clip_to_image")}
    paths = [tmp_path / "engine.pth", tmp_path / "plain.pth"]
    torch.save({"model_config": old_cfg, "model": model.state_dict(), "epoch": 3}, paths[0])
    torch.save({"config": old_cfg, "model": model.state_dict()}, paths[1])
    for path in paths:
        for m in (model_from_checkpoint(str(path), score_thr=0.3)[0],
                  load_model(str(path), score_thr=0.3)):
            assert not m.training and m.cfg.score_thr == 0.3
            assert m.cfg.min_bbox_size == 0.0 and m.cfg.clip_to_image is True
            for k, v in model.state_dict().items():
                assert torch.equal(m.state_dict()[k], v), k
    torch.save({"model": model.state_dict()}, paths[1])
    for load in (model_from_checkpoint, load_model):
        with pytest.raises(ValueError, match="model_config"):
            load(str(paths[1]))
