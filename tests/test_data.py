"""Data pipeline: box transforms against hand-computed values, the COCO reader end to end on a
hand-made image, collation, and the synthetic generator's determinism and validity."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tood_ext.data import (IMAGENET_MEAN, IMAGENET_STD, CocoDetection, annotations_to_targets,
                           collate, denormalize, generate_synthetic_coco, hflip, normalize, pad,
                           rescale_size, resize, xywh_to_xyxy, xyxy_to_xywh)


# ------------------------------------------------------------------ transforms, by hand
def test_xywh_xyxy_round_trip():
    xywh = np.array([[10, 20, 30, 40], [0, 0, 1, 1]], dtype=np.float32)
    xyxy = xywh_to_xyxy(xywh)
    np.testing.assert_array_equal(xyxy, [[10, 20, 40, 60], [0, 0, 1, 1]])
    np.testing.assert_array_equal(xyxy_to_xywh(xyxy), xywh)
    assert xywh_to_xyxy(np.zeros((0, 4))).shape == (0, 4)


@pytest.mark.parametrize("w,h,scale,expected", [
    (640, 480, (1333, 800), (1067, 800, 800 / 480)),     # short side binds
    (2000, 500, (1333, 800), (1333, 333, 1333 / 2000)),  # long side binds: 333.25 -> 333
    (200, 100, (100, 100), (100, 50, 0.5)),
    (100, 200, (256, 256), (128, 256, 1.28)),            # portrait: long side binds
    (320, 240, (320, 320), (320, 240, 1.0)),             # already fits: unchanged
])
def test_rescale_size(w, h, scale, expected):
    new_w, new_h, f = rescale_size(w, h, scale)
    assert (new_w, new_h) == expected[:2]
    assert f == pytest.approx(expected[2])


def test_resize_boxes_use_realised_factors():
    img = np.zeros((100, 200, 3), np.uint8)
    out, boxes, f, (sx, sy) = resize(img, np.array([[10, 20, 50, 60]], np.float32), (100, 100))
    assert out.shape == (50, 100, 3) and f == 0.5 and (sx, sy) == (0.5, 0.5)
    np.testing.assert_allclose(boxes, [[5, 10, 25, 30]])
    # 333.25 rounds to 333: the y factor is 333 / 500, not 1333 / 2000
    img = np.zeros((500, 2000, 3), np.uint8)
    out, boxes, f, (sx, sy) = resize(img, np.array([[0, 0, 2000, 500]], np.float32), (1333, 800))
    assert out.shape == (333, 1333, 3)
    np.testing.assert_allclose(boxes, [[0, 0, 1333, 333]], rtol=1e-6)


def test_hflip_boxes_and_pixels():
    img = np.zeros((40, 100, 3), np.uint8)
    img[5:15, 10:30] = 255  # the box [10, 5, 30, 15] in pixel-edge coordinates
    box = np.array([[10, 5, 30, 15]], np.float32)
    fimg, fbox = hflip(img, box)
    np.testing.assert_array_equal(fbox, [[70, 5, 90, 15]])
    ys, xs = np.nonzero(fimg[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (70, 90, 5, 15)
    img2, box2 = hflip(fimg, fbox)  # an involution
    np.testing.assert_array_equal(img2, img)
    np.testing.assert_array_equal(box2, box)


def test_normalize_pad():
    img = np.random.default_rng(0).integers(0, 256, (130, 250, 3)).astype(np.uint8)
    chw = normalize(img)
    assert chw.shape == (3, 130, 250) and chw.dtype == np.float32
    np.testing.assert_allclose(chw[:, 3, 7], (img[3, 7] - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD),
                               rtol=1e-5)
    padded = pad(chw, 128)
    assert padded.shape == (3, 256, 256)
    np.testing.assert_array_equal(padded[:, :130, :250], chw)
    assert not padded[:, 130:].any() and not padded[:, :, 250:].any()
    np.testing.assert_array_equal(denormalize(chw), img)
    assert pad(np.zeros((3, 128, 256), np.float32)).shape == (3, 128, 256)


# ------------------------------------------------------------------ the reader, end to end
@pytest.fixture
def handmade(tmp_path):
    """One 200 x 100 image, a red block at x 20..60, y 10..50 (category 7), a green block at
    x 120..180, y 40..90 (category 3), a crowd region and a degenerate box."""
    img = np.full((100, 200, 3), 30, np.uint8)
    img[10:50, 20:60] = (255, 0, 0)
    img[40:90, 120:180] = (0, 255, 0)
    os.makedirs(tmp_path / "img")
    Image.fromarray(img).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(tmp_path / "img" / "empty.png")
    data = {
        "images": [{"id": 5, "file_name": "a.png", "width": 200, "height": 100},
                   {"id": 9, "file_name": "empty.png", "width": 32, "height": 64}],
        "categories": [{"id": 7, "name": "red"}, {"id": 3, "name": "green"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [20, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [120, 40, 60, 50], "area": 3000, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 1e4, "iscrowd": 1},
            {"id": 4, "image_id": 5, "category_id": 7, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0},
        ]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return str(ann), str(tmp_path / "img"), img


def test_category_mapping_and_crowd(handmade):
    ann, img_dir, _ = handmade
    ds = CocoDetection(ann, img_dir, scale=(200, 100))
    assert ds.cat_ids == [3, 7] and ds.class_names == ["green", "red"] and ds.num_classes == 2
    boxes, labels = annotations_to_targets(ds.coco.anns_by_image[5], ds.label_of)
    # crowd and the 0.5 px wide box are dropped; xywh -> xyxy; id 7 -> label 1, id 3 -> label 0
    np.testing.assert_array_equal(boxes, [[20, 10, 60, 50], [120, 40, 180, 90]])
    np.testing.assert_array_equal(labels, [1, 0])
    assert len(ds) == 2 and len(CocoDetection(ann, img_dir, train=True)) == 1  # empty filtered


@pytest.mark.parametrize("flip", [False, True])
def test_reader_boxes_follow_pixels(handmade, flip):
    """Resize x0.5 (200x100 -> 100x50), optional flip, pad to 128x128: each box must frame its
    coloured block in the output tensor, and dividing by scale_factor (after unflipping) must
    give the original boxes back."""
    ann, img_dir, _ = handmade
    ds = CocoDetection(ann, img_dir, scale=(100, 100), train=flip, flip_prob=1.0 if flip else 0.0,
                       filter_empty=False)
    item = ds[0]
    meta = item["meta"]
    assert meta["flip"] is flip and meta["scale_factor"] == 0.5
    assert meta["orig_size"] == (100, 200) and meta["img_shape"] == (50, 100)
    assert item["image"].shape == (3, 128, 128)
    expected = np.array([[10, 5, 30, 25], [60, 20, 90, 45]], np.float32)
    if flip:
        expected = np.stack([100 - expected[:, 2], expected[:, 1], 100 - expected[:, 0],
                             expected[:, 3]], 1)
    np.testing.assert_allclose(item["boxes"].numpy(), expected)
    rgb = denormalize(item["image"].numpy())
    for (x1, y1, x2, y2), channel in zip(expected.astype(int), (0, 1)):
        block = rgb[y1:y2, x1:x2].astype(int)
        assert (block[..., channel] > 200).mean() > 0.9  # the block fills its box ...
        ring = np.concatenate([rgb[y1 - 2, x1:x2], rgb[y2 + 1, x1:x2], rgb[y1:y2, x1 - 2],
                               rgb[y1:y2, x2 + 1]]).astype(int)
        assert (ring[:, channel] < 100).all()            # ... and stops at its edges
    assert not item["image"][:, 50:].any() and not item["image"][:, :, 100:].any()  # padding
    # back to the original image: unflip in resized coordinates, then divide by the factor
    b = item["boxes"].numpy().copy()
    if flip:
        b[:, [0, 2]] = meta["img_shape"][1] - b[:, [2, 0]]
    np.testing.assert_allclose(b / meta["scale_factor"], [[20, 10, 60, 50], [120, 40, 180, 90]])


def test_flips_are_seeded(handmade):
    ann, img_dir, _ = handmade
    ds = CocoDetection(ann, img_dir, scale=(100, 100), train=True, seed=3)
    flips = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        flips.append(ds[0]["meta"]["flip"])
    assert 5 < sum(flips) < 35                         # about half
    ds2 = CocoDetection(ann, img_dir, scale=(100, 100), train=True, seed=3)
    for epoch in (0, 7, 39):
        ds2.set_epoch(epoch)
        assert ds2[0]["meta"]["flip"] == flips[epoch]  # a function of (seed, epoch, index)


def test_collate_pads_to_largest(handmade):
    ann, img_dir, _ = handmade
    ds = CocoDetection(ann, img_dir, scale=(256, 256), filter_empty=False)
    a, b = ds[0], ds[1]  # 256x128 -> pad (128, 256); 32x64 -> 128x256 -> pad (256, 128)
    assert a["image"].shape == (3, 128, 256) and b["image"].shape == (3, 256, 128)
    images, targets, metas = collate([a, b])
    assert images.shape == (2, 3, 256, 256)
    torch.testing.assert_close(images[0, :, :128, :256], a["image"])
    torch.testing.assert_close(images[1, :, :256, :128], b["image"])
    assert not images[0, :, 128:].any() and not images[1, :, :, 128:].any()
    assert targets[0]["boxes"].shape == (2, 4) and targets[0]["labels"].dtype == torch.int64
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)
    assert [m["image_id"] for m in metas] == [5, 9] and metas[0]["batch_shape"] == (256, 256)


# ------------------------------------------------------------------ synthetic generator
def _digest(root: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(root, "images"))):
        h.update(name.encode())
        with Image.open(os.path.join(root, "images", name)) as im:
            h.update(np.asarray(im).tobytes())
    with open(os.path.join(root, "annotations.json"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def test_synthetic_deterministic(tmp_path):
    kw = dict(image_size=96, num_classes=6)
    generate_synthetic_coco(str(tmp_path / "a"), 6, seed=11, **kw)
    generate_synthetic_coco(str(tmp_path / "b"), 6, seed=11, **kw)
    generate_synthetic_coco(str(tmp_path / "c"), 6, seed=12, **kw)
    generate_synthetic_coco(str(tmp_path / "d"), 3, seed=11, **kw)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    assert _digest(str(tmp_path / "a")) != _digest(str(tmp_path / "c"))
    # image i depends on (seed, i) only, not on how many images are written
    for i in (1, 2, 3):
        name = f"{i:06d}.png"
        with Image.open(tmp_path / "a" / "images" / name) as x, \
                Image.open(tmp_path / "d" / "images" / name) as y:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_synthetic_valid(tmp_path):
    n, size = 40, 128
    ann = generate_synthetic_coco(str(tmp_path), n, seed=0, image_size=size, num_classes=6,
                                  max_objects=6)
    data = json.load(open(ann))
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5, 6]
    assert len(data["images"]) == n and len({im["id"] for im in data["images"]}) == n
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    per_image = {i: 0 for i in sizes}
    for im in data["images"]:
        with Image.open(tmp_path / "images" / im["file_name"]) as pil:
            assert pil.size == (im["width"], im["height"]) and pil.mode == "RGB"
        assert max(im["width"], im["height"]) == size and min(im["width"], im["height"]) >= 0.75 * size - 1
    aspects, areas = [], []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H and w >= 4 and h >= 4
        assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
        assert a["area"] >= 0.5 * 0.6 * w * h * 0.5  # at most 40 % occluded (triangle = half box)
        per_image[a["image_id"]] += 1
        aspects.append(w / h)
        areas.append(w * h)
    assert set(a["category_id"] for a in data["annotations"]) == {1, 2, 3, 4, 5, 6}
    assert min(per_image.values()) >= 1 and max(per_image.values()) >= 3
    assert min(aspects) < 0.8 and max(aspects) > 1.25          # varied aspect
    assert max(areas) / min(areas) > 8                          # varied size
    # overlap happens: some pair of boxes in some image intersects
    boxes = {}
    for a in data["annotations"]:
        boxes.setdefault(a["image_id"], []).append(xywh_to_xyxy(np.array(a["bbox"]))[0])
    overlaps = 0
    for bs in boxes.values():
        for i in range(len(bs)):
            for j in range(i + 1, len(bs)):
                iw = min(bs[i][2], bs[j][2]) - max(bs[i][0], bs[j][0])
                ih = min(bs[i][3], bs[j][3]) - max(bs[i][1], bs[j][1])
                overlaps += iw > 0 and ih > 0
    assert overlaps > 0


def test_synthetic_boxes_are_tight(tmp_path):
    """Without noise or clutter and with one object, the box frames exactly the pixels that
    differ from the smooth background."""
    from tood_ext.data.synthetic import CLASSES, render_image
    for seed in range(12):
        rng = np.random.default_rng(seed)
        img, objs = render_image(rng, 96, 80, CLASSES, max_objects=1, noise=0.0, clutter=0)
        x, y, w, h = objs[0]["bbox"]
        x, y, w, h = int(x), int(y), int(w), int(h)
        # the background is a linear gradient: second differences vanish (up to rounding)
        g = img.astype(int)
        d2 = np.abs(g[:, 2:] - 2 * g[:, 1:-1] + g[:, :-2]).max(-1)
        d2y = np.abs(g[2:] - 2 * g[1:-1] + g[:-2]).max(-1)
        mask = np.zeros((80, 96), bool)
        mask[:, 1:-1] |= d2 > 3
        mask[1:-1] |= d2y > 3
        ys, xs = np.nonzero(mask)
        # the object's edges (the only non-linear pixels) lie within one pixel of its box
        assert x - 1 <= xs.min() <= x + 1 and x + w - 2 <= xs.max() <= x + w
        assert y - 1 <= ys.min() <= y + 1 and y + h - 2 <= ys.max() <= y + h
