"""Detections drawn on images, written as PNG files."""
from __future__ import annotations

import colorsys
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.transforms import normalize, pad, resize


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct bright colour per class (golden-ratio hue steps)."""
    h = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes, scores, labels, class_names=None,
                    score_thr: float = 0.3) -> Image.Image:
    """An RGB PIL image with the detections scoring >= ``score_thr`` drawn as labelled boxes."""
    im = Image.fromarray(image).convert("RGB")
    d = ImageDraw.Draw(im)
    for b, s, c in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(scores), np.asarray(labels)):
        if s < score_thr:
            continue
        colour = class_colour(int(c))
        name = class_names[int(c)] if class_names else str(int(c))
        x1, y1, x2, y2 = (float(v) for v in b)
        d.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        text = f"{name} {s:.2f}"
        tw, th = d.textbbox((0, 0), text)[2:]
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1
        d.rectangle([x1, ty, x1 + tw + 4, ty + th + 2], fill=colour)
        d.text((x1 + 2, ty + 1), text, fill=(0, 0, 0))
    return im


@torch.no_grad()
def predict_images(model, paths: list[str], out_dir: str, scale=(1333, 800), class_names=None,
                   score_thr: float = 0.3, device="cpu", size_divisor: int = 128) -> list[str]:
    """Detect on each image file, draw, write ``out_dir/<stem>.png``; returns the written paths."""
    from ..data.coco import DataError

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:  # before anything is written
        raise DataError(f"no such image file: {missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for path in paths:  # the headers (cheap): a file that is no image fails before any write
        try:
            with Image.open(path):
                pass
        except Exception as exc:  # also what a patched Image.open raises (ultralytics: HEIF)
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    written = []
    for path in paths:
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:  # truncated, not an image
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
        os.makedirs(out_dir, exist_ok=True)  # after the first image is read
        resized, _, factor, _ = resize(image, np.zeros((0, 4), np.float32), scale)
        chw = torch.from_numpy(pad(normalize(resized), size_divisor))[None].to(device)
        meta = {"scale_factor": float(factor), "orig_size": image.shape[:2],
                "img_shape": resized.shape[:2], "flip": False}
        p = model.predict(chw, [meta])[0]
        out = draw_detections(image, p["boxes"].float().cpu().numpy(),
                              p["scores"].float().cpu().numpy(), p["labels"].cpu().numpy(),
                              class_names, score_thr)
        dst = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        out.save(dst)
        written.append(dst)
    return written
