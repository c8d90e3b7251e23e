"""Drop-in replacement for ``ultralytics.utils.tal.TaskAlignedAssigner`` (ultralytics 8.4).

``TaskAlignedAssigner`` takes the same constructor arguments (``topk=13, num_classes=80,
alpha=1.0, beta=6.0, stride=None, eps=1e-9, topk2=None``) and has the same forward signature and
outputs as ultralytics' class, but runs the assignment with tood-ext's fused op
(:func:`tood_ext.task_aligned_assign` with ``candidates="inside_then_topk"``,
``iou_mode="ciou"``, ``inside_eps=1e-9``, ``norm_eps=eps``, ``conflict="all_gts"``,
``min_inside_size=stride_val``): no (B, G, A) tensor.

``patch_ultralytics()`` swaps it into a live ultralytics install (the class in
``ultralytics.utils.tal`` and the name ``v8DetectionLoss`` builds its assigner from, in
``ultralytics.utils.loss``; optionally the assigners of loss objects that already exist);
``unpatch_ultralytics()`` undoes it; ``patched_ultralytics()`` is the context-manager form.
This module never imports ultralytics unless one of those functions is called.

What is reproduced (ultralytics 8.4.190, ``utils/tal.py``), by the op itself
(``candidates="inside_then_topk"``, ``conflict="all_gts"``, ``min_inside_size=stride_val``):

* the inside test on the GT box converted xyxy -> xywh -> xyxy, with sides shorter than
  ``stride_val`` (``stride[1]``) widened to it about the centre, bit for bit in float32;
* s = score of the GT's class, u = CIoU(gt, pred) clamped at 0, t = s**alpha * u**beta on inside
  pairs (0 elsewhere); per GT ``torch.topk`` of that masked t over *all* anchors, positives the
  selected anchors inside the GT (t = 0 included); an anchor claimed by several GTs goes to the
  argmax of u over *all* GTs (u = 0 outside inside & valid pairs; first maximum, so an all-zero
  column gives GT 0), which may be a GT that did not select it and which then counts it among
  its positives; the optional ``topk2`` filter (``torch.topk`` of t over each GT's final
  positives, again over all anchors); ``t_hat = t * max u / (max t + eps)`` over each GT's
  final positives; targets gathered with GT index 0 on background anchors (so background rows
  of target_labels / target_bboxes hold GT 0's values, as in ultralytics); ``target_scores``
  the one-hot label times t_hat; G = 0 returns ultralytics' empty outputs.

Ties: the one place where ultralytics is not well defined. A GT with fewer than ``topk``
inside anchors of t > 0 (tiny GTs, unmatched GTs: most batches have some) fills its top-k with
anchors of masked t = 0, and ``torch.topk`` does not specify which: an inside one among them
becomes a positive of t = 0. Here equal values go to the *lowest anchor indices* (the op's
rule everywhere), in both top-k steps. That is exactly ultralytics under that order: the tests
compare every output with ultralytics run with a stable (lowest-index) ``torch.topk``. It is
also what torch's CUDA top-k does (its single-block radix selection writes equal values in
index order; not checked on a GPU here). torch's CPU top-k (a heap partial sort for k * 64 <=
A) keeps *some* of the first k anchor indices instead: the two differ only for a GT near the
image's top-left corner (it must contain one of anchors 0..topk-1) with fewer than topk inside
anchors of t > 0. Measured on random batches with tiny, crowded and empty images (CPU, seeds in
tests/test_compat.py): ultralytics' own CPU result differs from its lowest-index result in
about 1 assignment in 9; ``v8DetectionLoss`` and ``E2ELoss`` are equal with and without the
patch on every batch (zero-target positives weigh nothing there and such corner anchors did
not reach the conflict rule); ``v8SegmentationLoss`` and ``v8PoseLoss`` average their mask /
keypoint losses over all positives, t = 0 ones included, so they differ on the batches where
ultralytics' CPU order differs (2 and 3 of 40 batches), and are equal on all others.

Other known differences:

* u is computed by the op (CIoU without ultralytics' ``+ eps`` on the heights and union): values
  agree to float rounding, not bit for bit, so a near-tie of two GTs' u (relative ~1e-7) may
  resolve differently.
* half inputs: the op computes in float32 on CUDA (ultralytics in the half type).
* ``**extra`` (the pose / segmentation ``pair_overlaps`` inputs) is not supported; the subclasses
  ``SegTaskAlignedAssigner`` and ``PoseTaskAlignedAssigner`` are left untouched by the patch
  (they keep ultralytics' implementation), so the losses built on them (YOLO26's
  ``SegmentLoss26`` / ``PoseLoss26``) are unchanged. ``RotatedTaskAlignedAssigner`` (oriented
  boxes, ``v8OBBLoss``) has its own adapter: :mod:`tood_ext.compat.ultralytics_obb`.
* a NaN t ranks first in ``torch.topk``; here a NaN t is never a candidate.
* no CUDA out-of-memory fallback is needed (the op's extra memory is O(B*A + B*G*topk)).
* a GT with a non-finite coordinate is padding (``mask_gt`` cleared, box zeroed at the top of
  ``forward``): it claims no anchor, as in ultralytics (whose inside test is False on NaN), but
  its box is never gathered (ultralytics puts GT 0's NaN box on background rows, and on anchors
  handed to GT 0 by its all-zero-column rule). Bad arguments raise before anything runs:
  TypeError for a non-tensor, RuntimeError naming the tensor of a wrong shape.

Losses the patch touches: every loss whose assigner is exactly ``TaskAlignedAssigner``:
``v8DetectionLoss``, ``E2ELoss`` of it (YOLO26 detection: one-to-many topk 10, one-to-one
topk 7 / topk2 1), ``v8SegmentationLoss`` and ``v8PoseLoss`` (YOLOv8/11 seg and pose),
``TVPDetectLoss``; and, through the rotated adapter, ``v8OBBLoss`` (YOLOv8/11-OBB) and
``E2ELoss`` of it (YOLO26-OBB).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["RotatedTaskAlignedAssigner", "TaskAlignedAssigner", "is_patched", "lowest_index_topk",
           "patch_ultralytics", "patched_ultralytics", "unpatch_ultralytics"]

_INSIDE_EPS = 1e-9  # select_candidates_in_gts' default eps (not the assigner's eps)
_HALF = (torch.float16, torch.bfloat16)


def _check_forward_args(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                        op: str = "compat.ultralytics.TaskAlignedAssigner", columns: int = 4):
    """The forward's argument checks (tood_ext's error policy: TypeError for a non-tensor,
    RuntimeError for a tensor of the wrong shape), before anything is computed, and the rule
    for a GT with a non-finite coordinate: it is padding (``mask_gt`` 0, box zeros), so it
    claims no anchor and no NaN reaches a target (ultralytics' own inside test gives such a GT
    no candidate either; its box would still be gathered as GT 0's on background rows, or on a
    foreground anchor through the all-zero-column rule). Returns (gt_bboxes, mask_gt).
    ``columns``: 4 (xyxy boxes) or 5 (rotated xywhr boxes)."""
    from ..ops._checks import check_batched_gts, check_tensors, finite_gt_rows

    check_tensors(op, pd_scores=pd_scores, pd_bboxes=pd_bboxes, anc_points=anc_points,
                  gt_labels=gt_labels, gt_bboxes=gt_bboxes, mask_gt=mask_gt)
    B, A, _, G = check_batched_gts(op, "pd_scores", pd_scores, "gt_bboxes", gt_bboxes, columns)
    expect = {"pd_bboxes": (pd_bboxes, [(B, A, columns)], f"(B, A, {columns})"),
              "anc_points": (anc_points, [(A, 2)], "(A, 2)"),
              "gt_labels": (gt_labels, [(B, G, 1), (B, G)], "(B, G, 1)"),
              "mask_gt": (mask_gt, [(B, G, 1), (B, G)], "(B, G, 1)")}
    for name, (t, shapes, desc) in expect.items():
        if tuple(t.shape) not in shapes:
            raise RuntimeError(f"{op}: {name} must have shape {desc} = {shapes[0]} (B = {B} "
                               f"images, A = {A} anchors, G = {G} GTs from pd_scores and "
                               f"gt_bboxes), got {tuple(t.shape)}")
    if not gt_bboxes.is_floating_point():
        raise RuntimeError(f"{op}: gt_bboxes must be a floating tensor, got {gt_bboxes.dtype}")
    finite = finite_gt_rows(gt_bboxes)  # (B, G)
    gt_bboxes = torch.where(finite[..., None], gt_bboxes, torch.zeros_like(gt_bboxes))
    mask_gt = mask_gt * finite.reshape(mask_gt.shape).to(mask_gt.dtype)
    return gt_bboxes, mask_gt


def _rank_in_groups(group: torch.Tensor, value: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Rank (0 = first) of each element within its group, by value descending, ties by the
    element's position (the input order). Returns ranks in input order."""
    if group.numel() == 0:
        return group.clone()
    o1 = torch.sort(value, descending=True, stable=True).indices
    o2 = torch.sort(group[o1], stable=True).indices
    perm = o1[o2]
    g_sorted = group[perm]
    counts = torch.bincount(g_sorted, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    rank_sorted = torch.arange(perm.numel(), device=perm.device) - starts[g_sorted]
    return torch.empty_like(rank_sorted).scatter_(0, perm, rank_sorted)


def _topk2_keep(group: torch.Tensor, anchor: torch.Tensor, t: torch.Tensor, n_groups: int,
                topk2: int) -> torch.Tensor:
    """ultralytics' ``topk2`` filter, ``torch.topk(t * mask_pos, topk2)`` per GT over all
    anchors, under the lowest-index order of equal values: which final positives (``group``:
    their GT, ``anchor``: their anchor index, ``t``: their masked metric) it keeps.

    A GT's positives of t > 0 rank first (by t, then index); if there are n < topk2 of them,
    the remaining topk2 - n ranks go to the anchors of masked t = 0 in index order, positives
    or not: a t = 0 positive at anchor a is kept when fewer than topk2 - n anchors of lower
    index have masked t = 0 (a minus the t > 0 positives below it)."""
    keep = torch.zeros_like(group, dtype=torch.bool)
    if group.numel() == 0:
        return keep
    nonzero = t != 0  # t > 0, or NaN (torch.topk ranks it first)
    keep[nonzero] = _rank_in_groups(group[nonzero], t[nonzero], n_groups) < topk2
    # per GT, in anchor order: the t > 0 positives below each positive
    order = torch.sort(group * (int(anchor.max()) + 1) + anchor).indices
    g_sorted, nz_sorted = group[order], nonzero[order].long()
    before = nz_sorted.cumsum(0) - nz_sorted  # exclusive, over the whole sorted list
    counts = torch.bincount(group, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    start_before = (nz_sorted.cumsum(0) - nz_sorted)[starts[g_sorted]]  # at each group start
    below = torch.empty_like(before).scatter_(0, order, before - start_before)
    n_nonzero = torch.bincount(group[nonzero], minlength=n_groups)[group]
    zero_rank = anchor - below  # anchors of masked t = 0 below this one
    keep |= ~nonzero & (zero_rank < topk2 - n_nonzero)
    return keep


class TaskAlignedAssigner(nn.Module):
    """``ultralytics.utils.tal.TaskAlignedAssigner`` backed by tood-ext's fused TAL op.

    Same constructor arguments and attributes (``topk``, ``topk2``, ``num_classes``, ``alpha``,
    ``beta``, ``stride``, ``stride_val``, ``eps``) and the same forward; see the module docstring
    for what is reproduced and the documented differences.
    """

    _name = "compat.ultralytics.TaskAlignedAssigner"  # in error messages
    _columns = 4  # box columns (the rotated subclass: 5)

    def __init__(self, topk: int = 13, num_classes: int = 80, alpha: float = 1.0,
                 beta: float = 6.0, stride: list | None = None, eps: float = 1e-9,
                 topk2: int | None = None):
        super().__init__()
        self.topk = topk
        self.topk2 = topk2 or topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.stride = stride if stride is not None else [8, 16, 32]
        self.stride_val = self.stride[1] if len(self.stride) > 1 else self.stride[0]
        self.eps = eps
        self._oom_warned = False  # attribute parity; the op needs no OOM fallback

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra):
        """Assign anchors to GTs, as ultralytics' ``TaskAlignedAssigner.forward``.

        Args:
            pd_scores: (B, A, C) probabilities. pd_bboxes: (B, A, 4) xyxy (pixels).
            anc_points: (A, 2) anchor centres (pixels). gt_labels: (B, G, 1) class ids (float
                or int). gt_bboxes: (B, G, 4) xyxy. mask_gt: (B, G, 1) 1 for real GTs.

        Returns:
            target_labels (B, A) int64, target_bboxes (B, A, 4), target_scores (B, A, C),
            fg_mask (B, A) bool, target_gt_idx (B, A) int64.
        """
        target_labels, target_bboxes, norm, fg_mask, target_gt_idx = self.forward_sparse(
            pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra)
        B, A = norm.shape
        target_scores = torch.zeros((B, A, self.num_classes), dtype=norm.dtype, device=norm.device)
        if self.n_max_boxes > 0:  # G = 0: ultralytics' all-zero scores (labels = num_classes)
            target_scores.scatter_(2, target_labels[..., None], norm[..., None])
        return target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx

    @torch.no_grad()
    def forward_sparse(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                       **extra):
        """:meth:`forward` without its (B, A, C) one-hot ``target_scores``: the same checks and
        the same ``target_labels``, ``target_bboxes``, ``fg_mask`` and ``target_gt_idx``, and
        instead of ``target_scores`` its one non-zero per anchor, ``norm`` (B, A):
        ``target_scores[b, a, target_labels[b, a]] = norm[b, a]`` (t_hat on the positives, 0
        elsewhere). The fused loss (``patch_ultralytics(fused_loss=True)``) feeds it to the
        sparse-target losses directly. With G = 0, ultralytics' empty outputs (labels =
        num_classes, float GT indices) and ``norm`` zeros."""
        if extra:
            raise NotImplementedError(
                "tood_ext.compat.ultralytics.TaskAlignedAssigner does not support the extra "
                f"pair_overlaps inputs {sorted(extra)} (pose / segmentation assigners); use "
                "ultralytics' own subclass for those")
        gt_bboxes, mask_gt = _check_forward_args(pd_scores, pd_bboxes, anc_points, gt_labels,
                                                 gt_bboxes, mask_gt, self._name, self._columns)
        from ..ops._checks import check_num_classes

        check_num_classes(self._name, self.num_classes, "pd_scores", pd_scores)
        self.bs = pd_scores.shape[0]
        self.n_max_boxes = gt_bboxes.shape[1]
        if self.n_max_boxes == 0:
            zero = torch.zeros_like(pd_scores[..., 0])
            return (torch.full_like(zero, self.num_classes), torch.zeros_like(pd_bboxes), zero,
                    torch.zeros_like(zero, dtype=torch.bool), torch.zeros_like(zero))
        return self._assign_sparse(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                                   mask_gt)

    @torch.no_grad()
    def _forward_sparse_gt_scores(self, gt_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                                  mask_gt):
        """:meth:`forward_sparse` given, instead of the (B, A, C) probabilities, only the
        columns that the assignment reads: ``gt_scores`` (B, A, G), the probability of each
        GT's class, ``gt_scores[b, a, g] = pd_scores[b, a, gt_labels[b, g]]`` (the fused loss
        gathers them from the head's logits: no (B, A, C) sigmoid). The labels of valid GTs
        must lie in [0, num_classes) (the caller checks). Same outputs as
        :meth:`forward_sparse`."""
        gt_bboxes, mask_gt = _check_forward_args(gt_scores, pd_bboxes, anc_points, gt_labels,
                                                 gt_bboxes, mask_gt)
        self.bs = gt_scores.shape[0]
        self.n_max_boxes = G = gt_bboxes.shape[1]
        if G == 0:
            zero = gt_scores.new_zeros(gt_scores.shape[:2])
            return (torch.full_like(zero, self.num_classes), torch.zeros_like(pd_bboxes), zero,
                    torch.zeros_like(zero, dtype=torch.bool), torch.zeros_like(zero))
        column = torch.arange(G, device=gt_scores.device).expand(self.bs, G)  # GT g: column g
        return self._assign_sparse(gt_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                                   mask_gt, score_labels=column)

    # -----------------------------------------------------------------------------------------

    @staticmethod
    def _tal_op():
        """The TAL op used (a subclass may return :func:`tood_ext.reference.task_aligned_assign`,
        as the benchmarks do)."""
        from ..ops.tal import task_aligned_assign

        return task_aligned_assign

    def _assign_sparse(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                       score_labels=None):
        """score_labels (B, G): the column of pd_scores holding each GT's score (default: its
        class, gt_labels)."""
        task_aligned_assign = self._tal_op()
        B, A, C = pd_scores.shape
        G = gt_bboxes.shape[1]
        dev = pd_scores.device
        valid = mask_gt.reshape(B, G).bool()
        labels = gt_labels.reshape(B, G).long() if score_labels is None else score_labels
        # ultralytics' align_metric dtype; the op runs in it (float32 for half types on CPU)
        work = torch.promote_types(pd_scores.dtype, pd_bboxes.dtype)
        op_dtype = torch.float32 if (work in _HALF and dev.type == "cpu") else work

        # ultralytics' whole assignment up to the positives: its widened inside test
        # (min_inside_size = stride_val) and its conflict rule (argmax of u over all GTs)
        res = task_aligned_assign(
            pd_scores.to(op_dtype), pd_bboxes.to(op_dtype), anc_points.to(op_dtype),
            torch.where(valid, labels, torch.zeros_like(labels)), gt_bboxes.to(op_dtype), valid,
            topk=self.topk, alpha=self.alpha, beta=self.beta, candidates="inside_then_topk",
            iou_mode="ciou", inside_eps=_INSIDE_EPS, norm_eps=self.eps, conflict="all_gts",
            min_inside_size=float(self.stride_val))
        cb, ca = res.fg_mask.nonzero(as_tuple=True)
        cg = res.assigned_gt[cb, ca]
        cu = res.iou[cb, ca].to(work)
        ct = res.metric[cb, ca].to(work)

        gt_flat = cb * G + cg  # (n,) the GT of each final positive, flat over (B, G)
        if self.topk2 != self.topk:
            keep = _topk2_keep(gt_flat, ca, ct, B * G, self.topk2)
            cb, ca, cg, cu, ct, gt_flat = (x[keep] for x in (cb, ca, cg, cu, ct, gt_flat))

        # t_hat = t * max u / (max t + eps), maxima over each GT's final positives
        max_t = torch.zeros(B * G, dtype=work, device=dev).scatter_reduce_(
            0, gt_flat, ct, "amax")
        max_u = torch.zeros(B * G, dtype=work, device=dev).scatter_reduce_(
            0, gt_flat, cu, "amax")
        t_hat = ct * max_u[gt_flat] / (max_t[gt_flat] + self.eps)

        target_gt_idx = torch.zeros((B, A), dtype=torch.int64, device=dev)
        target_gt_idx[cb, ca] = cg
        fg_mask = torch.zeros((B, A), dtype=torch.bool, device=dev)
        fg_mask[cb, ca] = True
        norm = torch.zeros((B, A), dtype=work, device=dev)
        norm[cb, ca] = t_hat

        flat = target_gt_idx + torch.arange(B, device=dev)[:, None] * G
        target_labels = gt_labels.long().flatten()[flat]
        target_bboxes = gt_bboxes.reshape(-1, gt_bboxes.shape[-1])[flat]
        target_labels.clamp_(0)
        return target_labels, target_bboxes, norm, fg_mask, target_gt_idx


class RotatedTaskAlignedAssigner(TaskAlignedAssigner):
    """``ultralytics.utils.tal.RotatedTaskAlignedAssigner`` (oriented boxes, ``v8OBBLoss``) backed
    by tood-ext's fused rotated TAL op (:func:`tood_ext.task_aligned_assign_rotated`, called as
    :func:`tood_ext.compat.ultralytics_obb.rotated_call` says).

    Same constructor arguments and attributes as ultralytics' class and the same forward:
    ``pd_scores`` (B, A, C) probabilities, ``pd_bboxes`` (B, A, 5) predicted
    ``(cx, cy, w, h, angle)`` in pixels, ``anc_points`` (A, 2) pixels, ``gt_labels`` (B, G, 1),
    ``gt_bboxes`` (B, G, 5), ``mask_gt`` (B, G, 1); returns ``target_labels`` (B, A),
    ``target_bboxes`` (B, A, 5), ``target_scores`` (B, A, C), ``fg_mask`` (B, A),
    ``target_gt_idx`` (B, A); ``forward_sparse`` returns ``norm`` (B, A) in place of the one-hot
    ``target_scores``. Everything after the op is this module's adapter. What is reproduced and
    the differences: :mod:`tood_ext.compat.ultralytics_obb`.
    """

    _name = "compat.ultralytics.RotatedTaskAlignedAssigner"
    _columns = 5

    @staticmethod
    def _rotated_op():
        """The rotated TAL op used (a subclass may return the reference,
        :func:`tood_ext.reference.task_aligned_assign_rotated`, as the benchmarks do)."""
        from ..ops.tal import task_aligned_assign_rotated

        return task_aligned_assign_rotated

    def _tal_op(self):
        from .ultralytics_obb import rotated_call

        return rotated_call(self._rotated_op())


@contextlib.contextmanager
def lowest_index_topk() -> Iterator[None]:
    """Inside the block ``torch.topk`` takes equal values in index order (a stable sort; slower):
    run ultralytics' own assigner or loss in it to get the result this adapter reproduces, e.g.
    to compare the two on your data. Not thread-safe (it swaps the ``torch.topk`` attribute)."""
    original = torch.topk

    def topk(x, k, dim=-1, largest=True, sorted=True):  # noqa: A002 - torch's names
        idx = torch.sort(x, dim=dim, descending=largest, stable=True).indices.narrow(dim, 0, k)
        return torch.return_types.topk((x.gather(dim, idx), idx))

    torch.topk = topk
    try:
        yield
    finally:
        torch.topk = original


# ---------------------------------------------------------------------------------------------
# patching a live ultralytics install
# ---------------------------------------------------------------------------------------------

_ORIGINAL: dict = {}  # module attribute -> the original class
_ORIGINAL_METHODS: dict = {}  # "Class.method" -> ultralytics' function (fused_loss=True)
_SWAPPED: list = []  # (loss object, its original assigner)
_HYPER = ("topk", "topk2", "num_classes", "alpha", "beta", "stride", "eps")


def is_patched() -> bool:
    """Whether :func:`patch_ultralytics` is in effect."""
    return bool(_ORIGINAL)


def _swap(loss) -> None:
    """Replace ``loss.assigner`` (and the assigners of E2E losses' branches) by the adapter when
    it is exactly ultralytics' plain ``TaskAlignedAssigner``, or by the rotated adapter when it is
    exactly ultralytics' ``RotatedTaskAlignedAssigner`` (other subclasses are left alone)."""
    from . import ultralytics_obb

    original = _ORIGINAL["ultralytics.utils.tal"]
    for branch in (loss, getattr(loss, "one2many", None), getattr(loss, "one2one", None)):
        assigner = getattr(branch, "assigner", None)
        if branch is None:
            continue
        new = (TaskAlignedAssigner(**{k: getattr(assigner, k) for k in _HYPER})
               if type(assigner) is original
               else ultralytics_obb.replacement(assigner, RotatedTaskAlignedAssigner))
        if new is None:
            continue
        _SWAPPED.append((branch, assigner))
        branch.assigner = new


def patch_ultralytics(*losses, fused_loss: bool = False) -> None:
    """Swap the adapter into ultralytics: ``ultralytics.utils.tal.TaskAlignedAssigner`` and the
    name ``ultralytics.utils.loss`` builds ``v8DetectionLoss.assigner`` from (so every detection
    loss created afterwards, also those of segmentation / pose / E2E models, uses it), and the
    assigner of each loss object passed (created before the patch; ``E2ELoss``'s branches too).

    ``fused_loss=True`` also replaces ``v8DetectionLoss.get_assigned_targets_and_loss`` by
    :func:`tood_ext.compat.ultralytics_fused.fused_method`: the loss of every
    ``v8DetectionLoss`` with the adapter as its assigner (and of ``E2ELoss``, segmentation and
    pose losses built on it) is computed from the assignment's sparse output, with no (B, A, C)
    ``target_scores`` (see that module for what is kept of ultralytics' code).

    Oriented boxes: ``ultralytics.utils.tal.RotatedTaskAlignedAssigner`` (and the name
    ``v8OBBLoss`` builds its assigner from) become :class:`RotatedTaskAlignedAssigner`;
    ``fused_loss=True`` also replaces ``v8OBBLoss.loss`` (:mod:`tood_ext.compat.ultralytics_obb`).

    Idempotent (a later call may add ``fused_loss=True``); undone by :func:`unpatch_ultralytics`.
    Imports ultralytics."""
    import importlib

    from . import ultralytics_obb

    if not _ORIGINAL:
        for name in ("ultralytics.utils.tal", "ultralytics.utils.loss"):
            module = importlib.import_module(name)
            _ORIGINAL[name] = module.TaskAlignedAssigner
        for name in _ORIGINAL:
            importlib.import_module(name).TaskAlignedAssigner = TaskAlignedAssigner
        ultralytics_obb.patch_classes(RotatedTaskAlignedAssigner)
    if fused_loss and not _ORIGINAL_METHODS:
        from .ultralytics_fused import fused_method

        cls = importlib.import_module("ultralytics.utils.loss").v8DetectionLoss
        original = cls.get_assigned_targets_and_loss
        _ORIGINAL_METHODS["v8DetectionLoss.get_assigned_targets_and_loss"] = original
        cls.get_assigned_targets_and_loss = fused_method(original, TaskAlignedAssigner)
        _ORIGINAL_METHODS.update(ultralytics_obb.patch_fused(RotatedTaskAlignedAssigner))
    for loss in losses:
        _swap(loss)


def _restore_methods() -> None:
    import importlib

    module = importlib.import_module("ultralytics.utils.loss")
    for name, fn in _ORIGINAL_METHODS.items():
        cls_name, method = name.split(".")
        setattr(getattr(module, cls_name), method, fn)
    _ORIGINAL_METHODS.clear()


def unpatch_ultralytics() -> None:
    """Restore ultralytics' classes and methods and the assigners of the loss objects swapped."""
    import importlib

    from . import ultralytics_obb

    for name, cls in _ORIGINAL.items():
        importlib.import_module(name).TaskAlignedAssigner = cls
    _ORIGINAL.clear()
    ultralytics_obb.unpatch_classes()
    _restore_methods()
    while _SWAPPED:
        branch, assigner = _SWAPPED.pop()
        branch.assigner = assigner


@contextlib.contextmanager
def patched_ultralytics(*losses, fused_loss: bool = False) -> Iterator[None]:
    """``with patched_ultralytics(): ...``: :func:`patch_ultralytics` for the block (restores the
    previous state afterwards, also when the patch was already in effect)."""
    already = is_patched()
    fused_before = dict(_ORIGINAL_METHODS)
    n_swapped = len(_SWAPPED)
    patch_ultralytics(*losses, fused_loss=fused_loss)
    try:
        yield
    finally:
        if not already:
            unpatch_ultralytics()
        else:
            if fused_loss and not fused_before:  # the block added the fused loss: remove it
                _restore_methods()
            while len(_SWAPPED) > n_swapped:
                branch, assigner = _SWAPPED.pop()
                branch.assigner = assigner

