"""Networks: EfficientNet backbones, the ensemble feature net, segmenters. Imports nothing above it."""

from .._lazy import lazy_exports

_EXPORTS = {
    "SPECS": ".efficientnet", "Backbone": ".efficientnet", "BackboneOutput": ".efficientnet",
    "EfficientNet": ".efficientnet", "WeightsNotFoundError": ".weights", "create_backbone": ".registry",
    "list_backbones": ".registry", "register_backbone": ".registry", "load_checkpoint": ".weights",
    "save_checkpoint": ".weights", "state_fingerprint": ".weights",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
