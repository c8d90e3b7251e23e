"""Deployment: export the TOOD detector to ONNX (onnxruntime, TensorRT, ...) and to torch.export.

mmdetection's TOOD cannot be exported (its deformable sampling goes through mmcv's
``DeformConv2dFunction``, which the exporters reject: mmdetection #8201, #11438, mmdeploy #161).
Here every op of the inference path is a dispatcher op with a fake kernel, so:

* :func:`export_pt2` runs ``torch.export.export`` on the detector (dynamic batch, height and
  width) and writes the program with ``torch.export.save``; the program calls
  ``torch.ops.tood_ext.deform_sampling`` (load it with ``import tood_ext.export`` first, which
  loads the kernels and, for ``with_nms=True``, registers ``tood_ext_export::multiclass_nms``).
* :func:`export_onnx` runs the torch.export-based ONNX exporter (``torch.onnx.export(...,
  dynamo=True)``, torch's default since 2.9) with a ``custom_translation_table`` that
  decomposes our ops into standard ONNX ops, so the graph has no custom domain:

  - ``tood_ext::deform_sampling`` -> by default (``deform="gather"``) the kernel's own
    arithmetic (``Floor``, four ``GatherElements``, bilinear weights; raw outputs within 1e-4
    of the PyTorch model), or with ``deform="grid_sample"`` one ``GridSample`` (bilinear, zeros
    padding, ``align_corners=0``) with the pixel -> normalised coordinate conversion written
    out (``gx = (2 (j + dx) + 1) / W - 1``, likewise y), the offset groups folded into the
    batch (``(B, C, H, W) -> (B G, C / G, H, W)``), the optional mask as a ``Mul``: compact,
    but the coordinate round trip moves samples by ~1e-7 * W px (box outputs off by up to
    ~1e-3 px);
  - ``tood_ext::box_iou`` (not on the inference path; for models that call it) -> elementwise
    ops (``Min``/``Max``/``Clip``/``Div``, ``Atan`` for CIoU, NaN for non-finite boxes);
  - ``tood_ext_export::multiclass_nms`` (``with_nms=True``) -> ``NonMaxSuppression`` on a
    (B, num_classes, K) score tensor (class-wise NMS, the eager op's decisions up to the
    rounding of IoUs at the threshold: the eager op moves classes apart by offsets), then
    ``ScatterND`` + ``TopK`` to keep the best ``max_per_img`` per image, padded.

Outputs of the exported graphs (``images``: (B, 3, H, W) normalised, H and W multiples of 128):

* ``with_nms=False``: ``cls_score_0..4`` (B, C, H_l, W_l) P_align probabilities and
  ``bbox_pred_0..4`` (B, 4, H_l, W_l) decoded xyxy boxes in input pixels, i.e. exactly
  ``model(images)``'s ``cls_scores`` / ``bbox_preds`` (box decoding is inside the graph).
* ``with_nms=True``: ``boxes`` (B, max_per_img, 4), ``scores`` (B, max_per_img), ``labels``
  (B, max_per_img) int64 and ``num_dets`` (B,) int64, sorted by score; rows past ``num_dets``
  are padding (boxes 0, score 0, label -1). This is ``model.predict`` with
  ``metas = [{"scale_factor": 1.0, "orig_size": (H, W)}]`` (the same
  :mod:`tood_ext.models.postprocess` steps): per level the best ``nms_pre`` (location, class)
  pairs above ``score_thr``, boxes clipped to the input image (``clip_to_image``, default on;
  off is mmdetection's behaviour), boxes of width or height ``<= min_bbox_size`` (0: the
  zero-size ones) dropped, class-wise NMS at ``iou_thr``. Divide the boxes by your resize
  factor (and clip to the original image) afterwards; ``min_bbox_size`` counts input pixels.

onnx, onnxruntime and onnxscript are optional (``pip install tood-ext[export]``); importing this
package does not need them.

The package, by job: :mod:`~tood_ext.export.nms` (the NMS op), :mod:`~tood_ext.export.wrapper`
(:class:`ExportableTOOD`, example inputs and dynamic shapes), :mod:`~tood_ext.export.program`
(torch.export), :mod:`~tood_ext.export.onnx_export` (the ONNX translation table and
:func:`export_onnx`), :mod:`~tood_ext.export.cli` (``python -m tood_ext export`` and
``python -m tood_ext.export``).
"""
from __future__ import annotations

from .cli import add_export_subparser, cmd_export, load_model, main
from .nms import multiclass_nms
from .onnx_export import DEFORM_MODES, export_onnx, onnx_translation_table
from .program import export_pt2, export_program
from .wrapper import SIZE_DIVISOR, ExportableTOOD, dynamic_shapes, example_inputs

__all__ = ["ExportableTOOD", "multiclass_nms", "onnx_translation_table", "export_onnx",
           "export_pt2", "load_model", "example_inputs", "dynamic_shapes",
           "add_export_subparser", "cmd_export", "main"]
