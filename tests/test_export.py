"""Deployment: ONNX (run in onnxruntime) and torch.export of the TOOD detector (tood_ext.export).

onnx / onnxruntime / onnxscript are optional: the ONNX tests skip without them (marked
`needs_onnx`, decided at collection, so no export runs first; test_onnx_tests_skip_without_onnx
runs them with the three hidden and checks they skip). One small
detector (ResNet-18, 32 channels) with enlarged offset/box/class weights, so that the deformable
sampling moves samples by pixels (and out of the map), boxes vary and NMS suppresses some, is
exported once with torch.export; the ONNX test converts that program.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import tood_ext

pytestmark = pytest.mark.skipif(not tood_ext.has_ops(), reason="compiled ops not built")

SIZES = [(2, 256, 384), (1, 384, 256)]  # (B, H, W): dynamic batch, height and width


def _missing_onnx_tools():
    import importlib.util
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent missing, or sys.modules[name] = None
            found = False
        if not found:
            missing.append(name)
    return missing


_MISSING_ONNX = _missing_onnx_tools()
needs_onnx = pytest.mark.skipif(
    bool(_MISSING_ONNX),
    reason=f"ONNX export needs the optional extras onnx, onnxscript, onnxruntime "
           f"(missing: {', '.join(_MISSING_ONNX)}; pip install tood-ext[onnx])")


def _onnx():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _session(path):
    ort = _onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _assert_standard_onnx(path):
    import onnx

    m = onnx.load(str(path))
    domains = {n.domain for n in m.graph.node}
    assert domains <= {"", "ai.onnx"}, f"custom-domain nodes in the graph: {domains}"
    assert not any("tood" in n.op_type.lower() for n in m.graph.node)
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"}
    assert len(m.functions) == 0
    return m


def _run(sess, *arrays):
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: np.ascontiguousarray(a.numpy()) for n, a in zip(names, arrays)})


# ---------------------------------------------------------------------------------------------
# the op decompositions alone
# ---------------------------------------------------------------------------------------------


class _Deform(nn.Module):
    def forward(self, x, offset, mask):
        return tood_ext.deform_sampling(x, offset), tood_ext.deform_sampling(x, offset, mask)


def _deform_inputs(gen, B, C, G, H, W):
    x = torch.randn(B, C, H, W, generator=gen)
    # offsets of several pixels: many samples land partly or wholly outside the map
    off = torch.randn(B, 2 * G, H, W, generator=gen) * 3
    off[:, 0, 0, :] = -1.0  # exactly on the boundary y = -1 (row 0): 0
    off[:, 1, :, -1] = 0.5  # half a pixel past the last column
    off[0, 0, 1, 1] = -1.0 - 1e-3
    mask = torch.rand(B, G, H, W, generator=gen)
    return x, off, mask


@needs_onnx
@pytest.mark.parametrize("deform", ["grid_sample", "gather"])
def test_deform_sampling_decomposition(tmp_path, deform):
    _onnx()
    from tood_ext.export import onnx_translation_table

    gen = torch.Generator().manual_seed(0)
    args = _deform_inputs(gen, 2, 6, 3, 5, 7)
    dyn = {0: "b", 2: "h", 3: "w"}
    path = tmp_path / "deform.onnx"
    torch.onnx.export(_Deform().eval(), args, str(path), dynamo=True, verbose=False,
                      dynamic_shapes=(dyn, dyn, dyn), external_data=False,
                      custom_translation_table=onnx_translation_table(deform))
    m = _assert_standard_onnx(path)
    ops = {n.op_type for n in m.graph.node}
    assert ("GridSample" in ops) == (deform == "grid_sample")
    sess = _session(path)
    for shape in [(2, 6, 3, 5, 7), (1, 6, 3, 9, 4), (3, 6, 3, 2, 8)]:
        x, off, mask = _deform_inputs(gen, *shape)
        got = _run(sess, x, off, mask)
        want = (tood_ext.deform_sampling(x, off), tood_ext.deform_sampling(x, off, mask))
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-5)
        # not vacuous: the offsets moved the samples, some to outside the map
        assert (want[0] - x).abs().max() > 1.0 and (want[0] == 0).float().mean() > 0.05


class _BoxIoU(nn.Module):
    def forward(self, a, b):
        outs = []
        for mode in tood_ext.IOU_MODES:
            outs += [tood_ext.box_iou(a, b, mode), tood_ext.box_iou(a, b[:, : a.shape[1]], mode,
                                                                      aligned=True)]
        return tuple(outs)


def _boxes(gen, B, N):
    xy = torch.rand(B, N, 2, generator=gen) * 50
    wh = torch.rand(B, N, 2, generator=gen) * 30
    wh[:, ::5] = 0.0  # zero width and height
    wh[:, 1::7, 0] = -3.0  # inverted: clamped to width 0
    return torch.cat([xy, xy + wh], -1)


@needs_onnx
def test_box_iou_decomposition(tmp_path):
    _onnx()
    from tood_ext.export import onnx_translation_table

    gen = torch.Generator().manual_seed(1)
    a, b = _boxes(gen, 2, 6), _boxes(gen, 2, 9)
    path = tmp_path / "iou.onnx"
    torch.onnx.export(_BoxIoU().eval(), (a, b), str(path), dynamo=True, verbose=False,
                      dynamic_shapes=({0: "b", 1: "n"}, {0: "b", 1: "m"}), external_data=False,
                      custom_translation_table=onnx_translation_table())
    _assert_standard_onnx(path)
    sess = _session(path)
    for B, N, M in [(2, 6, 9), (3, 11, 13)]:
        a, b = _boxes(gen, B, N), _boxes(gen, B, M)
        a[0, 2, 1] = float("nan")  # a non-finite box gives NaN, the others are unaffected
        b[-1, 3, 2] = float("inf")
        got = _run(sess, a, b)
        want = _BoxIoU()(a, b)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-5, rtol=1e-5,
                                       equal_nan=True)


class _NMS(nn.Module):
    def forward(self, boxes, scores, labels):
        return torch.ops.tood_ext_export.multiclass_nms(boxes, scores, labels, 3, 0.5, 0.25, 6)


@needs_onnx
def test_multiclass_nms_decomposition(tmp_path):
    """Hand case: strict score threshold, class-wise suppression, padding (K < max_det)."""
    _onnx()
    from tood_ext.export import onnx_translation_table

    boxes = torch.tensor([[[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10], [40, 40, 50, 50],
                           [60, 60, 70, 70]],
                          [[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10], [40, 40, 50, 50],
                           [60, 60, 70, 70.]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.25, 0.2500001],  # 0.25: not above the threshold
                           [0.9, 0.8, 0.7, 0.6, 0.1]])
    labels = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 0, 2, 2]])
    want_boxes = torch.tensor([[[0, 0, 10, 10], [1, 0, 10, 10], [60, 60, 70, 70]],
                               [[0, 0, 10, 10], [0, 0, 10, 11], [40, 40, 50, 50]]])
    path = tmp_path / "nms.onnx"
    torch.onnx.export(_NMS().eval(), (boxes, scores, labels), str(path), dynamo=True,
                      verbose=False, external_data=False,
                      custom_translation_table=onnx_translation_table())
    _assert_standard_onnx(path)
    for got in (_NMS()(boxes, scores, labels), _run(_session(path), boxes, scores, labels)):
        b, s, lab, num = (torch.as_tensor(np.asarray(t)) for t in got)
        assert num.tolist() == [3, 3] and b.shape == (2, 6, 4)
        assert torch.equal(b[:, :3], want_boxes.float()) and (b[:, 3:] == 0).all()
        assert lab.tolist() == [[0, 1, 2, -1, -1, -1], [0, 1, 2, -1, -1, -1]]
        torch.testing.assert_close(s[:, :3], torch.tensor([[0.9, 0.7, 0.2500001],
                                                           [0.9, 0.8, 0.6]]))


# ---------------------------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------------------------


def _small_model():
    from tood_ext.models import TOODConfig, build_model

    torch.manual_seed(0)
    cfg = TOODConfig(num_classes=3, depth=18, fpn_channels=32, feat_channels=32, stacked_convs=2,
                     num_groups=8, score_thr=0.025, iou_thr=0.5, max_per_img=100)
    model = build_model(cfg).eval()
    head = model.head
    with torch.no_grad():  # offsets of pixels, varied boxes and scores
        nn.init.normal_(head.reg_offset_module[-1].weight, std=0.05)
        nn.init.uniform_(head.reg_offset_module[-1].bias, -3.0, 3.0)
        # both x sides (offset channels 1 and 5: dx of x1 and x2) 6 locations to the left: in
        # the first columns both sample wholly outside the map, read 0.0 and give x1 = x2 = 0,
        # zero-width boxes that the invalid-box fallback (x1 > x2) does not catch
        head.reg_offset_module[-1].bias[[1, 5]] = -6.0
        nn.init.normal_(head.tood_reg.weight, std=0.05)
        nn.init.normal_(head.tood_cls.weight, std=0.1)
    return model


@pytest.fixture(scope="module")
def model():
    return _small_model()


@pytest.fixture(scope="module")
def exported(model):
    """(model, ExportedProgram with detections + raw maps, output names), traced once."""
    from tood_ext.export import ExportableTOOD, export_program

    wrapper = ExportableTOOD(model, with_nms=True, raw_outputs=True)
    ep = export_program(wrapper, image_size=(256, 256), dynamic=True)
    assert not model.training
    return model, ep, wrapper.output_names()


def _images(B, H, W, seed):
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _zero_size(boxes):
    boxes = torch.as_tensor(np.asarray(boxes))
    return (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])


def _reference(model, x):
    with torch.no_grad():
        out = model(x)
        dets = model.predict(x, [{"scale_factor": 1.0, "orig_size": tuple(x.shape[-2:])}]
                             * x.shape[0])
    # the inputs are not vacuous: zero-width boxes (both x sides sampled outside the map) are
    # among the candidates above the score threshold
    n_zero = sum(int(((s > model.cfg.score_thr) & _zero_size(b.permute(0, 2, 3, 1))[:, None])
                     .sum()) for s, b in zip(out["cls_scores"], out["bbox_preds"]))
    assert n_zero > 0
    return out["cls_scores"] + out["bbox_preds"], dets


def _check_dets(got, dets, box_atol):
    boxes, scores, labels, num = (torch.as_tensor(np.asarray(t)) for t in got[:4])
    for b, d in enumerate(dets):
        n = len(d["scores"])
        assert 5 <= n < boxes.shape[1]  # some detections, padding exercised
        assert not _zero_size(boxes[b, :n]).any() and not _zero_size(d["boxes"]).any()
        assert int(num[b]) == n
        order = torch.argsort(scores[b, :n], descending=True)
        torch.testing.assert_close(scores[b, :n][order], d["scores"], atol=1e-5, rtol=0)
        assert torch.equal(labels[b, :n][order], d["labels"])
        torch.testing.assert_close(boxes[b, :n][order], d["boxes"], atol=box_atol, rtol=0)
        assert (labels[b, n:] == -1).all() and (scores[b, n:] == 0).all()
        assert (boxes[b, n:] == 0).all()


STRIDES = (8, 16, 32, 64, 128)


def _check_raw(got, want, box_atol, box_rtol, stride_units=False):
    """P_align within 1e-4; boxes (input pixels, up to ~400) within box_atol/box_rtol, or with
    stride_units the head's own output unit (pixels / stride of the level, what the regression
    branch predicts before the stride scaling)."""
    n = len(want) // 2
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.as_tensor(np.asarray(g))
        if i < n:  # P_align probabilities
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)
        elif stride_units:
            s = STRIDES[i - n]
            torch.testing.assert_close(g / s, w / s, atol=box_atol, rtol=box_rtol)
        else:
            torch.testing.assert_close(g, w, atol=box_atol, rtol=box_rtol)


def test_torch_export_program(exported, tmp_path):
    model, ep, _ = exported
    path = tmp_path / "tood.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    for k, shape in enumerate(SIZES):
        x = _images(*shape, seed=10 + k)
        raw, dets = _reference(model, x)
        with torch.no_grad():
            got = loaded(x)
        _check_dets(got, dets, box_atol=1e-4)
        _check_raw(got[4:], raw, box_atol=1e-4, box_rtol=1e-6)


@needs_onnx
@pytest.mark.parametrize("deform", ["gather", "grid_sample"])
def test_onnx_runtime_matches_pytorch(exported, tmp_path, deform):
    """Dynamic batch / height / width, with NMS, both decompositions of deform_sampling."""
    from tood_ext.export import export_onnx

    model, ep, names = exported
    path = tmp_path / "tood.onnx"
    export_onnx(ep, str(path), output_names=names, deform=deform)
    m = _assert_standard_onnx(path)
    ops = {n.op_type for n in m.graph.node}
    assert "NonMaxSuppression" in ops
    assert ("GridSample" in ops) == (deform == "grid_sample")
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == names
    if deform == "gather":
        # the kernel's own arithmetic: every raw head output within 1e-4 in its own unit
        # (probabilities; box sides in strides). In pixels that is 1e-4 * stride: this test's
        # enlarged weights make the box map steep where samples leave it (~1.5e-4 px seen)
        box_atol, box_rtol = 1e-4, 0
    else:
        # GridSample's normalised coordinates round the sample position by ~1e-7 * W pixels,
        # times the slope of the box map (up to hundreds of pixels per pixel where samples
        # leave the map): ~6e-4 px seen at values of ~400 px
        box_atol, box_rtol = 2e-3, 1e-5
    for k, shape in enumerate(SIZES):
        x = _images(*shape, seed=30 + k)
        raw, dets = _reference(model, x)
        got = _run(sess, x)
        _check_raw(got[4:], raw, box_atol=box_atol, box_rtol=box_rtol,
                   stride_units=deform == "gather")
        _check_dets(got, dets, box_atol=1e-3 if deform == "gather" else box_atol)


def test_exportable_module_matches_predict(model):
    """The eager wrapper (multiclass_nms op through torchvision) equals model.predict, and the
    comparison is not vacuous: candidates above the threshold are suppressed by NMS."""
    from tood_ext.export import ExportableTOOD

    x = _images(*SIZES[0], seed=40)
    raw, dets = _reference(model, x)
    with torch.no_grad():
        got = ExportableTOOD(model, with_nms=True)(x)
    assert len(got) == 4
    _check_dets(got, dets, box_atol=0)
    for b in range(x.shape[0]):
        n_above = sum(int((s[b] > model.cfg.score_thr).sum()) for s in raw[:5])
        assert n_above > len(dets[b]["scores"])


def test_image_size_checks():
    from tood_ext.export import example_inputs

    with pytest.raises(ValueError, match="multiples of 128"):
        example_inputs((200, 256))
    with pytest.raises(ValueError, match="at least 256"):
        example_inputs((128, 256), dynamic=True)
    assert example_inputs((128, 256), batch=1)[0].shape == (1, 3, 128, 256)


def test_atss_head_is_refused():
    from tood_ext.export import ExportableTOOD
    from tood_ext.models import TOODConfig, build_model

    cfg = TOODConfig(num_classes=3, depth=18, fpn_channels=32, feat_channels=32, stacked_convs=1,
                     num_groups=8, head="atss")
    with pytest.raises(NotImplementedError, match="head='atss'"):
        ExportableTOOD(build_model(cfg).eval())


def test_cli_from_checkpoint(model, tmp_path, monkeypatch):
    """python -m tood_ext export's entry point: checkpoint formats and argument plumbing (the
    exports themselves are tested above)."""
    from tood_ext import export
    from tood_ext.export import cli

    calls = []
    monkeypatch.setattr(cli, "export_pt2", lambda m, path, **kw: calls.append(("pt2", m, kw)))
    monkeypatch.setattr(cli, "export_onnx", lambda m, path, **kw: calls.append(("onnx", m, kw)))
    plain = tmp_path / "plain.pth"  # {"config", "model"}
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, plain)
    engine = tmp_path / "engine.pth"  # tood_ext.engine's keys
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict(), "epoch": 1},
               engine)
    export.main(["--checkpoint", str(plain), "--format", "pt2", "--out", "a.pt2", "--static",
                 "--image-size", "256", "384"])
    export.main(["--checkpoint", str(engine), "--out", "b.onnx", "--with-nms", "--opset", "18",
                 "--score-thr", "0.3", "--ops", "reference"])
    (fmt1, m1, kw1), (fmt2, m2, kw2) = calls
    assert fmt1 == "pt2" and kw1 == {"image_size": (256, 384), "dynamic": False,
                                     "with_nms": False}
    assert fmt2 == "onnx" and kw2 == {"image_size": (640, 640), "dynamic": True,
                                      "with_nms": True, "score_thr": 0.3, "opset": 18,
                                      "deform": "gather"}
    assert m2.cfg.ops == "reference" and not m1.training and not m2.training
    for m in (m1, m2):
        for k, v in model.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
    with pytest.raises(ValueError, match="model_config"):
        torch.save({"model": model.state_dict()}, plain)
        export.main(["--checkpoint", str(plain), "--out", "c.onnx"])


def test_import_without_onnx():
    code = ("import sys\n"
            "for m in ('onnx', 'onnxscript', 'onnxruntime'): sys.modules[m] = None\n"
            "import tood_ext.export as e\n"
            "try:\n"
            "    e.onnx_translation_table()\n"
            "except ImportError:\n"
            "    print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.parametrize("clip", [True, False])
def test_zero_size_boxes_and_clipping_options(model, clip):
    """Zero-width boxes (both x sides sampled outside the map) reach neither predict nor the
    exported post-processing; with the filter off (min_bbox_size < 0) they did. Clipping is an
    option of both, with the same result (clip=False: mmdetection's behaviour, boxes may leave
    the image)."""
    from tood_ext.export import ExportableTOOD

    x = _images(*SIZES[0], seed=41)
    metas = [{"scale_factor": 1.0, "orig_size": tuple(x.shape[-2:])}] * x.shape[0]
    cfg = model.cfg
    old = cfg.min_bbox_size, cfg.clip_to_image
    try:
        cfg.clip_to_image = clip
        cfg.min_bbox_size = -1.0  # no filter: what predict returned before
        unfiltered = model.predict(x, metas)
        cfg.min_bbox_size = 0.0
        dets = model.predict(x, metas)
        with torch.no_grad():
            got = ExportableTOOD(model, with_nms=True)(x)
            got_off = ExportableTOOD(model, with_nms=True, min_bbox_size=-1.0)(x)
    finally:
        cfg.min_bbox_size, cfg.clip_to_image = old
    assert all(_zero_size(d["boxes"]).sum() > 0 for d in unfiltered)
    _check_dets(got, dets, box_atol=0)
    num = got_off[3]
    assert any(_zero_size(got_off[0][b, :int(num[b])]).any() for b in range(x.shape[0]))
    H, W = x.shape[-2:]
    for d in dets:
        outside = ((d["boxes"][:, :2] < 0).any(1) | (d["boxes"][:, 2] > W)
                   | (d["boxes"][:, 3] > H))
        assert outside.any() != clip  # unclipped boxes leave the image here


def test_onnx_tests_skip_without_onnx(tmp_path):
    """Without the optional extras every ONNX test skips (none fails, none exports first)."""
    plugin = tmp_path / "hide_onnx.py"
    plugin.write_text("import sys\n"
                      "for m in ('onnx', 'onnxscript', 'onnxruntime'): sys.modules[m] = None\n")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "hide_onnx", "-p", "no:cacheprovider",
         os.path.join(here, "test_export.py"), "-k", "decomposition or onnx_runtime"],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(here), timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "6 skipped" in out and not any(w in out for w in ("passed", "failed", "error")), out
    assert "missing: onnx, onnxscript, onnxruntime" in out, out
