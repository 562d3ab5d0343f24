"""Building blocks shared by the model zoo: a conv with fast paths for XLA:CPU, BN with PyTorch's defaults.

This module owns how a conv is *computed*: through XLA's convolution op (`conv_lax`), as im2col + one matmul
(`conv_im2col`), or through XLA's convolution op with the output width padded by zero filters to a multiple of 16
(`conv_padded`). All three use the same parameters and give the same outputs (to float32 rounding); `Conv(impl=...)`
picks one, and ``impl='auto'`` picks per backend and layer shape (`resolve_conv_impl`). It does not decide widths,
names or coupling (the model files do).

Why (docs/perf-notes.md, surprises 1 and 2; measured again for issue 9 on the 2-core AVX-512 CPU, jax 0.10.2, medians):

* XLA:CPU runs a 3x3 conv whose output is 2x2 (or 1x1) far below matmul speed: 512 -> 512 at 2x2, batch 64,
  0.8-2.2 GFLOP/s through `conv_lax` against 150 GFLOP/s as im2col + matmul (70-190x); 256 -> 256 at 2x2 59x;
  batch 1 still 50-190x. At 4x4 the two are within noise of each other at batch 1-32 (0.9-1.3x) and `conv_lax`
  wins at batch 64 (512 -> 512: 29 ms against 40 ms); from 8x8 up `conv_lax` wins by 1.2-10x (im2col copies the
  input nine times). So ``auto`` uses im2col at outputs of at most 4 pixels (1x1, 1x2, 2x1, 2x2) with a spatial
  kernel, and only on CPU.
* A first layer (3x3 kernel over an RGB or grey input) swings 6x with the output width through `conv_lax`: at 32x32,
  batch 64, 3 -> 24 takes 10.7 ms, 3 -> 32 4.4 ms, 3 -> 48 1.7 ms, 3 -> 64 2.1 ms (CPU time), so VGG-16-A's conv1
  (pruned 64 -> 32) was slower than the original's. As im2col + matmul (matmul depth 27) it takes 2.2-2.8 ms at
  every width from 16 to 64. So ``auto`` uses im2col when the matmul depth kh * kw * c_in is at most 32.
* Some output widths that are not a multiple of 16 (the AVX-512 vector of floats) fall onto slow paths of XLA:CPU's
  conv kernels: 64 -> 56 and 64 -> 57 at 8x8, batch 64, take 2.4-2.6 ms against 1.4 ms for 64 -> 64 (and 1.5 ms for
  the same conv computed at 64 filters with 7-8 zero filters and the extra outputs sliced away); 128 -> 120 at 8x8
  is 1.3x slower than 128 -> 128. Other widths are fine (24, 40, 48, 112) or gain nothing from padding (8 -> 16).
  So ``auto`` pads the output width to the next multiple of 16 when that adds at most 1/7 of the filters (56 -> 64,
  57 -> 64, 120 -> 128, 44 -> 48), never the narrow widths where padding doubles the work.
* On GPU and TPU ``auto`` is the plain `conv_lax` (no accelerator was available to measure the alternatives; cuDNN
  and the TPU compiler have their own small-spatial and channel-padding paths).

What it changes elsewhere: `jaxprune.xla_flops` reads XLA's cost analysis of the computation actually compiled, so
the im2col path counts the zero-padded kernel taps (a 3x3 conv at 2x2 output has 9 taps per output pixel in the
matmul, 4 of them in bounds on average) and the padded path counts the zero filters. `jaxprune.count_macs` (the
paper's convention) does not depend on the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_IMPLS",
    "Conv",
    "PAD_MULTIPLE",
    "apply_mask",
    "batch_norm",
    "conv_im2col",
    "conv_lax",
    "conv_padded",
    "padded_width",
    "resolve_conv_impl",
]

#: Valid values of the models' `conv_impl` field ('padded' is `conv_padded`; 'auto' resolves per layer).
CONV_IMPLS = ("auto", "lax", "im2col", "padded")

#: Output widths are padded to a multiple of this on the 'padded' path (16 float32 = one AVX-512 register).
PAD_MULTIPLE = 16

#: `auto` pads only when the zero filters add at most 1/this of the real ones (56 -> 64 adds 8 = 56/7).
_AUTO_PAD_MAX_EXTRA_INV = 7

#: `auto` uses im2col when the output has at most this many pixels (2x2) and the kernel is spatial (docs/perf-notes.md, surprise 1).
_AUTO_IM2COL_MAX_PIXELS = 4

#: ... or when the matmul depth kh * kw * c_in is at most this (a 3x3 kernel over an RGB input: 27).
_AUTO_IM2COL_MAX_DEPTH = 32

# He et al. / torchvision initialisation: normal with variance 2 / fan_out.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_lax(x, kernel, strides: tuple[int, int], padding: tuple[int, int]):
    """NHWC x HWIO convolution through XLA's convolution op (the reference every other path must equal)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=[(padding[0], padding[0]), (padding[1], padding[1])],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def conv_im2col(x, kernel, strides: tuple[int, int], padding: tuple[int, int]):
    """The same convolution as `conv_lax`, computed as im2col + one matmul.

    XLA:CPU runs 3x3 convs at 2x2 spatial size ~70x below matmul speed (docs/perf-notes.md, surprise 1); gathering the
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


def padded_width(width: int, multiple: int = PAD_MULTIPLE) -> int:
    """`width` rounded up to a multiple of `multiple` (the width `conv_padded` computes at)."""
    return -(-width // multiple) * multiple


def conv_padded(x, kernel, strides: tuple[int, int], padding: tuple[int, int], *, multiple: int = PAD_MULTIPLE):
    """The same convolution as `conv_lax`, computed with the output width padded to a multiple of `multiple`.

    The kernel gets zero filters up to `padded_width(c_out, multiple)`, XLA's convolution runs at that width, and
    the extra outputs are sliced away (XLA fuses the slice into the BN/ReLU that follows). Each real output channel
    is the same reduction as in `conv_lax`. Worth it where XLA:CPU's kernels are slow for the real width (64 -> 56
    at 8x8 runs 1.6x faster as 64 -> 64); see the module docstring.
    """
    cout = kernel.shape[-1]
    extra = padded_width(cout, multiple) - cout
    if extra == 0:
        return conv_lax(x, kernel, strides, padding)
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return conv_lax(x, kernel, strides, padding)[..., :cout]


def resolve_conv_impl(
    impl: str,
    kernel_size: tuple[int, int],
    out_hw: tuple[int, int],
    backend: str | None = None,
    *,
    in_width: int | None = None,
    out_width: int | None = None,
) -> str:
    """The conv path for one layer: `impl` itself, or for ``'auto'`` the fastest measured path on `backend`.

    ``auto`` on CPU (measurements in the module docstring): ``'im2col'`` when the kernel is spatial and either the
    output has at most 4 pixels (VGG-16's conv11-13 at 2x2) or the matmul depth kh * kw * `in_width` is at most 32
    (a 3x3 first layer over RGB); else ``'padded'`` when `out_width` is not a multiple of 16 and
    padding it adds at most 1/7 of the filters (56 -> 64); else ``'lax'``. On other backends ``auto`` is ``'lax'``.

    Args:
      impl: One of `CONV_IMPLS`.
      kernel_size: (kh, kw).
      out_hw: Output (H, W).
      backend: ``'cpu'``, ``'gpu'``, ``'tpu'``...; None means `jax.default_backend()`.
      in_width: Input width (channels); None leaves the first-layer rule out of ``auto``.
      out_width: Output width (filters); None leaves the padded path out of ``auto``.

    Returns:
      ``'lax'``, ``'im2col'`` or ``'padded'``.

    Raises:
      ValueError: `impl` is not one of `CONV_IMPLS`.

    Example:
      >>> resolve_conv_impl("auto", (3, 3), (2, 2), "cpu"), resolve_conv_impl("auto", (3, 3), (2, 2), "gpu")
      ('im2col', 'lax')
      >>> [resolve_conv_impl("auto", (3, 3), (8, 8), "cpu", in_width=64, out_width=w) for w in (64, 57, 56, 24, 6)]
      ['lax', 'padded', 'padded', 'lax', 'lax']
      >>> resolve_conv_impl("auto", (3, 3), (32, 32), "cpu", in_width=3, out_width=32)
      'im2col'
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "lax"
    taps = kernel_size[0] * kernel_size[1]
    if taps > 1 and (
        out_hw[0] * out_hw[1] <= _AUTO_IM2COL_MAX_PIXELS
        or (in_width is not None and taps * in_width <= _AUTO_IM2COL_MAX_DEPTH)
    ):
        return "im2col"
    if out_width is not None:
        extra = padded_width(out_width) - out_width
        if 0 < extra and extra * _AUTO_PAD_MAX_EXTRA_INV <= out_width:  # integers: 56 -> 64 exactly at the limit
            return "padded"
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
      impl: 'lax', 'im2col', 'padded' or 'auto' (see `resolve_conv_impl`).
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
        impl = resolve_conv_impl(self.impl, (kh, kw), (ho, wo), in_width=x.shape[-1], out_width=self.features)
        fn = {"lax": conv_lax, "im2col": conv_im2col, "padded": conv_padded}[impl]
        y = fn(x, kernel, tuple(self.strides), tuple(pad))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
        return y


def batch_norm(name: str, train: bool, dtype, scale_init=None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's momentum 0.9 (Flax convention) and epsilon 1e-5 (docs/design.md §5)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        scale_init=scale_init or nn.initializers.ones_init(),
        name=name,
    )


def apply_mask(h, masks: Mapping[str, Any] | None, group: str):
    """Multiplies the channel axis by a group's 0/1 mask, if one is given (the masking reference, docs/design.md §4)."""
    if masks is None or group not in masks:
        return h
    return h * jnp.asarray(masks[group]).astype(h.dtype)
