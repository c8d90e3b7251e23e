"""The demo (``python -m tood_ext demo``) with TOOD's classification losses computed by the
dense formulas the detector used before issue 19 (``tood_ext.models.losses.focal_loss`` /
``quality_focal_loss``: a (N, C) per-element loss, ``index_put``, ``sum``) instead of the fused
``sparse_target_cls_loss``: the same values to float rounding, another order of summation.

It separates the two causes a change of the demo's AP after issue 19 could have: if this run's
per-epoch loss digests and weights digest are those of the demo before issue 19 (the same
machine type, thread count and torch), everything else on the demo's path is bit-identical and
the AP moved by the summation order alone (README, "Reproducible").

    python -m benchmarks.demo_loss_order --out runs/demo_dense   # the demo's own arguments
"""
from __future__ import annotations

import sys

import tood_ext.models.detector as detector
from tood_ext.__main__ import main
from tood_ext.models.losses import focal_loss, quality_focal_loss

_fused = detector.sparse_cls_loss


def dense_cls_loss(ops, pred, labels, scores, kind, **kw):
    """TOOD's two losses (on P_align, ``activated=True``) through the dense formulas, called
    as the detector called them at d12fe91; every other call goes to the fused op."""
    if not kw.get("activated") or kind not in ("focal", "qfl"):
        return _fused(ops, pred, labels, scores, kind, **kw)
    C = pred.shape[-1]
    if kind == "focal":
        return focal_loss(pred.reshape(-1, C), labels.reshape(-1), kw["gamma"], kw["alpha"])
    return quality_focal_loss(pred.reshape(-1, C), labels.reshape(-1), scores.reshape(-1),
                              kw["gamma"])


if __name__ == "__main__":
    detector.sparse_cls_loss = dense_cls_loss
    main(["demo", *sys.argv[1:]])
