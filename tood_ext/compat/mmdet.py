"""Drop-in replacements for mmdetection 3.x's ``TaskAlignedAssigner`` and mmyolo's
``BatchTaskAlignedAssigner``, backed by tood-ext's fused TAL op. Neither mmdet nor mmyolo is
imported: the inputs are any objects with the attributes mmdet reads (``InstanceData`` or a
``types.SimpleNamespace``), the results are plain objects with mmdet's field names.

``TaskAlignedAssigner(topk, iou_calculator=dict(type='BboxOverlaps2D'))`` (mmdet's TOOD
assigner, one image per ``assign`` call; :meth:`TaskAlignedAssigner.batch_assign` does a padded
batch in one op call): :func:`tood_ext.task_aligned_assign` with
``candidates="topk_then_inside"``, ``iou_mode="iou"``, ``inside_eps=0.01``:

* ``overlaps`` = IoU(decoded boxes, GTs); t = scores[:, label]**alpha * overlaps**beta; per GT the
  top-k anchors by t over all anchors (k = min(topk, num anchors)); positives: t > 0 and the
  prior's centre inside the GT (min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01, the centre of an
  (A, 4) prior box being ((x1 + x2) / 2, (y1 + y2) / 2) as mmdet computes it; (A, 2) priors are
  taken as points); an anchor positive for several GTs goes to the one of highest IoU (ties:
  lower GT index);
* result: ``num_gts``, ``gt_inds`` (1-based, 0 = background), ``max_overlaps`` (the IoU with the
  assigned GT; ``-100000000`` on background anchors when there are GTs and anchors, as mmdet's
  ``-INF`` fill; 0 when there are none), ``labels`` (-1 background), and ``assign_metrics`` (t
  with the assigned GT, 0 background), which TOODHead normalises per GT.

Differences: ties in t are broken by the lower anchor index (mmdet: ``torch.topk``'s order);
IoU is computed with box widths/heights clamped at 0 and ``union`` clamped at 1e-7 (mmdet's
``bbox_overlaps``: areas unclamped, eps 1e-6): identical on valid boxes up to float rounding.
``gt_instances_ignore`` is accepted and ignored, as in mmdet.

``BatchTaskAlignedAssigner(num_classes, topk=13, alpha=1.0, beta=6.0, eps=1e-7,
use_ciou=False)``: mmyolo's batched contract (``forward(pred_bboxes, pred_scores, priors,
gt_labels, gt_bboxes, pad_bbox_flag) -> dict`` with ``assigned_labels``, ``assigned_bboxes``,
``assigned_scores`` (one-hot times the normalised metric), ``fg_mask_pre_prior``). mmyolo (like
YOLOv6 / PP-YOLOE) selects inside-then-top-k: ``candidates="inside_then_topk"``,
``inside_eps=1e-9``, ``norm_eps=eps``, IoU or CIoU. Differences from mmyolo: an anchor claimed
by several GTs goes to the claimant of highest IoU, where mmyolo takes the argmax of IoU over
*all* GTs of the image (also GTs that do not contain the anchor, even padding); t = 0 anchors
filling a GT's top-k are chosen by lower index (mmyolo: torch.topk's order); they carry a zero
score.

A GT with a non-finite coordinate is padding in every class here (no anchor, no NaN target;
mmdet's NaN t is never > 0 and its NaN centre distance never > 0.01, so it gives such a GT no
anchor either). Bad arguments raise before the op runs: TypeError for a non-tensor or a missing
attribute, RuntimeError naming the tensor of a wrong shape.

``QualityFocalLoss``, ``VarifocalLoss``, ``FocalLoss``: mmdet's loss modules on the fused
classification loss op (:mod:`tood_ext.compat.mmdet_losses`, re-exported here).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .mmdet_losses import FocalLoss, QualityFocalLoss, VarifocalLoss

__all__ = ["AssignResult", "BatchTaskAlignedAssigner", "FocalLoss", "QualityFocalLoss",
           "TaskAlignedAssigner", "VarifocalLoss"]

INF = 100000000  # mmdet's fill of max_overlaps on background anchors is -INF
_HALF = (torch.float16, torch.bfloat16)


class AssignResult:
    """The fields of mmdet's ``AssignResult`` that its TOOD head and samplers read.

    Attributes: ``num_gts`` (int, or (B,) tensor for a batch), ``gt_inds`` (A,) or (B, A) int64,
    1-based GT index with 0 = background; ``max_overlaps`` IoU with the assigned GT;
    ``labels`` int64, -1 background; ``assign_metrics`` the alignment metric t with the
    assigned GT (0 background).
    """

    def __init__(self, num_gts, gt_inds: torch.Tensor, max_overlaps: torch.Tensor,
                 labels: torch.Tensor | None = None):
        self.num_gts = num_gts
        self.gt_inds = gt_inds
        self.max_overlaps = max_overlaps
        self.labels = labels
        self._extra_properties: dict[str, Any] = {}

    @property
    def num_preds(self) -> int:
        return self.gt_inds.shape[-1]

    def set_extra_property(self, key: str, value) -> None:
        self._extra_properties[key] = value

    def get_extra_property(self, key: str):
        return self._extra_properties.get(key, None)

    @property
    def info(self) -> dict:
        return {"num_gts": self.num_gts, "num_preds": self.num_preds, "gt_inds": self.gt_inds,
                "max_overlaps": self.max_overlaps, "labels": self.labels,
                **self._extra_properties}

    def __repr__(self) -> str:
        return (f"<AssignResult(num_gts={self.num_gts}, num_preds={self.num_preds}, "
                f"num_pos={int((self.gt_inds > 0).sum())})>")


def _iou_mode(iou_calculator) -> str:
    """mmdet's iou_calculator config -> the op's iou_mode (only 2-D IoU is mmdet's TOOD)."""
    if iou_calculator is None:
        return "iou"
    if not isinstance(iou_calculator, dict):
        raise TypeError(f"iou_calculator must be an mmdet config dict such as "
                        f"dict(type='BboxOverlaps2D') or None, got {iou_calculator!r}")
    cfg = dict(iou_calculator)
    kind = cfg.pop("type", "BboxOverlaps2D")
    mode = cfg.pop("mode", "iou")
    cfg.pop("scale", None), cfg.pop("dtype", None)
    if kind not in ("BboxOverlaps2D", "mmdet.BboxOverlaps2D") or mode != "iou":
        # (a negative GIoU would give t = s * giou**6 > 0 in mmdet; the op clamps u at 0)
        raise ValueError(f"iou_calculator {iou_calculator!r} is not supported: only "
                         "dict(type='BboxOverlaps2D') (mode 'iou')")
    if cfg:
        raise ValueError(f"iou_calculator: unsupported options {sorted(cfg)}")
    return mode


def _check_priors(op: str, priors) -> torch.Tensor:
    """priors (A, 4) boxes or (A, >= 2) points -> their (A, 4) / (A, 2) part; TypeError for a
    non-tensor, RuntimeError for another shape (tood_ext's error policy)."""
    from ..ops._checks import check_tensor

    check_tensor(op, "priors", priors)
    if priors.dim() != 2 or priors.shape[-1] < 2:
        raise RuntimeError(f"{op}: priors must have shape (A, 4) (prior boxes) or (A, 2) "
                           f"(points), got {tuple(priors.shape)}")
    return priors[:, :4] if priors.shape[-1] >= 4 else priors[:, :2]


def _check_shape(op: str, name: str, t, shape: tuple, desc: str) -> None:
    from ..ops._checks import check_tensor

    check_tensor(op, name, t)
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"{op}: {name} must have shape {desc} = {tuple(shape)}, got "
                           f"{tuple(t.shape)}")


def _prior_points(priors: torch.Tensor) -> torch.Tensor:
    if priors.dim() != 2 or priors.shape[-1] not in (2, 4):
        raise RuntimeError(f"priors must be (A, 4) boxes or (A, 2) points, got "
                           f"{tuple(priors.shape)}")
    if priors.shape[-1] == 2:
        return priors
    return torch.stack(((priors[:, 0] + priors[:, 2]) / 2.0, (priors[:, 1] + priors[:, 3]) / 2.0),
                       -1)


def _op_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if (t.dtype in _HALF and t.device.type == "cpu") else t.dtype


class TaskAlignedAssigner:
    """mmdetection 3.x's ``TaskAlignedAssigner`` (TOOD) on tood-ext's fused op.

    Args:
        topk: candidates per GT (>= 1). iou_calculator: mmdet's config dict (only
            ``BboxOverlaps2D`` in its default 'iou' mode).
    """

    def __init__(self, topk: int, iou_calculator: dict | None = None):
        from ..ops._checks import check_int

        self.topk = check_int("compat.mmdet.TaskAlignedAssigner", "topk", topk, minimum=1)
        self.iou_calculator = (dict(type="BboxOverlaps2D") if iou_calculator is None
                               else iou_calculator)
        self.iou_mode = _iou_mode(self.iou_calculator)

    def assign(self, pred_instances, gt_instances, gt_instances_ignore=None, alpha: float = 1,
               beta: float = 6) -> AssignResult:
        """Assign one image's anchors, mmdet's contract.

        Args:
            pred_instances: ``priors`` (A, 4) boxes or (A, >= 2) points (only [:, :4] / [:, :2]
                read), ``bboxes`` (A, 4) decoded xyxy, ``scores`` (A, C) probabilities.
            gt_instances: ``bboxes`` (G, 4) xyxy, ``labels`` (G,) int.
            gt_instances_ignore: ignored (as in mmdet).
            alpha, beta: the metric's exponents.
        """
        op = "compat.mmdet.TaskAlignedAssigner.assign"
        for obj, where, fields in ((pred_instances, "pred_instances", ("priors", "bboxes",
                                                                       "scores")),
                                   (gt_instances, "gt_instances", ("bboxes", "labels"))):
            missing = [f for f in fields if not hasattr(obj, f)]
            if missing:
                raise TypeError(f"{op}: {where} must have the attributes {fields} (an mmdet "
                                f"InstanceData or any object with them); missing {missing}")
        priors = _check_priors(op, pred_instances.priors)
        bboxes, scores = pred_instances.bboxes, pred_instances.scores
        gt_bboxes, gt_labels = gt_instances.bboxes, gt_instances.labels
        A = priors.shape[0]
        _check_shape(op, "pred_instances.bboxes", bboxes, (A, 4), "(A, 4)")
        from ..ops._checks import check_tensor
        check_tensor(op, "pred_instances.scores", scores)
        if scores.dim() != 2 or scores.shape[0] != A:
            raise RuntimeError(f"{op}: pred_instances.scores must have shape (A, C) with A = "
                               f"{A}, got {tuple(scores.shape)}")
        check_tensor(op, "gt_instances.bboxes", gt_bboxes)
        if gt_bboxes.dim() != 2 or gt_bboxes.shape[-1] != 4:
            raise RuntimeError(f"{op}: gt_instances.bboxes must have shape (G, 4), got "
                               f"{tuple(gt_bboxes.shape)}")
        _check_shape(op, "gt_instances.labels", gt_labels, (gt_bboxes.shape[0],), "(G,)")
        num_gt, num_bboxes = gt_bboxes.shape[0], priors.shape[0]
        if num_gt == 0 or num_bboxes == 0:
            result = AssignResult(num_gt, priors.new_zeros((num_bboxes,), dtype=torch.long),
                                  priors.new_zeros((num_bboxes,)),
                                  labels=priors.new_full((num_bboxes,), -1, dtype=torch.long))
            result.assign_metrics = priors.new_zeros((num_bboxes,))
            return result
        res = self._run(scores[None], bboxes[None], priors, gt_labels[None], gt_bboxes[None],
                        torch.ones((1, num_gt), dtype=torch.bool, device=gt_bboxes.device),
                        alpha, beta)
        return self._result(num_gt, res, priors.dtype, squeeze=True)

    def batch_assign(self, pred_scores: torch.Tensor, pred_bboxes: torch.Tensor,
                     priors: torch.Tensor, gt_labels: torch.Tensor, gt_bboxes: torch.Tensor,
                     gt_mask: torch.Tensor | None = None, alpha: float = 1,
                     beta: float = 6) -> AssignResult:
        """The same assignment for a padded batch in one op call: pred_scores (B, A, C),
        pred_bboxes (B, A, 4), priors (A, 4) or (A, 2), gt_labels (B, G) int, gt_bboxes
        (B, G, 4), gt_mask (B, G) bool (False = padding; default all True). Returns an
        :class:`AssignResult` of (B, A) fields (``gt_inds`` indexes the padded G, 1-based) and
        ``num_gts`` = the (B,) number of valid GTs. Equal, image by image, to :meth:`assign`
        on the valid GTs (with indices into the padded list)."""
        from ..ops._checks import check_tensors

        op = "compat.mmdet.TaskAlignedAssigner.batch_assign"
        check_tensors(op, optional=("gt_mask",), pred_scores=pred_scores,
                      pred_bboxes=pred_bboxes, gt_labels=gt_labels, gt_bboxes=gt_bboxes,
                      gt_mask=gt_mask)
        priors = _check_priors(op, priors)
        if pred_scores.dim() != 3 or gt_bboxes.dim() != 3:
            raise RuntimeError(f"{op}: pred_scores must have shape (B, A, C) and gt_bboxes "
                               f"(B, G, 4), got {tuple(pred_scores.shape)} and "
                               f"{tuple(gt_bboxes.shape)}")
        B, A = pred_scores.shape[:2]
        G = gt_bboxes.shape[1]
        for name, t, shape, desc in (("pred_bboxes", pred_bboxes, (B, A, 4), "(B, A, 4)"),
                                     ("gt_bboxes", gt_bboxes, (B, G, 4), "(B, G, 4)"),
                                     ("gt_labels", gt_labels, (B, G), "(B, G)"),
                                     ("gt_mask", gt_mask, (B, G), "(B, G)")):
            if t is not None and tuple(t.shape) != shape:
                raise RuntimeError(f"{op}: {name} must have shape {desc} = {shape} (B, A from "
                                   f"pred_scores {tuple(pred_scores.shape)}, G from gt_bboxes), "
                                   f"got {tuple(t.shape)}")
        if gt_mask is None:
            gt_mask = torch.ones((B, G), dtype=torch.bool, device=gt_bboxes.device)
        num_gts = gt_mask.sum(1)
        res = self._run(pred_scores, pred_bboxes, priors, gt_labels, gt_bboxes, gt_mask, alpha,
                        beta)
        result = self._result(num_gts, res, priors.dtype, squeeze=False)
        if G == 0 or A == 0:  # mmdet's empty result: max_overlaps 0, not -INF
            result.max_overlaps = torch.zeros_like(result.max_overlaps)
        else:  # images without a valid GT: mmdet's empty result
            result.max_overlaps[num_gts == 0] = 0
        return result

    def _run(self, scores, bboxes, priors, gt_labels, gt_bboxes, gt_mask, alpha, beta):
        from ..ops._checks import check_number
        from ..ops.tal import task_aligned_assign

        for name, value in (("alpha", alpha), ("beta", beta)):  # float("1") would pass
            check_number("compat.mmdet.TaskAlignedAssigner", name, value, tensor_ok=True)
        dt = _op_dtype(scores)
        return task_aligned_assign(
            scores.detach().to(dt), bboxes.detach().to(dt), _prior_points(priors).to(dt),
            gt_labels.long(), gt_bboxes.detach().to(dt), gt_mask.bool(), topk=self.topk,
            alpha=float(alpha), beta=float(beta), candidates="topk_then_inside",
            iou_mode=self.iou_mode, inside_eps=0.01, norm_eps=1e-7)

    @staticmethod
    def _result(num_gts, res, dtype, squeeze: bool) -> AssignResult:
        fg = res.fg_mask
        max_overlaps = torch.where(fg, res.iou, torch.full_like(res.iou, -INF)).to(dtype)
        out = AssignResult(num_gts, res.assigned_gt + 1, max_overlaps, labels=res.labels)
        out.assign_metrics = res.metric.to(dtype)
        if squeeze:
            out.gt_inds, out.max_overlaps = out.gt_inds[0], out.max_overlaps[0]
            out.labels, out.assign_metrics = out.labels[0], out.assign_metrics[0]
        return out


class BatchTaskAlignedAssigner(nn.Module):
    """mmyolo's ``BatchTaskAlignedAssigner`` (YOLOv6 / PP-YOLOE / RTMDet-style batched TAL) on
    tood-ext's fused op; see the module docstring for the semantics and differences."""

    def __init__(self, num_classes: int, topk: int = 13, alpha: float = 1.0, beta: float = 6.0,
                 eps: float = 1e-7, use_ciou: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self.use_ciou = use_ciou

    @torch.no_grad()
    def forward(self, pred_bboxes: torch.Tensor, pred_scores: torch.Tensor,
                priors: torch.Tensor, gt_labels: torch.Tensor, gt_bboxes: torch.Tensor,
                pad_bbox_flag: torch.Tensor) -> dict:
        """pred_bboxes (B, A, 4) xyxy; pred_scores (B, A, C); priors (A, >= 2) whose [:, :2]
        are the points; gt_labels (B, G, 1); gt_bboxes (B, G, 4); pad_bbox_flag (B, G, 1)
        (1 = real GT). Returns mmyolo's dict."""
        from ..ops._checks import check_batched_gts, check_num_classes, check_tensors
        from ..ops._checks import finite_gt_rows
        from ..ops.tal import task_aligned_assign

        op = "compat.mmdet.BatchTaskAlignedAssigner"
        check_tensors(op, pred_bboxes=pred_bboxes, pred_scores=pred_scores, priors=priors,
                      gt_labels=gt_labels, gt_bboxes=gt_bboxes, pad_bbox_flag=pad_bbox_flag)
        B, A, C, G = check_batched_gts(op, "pred_scores", pred_scores, "gt_bboxes", gt_bboxes)
        check_num_classes(op, self.num_classes, "pred_scores", pred_scores)
        _check_priors(op, priors)
        for name, t in (("gt_labels", gt_labels), ("pad_bbox_flag", pad_bbox_flag)):
            if tuple(t.shape) not in ((B, G, 1), (B, G)):
                raise RuntimeError(f"{op}: {name} must have shape (B, G, 1) = {(B, G, 1)}, "
                                   f"got {tuple(t.shape)}")
        if tuple(pred_bboxes.shape) != (B, A, 4):
            raise RuntimeError(f"{op}: pred_bboxes must have shape (B, A, 4) = {(B, A, 4)}, "
                               f"got {tuple(pred_bboxes.shape)}")
        # a GT with a non-finite coordinate is padding: no anchor, no NaN target
        finite = finite_gt_rows(gt_bboxes)
        gt_bboxes = torch.where(finite[..., None], gt_bboxes, torch.zeros_like(gt_bboxes))
        pad_bbox_flag = pad_bbox_flag * finite.reshape(pad_bbox_flag.shape).to(
            pad_bbox_flag.dtype)
        result = {
            "assigned_labels": gt_bboxes.new_full(pred_scores[..., 0].shape, self.num_classes),
            "assigned_bboxes": gt_bboxes.new_full(pred_bboxes.shape, 0),
            "assigned_scores": gt_bboxes.new_full(pred_scores.shape, 0),
            "fg_mask_pre_prior": gt_bboxes.new_full(pred_scores[..., 0].shape, 0),
        }
        if G == 0:
            return result
        labels = gt_labels.reshape(B, G).long()
        valid = pad_bbox_flag.reshape(B, G).bool()
        dt = _op_dtype(pred_scores)
        res = task_aligned_assign(
            pred_scores.to(dt), pred_bboxes.to(dt), priors[:, :2].to(dt),
            torch.where(valid, labels, torch.zeros_like(labels)), gt_bboxes.to(dt), valid,
            topk=self.topk, alpha=self.alpha, beta=self.beta, candidates="inside_then_topk",
            iou_mode="ciou" if self.use_ciou else "iou", inside_eps=1e-9, norm_eps=self.eps)
        fg = res.fg_mask
        idx = res.assigned_gt.clamp(min=0)  # mmyolo: GT 0 on background anchors
        flat = idx + torch.arange(B, device=idx.device)[:, None] * G
        assigned_labels = gt_labels.long().flatten()[flat]
        assigned_bboxes = gt_bboxes.reshape(-1, 4)[flat]
        assigned_labels[assigned_labels < 0] = 0
        score_dtype = torch.promote_types(pred_scores.dtype, gt_bboxes.dtype)
        scores = torch.zeros((B, A, self.num_classes), dtype=score_dtype,
                             device=pred_scores.device)
        scores.scatter_(2, assigned_labels[..., None],
                        torch.where(fg, res.soft_target.to(score_dtype),
                                    torch.zeros((), dtype=score_dtype,
                                                device=scores.device))[..., None])
        result["assigned_labels"] = assigned_labels
        result["assigned_bboxes"] = assigned_bboxes
        result["assigned_scores"] = scores
        result["fg_mask_pre_prior"] = fg
        return result
