"""A synthetic COCO-format detection dataset, written to disk, deterministic from a seed.

Objects of up to six classes, told apart by shape and texture (never by colour alone: every
instance draws its own colours), of varied size and aspect, placed with partial occlusion, on a
gradient background with pixel noise and unannotated clutter (thin lines, small dots). Boxes are
the tight bounds of each object's drawn pixels; ``area`` is its visible (unoccluded) pixel count,
which COCO evaluation uses for the small/medium/large split.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("rectangle", "ellipse", "triangle", "striped_rectangle", "checkered_ellipse", "ring")


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """A saturated colour, at least some distance from ``avoid`` (the local background)."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        c[rng.integers(0, 3)] = rng.integers(180, 256)  # one bright channel: visible on dark bg
        if avoid is None or np.abs(c.astype(int) - avoid.astype(int)).sum() > 150:
            return c.astype(np.uint8)
    return (255 - avoid).astype(np.uint8) if avoid is not None else c.astype(np.uint8)


def _shape_mask(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (h, w) mask of a shape filling a w x h box."""
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    if kind in ("rectangle", "striped_rectangle"):
        d.rectangle([0, 0, w - 1, h - 1], fill=1)
    elif kind in ("ellipse", "checkered_ellipse"):
        d.ellipse([0, 0, w - 1, h - 1], fill=1)
    elif kind == "ring":
        t = max(2, int(min(w, h) * rng.uniform(0.15, 0.25)))
        d.ellipse([0, 0, w - 1, h - 1], fill=1)
        if w - 2 * t > 2 and h - 2 * t > 2:
            d.ellipse([t, t, w - 1 - t, h - 1 - t], fill=0)
    elif kind == "triangle":
        # apex on one side (top / bottom / left / right), base across the opposite side
        apex = rng.uniform(0.2, 0.8)
        side = rng.integers(0, 4)
        if side == 0:
            pts = [(apex * (w - 1), 0), (0, h - 1), (w - 1, h - 1)]
        elif side == 1:
            pts = [(apex * (w - 1), h - 1), (0, 0), (w - 1, 0)]
        elif side == 2:
            pts = [(0, apex * (h - 1)), (w - 1, 0), (w - 1, h - 1)]
        else:
            pts = [(w - 1, apex * (h - 1)), (0, 0), (0, h - 1)]
        d.polygon(pts, fill=1)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.asarray(im, dtype=bool)


def _texture(kind: str, w: int, h: int, c1: np.ndarray, c2: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 fill of a shape: flat with a little shading, stripes or a checkerboard."""
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "striped_rectangle":
        period = int(rng.integers(4, 10))
        orient = rng.integers(0, 3)
        coord = xx if orient == 0 else yy if orient == 1 else xx + yy
        on = (coord // period) % 2 == 0
    elif kind == "checkered_ellipse":
        cell = int(rng.integers(3, 8))
        on = ((xx // cell) + (yy // cell)) % 2 == 0
    else:
        shade = 1.0 - 0.25 * (yy / max(h - 1, 1))  # soft vertical shading
        return np.clip(c1[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    return np.where(on[..., None], c1[None, None, :], c2[None, None, :]).astype(np.uint8)


def _background(w: int, h: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    a = rng.integers(0, 110, 3).astype(np.float32)
    b = rng.integers(0, 110, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    if noise > 0:
        img = img + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(img: np.ndarray, rng: np.random.Generator, count: int, max_size: int) -> None:
    """Unannotated distractors: thin line segments and small dots, drawn in place."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    for _ in range(count):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            ang, length = rng.uniform(0, np.pi), rng.uniform(max_size, 3 * max_size)
            d.line([x, y, x + length * np.cos(ang), y + length * np.sin(ang)], fill=colour,
                   width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(1, max_size / 2)
            d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    img[...] = np.asarray(pil)


def render_image(rng: np.random.Generator, width: int, height: int, classes: tuple[str, ...],
                 max_objects: int = 6, min_size: float = 0.1, max_size: float = 0.5,
                 max_occlusion: float = 0.4, noise: float = 6.0, clutter: int = 12
                 ) -> tuple[np.ndarray, list[dict]]:
    """One image (h, w, 3) uint8 and its objects [{label, bbox (x, y, w, h), area}]."""
    img = _background(width, height, rng, noise)
    short = min(width, height)
    _clutter(img, rng, int(rng.integers(0, clutter + 1)), max(3, int(min_size * short * 0.5)))
    owner = np.full((height, width), -1, dtype=np.int32)  # which object each pixel shows
    full_area: list[int] = []
    objects: list[dict] = []
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        for _attempt in range(20):
            label = int(rng.integers(0, len(classes)))
            kind = classes[label]
            side = rng.uniform(min_size, max_size) * short
            aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
            if kind == "ring":  # a ring of very uneven aspect is hard to tell from a stripe
                aspect = float(np.clip(aspect, 0.7, 1.4))
            w = int(np.clip(side * np.sqrt(aspect), 6, width))
            h = int(np.clip(side / np.sqrt(aspect), 6, height))
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            mask = _shape_mask(kind, w, h, rng)
            # reject a placement that would hide too much of an earlier object
            covered = owner[y0:y0 + h, x0:x0 + w][mask]
            ok = True
            if covered.size and (covered >= 0).any():
                ids, counts = np.unique(covered[covered >= 0], return_counts=True)
                for j, c in zip(ids, counts):
                    visible = int((owner == j).sum())
                    if visible - c < (1 - max_occlusion) * full_area[j]:
                        ok = False
                        break
            if ok:
                break
        else:
            continue
        local_bg = img[y0:y0 + h, x0:x0 + w].reshape(-1, 3).mean(0)
        c1 = _colour(rng, local_bg)
        c2 = _colour(rng, c1) if kind in ("striped_rectangle", "checkered_ellipse") else c1
        tex = _texture(kind, w, h, c1, c2, rng)
        region = img[y0:y0 + h, x0:x0 + w]
        region[mask] = tex[mask]
        owner[y0:y0 + h, x0:x0 + w][mask] = len(objects)
        ys, xs = np.nonzero(mask)
        full_area.append(int(mask.sum()))
        objects.append({"label": label,
                        "bbox": [float(x0 + xs.min()), float(y0 + ys.min()),
                                 float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]})
    for j, obj in enumerate(objects):
        obj["area"] = float((owner == j).sum())
    return img, objects


MIN_IMAGE_SIZE = 16  # objects are at least 6 pixels a side; smaller images cannot hold them


def check_generate_args(num_images: int = 0, image_size=320, num_classes: int = 5,
                        max_objects: int = 6, min_size: float = 0.1, max_size: float = 0.5,
                        max_occlusion: float = 0.4, aspect_jitter: float = 0.25) -> None:
    """The argument errors of :func:`generate_synthetic_coco` (ValueError naming the argument,
    TypeError for a non-number), raised before anything is written."""
    def number(name, value, integral=False):
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value,
                                                                                         bool)
        if not ok or (integral and int(value) != value):
            kind = "an int" if integral else "a number"
            raise TypeError(f"{name} must be {kind}, got {value!r}")
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")

    number("num_images", num_images, integral=True)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    sizes = image_size if isinstance(image_size, (tuple, list)) else (image_size,)
    if len(sizes) not in (1, 2):
        raise ValueError(f"image_size must be an int or a (width, height) pair, got {image_size!r}")
    for s in sizes:
        number("image_size", s, integral=True)
        if s < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} pixels, got {image_size!r}")
    number("num_classes", num_classes, integral=True)
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {num_classes}")
    number("max_objects", max_objects, integral=True)
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    number("min_size", min_size)
    number("max_size", max_size)
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"min_size and max_size are fractions of the image's short side with "
                         f"0 < min_size <= max_size <= 1, got min_size={min_size}, "
                         f"max_size={max_size}")
    number("max_occlusion", max_occlusion)
    if not 0 <= max_occlusion <= 1:
        raise ValueError(f"max_occlusion must be in [0, 1], got {max_occlusion}")
    number("aspect_jitter", aspect_jitter)
    if not 0 <= aspect_jitter < 1:
        raise ValueError(f"aspect_jitter must be in [0, 1), got {aspect_jitter}")


def generate_synthetic_coco(out_dir: str, num_images: int, seed: int = 0,
                            image_size: int | tuple[int, int] = 320, num_classes: int = 5,
                            max_objects: int = 6, min_size: float = 0.1, max_size: float = 0.5,
                            max_occlusion: float = 0.4, noise: float = 6.0, clutter: int = 12,
                            aspect_jitter: float = 0.25) -> str:
    """Write ``out_dir/images/*.png`` and ``out_dir/annotations.json`` (COCO instances format).

    Args:
        num_images: how many images.
        seed: everything is a function of (seed, image index): the same arguments give the same
            bytes, and image i does not depend on ``num_images``.
        image_size: an int S gives images whose long side is S and short side is drawn from
            [S * (1 - aspect_jitter), S] (either orientation); a (width, height) pair fixes both.
        num_classes: the first ``num_classes`` of :data:`CLASSES` (1..6).
        max_objects: 1..max_objects objects per image (a placement that would occlude more than
            ``max_occlusion`` of an earlier object is redrawn, or dropped after 20 tries).
        min_size, max_size: object size range as a fraction of the image's short side.
        noise: std of the Gaussian pixel noise of the background; clutter: up to this many
            unannotated distractors per image.

    Returns the path of the annotations JSON. Category ids are 1..num_classes.
    """
    check_generate_args(num_images=num_images, image_size=image_size, num_classes=num_classes,
                        max_objects=max_objects, min_size=min_size, max_size=max_size,
                        max_occlusion=max_occlusion, aspect_jitter=aspect_jitter)
    classes = CLASSES[:num_classes]
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        if isinstance(image_size, (tuple, list)):
            width, height = int(image_size[0]), int(image_size[1])
        else:
            long_side = int(image_size)
            short_side = int(round(long_side * rng.uniform(1 - aspect_jitter, 1.0)))
            width, height = ((long_side, short_side) if rng.random() < 0.5
                             else (short_side, long_side))
        img, objects = render_image(rng, width, height, classes, max_objects, min_size, max_size,
                                    max_occlusion, noise, clutter)
        image_id = i + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(img).save(os.path.join(img_dir, file_name), optimize=False)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["label"] + 1, "bbox": obj["bbox"],
                                "area": obj["area"], "iscrowd": 0})
    data = {"info": {"description": f"tood_ext synthetic shapes, seed {seed}"},
            "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                           for k, name in enumerate(classes)]}
    ann_file = os.path.join(out_dir, "annotations.json")
    with open(ann_file, "w") as f:
        json.dump(data, f)
    return ann_file
