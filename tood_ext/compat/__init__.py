"""Drop-in adapters: tood-ext's fused TAL op behind the assigner interfaces of other detectors.

* :mod:`tood_ext.compat.ultralytics`: ``TaskAlignedAssigner`` with the constructor, forward
  signature and outputs of ``ultralytics.utils.tal.TaskAlignedAssigner`` (8.4), and
  ``patch_ultralytics()`` / ``unpatch_ultralytics()`` / ``patched_ultralytics()`` to swap it into
  a live ultralytics install.
* :mod:`tood_ext.compat.mmdet`: ``TaskAlignedAssigner`` with mmdetection 3.x's
  ``assign(pred_instances, gt_instances, ...)`` contract (plain objects with attributes are
  enough; mmdet need not be installed), ``BatchTaskAlignedAssigner`` with mmyolo's batched
  contract, and the classification losses ``QualityFocalLoss``, ``VarifocalLoss``,
  ``FocalLoss`` (mmdet's modules on the fused ``sparse_target_cls_loss``;
  :mod:`tood_ext.compat.mmdet_losses`).

Importing this package imports neither ultralytics nor mmdet (nor the submodules): import the
submodule you need.
"""

__all__ = ["mmdet", "ultralytics"]
