"""CIFAR VGG with BatchNorm, as in Li et al. §4.1 (Zagoruyko's CIFAR VGG + BN, no dropout).

Layout (docs/paper.md §2): bias-free 3x3 convs, each followed by BN and ReLU; 2x2 max-pools between stages; a final 2x2
average pool to a 512-vector (at 32x32 input); Linear 512->512, BN, ReLU, Linear->classes. Layer names follow the
paper: `conv1`...`convL` with `bn1`...`bnL`, then `fc1` (+ `bn_fc1`) and the classifier `fc2`.

Widths: `widths` holds the conv widths (13 for VGG-16); `fc_width` the hidden Linear's width. Coupling is declared
in `channel_groups` below, next to the layers: group `conv{i}` is conv i's filters, BN i and the next layer's input
channels; group `fc1` is the hidden units. The classifier's output is never a group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.groups import AxisRef, ChannelGroup
from jaxprune.models.base import PrunableMixin, bn_refs, cached_groups, check_int
from jaxprune.models.layers import Conv, apply_mask, batch_norm

__all__ = ["VGG", "VGG_CONFIGS", "vgg11", "vgg13", "vgg16", "vgg19"]

#: depth -> (conv widths, 1-based conv indices followed by a 2x2 max-pool), from the re-implementation's cfgs.
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    11: ((64, 128, 256, 256, 512, 512, 512, 512), (1, 2, 4, 6)),
    13: ((64, 64, 128, 128, 256, 256, 512, 512, 512, 512), (2, 4, 6, 8)),
    16: ((64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512), (2, 4, 7, 10)),
    19: ((64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512), (2, 4, 8, 12)),
}


class VGG(PrunableMixin, nn.Module):
    """CIFAR VGG-{11,13,16,19} with BN.

    Attributes:
      depth: 11, 13, 16 or 19 (fixes the pooling layout).
      widths: Conv widths, one per conv layer (depth - 3 entries).
      fc_width: Width of the hidden Linear `fc1`.
      num_classes: Classifier outputs.
      in_channels: Input channels (3).
      image_size: Input height = width; 32 for CIFAR. The flatten before `fc1` holds (image_size / 32)^2 positions.
      dtype: Computation dtype.
      conv_impl: 'auto', 'lax', 'im2col' or 'padded' (see `jaxprune.models.layers`).
    """

    depth: int = 16
    widths: tuple[int, ...] = VGG_CONFIGS[16][0]
    fc_width: int = 512
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    family = "vgg"
    _config_fields = ("depth", "widths", "fc_width", "num_classes", "in_channels", "image_size", "conv_impl")

    def __post_init__(self):
        if self.depth not in VGG_CONFIGS:
            raise ValueError(f"vgg: depth must be one of {sorted(VGG_CONFIGS)}, got {self.depth!r}")
        self._check_common("widths", self.widths, len(VGG_CONFIGS[self.depth][0]))
        check_int(self.fc_width, "vgg: fc_width")
        check_int(self.image_size, "vgg: image_size")
        n_pool = len(VGG_CONFIGS[self.depth][1]) + 1
        if self.image_size % (2**n_pool):
            raise ValueError(f"vgg: image_size must be a multiple of {2**n_pool} (5 poolings), got {self.image_size}")
        super().__post_init__()

    @property
    def pool_after(self) -> tuple[int, ...]:
        return VGG_CONFIGS[self.depth][1]

    @property
    def flatten_repeat(self) -> int:
        """Spatial positions flattened into fc1's input (1 at 32x32)."""
        s = self.image_size // 2 ** (len(self.pool_after) + 1)
        return s * s

    @nn.compact
    def __call__(self, x, *, train: bool = False, masks: Mapping[str, Any] | None = None):
        """Logits for NHWC images. `masks` (group -> 0/1 vector) zeroes channels after BN: the masking reference."""
        self._check_input(x, image_size=self.image_size)
        h = x.astype(self.dtype)
        for i, w in enumerate(self.widths, start=1):
            h = Conv(w, dtype=self.dtype, impl=self.conv_impl, name=f"conv{i}")(h)
            h = batch_norm(f"bn{i}", train, self.dtype, nn.initializers.constant(0.5))(h)
            h = apply_mask(h, masks, f"conv{i}")
            h = nn.relu(h)
            if i in self.pool_after:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = h.reshape(h.shape[0], -1)  # channel-last flatten: flat index = position * width + channel
        h = nn.Dense(self.fc_width, dtype=self.dtype, name="fc1")(h)
        h = batch_norm("bn_fc1", train, self.dtype, nn.initializers.constant(0.5))(h)
        h = apply_mask(h, masks, "fc1")
        h = nn.relu(h)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(h)

    @cached_groups
    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """Groups `conv1`..`convL` then `fc1`, in forward order; stage k = convs between pool k-1 and pool k."""
        groups = []
        n = len(self.widths)
        stage = 1
        for i, w in enumerate(self.widths, start=1):
            kernel = AxisRef(("params", f"conv{i}", "kernel"), 3)
            if i < n:
                consumer = AxisRef(("params", f"conv{i + 1}", "kernel"), 2)
            else:
                consumer = AxisRef(("params", "fc1", "kernel"), 0, repeat=self.flatten_repeat)
            groups.append(
                ChannelGroup(
                    name=f"conv{i}",
                    width=w,
                    producers=(kernel, *bn_refs(f"bn{i}")),
                    consumers=(consumer,),
                    scored=kernel,
                    kind="conv",
                    stage=f"stage{stage}",
                )
            )
            if i in self.pool_after:
                stage += 1
        fc_kernel = AxisRef(("params", "fc1", "kernel"), 1)
        groups.append(
            ChannelGroup(
                name="fc1",
                width=self.fc_width,
                producers=(fc_kernel, AxisRef(("params", "fc1", "bias"), 0), *bn_refs("bn_fc1")),
                consumers=(AxisRef(("params", "fc2", "kernel"), 0),),
                scored=fc_kernel,
                kind="fc",
                stage=None,
            )
        )
        return tuple(groups)

    def _replace_widths(self, new: dict[str, int]):
        widths = list(self.widths)
        fc_width = self.fc_width
        for name, w in new.items():
            if name == "fc1":
                fc_width = w
            else:
                widths[int(name[len("conv") :]) - 1] = w
        return self.clone(widths=tuple(widths), fc_width=fc_width)


def _vgg(depth: int, num_classes: int, **kw) -> VGG:
    return VGG(depth=depth, widths=VGG_CONFIGS[depth][0], num_classes=num_classes, **kw)


def vgg11(num_classes: int = 10, **kw) -> VGG:
    """CIFAR VGG-11 with BN (8 convs)."""
    return _vgg(11, num_classes, **kw)


def vgg13(num_classes: int = 10, **kw) -> VGG:
    """CIFAR VGG-13 with BN (10 convs)."""
    return _vgg(13, num_classes, **kw)


def vgg16(num_classes: int = 10, **kw) -> VGG:
    """CIFAR VGG-16 with BN (13 convs), the paper's §4.1 model: 14,987,722 Flax params at 10 classes."""
    return _vgg(16, num_classes, **kw)


def vgg19(num_classes: int = 10, **kw) -> VGG:
    """CIFAR VGG-19 with BN (16 convs)."""
    return _vgg(19, num_classes, **kw)
