"""What is exported: :class:`ExportableTOOD` (the detector with tensor outputs, optionally
with the post-processing and NMS in the graph), example inputs and dynamic shapes."""
from __future__ import annotations

import torch
from torch import nn

from . import nms  # noqa: F401  (registers tood_ext_export::multiclass_nms, called in forward)

__all__ = ["ExportableTOOD", "SIZE_DIVISOR", "as_exportable", "check_size", "dynamic_shapes",
           "eval_mode", "example_inputs"]

SIZE_DIVISOR = 128  # the detector's input sizes: P7 has stride 128


class ExportableTOOD(nn.Module):
    """The detector with tensor outputs (what the exporters need); see the module docstring.

    ``score_thr``, ``nms_pre``, ``iou_thr``, ``max_per_img``, ``min_bbox_size`` and
    ``clip_to_image`` default to the model's config (used with ``with_nms=True`` only; the
    clipping is to the input image and the size filter is in input pixels, as the graph has
    no scale factor). ``raw_outputs`` (default: ``not with_nms``): also output the per-level
    head maps (after the detections when ``with_nms``).
    """

    def __init__(self, model: nn.Module, with_nms: bool = False, score_thr: float | None = None,
                 nms_pre: int | None = None, iou_thr: float | None = None,
                 max_per_img: int | None = None, raw_outputs: bool | None = None,
                 min_bbox_size: float | None = None, clip_to_image: bool | None = None):
        super().__init__()
        cfg = model.cfg
        if getattr(cfg, "head", "tood") != "tood":
            raise NotImplementedError(
                f"export supports the TOOD head only, got head={cfg.head!r} (the ATSS baseline "
                "scores with cls x centerness, which the exported outputs do not carry)")
        self.model, self.with_nms = model, with_nms
        self.raw_outputs = (not with_nms) if raw_outputs is None else bool(raw_outputs)
        if not (with_nms or self.raw_outputs):
            raise ValueError("nothing to output: with_nms=False needs raw_outputs")
        self.score_thr = float(cfg.score_thr if score_thr is None else score_thr)
        self.nms_pre = int(cfg.nms_pre if nms_pre is None else nms_pre)
        self.iou_thr = float(cfg.iou_thr if iou_thr is None else iou_thr)
        self.max_per_img = int(cfg.max_per_img if max_per_img is None else max_per_img)
        self.min_bbox_size = float(getattr(cfg, "min_bbox_size", 0.0) if min_bbox_size is None
                                   else min_bbox_size)
        self.clip_to_image = bool(getattr(cfg, "clip_to_image", True) if clip_to_image is None
                                  else clip_to_image)
        self.train(model.training)

    def output_names(self) -> list[str]:
        n = len(self.model.cfg.strides)
        names = ["boxes", "scores", "labels", "num_dets"] if self.with_nms else []
        if self.raw_outputs:
            names += [f"cls_score_{i}" for i in range(n)] + [f"bbox_pred_{i}" for i in range(n)]
        return names

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        res = self.postprocess(out, images.shape[-2], images.shape[-1]) if self.with_nms else ()
        if self.raw_outputs:
            res = (*res, *out["cls_scores"], *out["bbox_preds"])
        return res

    def postprocess(self, out: dict, height, width):
        """The candidates of ``TOOD.predict_by_feat`` on fixed-size tensors
        (:func:`~tood_ext.models.postprocess.dense_candidates`: per level the best ``nms_pre``
        (location, class) pairs, clipped to the input image with ``clip_to_image``, too small
        boxes scored ``-inf``; those <= score_thr are dropped by the NMS op), then NMS."""
        from ..models.postprocess import dense_candidates

        boxes, scores, labels = dense_candidates(
            out["cls_scores"], out["bbox_preds"], self.nms_pre, height, width,
            clip_to_image=self.clip_to_image, min_bbox_size=self.min_bbox_size)
        return torch.ops.tood_ext_export.multiclass_nms(
            boxes, scores, labels, self.model.cfg.num_classes, self.iou_thr, self.score_thr,
            self.max_per_img)


def check_size(image_size, dynamic: bool = False) -> tuple[int, int]:
    h, w = (int(v) for v in image_size)
    low = 2 * SIZE_DIVISOR if dynamic else SIZE_DIVISOR
    if h < low or w < low or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(f"image_size must be multiples of {SIZE_DIVISOR} (the P7 stride), at "
                         f"least {low}{' for a dynamic export' if dynamic else ''}; got {(h, w)}")
    return h, w


def example_inputs(image_size=(640, 640), batch: int = 2, device="cpu",
                   dynamic: bool = False) -> tuple[torch.Tensor]:
    """A (batch, 3, H, W) random image batch to trace with."""
    h, w = check_size(image_size, dynamic)
    return (torch.randn(batch, 3, h, w, device=device),)


def dynamic_shapes(dynamic: bool = True, max_size: int = 4096):
    """``torch.export`` dynamic shapes of ``images``: batch, and H, W as 128 * k."""
    if not dynamic:
        return None
    Dim = torch.export.Dim
    k = max_size // SIZE_DIVISOR
    # H, W >= 256: at 128 the P7 map is 1 x 1, and torch.export specialises sizes of 1
    return {"images": {0: Dim("batch", min=1, max=1024),
                       2: SIZE_DIVISOR * Dim("h128", min=2, max=k),
                       3: SIZE_DIVISOR * Dim("w128", min=2, max=k)}}


def as_exportable(model: nn.Module, with_nms: bool, nms_kwargs: dict) -> ExportableTOOD:
    """``model`` itself when it is an :class:`ExportableTOOD`, else it wrapped in one."""
    if isinstance(model, ExportableTOOD):
        return model
    return ExportableTOOD(model, with_nms=with_nms, **nms_kwargs)


class eval_mode:
    """Eval mode inside, every submodule's own train/eval flag restored on exit."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.flags = [(m, m.training) for m in module.modules()]

    def __enter__(self):
        self.module.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
