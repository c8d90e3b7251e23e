"""Drop-in adapters (``tood_ext.compat``) against the assigners they replace.

* ultralytics (where importable): empty and all-padding batches, GTs with a non-finite
  coordinate, argument errors, and the patch's bookkeeping; the comparisons with ultralytics'
  own assigner, losses and trainer on many random batches are in test_ultralytics_dropin.py.
* mmdetection: a pure-PyTorch transcription of mmdet 3.x ``TaskAlignedAssigner.assign``
  (written here from its documented behaviour) against the adapter, per image and batched.
* mmyolo: a transcription of ``BatchTaskAlignedAssigner``'s forward on inputs without conflicts
  (its conflict rule differs, documented).
"""
from __future__ import annotations

import math
import subprocess
import sys
import types

import pytest
import torch

from tood_ext.compat import mmdet as tmm
from tood_ext.testing.ultralytics import tiny_v8_model

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# input generators
# ---------------------------------------------------------------------------------------------


def grid_points(size: int, strides=(8, 16, 32)) -> torch.Tensor:
    """Anchor centres of a YOLO-style multi-level grid (pixels), ultralytics' order."""
    pts = []
    for s in strides:
        n = size // s
        y, x = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        pts.append(torch.stack((x, y), -1).reshape(-1, 2) * s)
    return torch.cat(pts).float()


def yolo_inputs(gen, B, C, G, size=256, min_wh=4.0, max_wh=90.0, pad=True, dtype=torch.float32,
                pred_half=(6.0, 30.0)):
    """Predictions around the anchors (so that most inside pairs overlap) and random GTs, in
    ultralytics' assigner format (labels and mask (B, G, 1) float, padding rows zero)."""
    ap = grid_points(size)
    A = ap.shape[0]
    ps = torch.rand(B, A, C, generator=gen)
    half = pred_half[0] + torch.rand(B, A, 2, generator=gen) * (pred_half[1] - pred_half[0])
    ctr = ap[None] + torch.randn(B, A, 2, generator=gen) * pred_half[0] / 2
    pb = torch.cat((ctr - half, ctr + half), -1)
    xy = torch.rand(B, G, 2, generator=gen) * (size - 20)
    wh = min_wh + torch.rand(B, G, 2, generator=gen) * (max_wh - min_wh)
    gb = torch.cat((xy, xy + wh), -1)
    gl = torch.randint(0, C, (B, G, 1), generator=gen).float()
    m = torch.ones(B, G, 1)
    if pad and G > 1:
        m[-1, -(G // 3 + 1):] = 0  # padded tail of the last image, zero rows as ultralytics pads
    gb, gl = gb * m, gl * m
    return ps.to(dtype), pb.to(dtype), ap.to(dtype), gl, gb.to(dtype), m


def _ul_well_posed(ul, inputs, topk, rel=1e-4) -> bool:
    """ultralytics' choice is unique on these inputs: no GT fills its top-k with t = 0 anchors
    (torch.topk's tie order), no near-tie at a GT's k-th place or between two GTs' IoUs."""
    ps, pb, ap, gl, gb, m = inputs
    ul.bs, ul.n_max_boxes = ps.shape[0], gb.shape[1]
    inside = ul.select_candidates_in_gts(ap, gb, m).bool() & m.bool()  # (B, G, A)
    t, u = ul.get_box_metrics(ps, pb, gl, gb, inside)
    valid = m[..., 0].bool()
    pos_t = torch.where(inside & (t > 0), t, torch.zeros_like(t))
    n_pos = (pos_t > 0).sum(-1)
    zero_inside = (inside & (t == 0)).sum(-1)
    if bool(((n_pos < topk) & (zero_inside > 0) & valid).any()):
        return False
    top = pos_t.topk(min(topk + 1, pos_t.shape[-1]), dim=-1).values  # (B, G, k+1)
    kth, nxt = top[..., topk - 1], top[..., topk]
    if bool(((n_pos > topk) & (kth - nxt <= rel * kth) & valid).any()):
        return False
    # near-equal t among the top k would only reorder, but topk2 keeps the first ones
    srt = top[..., :topk]
    close = (srt[..., :-1] - srt[..., 1:] <= rel * srt[..., :-1]) & (srt[..., 1:] > 0)
    if bool((close & valid[..., None]).any()):
        return False
    # anchors inside >= 2 GTs: the two largest u over all GTs (0 outside, ultralytics' argmax)
    # must differ clearly, or both be exactly 0 (then GT 0 wins in both)
    many = inside.sum(1) >= 2
    if bool(many.any()):
        uu = torch.where(inside, u, torch.zeros_like(u)).topk(2, dim=1).values  # (B, 2, A)
        near = ((uu[:, 0] - uu[:, 1]).abs() <= rel * uu[:, 0].abs()) & (uu[:, 0] > 0)
        if bool(near[many].any()):
            return False
    return True


def _draw_ul(gen, ul, topk, **kw):
    for _ in range(200):
        inputs = yolo_inputs(gen, **kw)
        if _ul_well_posed(ul, inputs, topk):
            return inputs
    pytest.fail("no well-posed draw in 200 tries")


def _compare_ul(got, want, atol=1e-6, rtol=1e-4):
    """Outputs equal (target_scores within float tolerance)."""
    names = ("target_labels", "target_bboxes", "target_scores", "fg_mask", "target_gt_idx")
    for g, w, name in zip(got, want, names):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
    torch.testing.assert_close(got[2], want[2], atol=atol, rtol=rtol, msg="target_scores")
    for i in (0, 1, 3, 4):
        assert torch.equal(got[i], want[i]), (names[i], int((got[i] != want[i]).sum()))


# ---------------------------------------------------------------------------------------------
# no heavy imports
# ---------------------------------------------------------------------------------------------


def test_compat_imports_no_ultralytics_or_mmdet():
    code = ("import sys, tood_ext.compat, tood_ext.compat.ultralytics, tood_ext.compat.mmdet\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('ultralytics', 'mmdet', 'mmyolo', 'mmengine', 'mmcv')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# ultralytics
# ---------------------------------------------------------------------------------------------


def test_ultralytics_empty_and_all_padding(gen):
    tal = pytest.importorskip("ultralytics.utils.tal")
    from tood_ext.compat.ultralytics import TaskAlignedAssigner

    C = 3
    ps, pb, ap, gl, gb, m = yolo_inputs(gen, 2, C, 4)
    for G in (0,):
        args = (ps, pb, ap, gl[:, :G], gb[:, :G], m[:, :G])
        want = tal.TaskAlignedAssigner(num_classes=C)(*args)
        got = TaskAlignedAssigner(num_classes=C)(*args)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and torch.equal(g, w)
    zero = torch.zeros_like(m)
    args = (ps, pb, ap, gl * 0, gb * 0, zero)
    _compare_ul(TaskAlignedAssigner(num_classes=C)(*args),
                tal.TaskAlignedAssigner(num_classes=C)(*args))


def test_ultralytics_adapter_refuses_extra_inputs(gen):
    from tood_ext.compat.ultralytics import TaskAlignedAssigner

    args = yolo_inputs(gen, 1, 3, 2)
    with pytest.raises(NotImplementedError, match="pair_overlaps"):
        TaskAlignedAssigner(num_classes=3)(*args, gt_kpts=torch.zeros(1))


def test_patch_swaps_existing_loss_objects(gen):
    loss_mod = pytest.importorskip("ultralytics.utils.loss")
    from tood_ext.compat import ultralytics as tul

    model = tiny_v8_model(4)
    loss = loss_mod.v8DetectionLoss(model, tal_topk=7, tal_topk2=1)
    e2e = loss_mod.E2ELoss(model)
    before = loss.assigner, e2e.one2many.assigner, e2e.one2one.assigner
    tul.patch_ultralytics(loss, e2e)
    try:
        tul.patch_ultralytics()  # idempotent
        for obj in (loss, e2e.one2many, e2e.one2one):
            assert isinstance(obj.assigner, tul.TaskAlignedAssigner)
        assert (loss.assigner.topk, loss.assigner.topk2) == (7, 1)
        assert loss.assigner.stride == before[0].stride
    finally:
        tul.unpatch_ultralytics()
    assert (loss.assigner, e2e.one2many.assigner, e2e.one2one.assigner) == before


# ---------------------------------------------------------------------------------------------
# mmdetection: a transcription of TaskAlignedAssigner.assign (mmdet 3.x)
# ---------------------------------------------------------------------------------------------


def _mmdet_iou(b1, b2, eps=1e-6):
    """mmdet's bbox_overlaps(mode='iou') for (N, 4) x (M, 4): areas as given, union >= eps."""
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None] - overlap).clamp(min=eps)
    return overlap / union


def mmdet_assign_reference(priors, bboxes, scores, gt_bboxes, gt_labels, topk, alpha=1, beta=6):
    """mmdet 3.x TaskAlignedAssigner.assign, step by step: returns (gt_inds, max_overlaps,
    labels, assign_metrics)."""
    num_gt, A = gt_bboxes.shape[0], priors.shape[0]
    gt_inds = torch.zeros(A, dtype=torch.long)
    metrics_out = priors.new_zeros(A)
    if num_gt == 0 or A == 0:
        return gt_inds, priors.new_zeros(A), torch.full((A,), -1, dtype=torch.long), metrics_out
    overlaps = _mmdet_iou(bboxes, gt_bboxes)  # (A, G)
    t = scores[:, gt_labels] ** alpha * overlaps ** beta  # (A, G)
    k = min(topk, A)
    _, cand = t.topk(k, dim=0, largest=True)  # (k, G)
    cols = torch.arange(num_gt)
    is_pos = t[cand, cols] > 0
    if priors.shape[1] == 4:
        cx, cy = (priors[:, 0] + priors[:, 2]) / 2.0, (priors[:, 1] + priors[:, 3]) / 2.0
    else:
        cx, cy = priors[:, 0], priors[:, 1]
    dist = torch.stack([cx[cand] - gt_bboxes[:, 0], cy[cand] - gt_bboxes[:, 1],
                        gt_bboxes[:, 2] - cx[cand], gt_bboxes[:, 3] - cy[cand]], 1)
    is_pos &= dist.min(dim=1).values > 0.01
    ov_inf = torch.full((A, num_gt), -1e8, dtype=overlaps.dtype)
    a_idx, g_idx = cand[is_pos], cols.expand_as(cand)[is_pos]
    ov_inf[a_idx, g_idx] = overlaps[a_idx, g_idx]
    max_ov, arg = ov_inf.max(dim=1)
    mmdet_assign_reference.conflicts = int(((ov_inf != -1e8).sum(1) > 1).sum())
    pos = max_ov != -1e8
    gt_inds[pos] = arg[pos] + 1
    metrics_out[pos] = t[pos, arg[pos]]
    labels = torch.full((A,), -1, dtype=torch.long)
    labels[pos] = gt_labels[arg[pos]]
    return gt_inds, max_ov, labels, metrics_out


def mmdet_inputs(gen, A, C, G, crowded=False, points=False):
    """One image: prior boxes (or points) on a random layout, decoded boxes near them."""
    size = 200.0
    ctr = torch.rand(A, 2, generator=gen, dtype=F64) * size
    priors = ctr if points else torch.cat((ctr - 4, ctr + 4), -1)
    half = 3 + torch.rand(A, 2, generator=gen, dtype=F64) * 30
    pc = ctr + torch.randn(A, 2, generator=gen, dtype=F64) * 4
    bboxes = torch.cat((pc - half, pc + half), -1)
    scores = torch.rand(A, C, generator=gen, dtype=F64)
    if crowded:  # heavily overlapping GTs around a few centres
        base = torch.rand(3, 2, generator=gen, dtype=F64) * size
        c = base[torch.randint(0, 3, (G,), generator=gen)] + torch.randn(G, 2, generator=gen,
                                                                         dtype=F64) * 6
    else:
        c = torch.rand(G, 2, generator=gen, dtype=F64) * size
    wh = 6 + torch.rand(G, 2, generator=gen, dtype=F64) * 70
    gt_bboxes = torch.cat((c - wh / 2, c + wh / 2), -1)
    gt_labels = torch.randint(0, C, (G,), generator=gen)
    return priors, bboxes, scores, gt_bboxes, gt_labels


def _ns(**kw):
    return types.SimpleNamespace(**kw)


@pytest.mark.parametrize("crowded", [False, True])
@pytest.mark.parametrize("points", [False, True])
def test_mmdet_assign_matches_transcription(gen, crowded, points):
    assigner = tmm.TaskAlignedAssigner(topk=13, iou_calculator=dict(type="BboxOverlaps2D"))
    for A, C, G, alpha, beta in ((600, 5, 12, 1, 6), (400, 3, 30, 1, 6), (300, 4, 7, 0.5, 4),
                                 (9, 2, 3, 1, 6)):  # A < topk
        priors, bboxes, scores, gtb, gtl = mmdet_inputs(gen, A, C, G, crowded, points)
        res = assigner.assign(_ns(priors=priors, bboxes=bboxes, scores=scores),
                              _ns(bboxes=gtb, labels=gtl), None, alpha, beta)
        gi, mo, lab, met = mmdet_assign_reference(priors, bboxes, scores, gtb, gtl, 13, alpha,
                                                  beta)
        assert res.num_gts == G
        assert torch.equal(res.gt_inds, gi)
        assert torch.equal(res.labels, lab)
        torch.testing.assert_close(res.max_overlaps, mo, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.assign_metrics, met, rtol=1e-9, atol=1e-15)
        if A >= 13:
            assert bool((gi > 0).any())
        if crowded and G >= 12:  # conflicts were exercised
            assert mmdet_assign_reference.conflicts > 0


def test_mmdet_no_gts_and_no_priors(gen):
    assigner = tmm.TaskAlignedAssigner(topk=13)
    priors, bboxes, scores, gtb, gtl = mmdet_inputs(gen, 50, 3, 4)
    for p, b, s, g, l in ((priors, bboxes, scores, gtb[:0], gtl[:0]),
                          (priors[:0], bboxes[:0], scores[:0], gtb, gtl)):
        res = assigner.assign(_ns(priors=p, bboxes=b, scores=s), _ns(bboxes=g, labels=l))
        gi, mo, lab, met = mmdet_assign_reference(p, b, s, g, l, 13)
        for x, y in ((res.gt_inds, gi), (res.max_overlaps, mo), (res.labels, lab),
                     (res.assign_metrics, met)):
            assert x.shape == y.shape and torch.equal(x, y.to(x.dtype))


def test_mmdet_batch_assign_with_padding(gen):
    assigner = tmm.TaskAlignedAssigner(topk=9)
    B, A, C, G = 3, 400, 4, 10
    ctr = torch.rand(A, 2, generator=gen, dtype=F64) * 200
    priors = torch.cat((ctr - 4, ctr + 4), -1)
    images = [mmdet_inputs(gen, A, C, g, crowded=True) for g in (10, 4, 0)]
    scores = torch.stack([im[2] for im in images])
    bboxes = torch.stack([im[1] for im in images])
    gtb = torch.zeros(B, G, 4, dtype=F64)
    gtl = torch.full((B, G), -3, dtype=torch.long)  # junk labels on padding
    mask = torch.zeros(B, G, dtype=torch.bool)
    for i, im in enumerate(images):
        n = im[3].shape[0]
        gtb[i, :n], gtl[i, :n], mask[i, :n] = im[3], im[4], True
    res = assigner.batch_assign(scores, bboxes, priors, gtl, gtb, mask)
    assert res.num_gts.tolist() == [10, 4, 0]
    for i, im in enumerate(images):
        gi, mo, lab, met = mmdet_assign_reference(priors, im[1], im[2], im[3], im[4], 9)
        assert torch.equal(res.gt_inds[i], gi) and torch.equal(res.labels[i], lab)
        torch.testing.assert_close(res.max_overlaps[i], mo, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.assign_metrics[i], met, rtol=1e-9, atol=1e-15)


def test_mmdet_rejects_other_iou_calculators():
    with pytest.raises(ValueError, match="not supported"):
        tmm.TaskAlignedAssigner(topk=13, iou_calculator=dict(type="BboxOverlaps2D", mode="giou"))
    with pytest.raises(ValueError, match="not supported"):
        tmm.TaskAlignedAssigner(topk=13, iou_calculator=dict(type="RBboxOverlaps2D"))


# ---------------------------------------------------------------------------------------------
# mmyolo: a transcription of BatchTaskAlignedAssigner.forward
# ---------------------------------------------------------------------------------------------


def mmyolo_reference(pred_bboxes, pred_scores, priors, gt_labels, gt_bboxes, pad, num_classes,
                     topk=13, alpha=1.0, beta=6.0, eps=1e-7):
    """mmyolo's BatchTaskAlignedAssigner.forward with its yolov6 IoU (eps 1e-9 in the union)."""
    B, A, C = pred_scores.shape
    G = gt_bboxes.shape[1]
    pts = priors[:, :2]
    lab = gt_labels.long()[..., 0]
    s = pred_scores.gather(2, lab.clamp(min=0)[:, None, :].expand(B, A, G)).transpose(1, 2)
    g4, p4 = gt_bboxes[:, :, None], pred_bboxes[:, None]
    wh = (torch.min(g4[..., 2:], p4[..., 2:]) - torch.max(g4[..., :2], p4[..., :2])).clamp(0)
    inter = wh.prod(-1)
    area = lambda b: (b[..., 2:] - b[..., :2]).clamp(0).prod(-1)  # noqa: E731
    overlaps = inter / (area(g4) + area(p4) - inter + 1e-9)  # (B, G, A)
    t = s ** alpha * overlaps ** beta
    d = torch.cat((pts[None, None] - gt_bboxes[:, :, None, :2],
                   gt_bboxes[:, :, None, 2:] - pts[None, None]), -1)
    inside = (d.min(-1).values > 1e-9).to(t.dtype)
    idx = (t * inside).topk(topk, dim=-1).indices
    idx = torch.where(pad.bool().expand(-1, -1, topk), idx, torch.zeros_like(idx))
    in_topk = torch.nn.functional.one_hot(idx, A).sum(-2)
    in_topk = torch.where(in_topk > 1, torch.zeros_like(in_topk), in_topk).to(t.dtype)
    pos = in_topk * inside * pad
    fg = pos.sum(-2)
    if fg.max() > 1:
        multi = (fg[:, None] > 1).expand(-1, G, -1)
        best = torch.nn.functional.one_hot(overlaps.argmax(1), G).permute(0, 2, 1).to(t.dtype)
        pos = torch.where(multi, best, pos)
        fg = pos.sum(-2)
    gidx = pos.argmax(-2)
    flat = gidx + torch.arange(B)[:, None] * G
    labels = gt_labels.long().flatten()[flat]
    boxes = gt_bboxes.reshape(-1, 4)[flat]
    labels[labels < 0] = 0
    onehot = torch.nn.functional.one_hot(labels, num_classes) * (fg[..., None] > 0)
    t = t * pos
    norm = (t * (overlaps * pos).amax(-1, keepdim=True)
            / (t.amax(-1, keepdim=True) + eps)).amax(-2)
    return labels, boxes, onehot * norm[..., None], fg.bool()


def test_mmyolo_batch_matches_transcription_without_conflicts(gen):
    B, C, G, topk = 2, 4, 6, 13
    for _ in range(100):  # disjoint GTs (mmyolo's conflict rule differs), >= topk t > 0 inside
        ps, pb, ap, gl, gb, m = yolo_inputs(gen, B, C, G, size=256, min_wh=40, max_wh=80,
                                            dtype=F64)
        gb = gb.clone()
        ok = True
        for b in range(B):
            for i in range(G):
                for j in range(i):
                    if m[b, i] * m[b, j] and not (gb[b, i, 0] >= gb[b, j, 2] or
                                                  gb[b, j, 0] >= gb[b, i, 2] or
                                                  gb[b, i, 1] >= gb[b, j, 3] or
                                                  gb[b, j, 1] >= gb[b, i, 3]):
                        ok = False
        if ok:
            break
        G = max(2, G - 1)
    else:
        pytest.fail("no disjoint draw")
    ap = ap.to(F64)
    priors = torch.cat((ap, torch.full_like(ap, 8)), -1)  # mmyolo priors: (x, y, stride, stride)
    ours = tmm.BatchTaskAlignedAssigner(num_classes=C, topk=topk, alpha=1, beta=6, eps=1e-9)
    got = ours(pb, ps, priors, gl, gb, m)
    want = mmyolo_reference(pb, ps, priors, gl, gb, m, C, topk, 1.0, 6.0, 1e-9)
    fg = want[3]
    # t = 0 fillers (order-dependent) may differ in fg; compare where mmyolo's scores are > 0
    strong = want[2].sum(-1) > 0
    assert torch.equal(got["fg_mask_pre_prior"] & strong, fg & strong)
    assert torch.equal(got["assigned_labels"][fg], want[0][fg])
    assert torch.equal(got["assigned_bboxes"][fg], want[1][fg])
    torch.testing.assert_close(got["assigned_scores"], want[2].to(got["assigned_scores"].dtype),
                               rtol=1e-6, atol=1e-9)
    assert bool(strong.any())
    empty = ours(pb, ps, priors, gl[:, :0], gb[:, :0], m[:, :0])
    assert empty["assigned_labels"].eq(C).all() and not empty["fg_mask_pre_prior"].any()


def test_mmdet_centre_margin_is_0_01():
    """mmdet's centre-inside test is min distance > 0.01 (input units), not > 0."""
    gtb = torch.tensor([[10.0, 10.0, 50.0, 50.0]], dtype=F64)
    cx = torch.tensor([10.005, 10.02, 30.0, 49.995, 49.98], dtype=F64)
    pts = torch.stack((cx, torch.full_like(cx, 30.0)), -1)
    bboxes = gtb.expand(5, 4).clone()
    scores = torch.full((5, 1), 0.5, dtype=F64)
    res = tmm.TaskAlignedAssigner(topk=13).assign(
        _ns(priors=pts, bboxes=bboxes, scores=scores),
        _ns(bboxes=gtb, labels=torch.zeros(1, dtype=torch.long)))
    assert res.gt_inds.tolist() == [0, 1, 1, 0, 1]
    gi = mmdet_assign_reference(pts, bboxes, scores, gtb, torch.zeros(1, dtype=torch.long), 13)[0]
    assert torch.equal(res.gt_inds, gi)


# ---------------------------------------------------------------------------------------------
# non-finite GTs (issue 23) and argument errors
# ---------------------------------------------------------------------------------------------


def _nan_some_gts(gen, gb, first=1, frac=0.4):
    """A copy of (B, G, 4) GT boxes with one coordinate (cycling x1..y2) of some GTs of index >=
    ``first`` set to NaN; returns (boxes, (B, G) bool hit)."""
    gb = gb.clone()
    B, G = gb.shape[:2]
    hit = torch.rand(B, G, generator=gen) < frac
    hit[:, :first] = False
    hit[0, G - 1] = True
    for n, (b, g) in enumerate(hit.nonzero().tolist()):
        gb[b, g, n % 4] = math.nan
    return gb, hit


def test_ultralytics_nan_gt_matches_ultralytics(gen):
    """A GT with a NaN coordinate: ultralytics' own inside test (amin, then > eps) gives it no
    anchor; so does the adapter (it put NaN targets on 9 foreground anchors before the fix)."""
    tal = pytest.importorskip("ultralytics.utils.tal")
    from tood_ext.compat.ultralytics import TaskAlignedAssigner

    C, cfg = 5, dict(topk=10, alpha=0.5, beta=6.0)
    ul = tal.TaskAlignedAssigner(num_classes=C, **cfg)
    for _ in range(50):
        ps, pb, ap, gl, gb, m = _draw_ul(gen, ul, cfg["topk"], B=2, C=C, G=8, pad=False,
                                         min_wh=20.0, max_wh=90.0)
        gb_nan, hit = _nan_some_gts(gen, gb)
        inputs = (ps, pb, ap, gl, gb_nan, m)
        if _ul_well_posed(ul, inputs, cfg["topk"]):
            break
    else:
        pytest.fail("no well-posed draw")
    want = tal.TaskAlignedAssigner(num_classes=C, **cfg)(*inputs)
    got = TaskAlignedAssigner(num_classes=C, **cfg)(*inputs)
    _compare_ul(got, want)
    fg = got[3]
    assert bool(fg.any())
    assert bool(torch.isfinite(got[1][fg]).all()) and bool(torch.isfinite(got[2]).all())
    assert not bool(hit.gather(1, got[4])[fg].any())


def test_ultralytics_nan_gt_first_gives_no_nan_target(gen):
    """GT 0 non-finite: it is padding for the adapter (box zeros), so no NaN reaches any target
    (ultralytics itself would gather GT 0's NaN box on background rows)."""
    from tood_ext.compat.ultralytics import TaskAlignedAssigner

    ps, pb, ap, gl, gb, m = yolo_inputs(gen, 2, 4, 6, pad=False, min_wh=20.0, max_wh=90.0)
    gb = gb.clone()
    gb[:, 0, 3] = math.nan
    gb[1, 1, 0] = math.inf
    labels, boxes, scores, fg, idx = TaskAlignedAssigner(num_classes=4)(ps, pb, ap, gl, gb, m)
    assert bool(fg.any())
    assert bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())
    assert not bool((idx[0][fg[0]] == 0).any()) and not bool((idx[1][fg[1]] <= 1).any())


def test_mmdet_nan_gt_matches_transcription(gen):
    """mmdet: a NaN GT's t is NaN (never > 0) and its centre distances NaN (never > 0.01): no
    anchor; the adapter gave gt_inds 1 before the fix. beta = 0 (t finite) too."""
    assigner = tmm.TaskAlignedAssigner(topk=13)
    for beta in (6, 0):
        # every draw is compared; drawn until one has positives (with beta = 0, t = s: the
        # top 13 by score may all lie outside their GTs, no positive at all, seed 1241501566)
        for _ in range(20):
            priors, bboxes, scores, gtb, gtl = mmdet_inputs(gen, 500, 4, 10, crowded=True)
            gtb, hit = _nan_some_gts(gen, gtb[None], first=0, frac=0.3)
            gtb, hit = gtb[0], hit[0]
            res = assigner.assign(_ns(priors=priors, bboxes=bboxes, scores=scores),
                                  _ns(bboxes=gtb, labels=gtl), None, 1, beta)
            gi, mo, lab, met = mmdet_assign_reference(priors, bboxes, scores, gtb, gtl, 13, 1,
                                                      beta)
            assert torch.equal(res.gt_inds, gi) and torch.equal(res.labels, lab)
            torch.testing.assert_close(res.max_overlaps, mo, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(res.assign_metrics, met, rtol=1e-9, atol=1e-15)
            assert not bool(hit[(gi[gi > 0] - 1)].any())
            if bool((gi > 0).any()):
                break
        else:
            raise AssertionError(f"beta {beta}: no draw with a positive anchor in 20")


def test_mmyolo_nan_gt_gives_no_nan_target(gen):
    B, A, C, G = 2, 300, 3, 6
    ctr = torch.rand(A, 2, generator=gen) * 200
    priors = torch.cat((ctr, torch.full((A, 2), 8.0)), -1)
    pb = torch.cat((ctr - 15, ctr + 15), -1)[None].expand(B, A, 4).contiguous()
    ps = torch.rand(B, A, C, generator=gen)
    gtb = torch.cat((ctr[:G] - 30, ctr[:G] + 30), -1)[None].repeat(B, 1, 1)
    gtb[0, 0, 1] = math.nan
    gtb[1, 2, 2] = -math.inf
    gl = torch.randint(0, C, (B, G, 1), generator=gen)
    pad = torch.ones(B, G, 1)
    out = tmm.BatchTaskAlignedAssigner(num_classes=C, topk=9)(pb, ps, priors, gl, gtb, pad)
    fg = out["fg_mask_pre_prior"]
    assert bool(fg.any())
    assert bool(torch.isfinite(out["assigned_bboxes"]).all())
    assert bool(torch.isfinite(out["assigned_scores"]).all())


def test_adapters_argument_errors(gen):
    from tood_ext.compat.ultralytics import TaskAlignedAssigner

    ps, pb, ap, gl, gb, m = yolo_inputs(gen, 2, 3, 4)
    ul = TaskAlignedAssigner(num_classes=3)
    with pytest.raises(RuntimeError, match=r"mask_gt must have shape \(B, G, 1\) = \(2, 4, 1\)"):
        ul(ps, pb, ap, gl, gb, m[:, :3])
    with pytest.raises(TypeError, match="gt_labels must be a torch.Tensor, got list"):
        ul(ps, pb, ap, gl.tolist(), gb, m)
    with pytest.raises(RuntimeError, match=r"anc_points must have shape \(A, 2\)"):
        ul(ps, pb, ap[:-1], gl, gb, m)
    assigner = tmm.TaskAlignedAssigner(topk=13)
    priors, bboxes, scores, gtb, gtl = mmdet_inputs(gen, 50, 3, 4)
    with pytest.raises(RuntimeError, match=r"priors must have shape \(A, 4\) .* got \(50,\)"):
        assigner.assign(_ns(priors=priors[:, 0], bboxes=bboxes, scores=scores),
                        _ns(bboxes=gtb, labels=gtl))
    with pytest.raises(TypeError, match="pred_instances must have the attributes"):
        assigner.assign(_ns(priors=priors, bboxes=bboxes), _ns(bboxes=gtb, labels=gtl))
    with pytest.raises(RuntimeError, match=r"gt_instances.labels must have shape \(G,\)"):
        assigner.assign(_ns(priors=priors, bboxes=bboxes, scores=scores),
                        _ns(bboxes=gtb, labels=gtl[:2]))
    with pytest.raises(RuntimeError, match=r"priors must have shape"):
        assigner.batch_assign(scores[None], bboxes[None], priors[:, 0], gtl[None], gtb[None])
