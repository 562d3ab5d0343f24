"""A hand-built 3-conv network with the prunable-model protocol, for tests that need to know every number.

conv1 -> bn1 -> mask -> relu -> conv2 (stride 2) -> bn2 -> mask -> relu -> conv3 -> bn3 -> mask -> relu -> global
mean -> fc. Groups `conv1`, `conv2`, `conv3` (kind conv, stage1). Small enough to compile in well under a second.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.groups import AxisRef, ChannelGroup
from jaxprune.models.base import PrunableMixin, bn_refs
from jaxprune.models.layers import apply_mask, batch_norm


class TinyNet(PrunableMixin, nn.Module):
    widths: tuple[int, ...] = (4, 4, 4)
    strides: tuple[int, ...] = (1, 2, 1)
    num_classes: int = 3
    in_channels: int = 3
    dtype: Any = jnp.float32

    family = "tiny"
    _config_fields = ("widths", "strides", "num_classes", "in_channels")

    @nn.compact
    def __call__(self, x, *, train: bool = False, masks=None):
        h = x.astype(self.dtype)
        for i, (w, s) in enumerate(zip(self.widths, self.strides, strict=True), start=1):
            h = nn.Conv(w, (3, 3), strides=(s, s), padding="SAME", use_bias=False, dtype=self.dtype, name=f"conv{i}")(h)
            h = batch_norm(f"bn{i}", train, self.dtype)(h)
            h = nn.relu(apply_mask(h, masks, f"conv{i}"))
        h = h.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(h)

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        n = len(self.widths)
        out = []
        for i, w in enumerate(self.widths, start=1):
            kernel = AxisRef(("params", f"conv{i}", "kernel"), 3)
            consumer = (
                AxisRef(("params", f"conv{i + 1}", "kernel"), 2) if i < n else AxisRef(("params", "fc", "kernel"), 0)
            )
            out.append(
                ChannelGroup(
                    f"conv{i}",
                    w,
                    producers=(kernel, *bn_refs(f"bn{i}")),
                    consumers=(consumer,),
                    scored=kernel,
                    stage="stage1",
                )
            )
        return tuple(out)

    def _replace_widths(self, new):
        return self.clone(widths=tuple(new.get(f"conv{i}", w) for i, w in enumerate(self.widths, start=1)))
