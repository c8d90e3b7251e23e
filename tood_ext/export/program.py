"""torch.export of the detector: :func:`export_program` (an ExportedProgram) and
:func:`export_pt2` (saved to a .pt2 file)."""
from __future__ import annotations

import os

import torch
from torch import nn

from .wrapper import as_exportable, dynamic_shapes, eval_mode, example_inputs

__all__ = ["export_program", "export_pt2"]


def export_program(model: nn.Module, image_size=(640, 640), dynamic: bool = True,
                   with_nms: bool = False, batch: int = 2, **nms_kwargs):
    """``torch.export.export`` of :class:`ExportableTOOD` (eval mode): an ExportedProgram."""
    wrapper = as_exportable(model, with_nms, nms_kwargs)
    device = next(wrapper.parameters()).device
    args = example_inputs(image_size, batch if dynamic else 1, device, dynamic)
    with eval_mode(wrapper), torch.no_grad():
        return torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes(dynamic))


def export_pt2(model: nn.Module, path: str, image_size=(640, 640), dynamic: bool = True,
               with_nms: bool = False, **nms_kwargs):
    """torch.export the detector and ``torch.export.save`` it to ``path`` (.pt2).

    Load with ``import tood_ext.export; ep = torch.export.load(path)``, run with
    ``ep.module()(images)``. Returns the ExportedProgram.
    """
    ep = export_program(model, image_size, dynamic, with_nms, **nms_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.export.save(ep, path)
    return ep
