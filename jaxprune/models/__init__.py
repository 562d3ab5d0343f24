"""The model zoo: Flax Linen VGG and ResNet families that declare their channel coupling.

Each family stores its widths as data (`widths`, plus `fc_width` or `stream_widths`) so that the same class builds
the original network and any pruned one; `channel_groups()` declares coupling from configuration alone and
`with_widths(mapping)` returns a clone at new widths. This package does not score, plan or slice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

from jaxprune.models.base import PrunableMixin, is_prunable_model
from jaxprune.models.layers import CONV_IMPLS, Conv, conv_im2col, conv_lax, conv_padded
from jaxprune.models.resnet_cifar import CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from jaxprune.models.resnet_imagenet import ImageNetResNet, resnet18, resnet34
from jaxprune.models.vgg import VGG, vgg11, vgg13, vgg16, vgg19

__all__ = [
    "CONV_IMPLS",
    "CifarResNet",
    "Conv",
    "ImageNetResNet",
    "MODELS",
    "PrunableMixin",
    "VGG",
    "available",
    "conv_im2col",
    "conv_lax",
    "conv_padded",
    "default_input_shape",
    "from_config",
    "get",
    "is_prunable_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
]

#: Factory by name.
MODELS: dict[str, Callable[..., Any]] = {
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
    "resnet34": resnet34,
}

_FAMILIES = {"vgg": VGG, "resnet_cifar": CifarResNet, "resnet_imagenet": ImageNetResNet}


def available() -> tuple[str, ...]:
    """Names accepted by `get`."""
    return tuple(MODELS)


def get(name: str, **kwargs):
    """Builds a shipped model by name (`vgg16`, `resnet56`, ...); kwargs go to the factory."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def default_input_shape(model, batch: int = 1) -> tuple[int, int, int, int]:
    """The NHWC input shape a shipped model is built for: 32x32 for CIFAR models, 224x224 for ImageNet ResNets."""
    if isinstance(model, ImageNetResNet):
        size = 224
    elif isinstance(model, VGG):
        size = model.image_size
    else:
        size = 32
    return (batch, size, size, model.in_channels)


def from_config(config: Mapping[str, Any]):
    """Rebuilds a model from `model.config()` (used by checkpoints).

    Raises:
      ValueError: unknown family or fields.
    """
    if not isinstance(config, Mapping) or "family" not in config:
        raise ValueError(f"model config must be a mapping with a 'family' key, got {config!r}")
    cfg = dict(config)
    family = cfg.pop("family")
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid families: {', '.join(_FAMILIES)}")
    cls = _FAMILIES[family]
    allowed = set(cls._config_fields) | {"dtype"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(
            f"model config for {family!r} has unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    for k in ("widths", "stream_widths"):
        if k in cfg:
            cfg[k] = tuple(int(w) for w in cfg[k])
    if "dtype" in cfg:
        cfg["dtype"] = jnp.dtype(cfg["dtype"])
    return cls(**cfg)
