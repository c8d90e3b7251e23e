"""Data: a COCO-format dataset reader, its transforms and loader, and a synthetic COCO-format
generator."""
from .coco import CocoDetection, CocoIndex, DataError, annotations_to_targets, collate
from .loader import make_loader
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import generate_synthetic_coco
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, denormalize, hflip, normalize, pad,
                         pad_size, rescale_size, resize, xywh_to_xyxy, xyxy_to_xywh)

__all__ = ["CocoDetection", "CocoIndex", "DataError", "IMAGENET_MEAN", "IMAGENET_STD",
           "SYNTHETIC_CLASSES",
           "annotations_to_targets", "collate", "denormalize", "generate_synthetic_coco",
           "hflip", "make_loader", "normalize", "pad", "pad_size", "rescale_size", "resize",
           "xywh_to_xyxy", "xyxy_to_xywh"]
