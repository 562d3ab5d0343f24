"""Building blocks shared by the model zoo: a conv with a fast small-spatial path, BN with PyTorch's defaults.

This module owns how a conv is *computed* (`lax.conv_general_dilated` or im2col + matmul); it does not decide
widths, names or coupling (the model files do).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["CONV_IMPLS", "Conv", "batch_norm", "conv_im2col", "conv_lax", "apply_mask", "resolve_conv_impl"]

#: Valid values of the models' `conv_impl` field.
CONV_IMPLS = ("auto", "lax", "im2col")

# He et al. / torchvision initialisation: normal with variance 2 / fan_out.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_lax(x, kernel, strides: tuple[int, int], padding: tuple[int, int]):
    """NHWC x HWIO convolution through XLA's convolution op."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=[(padding[0], padding[0]), (padding[1], padding[1])],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def conv_im2col(x, kernel, strides: tuple[int, int], padding: tuple[int, int]):
    """The same convolution as `conv_lax`, computed as im2col + one matmul.

    XLA:CPU runs 3x3 convs at 2x2 spatial size ~70x below matmul speed (perf-notes.md, surprise 1); gathering the
    kh*kw shifted windows along the channel axis and multiplying by the reshaped kernel does the same arithmetic
    (zero-padded taps included) at matmul speed.
    """
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    sh, sw = strides
    ph, pw = padding
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if (ph or pw) else x
    cols = [
        lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin), (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    # (kh, kw, cin) flattening order matches the kernel's row-major reshape.
    y = patches.reshape(n * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return y.reshape(n, ho, wo, cout)


def resolve_conv_impl(impl: str, kernel_size: tuple[int, int], out_hw: tuple[int, int], backend: str | None = None):
    """Chooses the conv path for `impl='auto'`: im2col for spatial kernels at <= 2x2 output on CPU, else lax."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "cpu" and out_hw[0] * out_hw[1] <= 4 and kernel_size[0] * kernel_size[1] > 1:
        return "im2col"
    return "lax"


class Conv(nn.Module):
    """A bias-free (by default) 2-D conv, NHWC, kernel (kh, kw, c_in, c_out), symmetric PyTorch-style padding.

    Attributes:
      features: Output width (number of filters).
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: Symmetric zero padding (ph, pw); None means kernel_size // 2.
      use_bias: Add a bias per filter.
      dtype: Computation dtype (parameters stay in their own dtype and are cast).
      impl: 'lax', 'im2col' or 'auto' (see `resolve_conv_impl`).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | None = None
    use_bias: bool = False
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        pad = self.padding if self.padding is not None else (kh // 2, kw // 2)
        kernel = self.param("kernel", kaiming_fan_out, (kh, kw, x.shape[-1], self.features))
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        ho = (x.shape[1] + 2 * pad[0] - kh) // self.strides[0] + 1
        wo = (x.shape[2] + 2 * pad[1] - kw) // self.strides[1] + 1
        impl = resolve_conv_impl(self.impl, (kh, kw), (ho, wo))
        fn = conv_im2col if impl == "im2col" else conv_lax
        y = fn(x, kernel, tuple(self.strides), tuple(pad))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
        return y


def batch_norm(name: str, train: bool, dtype, scale_init=None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's momentum 0.9 (Flax convention) and epsilon 1e-5 (design.md §5)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        scale_init=scale_init or nn.initializers.ones_init(),
        name=name,
    )


def apply_mask(h, masks: Mapping[str, Any] | None, group: str):
    """Multiplies the channel axis by a group's 0/1 mask, if one is given (the masking reference, design.md §4)."""
    if masks is None or group not in masks:
        return h
    return h * jnp.asarray(masks[group]).astype(h.dtype)
