"""Benchmarks of the oriented-box (OBB) assignment drop-in against ultralytics' own.

* ``obb.ultralytics_assigner``: ``tood_ext.compat.ultralytics.RotatedTaskAlignedAssigner``
  called as ``v8OBBLoss`` calls its assigner (topk 10, alpha 0.5, beta 6; gt_labels and mask
  (B, G, 1) float; boxes ``(cx, cy, w, h, angle)`` in pixels). Columns: ``kernel`` = the
  adapter on the compiled op :func:`tood_ext.task_aligned_assign_rotated`, ``reference`` = the
  same adapter on the pure-PyTorch reference op
  (:func:`tood_ext.reference.task_aligned_assign_rotated`), ``ultralytics`` =
  ``ultralytics.utils.tal.RotatedTaskAlignedAssigner`` (absent when ultralytics is not
  importable). maxdiff compares ``target_scores`` (the output the loss consumes; ties in
  ultralytics' CPU ``torch.topk`` order may differ, see ``tood_ext.compat.ultralytics``).
  Inputs (:func:`tood_ext.testing.ultralytics_obb.obb_assigner_inputs`): a 1024 px image on
  the stride 8/16/32 grids (A = 21504), C = 15 (DOTA's classes), GT sides 8 px to 0.3 of the
  image at any angle, ~20% padding slots; B=8 G=100, B=8 G=500, B=2 G=2000 (aerial images).

``--quick``: one tiny case (B=2, 128 px, G=8).
"""
from __future__ import annotations


import torch

from tood_ext.testing.ultralytics_obb import obb_assigner_inputs

from .harness import Case, optional_module, register_family

UL_CFG = dict(topk=10, alpha=0.5, beta=6.0)  # v8OBBLoss's assigner
SEED = 20


def _has_ultralytics() -> bool:
    return optional_module("ultralytics.utils.tal") is not None


def _adapter_classes():
    from tood_ext.compat.ultralytics import RotatedTaskAlignedAssigner

    class ReferenceAssigner(RotatedTaskAlignedAssigner):
        @staticmethod
        def _rotated_op():
            from tood_ext.reference import task_aligned_assign_rotated

            return task_aligned_assign_rotated

    return RotatedTaskAlignedAssigner, ReferenceAssigner


def _assigner_case(device, B, G, C, size=1024, with_reference=True):
    A = sum((size // s) ** 2 for s in (8, 16, 32))

    def setup():
        args = tuple(t.to(device) for t in
                     obb_assigner_inputs(torch.Generator().manual_seed(SEED), B, G, C, size))
        ours, ref_cls = _adapter_classes()
        impls = {"kernel": lambda: ours(num_classes=C, **UL_CFG)(*args)[2]}
        if with_reference:
            impls["reference"] = lambda: ref_cls(num_classes=C, **UL_CFG)(*args)[2]
        if _has_ultralytics():
            from ultralytics.utils.tal import RotatedTaskAlignedAssigner as UL

            impls["ultralytics"] = lambda: UL(num_classes=C, **UL_CFG)(*args)[2]
        return impls

    return Case(name=f"obb.ultralytics_assigner B={B} G={G} A={A} C={C}", family="obb",
                op="ultralytics.RotatedTaskAlignedAssigner", passes="fwd",
                sizes={"B": B, "G": G, "A": A, "C": C}, dtype="float32", setup=setup,
                impl_repeats={"reference": 1, "ultralytics": 3},  # seconds to minutes a call
                note=("tood_ext.compat.ultralytics.RotatedTaskAlignedAssigner vs ultralytics' "
                      "(v8OBBLoss: topk 10, alpha 0.5, beta 6; maxdiff on target_scores); "
                      f"{size} px, strides 8/16/32"))


@register_family("obb")
def cases(device: str, quick: bool) -> list:
    if quick:
        return [_assigner_case(device, 2, 8, 15, size=128)]
    return [_assigner_case(device, B, G, 15) for B, G in ((8, 100), (8, 500), (2, 2000))]
