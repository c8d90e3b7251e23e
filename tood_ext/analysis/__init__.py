"""Task-alignment diagnostics of a dense detector (TOOD, Feng et al. 2021, the analysis behind
its claim that a high score and an accurate box coincide), for any detector.

* :func:`alignment_report` -- the measurement itself, from pre-NMS predictions, the post-NMS
  detections and the ground truth of a set of images (numpy/torch arrays in, a JSON-serialisable
  dict out; the definitions are in its docstring);
* :func:`iter_raw_predictions` / :func:`analyze_model` -- run a tood_ext detector (TOOD or the
  ATSS baseline) over a :class:`~tood_ext.data.CocoDetection` set and feed the report;
* :func:`format_reports`, :func:`plot_score_vs_iou` -- a table and the score-vs-IoU scatter;
* ``python -m tood_ext analyze --checkpoint A.pth [B.pth ...] --data ROOT`` -- all of it
  (:func:`add_analyze_subparser`, :func:`cmd_analyze`).

The package, by job: :mod:`~tood_ext.analysis.primitives` (IoU by the library's ``box_iou``,
ranks, correlation, GT assignment, post-processing by :mod:`tood_ext.models.postprocess`),
:mod:`~tood_ext.analysis.report` (the report), :mod:`~tood_ext.analysis.predictions` (a
detector's raw predictions on a dataset), :mod:`~tood_ext.analysis.output` (table and plot),
:mod:`~tood_ext.analysis.cli` (the command).
"""
from __future__ import annotations

from .cli import add_analyze_subparser, cmd_analyze
from .output import format_reports, plot_score_vs_iou
from .predictions import analyze_model, iter_raw_predictions
from .primitives import assign_to_gts, average_ranks, box_iou_np, pearson, postprocess
from .report import REPORT_VERSION, alignment_report, classify_detections

__all__ = ["alignment_report", "analyze_model", "assign_to_gts", "average_ranks", "box_iou_np",
           "classify_detections", "format_reports", "iter_raw_predictions", "pearson",
           "plot_score_vs_iou", "postprocess", "add_analyze_subparser", "cmd_analyze"]
