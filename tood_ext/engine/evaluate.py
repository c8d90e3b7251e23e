"""Evaluation: run ``model.predict`` over a COCO-format set, then COCO bbox AP."""
from __future__ import annotations

import json
import os

import torch

from . import dist as D
from .coco_eval import coco_bbox_metrics, format_table
from .progress import progress


@torch.no_grad()
def inference(model, dataset, device="cpu", batch_size: int = 2, workers: int = 0,
              progress_bar: bool = True) -> list[dict]:
    """COCO results ``[{image_id, category_id, bbox xywh, score}]`` of this process's shard,
    gathered from every process (each image once), boxes in original image coordinates."""
    from ..data.loader import make_loader

    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, seed=0,
                         num_replicas=D.world_size(), rank=D.rank())
    cat_ids = dataset.cat_ids
    results = []
    bar = progress(len(loader), desc="eval", disable=not (D.is_main() and progress_bar))
    for images, _targets, metas in loader:
        preds = model.predict(images.to(device), metas)
        for meta, p in zip(metas, preds):
            # as predict returns them: clipped to the image with cfg.clip_to_image (default),
            # else unclipped as mmdetection's TOOD (a clip here would re-impose it)
            boxes = p["boxes"].float().cpu()
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            for b, s, c in zip(xywh, p["scores"].float().cpu().tolist(),
                               p["labels"].cpu().tolist()):
                results.append({"image_id": meta["image_id"], "category_id": cat_ids[int(c)],
                                "bbox": [round(v, 3) for v in b], "score": round(s, 5)})
        bar.update(1)
    bar.close()
    if D.is_dist():
        # DistributedSampler pads the last shard with repeated images: keep one copy of each
        seen, merged = set(), []
        for part in D.all_gather_objects(results):
            ids = {r["image_id"] for r in part} - seen
            merged.extend(r for r in part if r["image_id"] in ids)
            seen |= ids
        results = merged
    return results


def check_classes(model, dataset, ckpt_classes: dict | None = None) -> str | None:
    """Why ``model`` (trained on ``ckpt_classes``, a checkpoint's ``classes`` entry, when
    known) cannot be evaluated on ``dataset``, or None: its number of classes differs from the
    set's categories, or the checkpoint's COCO category ids are not the set's."""
    cfg = getattr(model, "cfg", None)
    n_model = getattr(cfg, "num_classes", None)
    n_set = len(dataset.cat_ids)
    if n_model is not None and n_model != n_set:
        return (f"the model predicts {n_model} classes but the set has {n_set} categories "
                f"(ids {dataset.cat_ids}); evaluate on a set of the classes it was trained on")
    cat_ids = (ckpt_classes or {}).get("cat_ids")
    if cat_ids is not None and list(cat_ids) != list(dataset.cat_ids):
        return (f"the model was trained on category ids {list(cat_ids)} but the set has "
                f"{list(dataset.cat_ids)}")
    return None


def evaluate(model, dataset, device="cpu", batch_size: int = 2, out_json: str | None = None,
             dets_json: str | None = None, backend: str = "auto", workers: int = 0,
             log=print, progress_bar: bool = True) -> dict:
    """COCO bbox metrics of ``model`` on ``dataset`` (a non-training CocoDetection).

    Prints the AP table (main process), writes the metrics to ``out_json`` and the detections to
    ``dets_json`` when given. Returns the metrics dict (AP, AP50, ... ARl, backend, num_dets).
    """
    problem = check_classes(model, dataset)
    if problem:
        from ..data.coco import DataError
        raise DataError(f"cannot evaluate on {getattr(dataset, 'ann_file', 'the set')}: {problem}")
    dets = inference(model, dataset, device, batch_size, workers, progress_bar)
    metrics = None
    if D.is_main():
        metrics = coco_bbox_metrics(dataset.ann_file, dets, backend=backend)
        metrics["num_images"] = len(dataset)
        metrics["num_dets"] = len(dets)
        log(format_table(metrics))
        if out_json:
            os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
            with open(out_json, "w") as f:
                json.dump(metrics, f, indent=1)
        if dets_json:
            with open(dets_json, "w") as f:
                json.dump(dets, f)
    if D.is_dist():
        metrics = D.all_gather_objects(metrics)[0]
    return metrics
