"""Input generators and the bad-input table of the loss ops, shared by test_losses.py (the CPU
kernels and the reference) and test_losses_emu.py (the emulated CUDA kernels)."""
from __future__ import annotations

import torch

F64 = torch.float64
# (kind, activated)
KINDS = [("bce", False), ("qfl", False), ("qfl", True), ("vfl", False), ("focal", False),
         ("focal", True)]
KIND_IDS = ["bce", "qfl", "qfl-activated", "vfl", "focal", "focal-activated"]


def draw(gen, shape, C, dtype=torch.float32, device="cpu", fg=0.3, activated=False,
         scale=3.0):
    """pred (*shape, C) (logits, or probabilities when activated), labels (*shape) in [-1, C)
    with about ``fg`` foreground, scores (*shape) in [0, 1]."""
    x = torch.randn(*shape, C, generator=gen, dtype=F64) * scale
    if activated:
        x = x.sigmoid()
    lab = torch.randint(0, max(C, 1), shape, generator=gen)
    lab = torch.where(torch.rand(shape, generator=gen) < fg, lab, torch.full_like(lab, -1))
    sc = torch.rand(shape, generator=gen, dtype=F64)
    cast = dict(dtype=dtype, device=device)
    return x.to(**cast), lab.to(device), sc.to(**cast)


def bad_cases(gen):
    x, lab, sc = draw(gen, (2, 8), 5, torch.float32)
    lab[0, 0] = 2
    ok = dict(pred=x, labels=lab, scores=sc)
    bad_label = lab.clone()
    bad_label[1, 3] = 5
    low_label = lab.clone()
    low_label[0, 1] = -2
    bad_score = sc.clone()
    bad_score[0, 0] = 1.5
    w = torch.rand(2, 8, generator=gen)
    return [
        # (what, kwargs override, exception, text in the message)
        ("pred list", dict(pred=[1.0]), TypeError, "pred"),
        ("labels None", dict(labels=None), TypeError, "labels"),
        ("kind", dict(kind="fl"), ValueError, "kind"),
        ("reduction", dict(reduction="none"), ValueError, "reduction"),
        ("avg_factor str", dict(avg_factor="3"), TypeError, "avg_factor"),
        ("gamma negative", dict(gamma=-1.0), ValueError, "gamma"),
        ("alpha nan", dict(alpha=float("nan")), ValueError, "alpha"),
        ("gamma str", dict(gamma="2"), TypeError, "gamma"),
        ("activated bce", dict(kind="bce", activated=True), ValueError, "activated"),
        ("activated vfl", dict(kind="vfl", activated=True), ValueError, "activated"),
        ("alpha > 1 focal", dict(kind="focal", alpha=1.5), ValueError, "alpha"),
        ("activated int", dict(activated=1), TypeError, "activated"),
        ("label 5 >= C", dict(labels=bad_label), IndexError, "labels"),
        ("label -2", dict(labels=low_label), IndexError, "labels"),
        ("label float", dict(labels=lab.float()), RuntimeError, "labels"),
        ("label bool", dict(labels=lab >= 0), RuntimeError, "labels"),
        ("label shape", dict(labels=lab[:, :4]), RuntimeError, "labels"),
        ("scores shape", dict(scores=sc[None]), RuntimeError, "scores"),
        ("scores dtype", dict(scores=sc.double()), RuntimeError, "scores"),
        ("score > 1 qfl", dict(scores=bad_score, kind="qfl"), ValueError, "scores"),
        ("score > 1 vfl", dict(scores=bad_score, kind="vfl"), ValueError, "scores"),
        ("score > 1 focal", dict(scores=bad_score, kind="focal"), ValueError, "scores"),
        ("class_weight length", dict(class_weight=torch.ones(4)), RuntimeError, "class_weight"),
        ("class_weight dtype", dict(class_weight=torch.ones(5, dtype=F64)), RuntimeError,
         "class_weight"),
        ("weight list", dict(weight=w.tolist()), TypeError, r"(?<!class_)weight"),
        ("weight shape (A, B)", dict(weight=w.t()), RuntimeError, r"(?<!class_)weight"),
        ("weight shape (B, A, 1)", dict(weight=w[..., None]), RuntimeError, r"(?<!class_)weight"),
        ("weight shape (C,)", dict(weight=torch.ones(5)), RuntimeError, r"(?<!class_)weight"),
        ("weight dtype", dict(weight=w.double()), RuntimeError, r"(?<!class_)weight"),
        ("weight bool", dict(weight=w > 0.5), RuntimeError, r"(?<!class_)weight"),
        ("weight on meta", dict(weight=w.to("meta")), RuntimeError, r"(?<!class_)weight"),
        ("pred int", dict(pred=x.long(), scores=sc), RuntimeError, "pred"),
        ("pred 0-d", dict(pred=torch.tensor(1.0), labels=torch.tensor(0), scores=torch.tensor(1.)),
         RuntimeError, "pred"),
        ("pred half on CPU", dict(pred=x.half(), scores=sc.half()), RuntimeError, "pred"),
        ("labels on meta", dict(labels=lab.to("meta")), RuntimeError, "labels"),
    ], ok



def loss_grad_per_thread_count(fn, pred, *args, counts=(1, 2, 3), **kw) -> list:
    """(loss, d loss / d pred) of ``fn(pred, *args, **kw)`` with each of ``counts`` threads
    (the thread count restored after): the loss ops promise the same bits for all."""
    before = torch.get_num_threads()
    out = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            x = pred.detach().clone().requires_grad_()
            loss = fn(x, *args, **kw)
            (g,) = torch.autograd.grad(loss, x)
            out.append((loss.detach(), g))
    finally:
        torch.set_num_threads(before)
    return out
