"""Benchmark cases of deformable bilinear offset sampling (``tood_ext.deform_sampling``).

Implementations: ``kernel`` = tood_ext (C++/CUDA kernels), ``reference`` = tood_ext.reference
(``grid_sample`` on a (B * G, C / G, H, W) view), ``torchvision`` =
``torchvision.ops.deform_conv2d(input, offset, weight=ones(C, 1, 1, 1))`` (the same operation
as a depthwise 1x1 deformable convolution).

Two uses:

* TOOD's head: B = 16 images of 800x1333 padded to 128 (800x1408), FPN strides 8..128 give the
  five levels 100x168, 50x84, 25x42, 13x21, 7x11; the regression branch samples its C = 4
  distance maps with one offset group per map (G = 4). One case for the largest level and one
  running all five levels in a row (the time of a head's sampling per iteration).
* generic deformable sampling of a feature map: B = 8, C = 256, 100x152, G in {1, 16, 256}.

Offsets are N(0, 2^2) pixels (as learned offsets are: mostly within a few pixels, some
samples outside the map at the borders); no modulation mask. fwd+bwd takes the gradients
w.r.t. input and offset for a random upstream gradient.

``floor``: the op's compulsory memory traffic done by plain torch streaming ops, with fresh
outputs of the op's sizes (so allocation and first-touch page faults count as they do for the
op): forward ``input.clone()`` and ``offset.sum()`` (read input and offsets, write one
input-sized tensor); backward ``grad + input`` into a fresh tensor and ``offset.clone()`` (read
grad, input and offsets, write grad_input- and grad_offset-sized tensors). No implementation
that reads and writes those bytes can beat it by much: ``floor/kernel`` is the share of that
floor's bandwidth the kernel reaches (on CUDA the forward floor is a device-to-device copy plus
a read of the offsets: the issue's "share of copy bandwidth"), and ``reference/floor`` bounds
what any implementation can gain over the reference.
"""
from __future__ import annotations

import torch

import tood_ext
from tood_ext import reference as ref

from .harness import Case, register_family

SEED = 0
OFFSET_STD = 2.0
TOOD_LEVELS = ((100, 168), (50, 84), (25, 42), (13, 21), (7, 11))

try:
    import torchvision.ops as tvo
except Exception:  # noqa: BLE001 - torchvision is optional: its column is left out
    tvo = None


def _gen(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _tv_sampling(x, offset):
    weight = torch.ones(x.shape[1], 1, 1, 1, dtype=x.dtype, device=x.device)
    return tvo.deform_conv2d(x, offset, weight)


IMPLS = {
    "kernel": tood_ext.deform_sampling,
    "reference": ref.deform_sampling,
}
if tvo is not None:
    IMPLS["torchvision"] = _tv_sampling


def _inputs(levels, B, C, G, device, dtype, grad: bool, seed: int):
    """Per level: (input, offset, upstream gradient), on the device."""
    g = _gen(seed)
    out = []
    for H, W in levels:
        x = torch.randn(B, C, H, W, generator=g).to(device, dtype)
        off = (torch.randn(B, 2 * G, H, W, generator=g) * OFFSET_STD).to(device, dtype)
        up = torch.randn(B, C, H, W, generator=g).to(device, dtype) if grad else None
        if grad:
            x.requires_grad_(True)
            off.requires_grad_(True)
        out.append((x, off, up))
    return out


def _floor_runner(data, passes):
    """The memory floor of the pass (module docstring): streaming torch ops moving the same
    bytes into fresh tensors."""
    fwd_only = passes == "fwd"

    @torch.no_grad()
    def run():
        out = []
        for x, off, up in data:
            out += [x.clone(), off.sum()]
            if not fwd_only:
                out += [torch.add(up, x), off.clone()]
        return tuple(out)

    return run


def _runner(fn, data, passes):
    """A callable sampling every level (forward, or forward and the input/offset grads)."""
    if passes == "fwd":
        return lambda: tuple(fn(x, off) for x, off, _ in data)

    def run():
        outs = [fn(x, off) for x, off, _ in data]
        inputs = [t for x, off, _ in data for t in (x, off)]
        grads = torch.autograd.grad(outs, inputs, [up for _, _, up in data])
        return (*[o.detach() for o in outs], *grads)

    return run


def sampling_case(device, name, levels, B, C, G, passes, dtype=torch.float32, note="",
                  with_tv=True):
    def setup():
        data = _inputs(levels, B, C, G, device, dtype, passes == "fwd+bwd", seed=len(levels) + G)
        impls = {k: _runner(fn, data, passes) for k, fn in IMPLS.items()
                 if with_tv or k != "torchvision"}
        impls["floor"] = _floor_runner(data, passes)
        return impls

    full = f"{name}{' fwd+bwd' if passes == 'fwd+bwd' else ''}"
    if dtype != torch.float32:
        full += f" {_dtype_name(dtype)}"
    sizes = {"B": B, "C": C, "G": G, "levels": [list(hw) for hw in levels]}
    notes = [f"offsets ~ N(0, {OFFSET_STD:g}^2) px, no mask; floor: the pass's compulsory "
             "memory traffic as torch streaming ops into fresh tensors (module docstring)"]
    if passes == "fwd+bwd":
        notes.append("gradients w.r.t. input and offset, random upstream gradient; float32 "
                     "maxdiff vs the reference: the reference goes through grid_sample's "
                     "normalised coordinates, whose float32 round trip moves a sample by up to "
                     "~1e-5 px, and the few samples that cross a grid line get the offset "
                     "gradient of the neighbouring cell (it jumps there); torchvision computes "
                     "positions as the kernel does (same in float64: ~1e-13)")
    if tvo is None:
        notes.append("torchvision not installed")
    elif not with_tv:
        notes.append("torchvision left out (no half-precision deform_conv2d)")
    if note:
        notes.append(note)
    return Case(name=full, family="deform_ops", op="deform_sampling", passes=passes,
                sizes=sizes, dtype=_dtype_name(dtype), setup=setup, note="; ".join(notes),
                unchecked=("floor",))


@register_family("deform_ops")
def cases(device: str, quick: bool) -> list:
    cuda = device == "cuda"
    if quick:
        tood_B, tood_levels = 2, ((13, 21), (7, 11))
        gen_B, gen_C, gen_hw, gen_groups = 2, 16, (12, 19), (1, 4, 16)
    else:
        tood_B, tood_levels = 16, TOOD_LEVELS
        gen_B, gen_C, gen_hw, gen_groups = 8, 256, (100, 152), (1, 16, 256)
    out = []
    for passes in ("fwd", "fwd+bwd"):
        H, W = tood_levels[0]
        out.append(sampling_case(device, f"deform_sampling.tood B={tood_B} C=4 G=4 {H}x{W}",
                                 tood_levels[:1], tood_B, 4, 4, passes))
        out.append(sampling_case(device, f"deform_sampling.tood B={tood_B} C=4 G=4 "
                                         f"{len(tood_levels)} levels", tood_levels, tood_B, 4, 4,
                                 passes, note="all FPN levels, one after the other"))
    H, W = gen_hw
    for G in gen_groups:
        for passes in ("fwd", "fwd+bwd"):
            out.append(sampling_case(device, f"deform_sampling.generic B={gen_B} C={gen_C} "
                                             f"G={G} {H}x{W}", (gen_hw,), gen_B, gen_C, G, passes))
    if cuda:
        for dt in (torch.float16, torch.bfloat16):
            out.append(sampling_case(device, f"deform_sampling.generic B={gen_B} C={gen_C} "
                                             f"G=16 {H}x{W}", (gen_hw,), gen_B, gen_C, 16,
                                     "fwd+bwd", dtype=dt, with_tv=False))
    return out
