"""A COCO-format detection dataset: an image folder plus an ``instances`` JSON file.

Each item goes through: load (RGB) -> keep-ratio resize -> random horizontal flip (training)
-> normalise -> pad to a multiple of ``size_divisor``. Boxes follow every geometric step.
:func:`collate` stacks items into a batch (padded to the largest item), the model's targets and
the metas that map predictions back to original image coordinates.
"""
from __future__ import annotations

import json
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
        with open(ann_file) as f:
            data = json.load(f)
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        anns_by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data.get("annotations", []):
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        images = sorted(data["images"], key=lambda im: im["id"])
        return cls(images, anns_by_image, [c["id"] for c in cats],
                   [c.get("name", str(c["id"])) for c in cats])


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
        if filter_empty if filter_empty is not None else train:
            images = [im for im in images
                      if len(annotations_to_targets(self.coco.anns_by_image.get(im["id"], []),
                                                    self.label_of, min_size)[1]) > 0]
        self.images = images

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
        with Image.open(os.path.join(self.img_dir, info["file_name"])) as im:
            return np.asarray(im.convert("RGB"))

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
