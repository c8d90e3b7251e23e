"""A tood_ext detector's raw predictions on a dataset, for the report
(:func:`iter_raw_predictions`, :func:`analyze_model`)."""
from __future__ import annotations

from .report import report_from_pairs

__all__ = ["analyze_model", "iter_raw_predictions"]


def _image_gts(dataset, image_id) -> dict:
    from ..data import annotations_to_targets

    anns = dataset.coco.anns_by_image.get(image_id, [])
    boxes, labels = annotations_to_targets(anns, dataset.label_of, dataset.min_size)
    return {"boxes": boxes, "labels": labels}


def iter_raw_predictions(model, dataset, device="cpu", batch_size: int = 2,
                         score: str = "nms", max_images: int | None = None):
    """Yield ``(raw_prediction, gt)`` per image of ``dataset`` (a non-training
    :class:`~tood_ext.data.CocoDetection`) for :func:`alignment_report`, in original-image
    pixels, from one forward pass per batch (``model(images)``, eval mode, no gradient):

    * ``raw["scores"]`` (A, C): every anchor's per-class score -- ``score="nms"``: the score
      the detector ranks by in NMS (TOOD: P_align; the ATSS head: sigmoid(cls) *
      sigmoid(centerness)); ``score="cls"``: the classification probability alone
      (``out["cls_scores"]``: TOOD's P_align again, the ATSS head's sigmoid(cls));
    * ``raw["boxes"]`` (A, 4): the decoded (TOOD: aligned) boxes, divided by the scale factor
      and, with ``cfg.clip_to_image``, clipped to the image, as :meth:`TOOD.predict_by_feat`
      does (:func:`tood_ext.models.postprocess.rescale_boxes`); the anchors whose box fails
      the detector's size filter (``cfg.min_bbox_size``: zero-size boxes by default) are left
      out of ``raw`` (A = the anchors that remain), as they never reach NMS;
    * ``raw["detections"]``: the model's own post-NMS output (``model.predict_by_feat``);
    * ``gt``: the image's annotations (crowd and boxes under the dataset's ``min_size``
      dropped), original pixels.

    Nothing is added to the model: this only reads ``model(images)``'s head outputs.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data import collate
    from ..models.postprocess import meta_scale_and_size, rescale_boxes, valid_size_mask

    if score not in ("nms", "cls"):
        raise ValueError(f"score must be 'nms' or 'cls', got {score!r}")
    model.eval()
    subset = dataset if max_images is None else Subset(dataset, range(min(max_images,
                                                                          len(dataset))))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, _targets, metas in loader:
        with torch.no_grad():
            out = model(images.to(device))
            dets = model.predict_by_feat(out, metas)
        B, C = out["cls_scores"][0].shape[:2]
        scores = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1, C).float()
                            for s in out["cls_scores"]], 1)
        if score == "nms" and "centerness" in out:
            ctr = torch.cat([c.reshape(B, -1).float().sigmoid() for c in out["centerness"]], 1)
            scores = scores * ctr[..., None]
        boxes = torch.cat([b.permute(0, 2, 3, 1).reshape(B, -1, 4).float()
                           for b in out["bbox_preds"]], 1)
        cfg = model.cfg
        for b, meta in enumerate(metas):
            sf, size = meta_scale_and_size(meta, b)
            bx = rescale_boxes(boxes[b], sf, size, cfg.clip_to_image)
            ok = valid_size_mask(bx, cfg.min_bbox_size)
            raw = {"scores": scores[b][ok].cpu().numpy(), "boxes": bx[ok].cpu().numpy(),
                   "detections": {k: v.cpu().numpy() for k, v in dets[b].items()},
                   "image_id": meta["image_id"]}
            yield raw, _image_gts(dataset, meta["image_id"])


def analyze_model(model, dataset, device="cpu", batch_size: int = 2, score: str = "nms",
                  max_images: int | None = None, **report_kwargs) -> dict:
    """:func:`alignment_report` of ``model`` on ``dataset`` (see :func:`iter_raw_predictions`),
    streamed image by image; ``report_kwargs`` go to the report (``return_pairs=True`` for the
    scatter plot). ``params["score"]`` records the score used."""
    pairs = iter_raw_predictions(model, dataset, device, batch_size, score, max_images)
    report = report_from_pairs(pairs, **report_kwargs)
    report["params"]["score"] = score
    return report
