"""A COCO-format detection dataset: an image folder plus an ``instances`` JSON file.

Each item goes through: load (RGB) -> keep-ratio resize -> random horizontal flip (training)
-> normalise -> pad to a multiple of ``size_divisor``. Boxes follow every geometric step.
:func:`collate` stacks items into a batch (padded to the largest item), the model's targets and
the metas that map predictions back to original image coordinates.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import hflip, normalize, pad, resize, xywh_to_xyxy


@dataclass
class CocoIndex:
    """The parts of an instances JSON the pipeline needs, with contiguous labels.

    COCO category ids are arbitrary integers; the model predicts labels 0..C-1. ``cat_ids[label]``
    is the category id of a label; ``label_of[cat_id]`` the reverse (sorted by category id).
    """
    images: list[dict]
    anns_by_image: dict[int, list[dict]]
    cat_ids: list[int]
    cat_names: list[str]

    @property
    def label_of(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.cat_ids)}

    @classmethod
    def load(cls, ann_file: str) -> "CocoIndex":
        """Reads and checks an instances JSON: :class:`DataError` (a ValueError) naming the
        file and the first malformed entry (not a dict, no ``images`` list, an image without
        ``id`` / ``file_name``, an annotation without ``image_id`` / ``category_id`` or whose
        ``bbox`` is not 4 finite numbers with w, h >= 0, a category without ``id``)."""
        try:
            with open(ann_file) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{ann_file}: not a JSON file ({exc})") from None
        _check_instances(ann_file, data)
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        anns_by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data.get("annotations", []):
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        images = sorted(data["images"], key=lambda im: im["id"])
        return cls(images, anns_by_image, [c["id"] for c in cats],
                   [c.get("name", str(c["id"])) for c in cats])


class DataError(ValueError):
    """A dataset file that cannot be used: a malformed annotations JSON, an unreadable image,
    no usable training image. The message names the file and what is wrong."""


def _check_instances(ann_file: str, data) -> None:
    def fail(what: str):
        raise DataError(f"{ann_file}: not a COCO instances file: {what}")

    if not isinstance(data, dict):
        fail(f"the top level must be an object with 'images', 'annotations' and 'categories', "
             f"got a JSON {type(data).__name__}")
    images = data.get("images")
    if not isinstance(images, list):
        fail("'images' must be a list of {id, file_name, ...}, "
             f"got {type(images).__name__ if 'images' in data else 'no images key'}")
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            fail(f"images[{i}] must be an object with 'id' and 'file_name', got {im!r:.80}")
    for key, need in (("annotations", ("image_id", "category_id", "bbox")),
                      ("categories", ("id",))):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            fail(f"'{key}' must be a list, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or any(k not in entry for k in need):
                fail(f"{key}[{i}] must be an object with {list(need)}, got {entry!r:.80}")
            if key == "annotations":
                box = entry["bbox"]
                ok = (isinstance(box, (list, tuple)) and len(box) == 4
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v) for v in box))
                if not ok or box[2] < 0 or box[3] < 0:
                    fail(f"annotations[{i}] (id {entry.get('id')}, image {entry['image_id']}): "
                         f"bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0, got "
                         f"{box!r}")


def annotations_to_targets(anns: list[dict], label_of: dict[int, int], min_size: float = 1.0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """COCO annotations -> (boxes (n, 4) xyxy float32, labels (n,) int64).

    Crowd annotations (``iscrowd``), categories not in ``label_of`` and boxes narrower or lower
    than ``min_size`` pixels are dropped (mmdetection's ``CocoDataset`` does the same for
    training; the evaluator still sees crowd boxes as regions to ignore).
    """
    boxes, labels = [], []
    for ann in anns:
        if ann.get("iscrowd", 0) or ann.get("ignore", 0):
            continue
        if ann["category_id"] not in label_of:
            continue
        x, y, w, h = ann["bbox"]
        if w < min_size or h < min_size:
            continue
        boxes.append([x, y, w, h])
        labels.append(label_of[ann["category_id"]])
    boxes_np = xywh_to_xyxy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    return boxes_np, np.asarray(labels, dtype=np.int64)


def _drop_reason(ann: dict, label_of: dict[int, int], min_size: float) -> str:
    if ann.get("iscrowd", 0) or ann.get("ignore", 0):
        return "crowd_or_ignore"
    if ann["category_id"] not in label_of:
        return "unknown_category"
    return "smaller_than_min_size"


class CocoDetection(Dataset):
    """Detection dataset over a COCO ``instances`` JSON.

    Args:
        ann_file: path of the instances JSON.
        img_dir: folder the images' ``file_name`` is relative to.
        scale: (long, short) bounds of the keep-ratio resize, e.g. (1333, 800) for COCO or
            (320, 320) for the synthetic demo.
        train: random horizontal flip with probability ``flip_prob``, drop images without boxes
            when ``filter_empty``.
        size_divisor: pad each image to a multiple of it (128: P7 has stride 128).
        seed: the flips are a pure function of (seed, epoch, index) -- see :meth:`set_epoch` -- so
            a resumed run sees the same flips as an uninterrupted one, with any number of workers.
    """

    def __init__(self, ann_file: str, img_dir: str, scale: tuple[int, int] = (1333, 800),
                 train: bool = False, flip_prob: float = 0.5, size_divisor: int = 128,
                 filter_empty: bool | None = None, seed: int = 0, min_size: float = 1.0):
        self.ann_file, self.img_dir = ann_file, img_dir
        self.scale = tuple(int(s) for s in scale)
        self.train, self.flip_prob, self.size_divisor = train, flip_prob, size_divisor
        self.seed, self.epoch, self.min_size = seed, 0, min_size
        self.coco = CocoIndex.load(ann_file)
        self.label_of = self.coco.label_of
        images = self.coco.images
        #: what the empty-image filter dropped (None when it is off): images in the file,
        #: kept, without any annotation, and whose every annotation was dropped, by reason
        self.filter_report: dict | None = None
        if filter_empty if filter_empty is not None else train:
            kept, report = [], {"images": len(images), "kept": 0, "no_annotations": 0,
                                "all_dropped": 0, "crowd_or_ignore": 0, "unknown_category": 0,
                                "smaller_than_min_size": 0}
            for im in images:
                anns = self.coco.anns_by_image.get(im["id"], [])
                if len(annotations_to_targets(anns, self.label_of, min_size)[1]) > 0:
                    kept.append(im)
                    continue
                if not anns:
                    report["no_annotations"] += 1
                    continue
                report["all_dropped"] += 1
                for ann in anns:  # the reason of each annotation of the image
                    report[_drop_reason(ann, self.label_of, min_size)] += 1
            report["kept"] = len(kept)
            self.filter_report = report
            images = kept
        self.images = images

    def describe_filter(self) -> str:
        """One line: how many images the empty-image filter dropped, and why."""
        r = self.filter_report
        if r is None:
            return f"{len(self.images)} images (no filter)"
        return (f"{r['kept']} of {r['images']} images kept by the empty-image filter "
                f"(training drops images without a usable box): {r['no_annotations']} have no "
                f"annotation, {r['all_dropped']} lost every annotation ({r['crowd_or_ignore']} "
                f"crowd/ignore, {r['unknown_category']} of a category not in 'categories', "
                f"{r['smaller_than_min_size']} narrower or lower than min_size = "
                f"{self.min_size} px)")

    @property
    def num_classes(self) -> int:
        return len(self.coco.cat_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.coco.cat_names)

    @property
    def cat_ids(self) -> list[int]:
        return list(self.coco.cat_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> np.ndarray:
        info = self.images[index]
        path = os.path.join(self.img_dir, info["file_name"])
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:  # missing, truncated, not an image
            raise DataError(f"cannot read image {path} (image id {info['id']} of "
                            f"{self.ann_file}): {type(exc).__name__}: {exc}") from exc

    def _flip(self, index: int) -> bool:
        if not self.train or self.flip_prob <= 0:
            return False
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return bool(rng.random() < self.flip_prob)

    def __getitem__(self, index: int) -> dict:
        info = self.images[index]
        image = self.load_image(index)
        orig_h, orig_w = image.shape[:2]
        boxes, labels = annotations_to_targets(self.coco.anns_by_image.get(info["id"], []),
                                               self.label_of, self.min_size)
        image, boxes, factor, _ = resize(image, boxes, self.scale)
        flip = self._flip(index)
        if flip:
            image, boxes = hflip(image, boxes)
        img_h, img_w = image.shape[:2]
        chw = pad(normalize(image), self.size_divisor)
        meta = {"image_id": info["id"], "file_name": info["file_name"],
                "orig_size": (orig_h, orig_w), "img_shape": (img_h, img_w),
                "pad_shape": tuple(chw.shape[1:]), "scale_factor": float(factor), "flip": flip}
        return {"image": torch.from_numpy(chw), "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels), "meta": meta}


def collate(items: list[dict]) -> tuple[torch.Tensor, list[dict], list[dict]]:
    """Items -> (images (B, 3, H, W), targets, metas); H, W = the largest padded item size.

    Every item is padded to a multiple of the divisor already, so the batch size is one too.
    ``targets[i] = {"boxes": (n, 4) float32 xyxy, "labels": (n,) int64}``.
    """
    h = max(it["image"].shape[1] for it in items)
    w = max(it["image"].shape[2] for it in items)
    images = items[0]["image"].new_zeros((len(items), 3, h, w))
    for i, it in enumerate(items):
        images[i, :, :it["image"].shape[1], :it["image"].shape[2]] = it["image"]
    targets = [{"boxes": it["boxes"], "labels": it["labels"]} for it in items]
    metas = [it["meta"] for it in items]
    for m in metas:
        m["batch_shape"] = (h, w)
    return images, targets, metas
