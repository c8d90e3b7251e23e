"""The extra memory each op's docstring states, measured (tood_ext.testing.memory: the CPU
allocator's events recorded by torch.profiler, or CUDA's peak statistics) against the stated
bound, and against the dense footprint the fused kernels exist to avoid."""
from __future__ import annotations

import pytest
import torch

import tood_ext
from tood_ext import reference as ref
from tood_ext.testing.memory import peak_extra_memory

from conftest import DEVICES, metric_inputs, random_boxes

SLACK = 64 * 1024  # small bookkeeping tensors (label checks, scalars)


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_memory_is_the_output(gen, device):
    n, m = 600, 500
    b1, b2 = random_boxes(gen, n, device=device), random_boxes(gen, m, device=device)
    out_bytes = n * m * 4
    soa = m * 5 * 4  # CPU: boxes2 as columns (+ CIoU angles)
    for mode in ("iou", "ciou"):
        peak = peak_extra_memory(lambda: tood_ext.box_iou(b1, b2, mode), device)
        assert out_bytes <= peak <= out_bytes + soa + SLACK, (mode, peak)
        # the reference materialises several (N, M) intermediates
        assert peak_extra_memory(lambda: ref.box_iou(b1, b2, mode), device) > 3 * out_bytes


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_backward_memory_is_the_gradients(gen, device):
    n, m = 400, 300
    b1 = random_boxes(gen, n, device=device).requires_grad_()
    b2 = random_boxes(gen, m, device=device).requires_grad_()
    out = tood_ext.box_iou(b1, b2, "giou")
    grad = torch.ones_like(out)
    peak = peak_extra_memory(lambda: torch.autograd.grad(out, (b1, b2), grad, retain_graph=True),
                             device)
    assert peak <= (n + m) * 4 * 4 + m * 4 * 4 + SLACK  # two gradients + boxes2 columns


@pytest.mark.parametrize("device", DEVICES)
def test_alignment_metric_memory_is_the_outputs(gen, device):
    B, A, C, G = 2, 3000, 20, 30
    inputs = metric_inputs(gen, B, A, C, G, device=device)
    dense = B * G * A
    peak = peak_extra_memory(lambda: tood_ext.alignment_metric(*inputs), device)
    assert dense * 9 <= peak <= dense * 9 + B * A * 5 * 4 + SLACK


@pytest.mark.parametrize("device", DEVICES)
def test_task_aligned_assign_memory_is_o_of_b_times_a(gen, device):
    """At G = 1000 the op stays O(B*A + B*G*k): far below one (B, G, A) float tensor."""
    B, A, C, G, k = 2, 4000, 10, 1000, 13
    inputs = metric_inputs(gen, B, A, C, G, device=device)
    outputs = B * A * (8 + 1 + 8 + 4 * 4 + 3 * 4)
    candidates = B * G * k * (4 + 1 + 4 + 4)
    claims = B * A * 8
    columns = B * A * 5 * 4
    bound = outputs + candidates + claims + columns + SLACK
    peak = peak_extra_memory(lambda: tood_ext.task_aligned_assign(*inputs, topk=k), device)
    one_dense_tensor = B * G * A * 4
    assert peak <= bound, (peak, bound)
    assert peak < one_dense_tensor / 20


@pytest.mark.parametrize("device", DEVICES)
def test_deform_sampling_memory_is_the_outputs(gen, device):
    """Forward: only its output; backward: only the three gradients (tensor allocations; the
    CPU kernels' per-thread tile scratch is a fixed size, stated in the docstring)."""
    B, C, G, H, W = 2, 16, 4, 40, 56
    x = torch.randn(B, C, H, W, generator=gen).to(device)
    off = (torch.randn(B, 2 * G, H, W, generator=gen) * 2).to(device)
    m = torch.rand(B, G, H, W, generator=gen).to(device)
    grad = torch.randn(B, C, H, W, generator=gen).to(device)
    out_bytes = x.numel() * 4
    peak = peak_extra_memory(lambda: tood_ext.deform_sampling(x, off, m), device)
    assert out_bytes <= peak <= out_bytes + SLACK, peak
    grads = (x.numel() + off.numel() + m.numel()) * 4
    peak = peak_extra_memory(
        lambda: torch.ops.tood_ext._deform_sampling_backward(grad, x, off, m), device)
    assert grads <= peak <= grads + SLACK, (peak, grads)
    # the grid_sample reference builds a sampling grid and the modulated output besides
    assert peak_extra_memory(lambda: ref.deform_sampling(x, off, m), device) > out_bytes + SLACK
