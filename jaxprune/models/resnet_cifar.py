"""CIFAR ResNets (He et al. 2016, §4.2) with option-A shortcuts: ResNet-20/32/44/56/110.

Layout: a 3x3 `stem` conv (16 filters) + `stem_bn` + ReLU; three stages of n = (depth - 2) / 6 basic blocks
(`stage{s}_block{b}_conv1`/`_bn1`, `_conv2`/`_bn2`), the first block of stages 2 and 3 with stride 2; a
parameter-free shortcut (strided subsampling, then zero-padding of the new channels); global average pool; `fc`.

Coupling, declared in `channel_groups` next to the layers (docs/paper.md §6):
* one group per block, `stage{s}_block{b}_conv1`: the first conv's filters, its BN, and the second conv's inputs.
  These are what Li et al. prune.
* one group per stage, `stage{s}_stream`: the residual stream (the stem or every second conv and BN of the stage)
  and all its consumers. The zero-padded shortcuts tie stream channels across stages, so streams are declared
  `prunable=False`: the paper's ResNet policy is data, not an if-statement.

Widths: `widths` = the first-conv width of every block (3n entries), `stream_widths` = one per stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.groups import AxisRef, ChannelGroup
from jaxprune.models.base import PrunableMixin, bn_refs, cached_groups, check_int, first_conv_groups
from jaxprune.models.layers import Conv, apply_mask, batch_norm

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]

CIFAR_STREAMS = (16, 32, 64)


class CifarResNet(PrunableMixin, nn.Module):
    """CIFAR ResNet-(6n+2) with option-A shortcuts.

    Attributes:
      depth: 6n + 2 (20, 32, 44, 56, 110, ...).
      widths: First-conv width of every block, 3n entries in forward order.
      stream_widths: Residual stream width per stage (16, 32, 64); non-decreasing.
      num_classes: Classifier outputs.
      in_channels: Input channels (3).
      dtype: Computation dtype.
      conv_impl: 'auto', 'lax', 'im2col' or 'padded' (see `jaxprune.models.layers`).
    """

    depth: int = 56
    widths: tuple[int, ...] = (16,) * 9 + (32,) * 9 + (64,) * 9
    stream_widths: tuple[int, ...] = CIFAR_STREAMS
    num_classes: int = 10
    in_channels: int = 3
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    family = "resnet_cifar"
    _config_fields = ("depth", "widths", "stream_widths", "num_classes", "in_channels", "conv_impl")

    def __post_init__(self):
        check_int(self.depth, "resnet_cifar: depth", minimum=8)
        if (self.depth - 2) % 6:
            raise ValueError(f"resnet_cifar: depth must be 6n+2 (20, 32, 44, 56, 110), got {self.depth}")
        self._check_common("widths", self.widths, 3 * self.blocks_per_stage)
        if not isinstance(self.stream_widths, tuple | list) or len(self.stream_widths) != 3:
            raise ValueError(f"resnet_cifar: stream_widths needs 3 entries, got {self.stream_widths!r}")
        for i, w in enumerate(self.stream_widths):
            check_int(w, f"resnet_cifar: stream_widths[{i}]")
        if any(b < a for a, b in zip(self.stream_widths, self.stream_widths[1:], strict=False)):
            raise ValueError(
                f"resnet_cifar: stream_widths must be non-decreasing (zero-padded shortcuts), got {self.stream_widths}"
            )
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    def _blocks(self):
        """(stage, block, flat block index) in forward order, all 1-based except the flat index."""
        n = self.blocks_per_stage
        return [(s, b, (s - 1) * n + b - 1) for s in (1, 2, 3) for b in range(1, n + 1)]

    @nn.compact
    def __call__(self, x, *, train: bool = False, masks: Mapping[str, Any] | None = None):
        """Logits for NHWC images. `masks` (group -> 0/1 vector) zeroes channels after BN: the masking reference."""
        self._check_input(x)
        impl = self.conv_impl
        h = Conv(self.stream_widths[0], dtype=self.dtype, impl=impl, name="stem")(x.astype(self.dtype))
        h = batch_norm("stem_bn", train, self.dtype)(h)
        h = nn.relu(apply_mask(h, masks, "stage1_stream"))
        for s, b, i in self._blocks():
            p = f"stage{s}_block{b}"
            out_w = self.stream_widths[s - 1]
            stride = 2 if (b == 1 and s > 1) else 1
            y = Conv(self.widths[i], strides=(stride, stride), dtype=self.dtype, impl=impl, name=f"{p}_conv1")(h)
            y = batch_norm(f"{p}_bn1", train, self.dtype)(y)
            y = nn.relu(apply_mask(y, masks, f"{p}_conv1"))
            y = Conv(out_w, dtype=self.dtype, impl=impl, name=f"{p}_conv2")(y)
            y = batch_norm(f"{p}_bn2", train, self.dtype)(y)
            y = apply_mask(y, masks, f"stage{s}_stream")
            shortcut = h
            if stride > 1:
                shortcut = shortcut[:, ::stride, ::stride, :]
            if shortcut.shape[-1] != out_w:  # option A: zero-pad the new channels
                shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, out_w - shortcut.shape[-1])))
            h = nn.relu(y + shortcut)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(h)

    @cached_groups
    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """One group per block (`stage{s}_block{b}_conv1`) then one stream per stage, in forward order."""
        blocks = self._blocks()
        groups = first_conv_groups(blocks, self.widths)
        for s in (1, 2, 3):
            producers: list[AxisRef] = []
            if s == 1:
                producers += [AxisRef(("params", "stem", "kernel"), 3), *bn_refs("stem_bn")]
            consumers: list[AxisRef] = []
            for s2, b2, _ in blocks:
                p = f"stage{s2}_block{b2}"
                if s2 == s:
                    producers += [AxisRef(("params", f"{p}_conv2", "kernel"), 3), *bn_refs(f"{p}_bn2")]
                # The stream of stage s feeds its own blocks 2..n (and block 1 of stage 1, fed by the stem) and the
                # first block of stage s+1.
                if (s2 == s and (b2 > 1 or s == 1)) or (s2 == s + 1 and b2 == 1):
                    consumers.append(AxisRef(("params", f"{p}_conv1", "kernel"), 2))
            if s == 3:
                consumers.append(AxisRef(("params", "fc", "kernel"), 0))
            groups.append(
                ChannelGroup(
                    name=f"stage{s}_stream",
                    width=self.stream_widths[s - 1],
                    producers=tuple(producers),
                    consumers=tuple(consumers),
                    scored=None,
                    prunable=False,
                    kind="stream",
                    stage=f"stage{s}",
                )
            )
        return tuple(groups)

    def _replace_widths(self, new: dict[str, int]):
        index = {f"stage{s}_block{b}_conv1": i for s, b, i in self._blocks()}
        widths = list(self.widths)
        for name, w in new.items():
            widths[index[name]] = w
        return self.clone(widths=tuple(widths))


def _resnet(depth: int, num_classes: int, **kw) -> CifarResNet:
    n = (depth - 2) // 6
    widths = tuple(w for w in CIFAR_STREAMS for _ in range(n))
    return CifarResNet(depth=depth, widths=widths, stream_widths=CIFAR_STREAMS, num_classes=num_classes, **kw)


def resnet20(num_classes: int = 10, **kw) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage)."""
    return _resnet(20, num_classes, **kw)


def resnet32(num_classes: int = 10, **kw) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    return _resnet(32, num_classes, **kw)


def resnet44(num_classes: int = 10, **kw) -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage)."""
    return _resnet(44, num_classes, **kw)


def resnet56(num_classes: int = 10, **kw) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage): 853,018 Flax params, 125,485,696 conv + FC MACs at 32x32."""
    return _resnet(56, num_classes, **kw)


def resnet110(num_classes: int = 10, **kw) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage): 1,727,962 Flax params."""
    return _resnet(110, num_classes, **kw)
