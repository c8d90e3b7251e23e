"""Tests of tood_ext.analysis (alignment report, hand-made cases with known PCC and counts, edge
cases, the model runner and the CLI), of the ATSS baseline head (shapes, gradients, losses vs
independent formulas, kernel vs reference ops, inference score) and of the ablation's arm
configurations. Small models (ResNet-18, 32 channels, 128-pixel images): well under a minute.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import torchvision

from tood_ext.analysis import (alignment_report, average_ranks, box_iou_np, classify_detections,
                               pearson, postprocess)
from tood_ext.models import ATSS, TOOD, ATSSHead, TOODConfig, build_model, centerness_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRIDES = (8, 16, 32, 64, 128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: on 2 shared, busy cores two threads made the small
    model steps 2-40x slower (OpenMP workers waiting on each other); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hbox(iou: float, x0: float = 0.0) -> list:
    """A box with IoU ``iou`` with the GT [x0, 0, x0 + 10, 10]: same width, height 10 * iou."""
    return [x0, 0.0, x0 + 10.0, 10.0 * iou]


GT = {"boxes": np.array([[0.0, 0.0, 10.0, 10.0]]), "labels": np.array([0])}
NO_DETS = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}


def report1(raw, gt=GT, **kw):
    return alignment_report([dict(raw, detections=raw.get("detections", NO_DETS))], [gt], **kw)


# ---------------------------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------------------------


def test_box_iou_np_matches_torchvision(gen):
    a = torch.rand(7, 2, generator=gen, dtype=torch.float64) * 50
    a = torch.cat([a, a + 1 + torch.rand(7, 2, generator=gen, dtype=torch.float64) * 30], 1)
    b = torch.rand(5, 2, generator=gen, dtype=torch.float64) * 50
    b = torch.cat([b, b + 1 + torch.rand(5, 2, generator=gen, dtype=torch.float64) * 30], 1)
    np.testing.assert_allclose(box_iou_np(a.numpy(), b.numpy()),
                               torchvision.ops.box_iou(a, b).numpy(), rtol=1e-12, atol=1e-12)
    assert box_iou_np(np.zeros((0, 4)), b.numpy()).shape == (0, 5)
    assert box_iou_np([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0  # empty union: 0, no NaN


def test_average_ranks_and_pearson():
    np.testing.assert_array_equal(average_ranks([0.3, 0.9, 0.3, 0.1]), [2.5, 1, 2.5, 4])
    assert pearson([1, 2, 3], [1.5, 1.5, 3]) == pytest.approx(1.5 / math.sqrt(3), abs=1e-12)
    assert pearson([1], [1]) is None and pearson([1, 1], [1, 2]) is None
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------
# alignment report, before NMS
# ---------------------------------------------------------------------------------------------


def test_pcc_and_top_iou_hand_case():
    """IoUs 0.9, 0.8, 0.5, 0.3 and class-0 scores 0.2, 0.9, 0.5, 0.1: score ranks (3, 1, 2, 4),
    IoU ranks (1, 2, 3, 4), Spearman 1 - 6 * 6 / (4 * 15) = 0.4; mean IoU of the top 2 by
    score = (0.8 + 0.5) / 2. The class-1 scores (high) must not be used."""
    raw = {"boxes": np.array([hbox(0.9), hbox(0.8), hbox(0.5), hbox(0.3)]),
           "scores": np.array([[0.2, 0.99], [0.9, 0.0], [0.5, 0.98], [0.1, 0.97]])}
    r = report1(raw, top_iou_k=2, per_instance=True, return_pairs=True)
    assert r["pre_nms"]["pcc"] == pytest.approx(0.4, abs=1e-12)
    assert r["pre_nms"]["top_iou"] == pytest.approx(0.65, abs=1e-12)
    assert r["instances"] == [{"image": 0, "gt": 0, "label": 0, "num_assigned": 4,
                               "num_used": 4, "pcc": r["pre_nms"]["pcc"],
                               "top_iou": r["pre_nms"]["top_iou"]}]
    assert r["pairs"]["score"] == [0.9, 0.5, 0.2, 0.1]  # sorted by score
    np.testing.assert_allclose(r["pairs"]["iou"], [0.8, 0.5, 0.9, 0.3], atol=1e-12)
    assert report1(raw)["pre_nms"]["top_iou"] == pytest.approx(0.625, abs=1e-12)  # all 4
    # a perfectly aligned detector: PCC 1
    raw["scores"][:, 0] = [0.9, 0.8, 0.5, 0.3]
    assert report1(raw)["pre_nms"]["pcc"] == pytest.approx(1.0)


def test_labels_mode_and_geometric_assignment():
    """(N,) scores: a prediction counts only for GTs of its label; a box belongs to the GT it
    overlaps most (ties: lower GT index), never to two GTs; IoU 0 boxes belong to none."""
    gt = {"boxes": np.array([[0.0, 0, 10, 10], [5.0, 0, 15, 10]]), "labels": np.array([0, 0])}
    boxes = np.array([
        [0.0, 0, 10, 10],   # IoU 1 with GT0, 1/3 with GT1 -> GT0
        [5.0, 0, 15, 10],   # -> GT1
        [2.5, 0, 12.5, 10],  # IoU 0.6 with both: tie -> GT0
        [0.0, 0, 10, 8],    # -> GT0, but label 1: not counted for GT0 (class 0)
        [50.0, 50, 60, 60],  # IoU 0 with both -> none
    ])
    raw = {"boxes": boxes, "scores": np.array([0.9, 0.8, 0.7, 0.95, 0.99]),
           "labels": np.array([0, 0, 0, 1, 0])}
    r = report1(raw, gt, per_instance=True)
    inst = r["instances"]
    assert [i["num_assigned"] for i in inst] == [2, 1]
    # GT0: predictions 0 (IoU 1, score .9) and 2 (IoU .6, score .7): PCC +1, top IoU 0.8
    assert inst[0]["pcc"] == pytest.approx(1.0) and inst[0]["top_iou"] == pytest.approx(0.8)
    # GT1: one prediction: PCC undefined, top IoU 1
    assert inst[1]["pcc"] is None and inst[1]["top_iou"] == pytest.approx(1.0)
    assert r["pre_nms"]["pcc_count"] == 1 and r["pre_nms"]["top_iou"] == pytest.approx(0.9)
    assert r["pre_nms"]["mean_num_used"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="labels"):
        report1({"boxes": boxes, "scores": raw["scores"]}, gt)


def test_ties_use_mean_ranks_and_lower_index_first():
    # score ranks (1, 2, 3), IoU ranks (1.5, 1.5, 3): r = 1.5 / sqrt(3)
    raw = {"boxes": np.array([hbox(0.5), hbox(0.5), hbox(0.2)]),
           "scores": np.array([[0.9], [0.8], [0.7]])}
    assert report1(raw)["pre_nms"]["pcc"] == pytest.approx(1.5 / math.sqrt(3), abs=1e-12)
    # equal scores: PCC undefined; top-1 by score (ties: lower index) is prediction 0
    raw = {"boxes": np.array([hbox(0.1), hbox(0.2), hbox(0.3)]),
           "scores": np.full((3, 1), 0.5)}
    r = report1(raw, top_iou_k=1)
    assert r["pre_nms"]["pcc"] is None and r["pre_nms"]["pcc_count"] == 0
    assert r["pre_nms"]["top_iou"] == pytest.approx(0.1)


def test_topk_against_independent_numpy(gen):
    """Random predictions around 3 GTs, topk 50 of ~80 candidates each: per GT, PCC of the
    double-argsort ranks of the top 50 (no ties in continuous data) with np.corrcoef, and the
    mean IoU of the top 10."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    gts = np.array([[10.0, 10, 60, 50], [100, 20, 160, 90], [40, 120, 90, 190]])
    labels = np.array([2, 0, 2])
    centres = np.repeat((gts[:, :2] + gts[:, 2:]) / 2, 90, 0) + rng.normal(0, 12, (270, 2))
    half = np.repeat((gts[:, 2:] - gts[:, :2]) / 2, 90, 0) * rng.uniform(0.5, 1.5, (270, 2))
    boxes = np.concatenate([centres - half, centres + half], 1)
    scores = rng.uniform(0, 1, (270, 3))
    r = alignment_report([{"boxes": boxes, "scores": scores, "detections": NO_DETS}],
                         [{"boxes": gts, "labels": labels}], per_instance=True)
    iou = box_iou_np(boxes, gts)
    owner = np.where(iou.max(1) > 0, iou.argmax(1), -1)
    for g, inst in enumerate(r["instances"]):
        idx = np.nonzero(owner == g)[0]
        s, u = scores[idx, labels[g]], iou[idx, g]
        top = np.argsort(-s)[:50]
        assert len(idx) > 50 and inst["num_used"] == 50
        rs = np.argsort(np.argsort(-s[top]))
        ru = np.argsort(np.argsort(-u[top]))
        assert inst["pcc"] == pytest.approx(np.corrcoef(rs, ru)[0, 1], abs=1e-12)
        assert inst["top_iou"] == pytest.approx(u[top[:10]].mean(), abs=1e-12)
    assert r["pre_nms"]["pcc"] == pytest.approx(np.mean([i["pcc"] for i in r["instances"]]))


def test_edge_cases_no_predictions_no_gts():
    # a GT without any overlapping prediction; an image without GTs; an image without anything
    raws = [{"boxes": np.array([[50.0, 50, 60, 60]]), "scores": np.array([[0.9]]),
             "detections": {"boxes": np.array([[50.0, 50, 60, 60]]), "scores": np.array([0.9]),
                            "labels": np.array([0])}},
            {"boxes": np.array([hbox(0.5)]), "scores": np.array([[0.4]]),
             "detections": {"boxes": np.array([hbox(0.5)]), "scores": np.array([0.4]),
                            "labels": np.array([0])}},
            {"boxes": np.zeros((0, 4)), "scores": np.zeros((0, 1)), "detections": NO_DETS}]
    empty_gt = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}
    r = alignment_report(raws, [GT, empty_gt, empty_gt])
    assert r["num_images"] == 3 and r["num_gts"] == 1
    assert r["pre_nms"] == {"pcc": None, "pcc_count": 0, "top_iou": None, "top_iou_count": 0,
                            "gts_without_predictions": 1, "mean_num_used": 0.0}
    post = r["post_nms"]
    assert (post["correct"], post["redundant"], post["error"], post["background"]) == (0, 0, 0, 2)
    assert post["recall"] == 0.0 and post["background_per_image"] == pytest.approx(2 / 3)
    # nothing at all: every mean undefined, still valid JSON
    r = alignment_report([], [])
    assert r["num_images"] == 0 and r["pre_nms"]["pcc"] is None
    assert r["post_nms"]["recall"] is None
    json.loads(json.dumps(r, allow_nan=False))


# ---------------------------------------------------------------------------------------------
# alignment report, after NMS
# ---------------------------------------------------------------------------------------------

NMS_GTS = {"boxes": np.array([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]),
           "labels": np.array([0, 0, 1])}
NMS_DETS = [  # box, score, label, expected kind
    ([0, 0, 10, 10], 0.9, 0, "correct"),      # GT0
    ([0, 0, 10, 8], 0.8, 0, "redundant"),     # IoU .8 with GT0, matched already
    ([20, 0, 30, 4], 0.7, 0, "error"),        # IoU .4 with GT1
    ([20, 0, 30, 6], 0.6, 0, "correct"),      # IoU .6 with GT1, still unmatched
    ([40, 0, 50, 10], 0.5, 0, "background"),  # GT2 is class 1: IoU 0 with its class
    ([40, 0, 50, 10], 0.4, 1, "correct"),     # GT2
    ([0, 0, 10, 1], 0.3, 0, "background"),    # IoU exactly 0.1: not > 0.1
    ([0, 0, 10, 5], 0.2, 0, "redundant"),     # IoU exactly 0.5 with matched GT0
]
KINDS = ("correct", "redundant", "error", "background")


def _dets(order):
    d = [NMS_DETS[i] for i in order]
    return {"boxes": np.array([x[0] for x in d], float), "scores": np.array([x[1] for x in d]),
            "labels": np.array([x[2] for x in d])}


def test_post_nms_counts_hand_case(gen):
    order = torch.randperm(len(NMS_DETS), generator=gen).tolist()  # input order is irrelevant
    dets = _dets(order)
    kinds = classify_detections(dets["boxes"], dets["scores"], dets["labels"],
                                NMS_GTS["boxes"], NMS_GTS["labels"])
    assert [KINDS[k] for k in kinds] == [NMS_DETS[i][3] for i in order]
    raw = {"boxes": np.zeros((0, 4)), "scores": np.zeros((0, 2)), "detections": dets}
    post = alignment_report([raw], [NMS_GTS])["post_nms"]
    assert {k: post[k] for k in KINDS} == {"correct": 3, "redundant": 2, "error": 1,
                                           "background": 2}
    assert post["num_dets"] == 8 and post["recall"] == 1.0
    # score threshold: detections below 0.35 are not counted
    post = alignment_report([raw], [NMS_GTS], det_score_thr=0.35)["post_nms"]
    assert {k: post[k] for k in KINDS} == {"correct": 3, "redundant": 1, "error": 1,
                                           "background": 1}


def test_post_nms_best_per_gt():
    """The highest-scoring detection of a GT is its correct one, even with a lower IoU; a
    detection takes the unmatched GT of highest IoU, leaving the other GT to a later one."""
    gts = np.array([[0.0, 0, 10, 10], [0.0, 0, 10, 9]])  # two overlapping GTs of one class
    dets = np.array([[0.0, 0, 10, 9.5], [0.0, 0, 10, 10], [0.0, 0, 10, 6]])
    # det0: IoU .95 / .947 -> GT0; det1: IoU 1 with GT0 (matched), .9 with GT1 -> GT1;
    # det2: IoU .6 / .667, both matched -> redundant
    kinds = classify_detections(dets, [0.9, 0.8, 0.7], [0, 0, 0], gts, [0, 0])
    assert kinds.tolist() == [0, 0, 1]
    kinds = classify_detections(dets[[1, 0]], [0.9, 0.8], [0, 0], gts[:1], [0])
    assert kinds.tolist() == [0, 1]


def test_detections_default_to_postprocess():
    """Without "detections", class-wise NMS of the raw predictions: a duplicate (IoU .8 > .6)
    is suppressed, a box of another class is not."""
    boxes = np.array([[0.0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 10]])
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]])
    det = postprocess(scores, boxes)
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert det["labels"].tolist() == [0, 1]
    gt = {"boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([0])}
    a = alignment_report([{"boxes": boxes, "scores": scores}], [gt])
    b = alignment_report([{"boxes": boxes, "scores": scores, "detections": det}], [gt])
    assert a["post_nms"] == b["post_nms"]
    assert (a["post_nms"]["correct"], a["post_nms"]["background"]) == (1, 1)
    # (N,) scores with labels and torch tensors work the same
    c = alignment_report([{"boxes": torch.tensor(boxes), "scores": torch.tensor([0.9, 0.8, 0.7]),
                           "labels": torch.tensor([0, 0, 1])}],
                         [{"boxes": torch.tensor(gt["boxes"]), "labels": torch.tensor([0])}])
    assert c["post_nms"] == a["post_nms"]


# ---------------------------------------------------------------------------------------------
# ATSS baseline head
# ---------------------------------------------------------------------------------------------


def small_cfg(**kw) -> TOODConfig:
    base = dict(num_classes=3, depth=18, fpn_channels=32, feat_channels=32, stacked_convs=2,
                num_groups=8, head="atss", initial_epoch=1)
    base.update(kw)
    return TOODConfig(**base)


def batch(gen, n_gt=(2, 0)):
    images = torch.randn(len(n_gt), 3, 128, 128, generator=gen)
    all_boxes = [[14.0, 20, 70, 64], [60, 50, 118, 120], [5, 80, 40, 124]]
    targets = [{"boxes": torch.tensor(all_boxes[:n]).reshape(-1, 4),
                "labels": torch.tensor([1, 2, 0][:n], dtype=torch.long)} for n in n_gt]
    return images, targets


@pytest.fixture(scope="module")
def atss_model():
    torch.manual_seed(0)
    return build_model(small_cfg())


@pytest.mark.parametrize("anchor_type", ["anchor_free", "anchor_based"])
def test_atss_head_shapes_and_gradients(anchor_type, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    head = ATSSHead(3, 16, 32, 2, STRIDES, anchor_type, num_groups=8)
    feats = [torch.randn(2, 16, 128 // s, 128 // s, generator=gen).requires_grad_()
             for s in STRIDES]
    out = head(feats)
    for lvl, f in enumerate(feats):
        hw = tuple(f.shape[-2:])
        assert out["cls_scores"][lvl].shape == out["cls_logits"][lvl].shape == (2, 3, *hw)
        assert out["bbox_preds"][lvl].shape == (2, 4, *hw)
        assert out["centerness"][lvl].shape == (2, 1, *hw)
        torch.testing.assert_close(out["cls_scores"][lvl], out["cls_logits"][lvl].sigmoid())
        b = out["bbox_preds"][lvl]
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    # initialisation (mmdetection): N(0, 0.01) convs, bias 0 but the cls prior logit(0.01)
    torch.testing.assert_close(head.atss_cls.bias, torch.full((3,), -math.log(99)))
    assert head.atss_centerness.bias.abs().max() == 0 and head.atss_reg.bias.abs().max() == 0
    for m in head.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert 0.005 < m.weight.std() < 0.02
    w = [torch.randn(x.shape, generator=gen) for k in ("cls_logits", "bbox_preds", "centerness")
         for x in out[k]]
    xs = [x for k in ("cls_logits", "bbox_preds", "centerness") for x in out[k]]
    sum((x * wi).sum() for x, wi in zip(xs, w)).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for f in feats:
        assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_build_model_dispatch_and_assigner_switch(atss_model, gen):
    assert isinstance(atss_model, ATSS) and isinstance(atss_model.head, ATSSHead)
    tood = build_model(small_cfg(head="tood"))
    assert type(tood) is TOOD
    assert TOODConfig.from_dict(small_cfg().to_dict()) == small_cfg()
    with pytest.raises(ValueError, match="head"):
        TOOD(small_cfg())  # the class and cfg.head must agree
    with pytest.raises(ValueError, match="head"):
        build_model(small_cfg(head="fcos"))
    # initial_epoch is the assigner switch: ATSS targets (no iou) before it, TAL's after it
    images, targets = batch(gen)
    with torch.no_grad():
        out = atss_model(images)
    assert atss_model.get_targets(out, targets, 0)["iou"] is None
    assert atss_model.get_targets(out, targets, 1)["iou"] is not None


def _focal(logits, onehot, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits.double())
    t = onehot.double()
    ce = -(t * torch.log(p) + (1 - t) * torch.log1p(-p))
    pt = p * t + (1 - p) * (1 - t)
    return ((alpha * t + (1 - alpha) * (1 - t)) * (1 - pt) ** gamma * ce).sum()


def test_atss_stage_loss_matches_independent_formulas(atss_model, gen):
    """ATSS stage: focal / #pos, 2 * centerness-weighted GIoU (torchvision) / sum centerness,
    centerness BCE / #pos, all recomputed in float64 from the head outputs and the targets."""
    images, targets = batch(gen)
    out = atss_model(images)
    losses = atss_model.loss_by_feat(out, targets, epoch=0)
    tg = atss_model.get_targets(out, targets, 0)
    fg, labels = tg["fg_mask"], tg["labels"]
    assert fg.sum() > 0 and tg["iou"] is None
    B, C = 2, 3
    logits = torch.cat([x.permute(0, 2, 3, 1).reshape(B, -1, C) for x in out["cls_logits"]], 1)
    boxes = torch.cat([x.permute(0, 2, 3, 1).reshape(B, -1, 4) for x in out["bbox_preds"]], 1)
    ctr = torch.cat([x.reshape(B, -1) for x in out["centerness"]], 1)
    stride = torch.cat([torch.full(((128 // s) ** 2,), float(s)) for s in STRIDES])
    onehot = torch.zeros_like(logits)
    onehot[fg, labels[fg]] = 1
    n_pos = fg.sum().double()
    c = centerness_target(tg["anchors"].expand(B, -1, 4)[fg].double(), tg["boxes"][fg].double())
    s = stride.expand(B, -1)[fg][:, None].double()
    giou = torchvision.ops.generalized_box_iou_loss(boxes[fg].double() / s,
                                                    tg["boxes"][fg].double() / s, eps=1e-6)
    x = ctr[fg].double()
    bce = (torch.clamp(x, min=0) - x * c + torch.log1p(torch.exp(-x.abs()))).sum()
    exp = {"loss_cls": _focal(logits, onehot) / n_pos,
           "loss_bbox": 2 * (c * giou).sum() / c.sum().clamp(min=1),
           "loss_centerness": bce / n_pos}
    for k, v in exp.items():
        torch.testing.assert_close(losses[k].double(), v, rtol=2e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(losses["loss"], sum(losses[k] for k in exp))


def test_tal_stage_loss(atss_model, gen):
    """TAL stage: cls = QFL(logits, t_hat) / sum t_hat -- equal to TOOD's QFL on the sigmoid
    probabilities -- and the box loss weighted by t_hat."""
    from tood_ext.models import quality_focal_loss

    images, targets = batch(gen)
    out = atss_model(images)
    losses = atss_model.loss_by_feat(out, targets, epoch=1)
    tg = atss_model.get_targets(out, targets, 1)
    fg = tg["fg_mask"]
    assert fg.sum() > 0
    probs = torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, 3) for x in out["cls_scores"]],
                      1).reshape(-1, 3)
    qfl = quality_focal_loss(probs.double(), tg["labels"].reshape(-1),
                             tg["soft_target"].reshape(-1).double())
    factor = tg["soft_target"].sum().clamp(min=1)
    torch.testing.assert_close(losses["loss_cls"].double(), qfl / factor.double(), rtol=1e-5,
                               atol=1e-7)
    assert losses["loss_bbox"] > 0 and losses["loss_centerness"] > 0


@pytest.mark.parametrize("epoch", [0, 1])
def test_atss_loss_kernel_equals_reference(gen, epoch):
    """Our ops (IoU in ATSS, TAL, GIoU loss) vs their pure-PyTorch twins: same losses and
    gradients in one training step of the ATSS-head detector."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = build_model(small_cfg(anchor_type="anchor_based" if epoch else "anchor_free"))
    images, targets = batch(gen, (3, 1))
    grads, vals = [], []
    for ops in ("kernel", "reference"):
        m.set_ops(ops)
        m.zero_grad()
        losses = m.loss(images, targets, epoch)
        losses["loss"].backward()
        vals.append({k: v.detach() for k, v in losses.items()})
        grads.append([p.grad.clone() for p in m.head.parameters()])
    for k in vals[0]:
        torch.testing.assert_close(vals[0][k], vals[1][k], rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_no_gt_gives_negative_cls_loss_only(atss_model, gen):
    images, targets = batch(gen, (0, 0))
    for epoch in (0, 1):
        losses = atss_model.loss(images, targets, epoch)
        assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0
        assert losses["loss_cls"] > 0 and torch.isfinite(losses["loss"])
        losses["loss"].backward()
        atss_model.zero_grad()


def test_atss_predict_multiplies_centerness(gen):
    """Score = sigmoid(cls) * sigmoid(centerness): with a constant centerness logit c the
    detections are TOOD's post-processing of sigmoid(cls), scores times sigmoid(c)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = build_model(small_cfg()).eval()
    with torch.no_grad():
        m.head.atss_cls.bias.fill_(-1.0)  # scores around 0.27: above score_thr
        m.head.atss_centerness.weight.zero_()
        m.head.atss_centerness.bias.fill_(0.3)
    images, _ = batch(gen)
    metas = [{"scale_factor": 1.0, "orig_size": (128, 128)}] * 2
    with torch.no_grad():
        out = m(images)
    dets = m.predict_by_feat(out, metas)
    ref = TOOD.predict_by_feat(m, {k: out[k] for k in ("cls_scores", "bbox_preds")}, metas)
    for d, r in zip(dets, ref):
        assert len(d["scores"]) > 0
        torch.testing.assert_close(d["scores"], r["scores"] * torch.sigmoid(torch.tensor(0.3)))
        torch.testing.assert_close(d["boxes"], r["boxes"])
        torch.testing.assert_close(d["labels"], r["labels"])


# ---------------------------------------------------------------------------------------------
# model runner, CLI, ablation configs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from tood_ext.data import CocoDetection, generate_synthetic_coco

    root = tmp_path_factory.mktemp("analysis_data")
    ann = generate_synthetic_coco(str(root / "val"), 3, seed=5, image_size=128, num_classes=3,
                                  max_objects=3, min_size=0.2, max_size=0.6)
    return root, CocoDetection(ann, str(root / "val" / "images"), scale=(128, 128))


@pytest.mark.parametrize("head", ["atss", "tood"])
def test_iter_raw_predictions(tiny_set, head):
    from tood_ext.analysis import analyze_model, iter_raw_predictions
    from tood_ext.data import collate

    _, ds = tiny_set
    torch.manual_seed(0)
    m = build_model(small_cfg(head=head, score_thr=0.0)).eval()
    items = list(iter_raw_predictions(m, ds, batch_size=3))  # the batch of the check below
    cls_items = list(iter_raw_predictions(m, ds, batch_size=2, score="cls"))
    assert len(items) == len(ds) == 3
    images, _, metas = collate([ds[i] for i in range(3)])
    with torch.no_grad():
        out = m(images)
        dets = m.predict(images, metas)
    A = sum((128 // s) ** 2 for s in STRIDES)
    dropped = 0
    for b, ((raw, gt), (craw, _)) in enumerate(zip(items, cls_items)):
        # raw boxes: original pixels, clipped; the anchors whose box is then zero-size (here:
        # those over the padding, right of / below the original image) are left out
        h, w = metas[b]["orig_size"]
        boxes = torch.cat([x[b].permute(1, 2, 0).reshape(-1, 4) for x in out["bbox_preds"]])
        boxes = boxes / metas[b]["scale_factor"]
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        dropped += int((~keep).sum())
        n = int(keep.sum())
        assert raw["scores"].shape == (n, 3) and raw["boxes"].shape == (n, 4) and n <= A
        np.testing.assert_allclose(raw["boxes"], boxes[keep].numpy(), rtol=1e-6)
        assert ((raw["boxes"][:, 2:] - raw["boxes"][:, :2]) > 0).all()
        for k in ("boxes", "scores", "labels"):
            np.testing.assert_allclose(raw["detections"][k], dets[b][k].numpy(), rtol=1e-5)
        probs = torch.cat([s[b].permute(1, 2, 0).reshape(-1, 3) for s in out["cls_scores"]])
        np.testing.assert_allclose(craw["scores"], probs[keep].numpy(), rtol=1e-4, atol=1e-6)
        if head == "atss":  # ranking score: cls * centerness
            ctr = torch.cat([c[b].reshape(-1) for c in out["centerness"]]).sigmoid()
            np.testing.assert_allclose(raw["scores"], (probs * ctr[:, None])[keep].numpy(),
                                       rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_allclose(raw["scores"], probs[keep].numpy(), rtol=1e-6)
        anns = [a for a in ds.coco.anns_by_image[metas[b]["image_id"]]]
        assert len(gt["boxes"]) == len(anns) > 0
    assert dropped > 0  # 19 (ATSS) and 27 (TOOD) of the 3 x 341 anchors: the filter is exercised
    r = analyze_model(m, ds, return_pairs=True)
    assert r["num_images"] == 3 and r["params"]["score"] == "nms"
    assert r["num_gts"] == sum(len(g["boxes"]) for _, g in items)
    json.loads(json.dumps(r, allow_nan=False))


@pytest.mark.parametrize("clip", [True, False])
def test_analysis_has_no_zero_size_boxes(tiny_set, clip):
    """Offsets that move both x sides of the first columns wholly outside the map give
    x1 = x2 = 0 (zeros read outside); neither the analysis's raw predictions, nor the
    detections it records, nor its own postprocess keep such boxes."""
    from tood_ext.analysis import iter_raw_predictions, postprocess
    from tood_ext.data import collate

    _, ds = tiny_set
    torch.manual_seed(0)
    m = build_model(small_cfg(head="tood", score_thr=0.0, clip_to_image=clip)).eval()
    with torch.no_grad():
        m.head.reg_offset_module[-1].weight.zero_()
        m.head.reg_offset_module[-1].bias.zero_()
        m.head.reg_offset_module[-1].bias[[1, 5]] = -6.0  # dx of x1 and of x2
    items = list(iter_raw_predictions(m, ds, batch_size=3))
    with torch.no_grad():
        out = m(collate([ds[i] for i in range(3)])[0])
    zero = [(b[:, 0] == 0) & (b[:, 2] == 0) for b in out["bbox_preds"]]
    assert sum(int(z.sum()) for z in zero) > 0  # the head does output zero-width boxes

    def zero_size(boxes):
        boxes = np.asarray(boxes).reshape(-1, 4)
        return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])

    for b, (raw, _) in enumerate(items):
        assert not zero_size(raw["boxes"]).any()
        assert len(raw["detections"]["scores"]) > 0
        assert not zero_size(raw["detections"]["boxes"]).any()
        scores = torch.cat([s[b].permute(1, 2, 0).reshape(-1, 3) for s in out["cls_scores"]])
        boxes = torch.cat([x[b].permute(1, 2, 0).reshape(-1, 4) for x in out["bbox_preds"]])
        assert zero_size(boxes).any()
        det = postprocess(scores, boxes, score_thr=0.0)
        assert len(det["scores"]) > 0 and not zero_size(det["boxes"]).any()
        unfiltered = postprocess(scores, boxes, score_thr=0.0, min_bbox_size=-1)
        assert zero_size(unfiltered["boxes"]).any()


def test_cli_analyze_two_checkpoints(tiny_set, tmp_path):
    from tood_ext.__main__ import main
    from tood_ext.engine import save_checkpoint

    root, ds = tiny_set
    ckpts = []
    for head in ("atss", "tood"):
        torch.manual_seed(0)
        cfg = small_cfg(head=head)
        path = str(tmp_path / head / "latest.pth")
        save_checkpoint(path, build_model(cfg), model_config=cfg,
                        classes={"names": ds.class_names, "cat_ids": ds.cat_ids,
                                 "scale": [128, 128]})
        ckpts.append(path)
    out = tmp_path / "an"
    reports = main(["analyze", "--checkpoint", *ckpts, "--data", str(root), "--out", str(out),
                    "--device", "cpu"])
    assert list(reports) == ["atss", "tood"]  # names from the checkpoints' folders
    saved = json.load(open(out / "report.json"))
    assert saved["atss"]["head"] == "atss" and saved["tood"]["num_images"] == 3
    assert (out / "score_vs_iou.png").stat().st_size > 1000


def test_ablation_arm_configs():
    sys.path.insert(0, ROOT)
    from benchmarks.ablation import ARMS, EXTRA_ARMS, arm_configs

    for mode in ("quick", "full"):
        arms = {name: (m, t) for name, m, t in arm_configs(mode, num_classes=4, seed=3)}
        assert list(arms) == [a[0] for a in ARMS + EXTRA_ARMS]
        for name, (m, _) in arms.items():  # M-first priors only in the opt-in arms
            assert (m.cls_prior, m.m_prior) == ((2e-4, 0.5) if "Mfirst" in name else
                                                (0.01, 0.01))
        epochs = arms["T-head+TAL"][1].epochs
        for name, (m, t) in arms.items():
            assert m.head == ("tood" if name.startswith("T-head") else "atss")
            if name.endswith("ATSS"):  # ATSS in every epoch
                assert m.initial_epoch >= t.epochs
            else:  # ATSS warm-up, then TAL for most epochs
                assert 0 <= m.initial_epoch < t.epochs
            assert t.seed == 3 and t.epochs == epochs
            assert (m.depth, m.fpn_channels) == (arms["T-head+TAL"][0].depth,
                                                 arms["T-head+TAL"][0].fpn_channels)


@pytest.mark.parametrize("priors", [(0.01, 0.01), (2e-4, 0.5)])
def test_ablation_head_factors(tiny_set, priors):
    """head_factors of an untrained T-head reads its priors back (P ~ cls_prior, M ~ m_prior
    everywhere); the parallel head has no M (None)."""
    sys.path.insert(0, ROOT)
    from benchmarks.ablation import head_factors
    from tood_ext.models import TOODConfig, build_model

    _, ds = tiny_set
    torch.manual_seed(0)
    kw = dict(num_classes=3, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=2,
              num_groups=4)
    model = build_model(TOODConfig(cls_prior=priors[0], m_prior=priors[1], **kw))
    f = head_factors(model, ds, batch_size=2)
    assert f["gts"] == sum(len(ds.coco.anns_by_image.get(im["id"], [])) for im in ds.images)
    assert f["P_true"] == pytest.approx(priors[0], rel=0.2)
    assert f["P_other"] == pytest.approx(priors[0], rel=0.2)
    assert f["M"] == pytest.approx(priors[1], rel=0.2)
    assert f["saturated"] == 0.0 and 0.0 <= f["confused"] <= 1.0
    assert head_factors(build_model(TOODConfig(head="atss", **kw)), ds) is None
