"""Networks: EfficientNet backbones, the ensemble feature net, segmenters. Imports nothing above it."""

from .efficientnet import SPECS, Backbone, BackboneOutput, EfficientNet
from .registry import create_backbone, list_backbones, register_backbone
from .weights import WeightsNotFoundError, load_checkpoint, save_checkpoint, state_fingerprint

__all__ = [
    "SPECS", "Backbone", "BackboneOutput", "EfficientNet", "WeightsNotFoundError",
    "create_backbone", "list_backbones", "register_backbone", "load_checkpoint",
    "save_checkpoint", "state_fingerprint",
]
