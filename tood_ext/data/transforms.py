"""Image and box transforms of the detection pipeline (numpy in, numpy out).

Conventions: images are HxWx3 uint8 RGB arrays; boxes are (n, 4) float32 ``xyxy`` in pixel
*edges* (a box covering pixel columns 0..9 is x1 = 0, x2 = 10), so a flip maps x to W - x and a
resize multiplies by the scale, with no +1/-1 terms (mmdetection's and COCO's convention).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

# ImageNet statistics on the 0..255 scale (torchvision's, times 255), RGB.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int, float]:
    """Target size of a keep-ratio resize (mmdetection's ``Resize(keep_ratio=True)``).

    ``scale = (long, short)``: the image is scaled by the largest factor that keeps its long side
    <= ``long`` and its short side <= ``short``. Returns (new_width, new_height, factor).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(width, height), short_edge / min(width, height))
    new_w = max(int(width * factor + 0.5), 1)
    new_h = max(int(height * factor + 0.5), 1)
    return new_w, new_h, factor


def resize(image: np.ndarray, boxes: np.ndarray, scale: tuple[int, int]
           ) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float]]:
    """Keep-ratio resize of an image and its boxes.

    Returns (image, boxes, factor, (sx, sy)). ``factor`` is the nominal factor; the boxes are
    scaled by the per-axis factors actually realised after rounding the size to whole pixels
    (new_w / w, new_h / h), which differ from ``factor`` by < 0.5 px over the image.
    """
    h, w = image.shape[:2]
    new_w, new_h, factor = rescale_size(w, h, scale)
    if (new_w, new_h) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    sx, sy = new_w / w, new_h / h
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array(
        [sx, sy, sx, sy], dtype=np.float32)
    return image, boxes, factor, (sx, sy)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip: x -> W - x, so (x1, x2) -> (W - x2, W - x1)."""
    w = image.shape[1]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, (x - mean) / std per channel."""
    img = image.astype(np.float32)
    img = (img - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def denormalize(chw: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize`: 3xHxW float -> HxWx3 uint8."""
    img = np.asarray(chw, dtype=np.float32).transpose(1, 2, 0)
    img = img * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def pad_size(height: int, width: int, divisor: int = 128) -> tuple[int, int]:
    return (int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor))


def pad(chw: np.ndarray, divisor: int = 128, value: float = 0.0) -> np.ndarray:
    """Pad a 3xHxW array at the bottom and right to multiples of ``divisor``.

    Boxes are unchanged: the padding lies beyond the image's right and bottom edges. ``value`` 0
    after normalisation is the mean colour (mmdetection pads the normalised tensor with 0 too).
    """
    c, h, w = chw.shape
    ph, pw = pad_size(h, w, divisor)
    if (ph, pw) == (h, w):
        return chw
    out = np.full((c, ph, pw), value, dtype=chw.dtype)
    out[:, :h, :w] = chw
    return out
