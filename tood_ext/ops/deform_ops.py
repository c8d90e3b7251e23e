"""Deformable bilinear offset sampling backed by the C++/CUDA kernels.

TOOD's task-aligned head re-samples its regression (and classification) maps at learned
offsets: every output pixel reads its own channel at a displaced, fractional position. The
kernels (csrc/deform/deform_sampling_utils.h holds the per-element math shared by the CPU
and CUDA backends) and the pure-PyTorch reference (:mod:`tood_ext.reference.deform_ops`)
implement the semantics below.
"""
from __future__ import annotations

import torch

from .. import _loader
from ._checks import check_tensors
from ._deform_spec import check_deform_args, deform_grad_shape, deform_shape

__all__ = ["deform_sampling"]


def deform_sampling(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None,
                    groups: int | None = None) -> torch.Tensor:
    """Samples each channel of ``input`` bilinearly at per-pixel offsets (zeros outside).

    ``out[b, c, i, j] = mask[b, g, i, j] * bilinear(input[b, c], i + dy, j + dx)`` with
    ``g = c // (C // G)``, ``dy = offset[b, 2 * g, i, j]``, ``dx = offset[b, 2 * g + 1, i, j]``
    (``mask`` factor 1 when no mask is given).

    Args:
        input: (B, C, H, W) feature map.
        offset: (B, 2 * G, H, W): (dy, dx) in pixels for each of the G offset groups, in
            torchvision's ``deform_conv2d`` layout. G must divide C; channel c uses group
            ``c // (C // G)``.
        mask: optional (B, G, H, W) modulation (DCNv2 style), differentiable.
        groups: G, optional; it is ``offset.size(1) // 2`` and, when given, must equal it.

    Returns:
        (B, C, H, W), contiguous, of ``input``'s dtype.

    Semantics: those of ``torchvision.ops.deform_conv2d(input, offset, weight, mask=mask)``
    with ``weight = torch.ones(C, 1, 1, 1)`` (a depthwise 1x1 kernel, stride 1, no padding),
    and of ``grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False)``
    at the pixel positions (i + dy, j + dx):

    * a sample at y <= -1, y >= H, x <= -1 or x >= W (+-inf included) is 0; otherwise its
      corners are ``(floor(y), floor(x))`` and their +1 neighbours, and a corner outside
      the map contributes 0;
    * the offset gradient is that of the bilinear polynomial of the cell
      ``(floor(y), floor(x))``: one-sided at integer positions (as torchvision);
    * a NaN offset gives NaN outputs and NaN offset/mask gradients for its pixel, and no
      input gradient;
    * zero offsets (and no mask) return a finite ``input`` exactly; empty inputs (B, C, H or W = 0,
      also C = 0 with an offset of 0 channels) give empty outputs.

    dtypes: float32/float64 on CPU; float16/bfloat16/float32/float64 on CUDA, computed in
    float32 for the half types. Inputs of any strides (channels-last, slices) are accepted
    and copied to contiguous first (that copy costs one extra pass over the tensor).

    Gradients (w.r.t. ``input``, ``offset`` and ``mask``) come from the private op
    ``torch.ops.tood_ext._deform_sampling_backward(grad, input, offset, mask)``, which returns
    ``(grad_input, grad_offset, grad_mask)``, all three computed in one call; ``grad_mask`` is
    an empty tensor of shape (0,) when ``mask`` is None. Double backward raises.

    Determinism: the CPU kernels are deterministic (bitwise, for any thread count). On CUDA
    the forward and the offset/mask gradients are deterministic gathers, but the input
    gradient is a scatter with atomic adds whose order varies between runs: under
    ``torch.use_deterministic_algorithms(True)`` the CUDA backward raises PyTorch's usual
    "does not have a deterministic implementation" error (a warning with
    ``warn_only=True``).

    Extra memory: the forward allocates only its output (nothing is saved beyond the
    inputs); the backward allocates the three gradients (input-, offset- and mask-sized),
    plus, on CUDA for float16/bfloat16, a float32 grad_input accumulation buffer (cast at
    the end), plus a contiguous copy of any non-contiguous argument. The CPU kernels also
    keep per-thread scratch outside the tensor allocator (``tests/test_memory.py`` checks the
    tensors): for groups of fewer than 4 channels (or planes of more than 65536 pixels) a tile
    plan of about 90 bytes per pixel of a tile of at most 16384 pixels (about 1.5 MiB per
    thread for float32); for groups of 4 or more channels on planes of up to 65536 pixels the
    pixel-major path's plan and scratch planes, about 190 bytes per pixel of the plane (2.8 MiB
    per thread at 100 x 152, at most 12 MiB). Nearly twice that for float64.
    """
    check_deform_args("deform_sampling", input, offset, mask, groups)
    _loader.check_inputs("deform_sampling", input=input, offset=offset, mask=mask)
    return torch.ops.tood_ext.deform_sampling(input, offset, mask)


# ---------------------------------------------------------------------------------------------
# fake (meta) kernels and autograd
# ---------------------------------------------------------------------------------------------


def _register():
    lib = "tood_ext::"

    @torch.library.register_fake(lib + "deform_sampling")
    def _deform_sampling_fake(input, offset, mask=None):
        check_deform_args("deform_sampling", input, offset, mask, None)
        deform_shape(input, offset, mask)
        return input.new_empty(input.shape)

    @torch.library.register_fake(lib + "_deform_sampling_backward")
    def _deform_sampling_backward_fake(grad, input, offset, mask):
        check_deform_args("_deform_sampling_backward", input, offset, mask, None)
        check_tensors("_deform_sampling_backward", grad=grad)
        deform_grad_shape(grad, input, offset, mask)
        grad_mask = mask.new_empty(mask.shape) if mask is not None else input.new_empty((0,))
        return input.new_empty(input.shape), offset.new_empty(offset.shape), grad_mask

    def _setup(ctx, inputs, output):
        input, offset, mask = inputs
        ctx.save_for_backward(input, offset, mask)

    def _backward(ctx, grad):
        input, offset, mask = ctx.saved_tensors
        gi, go, gm = torch.ops.tood_ext._deform_sampling_backward(grad, input, offset, mask)
        return (gi if ctx.needs_input_grad[0] else None,
                go if ctx.needs_input_grad[1] else None,
                gm if mask is not None and ctx.needs_input_grad[2] else None)

    torch.library.register_autograd(lib + "deform_sampling", _backward, setup_context=_setup)

    def _no_double_backward_setup(ctx, inputs, output):
        pass

    def _no_double_backward(ctx, *grads):
        raise RuntimeError("tood_ext: double backward through deform_sampling is not supported")

    torch.library.register_autograd(lib + "_deform_sampling_backward", _no_double_backward,
                                    setup_context=_no_double_backward_setup)


if _loader.has_ops():
    _register()
