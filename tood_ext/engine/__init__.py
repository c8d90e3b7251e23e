"""Engine: training (single process or torchrun/DDP), COCO evaluation, drawing predictions."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, unwrap
from .coco_eval import METRIC_NAMES, coco_bbox_metrics, format_table, have_pycocotools
from .evaluate import evaluate, inference
from .predict import draw_detections, predict_images
from .train import (LossModule, TrainConfig, build_optimizer, loss_digest, lr_factor, state_digest,
                    train)

__all__ = ["LossModule", "METRIC_NAMES", "TrainConfig", "build_optimizer", "coco_bbox_metrics",
           "draw_detections", "evaluate", "format_table", "have_pycocotools", "inference",
           "load_checkpoint", "loss_digest", "lr_factor", "model_from_checkpoint",
           "predict_images", "save_checkpoint", "state_digest", "train", "unwrap"]
