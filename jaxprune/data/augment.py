"""The reference CIFAR augmentation, on device: pad-and-crop and horizontal flip."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune.data._checks import _check_bool, _check_int


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation (on device)
# ----------------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("pad", "flip"))
def _augment(key, images, *, pad: int, flip: bool):
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (n,)) if flip else jnp.zeros((n,), bool)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, offset, flip_it):
        out = lax.dynamic_slice(img, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip_it, out[:, ::-1, :], out)

    return jax.vmap(one)(padded, offsets, flips)


def augment_cifar(key: jax.Array, images, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """The standard CIFAR augmentation, per image, on device: zero-pad, random crop back to size, random h-flip.

    The reference recipe (docs/paper.md §7, re-implementation hyperparameters: "pad-4 random crop and horizontal flip").
    Each image is padded with `pad` zeros on every side, cropped back to (H, W) at an offset (dy, dx) drawn uniformly
    from {0, ..., 2*pad}^2, then mirrored left-right with probability 1/2 if `flip`. Exactly: ``crop_key, flip_key =
    jax.random.split(key)``, ``offsets = jax.random.randint(crop_key, (N, 2), 0, 2 * pad + 1)`` (dy, dx per image),
    ``flips = jax.random.bernoulli(flip_key, 0.5, (N,))``. On normalized images zero padding is padding with the mean
    pixel; the reference pads raw images with black, which differs only at the border.

    Jittable (`pad` and `flip` are static), and jitted internally, so a training step can call it under `jax.jit`.

    Args:
        key: A JAX PRNG key (typed or raw uint32).
        images: Array of shape (N, H, W, C), any dtype.
        pad: Padding on each side, an int >= 0. pad=0 disables cropping.
        flip: Whether to flip at random.

    Returns:
        A JAX array with the shape and dtype of `images`. With pad=0 and flip=False it equals `images`.

    Raises:
        TypeError: `pad` not an int or `flip` not a bool.
        ValueError: `pad` < 0 or `images` not 4-D.

    Example:
        >>> x = jnp.ones((2, 32, 32, 3), jnp.float32)
        >>> y = augment_cifar(jax.random.key(0), x)
        >>> y.shape, y.dtype
        ((2, 32, 32, 3), dtype('float32'))
    """
    pad = _check_int(pad, "pad", minimum=0)
    flip = _check_bool(flip, "flip")
    if np.ndim(images) != 4:
        raise ValueError(f"images must be 4-D (N, H, W, C), got shape {np.shape(images)}")
    return _augment(key, jnp.asarray(images), pad=pad, flip=flip)
