"""Every knob of the TOOD detector in one dataclass (:func:`tood_ext.models.build_model` builds
the detector it describes)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["HEADS", "TOODConfig"]

HEADS = ("tood", "atss")


@dataclass
class TOODConfig:
    """Configuration of :class:`tood_ext.models.TOOD` (defaults: mmdetection's
    ``tood_r50_fpn_1x_coco``, except ``depth`` and where noted).

    Model:
        num_classes: number of object classes (labels in ``[0, num_classes)``).
        depth: ResNet depth of the torchvision backbone, 18, 34 or 50.
        weights: path of a local state dict for the backbone (torchvision ResNet keys, ``fc.*``
            ignored; a dict under ``"state_dict"`` or ``"model"`` is unwrapped), or None for
            random initialisation. Nothing is ever downloaded.
        frozen_stages: backbone stages whose parameters get no gradient (1: the stem and
            ``layer1``, mmdetection's default; -1: none). None: 1 with ``weights``, -1 without
            (freezing random weights makes no sense).
        norm_eval: keep the backbone's BatchNorm layers in eval mode (frozen statistics) while
            training. None: True with ``weights`` (mmdetection), False without.
        fpn_channels: FPN output channels (= the head's ``in_channels``).
        head: ``"tood"``: the T-head (:class:`tood_ext.models.TOODHead`, detector
            :class:`~tood_ext.models.TOOD`); ``"atss"``: the conventional parallel two-branch
            head of ATSS with its centerness branch (:class:`tood_ext.models.ATSSHead`,
            detector :class:`~tood_ext.models.ATSS`), the baseline of TOOD's ablation.
        feat_channels, stacked_convs, la_down_rate, norm, num_groups: the head, see
            :class:`tood_ext.models.TOODHead` (for ``head="atss"``, ``stacked_convs`` is per
            branch and ``la_down_rate`` is unused).
        anchor_type: ``"anchor_free"`` or ``"anchor_based"`` (box decoding, see TOODHead).
        strides: FPN level strides (P3-P7).
        offset_init_std: std of the normal init of the offset branch's convs (mmdetection:
            0.001; 0.0 makes the initial offsets exactly zero).
        cls_prior, m_prior: prior probabilities of the biases of P's conv and of the
            alignment map M's last conv (mmdetection: 0.01 both; see TOODHead for why
            ``cls_prior=2e-4, m_prior=0.5`` trains better from scratch at small scale;
            unused by ``head="atss"``).
        ops: ``"kernel"`` (our compiled ops) or ``"reference"`` (their pure-PyTorch twins).

    Training:
        initial_epoch: epochs ``< initial_epoch`` use the ATSS assigner (``atss_topk`` per
            level), focal loss and centerness-weighted GIoU; later epochs TAL. This is also
            the assigner switch: ``initial_epoch >= `` the number of training epochs trains
            with ATSS only (the "+ ATSS" arms of TOOD's ablation), ``initial_epoch=0`` with
            TAL from the first iteration.
        topk, alpha, beta: TAL (candidates per GT, ``t = s**alpha * u**beta``).
        atss_topk: ATSS candidates per level and GT.
        focal_alpha, gamma: the initial focal loss (alpha) and both focal losses' exponent.
        loss_cls_weight, loss_bbox_weight: loss weights (1.0 and 2.0 in mmdetection).

    Inference (:mod:`tood_ext.models.postprocess`, shared by ``predict``, the export with NMS
    and the analysis):
        score_thr, nms_pre (per level, over (anchor, class) pairs above score_thr), iou_thr
        (class-wise NMS), max_per_img: as mmdetection's ``test_cfg``.
        min_bbox_size: boxes whose width or height (original-image pixels) is ``<=`` this are
            dropped before NMS; 0 (mmdetection's TOOD config) drops zero-size boxes, a negative
            value keeps every box.
        clip_to_image: clip boxes to the original image before the size filter and NMS. True
            (default; boxes are valid image regions, and a box wholly outside the image is then
            zero-size and dropped); mmdetection's TOOD does not clip: ``False`` is its behaviour.
    """

    num_classes: int = 80
    depth: int = 50
    weights: str | None = None
    frozen_stages: int | None = None
    norm_eval: bool | None = None
    fpn_channels: int = 256
    head: str = "tood"
    feat_channels: int = 256
    stacked_convs: int = 6
    la_down_rate: int = 8
    norm: str | None = "GN"
    num_groups: int = 32
    anchor_type: str = "anchor_free"
    strides: tuple = (8, 16, 32, 64, 128)
    offset_init_std: float = 0.001
    cls_prior: float = 0.01
    m_prior: float = 0.01
    ops: str = "kernel"
    # training
    initial_epoch: int = 4
    topk: int = 13
    alpha: float = 1.0
    beta: float = 6.0
    atss_topk: int = 9
    focal_alpha: float = 0.25
    gamma: float = 2.0
    loss_cls_weight: float = 1.0
    loss_bbox_weight: float = 2.0
    # inference
    score_thr: float = 0.05
    nms_pre: int = 1000
    iou_thr: float = 0.6
    max_per_img: int = 100
    min_bbox_size: float = 0.0
    clip_to_image: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TOODConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise (catches typos in configs)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TOODConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "strides" in d:
            d["strides"] = tuple(d["strides"])
        return cls(**d)

