"""ImageNet ResNets with 1x1 projection shortcuts (torchvision layout): ResNet-18 and ResNet-34.

Layout: 7x7/2 `stem` conv (64) + `stem_bn` + ReLU + 3x3/2 max-pool; four stages of basic blocks (2/2/2/2 or
3/4/6/3) named `stage{s}_block{b}_conv1`/`_bn1`/`_conv2`/`_bn2`; the first block of stages 2-4 has stride 2 and a
projection shortcut `stage{s}_block1_shortcut` (1x1/2 conv, bias-free) + `stage{s}_block1_shortcut_bn`; global
average pool; `fc`.

Coupling, declared in `channel_groups` next to the layers (docs/paper.md §6, Fig. 4):
* `stage{s}_block{b}_conv1`: the first conv's filters, its BN, the second conv's inputs (presets A and B).
* `stage{s}_stream`: the stage's residual stream. Producers: the stage's projection shortcut and its BN (for stage
  1, the stem), and every second conv and BN of the stage; consumers: every first conv reading the stream, the next
  stage's first conv and projection, or `fc`. Scored by the projection (stage 1: the stem), as the paper chooses
  stream channels by the shortcut's L1. Streams are prunable (preset C prunes `stage3_stream`) but only when named.

Widths: `widths` = the first-conv width of every block; `stream_widths` = one per stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.groups import AxisRef, ChannelGroup
from jaxprune.models.base import PrunableMixin, bn_refs, cached_groups, check_int, first_conv_groups
from jaxprune.models.layers import Conv, apply_mask, batch_norm

__all__ = ["ImageNetResNet", "IMAGENET_BLOCKS", "resnet18", "resnet34"]

#: depth -> blocks per stage.
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
IMAGENET_STREAMS = (64, 128, 256, 512)


class ImageNetResNet(PrunableMixin, nn.Module):
    """ImageNet ResNet-18/34 with projection shortcuts.

    Attributes:
      depth: 18 or 34.
      widths: First-conv width of every block (8 or 16 entries).
      stream_widths: Residual stream width per stage (4 entries).
      num_classes: Classifier outputs.
      in_channels: Input channels (3).
      dtype: Computation dtype.
      conv_impl: 'auto', 'lax', 'im2col' or 'padded' (see `jaxprune.models.layers`).
    """

    depth: int = 34
    widths: tuple[int, ...] = tuple(
        w for w, n in zip(IMAGENET_STREAMS, IMAGENET_BLOCKS[34], strict=True) for _ in range(n)
    )
    stream_widths: tuple[int, ...] = IMAGENET_STREAMS
    num_classes: int = 1000
    in_channels: int = 3
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    family = "resnet_imagenet"
    _config_fields = ("depth", "widths", "stream_widths", "num_classes", "in_channels", "conv_impl")

    def __post_init__(self):
        if self.depth not in IMAGENET_BLOCKS:
            raise ValueError(f"resnet_imagenet: depth must be one of {sorted(IMAGENET_BLOCKS)}, got {self.depth!r}")
        self._check_common("widths", self.widths, sum(IMAGENET_BLOCKS[self.depth]))
        if not isinstance(self.stream_widths, tuple | list) or len(self.stream_widths) != 4:
            raise ValueError(f"resnet_imagenet: stream_widths needs 4 entries, got {self.stream_widths!r}")
        for i, w in enumerate(self.stream_widths):
            check_int(w, f"resnet_imagenet: stream_widths[{i}]")
        super().__post_init__()

    def _blocks(self):
        """(stage, block, flat block index), 1-based stage and block, forward order."""
        out, i = [], 0
        for s, n in enumerate(IMAGENET_BLOCKS[self.depth], start=1):
            for b in range(1, n + 1):
                out.append((s, b, i))
                i += 1
        return out

    @nn.compact
    def __call__(self, x, *, train: bool = False, masks: Mapping[str, Any] | None = None):
        """Logits for NHWC images. `masks` (group -> 0/1 vector) zeroes channels after BN: the masking reference."""
        self._check_input(x)
        impl = self.conv_impl
        h = Conv(self.stream_widths[0], (7, 7), (2, 2), dtype=self.dtype, impl=impl, name="stem")(x.astype(self.dtype))
        h = batch_norm("stem_bn", train, self.dtype)(h)
        h = nn.relu(apply_mask(h, masks, "stage1_stream"))
        h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
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
            if b == 1 and s > 1:
                shortcut = Conv(
                    out_w, (1, 1), (stride, stride), (0, 0), dtype=self.dtype, impl=impl, name=f"{p}_shortcut"
                )(h)
                shortcut = batch_norm(f"{p}_shortcut_bn", train, self.dtype)(shortcut)
                shortcut = apply_mask(shortcut, masks, f"stage{s}_stream")
            h = nn.relu(y + shortcut)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(h)

    @cached_groups
    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """One group per block (`stage{s}_block{b}_conv1`) then one stream per stage, in forward order."""
        blocks = self._blocks()
        groups = first_conv_groups(blocks, self.widths)
        for s in (1, 2, 3, 4):
            if s == 1:
                scored = AxisRef(("params", "stem", "kernel"), 3)
                producers = [scored, *bn_refs("stem_bn")]
            else:
                scored = AxisRef(("params", f"stage{s}_block1_shortcut", "kernel"), 3)
                producers = [scored, *bn_refs(f"stage{s}_block1_shortcut_bn")]
            consumers: list[AxisRef] = []
            for s2, b2, _ in blocks:
                p = f"stage{s2}_block{b2}"
                if s2 == s:
                    producers += [AxisRef(("params", f"{p}_conv2", "kernel"), 3), *bn_refs(f"{p}_bn2")]
                if (s2 == s and (b2 > 1 or s == 1)) or (s2 == s + 1 and b2 == 1):
                    consumers.append(AxisRef(("params", f"{p}_conv1", "kernel"), 2))
                    if s2 == s + 1:
                        consumers.append(AxisRef(("params", f"{p}_shortcut", "kernel"), 2))
            if s == 4:
                consumers.append(AxisRef(("params", "fc", "kernel"), 0))
            groups.append(
                ChannelGroup(
                    name=f"stage{s}_stream",
                    width=self.stream_widths[s - 1],
                    producers=tuple(producers),
                    consumers=tuple(consumers),
                    scored=scored,
                    prunable=True,
                    kind="stream",
                    stage=f"stage{s}",
                )
            )
        return tuple(groups)

    def _replace_widths(self, new: dict[str, int]):
        index = {f"stage{s}_block{b}_conv1": i for s, b, i in self._blocks()}
        widths, streams = list(self.widths), list(self.stream_widths)
        for name, w in new.items():
            if name.endswith("_stream"):
                streams[int(name[len("stage")]) - 1] = w
            else:
                widths[index[name]] = w
        return self.clone(widths=tuple(widths), stream_widths=tuple(streams))


def _resnet(depth: int, num_classes: int, **kw) -> ImageNetResNet:
    widths = tuple(w for w, n in zip(IMAGENET_STREAMS, IMAGENET_BLOCKS[depth], strict=True) for _ in range(n))
    return ImageNetResNet(depth=depth, widths=widths, stream_widths=IMAGENET_STREAMS, num_classes=num_classes, **kw)


def resnet18(num_classes: int = 1000, **kw) -> ImageNetResNet:
    """ImageNet ResNet-18 (2/2/2/2 blocks), 224x224 input."""
    return _resnet(18, num_classes, **kw)


def resnet34(num_classes: int = 1000, **kw) -> ImageNetResNet:
    """ImageNet ResNet-34 (3/4/6/3 blocks), 224x224 input: 21,797,672 Flax params at 1000 classes."""
    return _resnet(34, num_classes, **kw)
