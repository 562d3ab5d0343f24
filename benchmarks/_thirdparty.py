"""Models written the way public Flax code writes them, for the trace benchmark (not part of jaxprune).

`ResNet50` follows flax's ImageNet example (`examples/imagenet/models.py`: bottleneck blocks, `conv_proj` shortcuts,
zero-initialised last BN scale); `ViT` follows big_vision's `vit.py` (patch conv, class token by `jnp.tile`,
pre-LN encoder blocks); `UNet` is a small encoder-decoder with nearest-neighbour `jax.image.resize` and concatenated
skips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


class BottleneckResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters * 4, (1, 1))(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_filters: int = 64
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=nn.relu)(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


ResNet50 = partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BottleneckResNetBlock)


class MlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp_dim)(x)))


class Encoder1DBlock(nn.Module):
    mlp_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(*(2 * (nn.LayerNorm()(x),)))
        x = x + y
        return x + MlpBlock(self.mlp_dim)(nn.LayerNorm()(x))


class ViT(nn.Module):
    width: int = 192
    depth: int = 12
    mlp_dim: int = 768
    num_heads: int = 3
    patch: int = 16
    num_classes: int = 1000

    @nn.compact
    def __call__(self, image):
        x = nn.Conv(self.width, (self.patch,) * 2, strides=(self.patch,) * 2, padding="VALID", name="embedding")(image)
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w, c))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
        for i in range(self.depth):
            x = Encoder1DBlock(self.mlp_dim, self.num_heads, name=f"encoderblock_{i}")(x)
        x = nn.LayerNorm(name="encoder_norm")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])


class UNet(nn.Module):
    widths: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x):
        skips = []
        for i, w in enumerate(self.widths):
            x = nn.relu(nn.GroupNorm(num_groups=8)(nn.Conv(w, (3, 3), name=f"down{i}")(x)))
            skips.append(x)
            if i < len(self.widths) - 1:
                x = nn.max_pool(x, (2, 2), (2, 2))
        for i, w in reversed(list(enumerate(self.widths[:-1]))):
            n, h, ww, c = x.shape
            x = jax.image.resize(x, (n, 2 * h, 2 * ww, c), method="nearest")
            x = nn.relu(nn.Conv(w, (3, 3), name=f"up{i}")(jnp.concatenate([x, skips[i]], axis=-1)))
        return nn.Conv(1, (1, 1), name="out")(x)
