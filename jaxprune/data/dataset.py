"""`Dataset`: validated in-memory NHWC images and labels; per-channel statistics and normalization."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxprune.data._checks import _check_bool, _check_int

# Images per chunk when taking statistics: bounds the float64 temporaries to a few MB whatever the data set size.
_STATS_CHUNK = 512


# ----------------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory image classification data set with a fixed train/test split.

    Images are NHWC float32 numpy arrays, labels 1-D int32 numpy arrays. `mean` and `std` are the per-channel
    statistics of the training images *before* normalization (population std); when `normalized` is True they have
    already been applied to both splits, and they are what you need to normalize new images the same way. Left as
    None, they are computed from `x_train` (which must then be unnormalized).

    The dataclass is frozen (fields cannot be reassigned) and compares by identity (arrays have no single truth value).

    Attributes:
        x_train: Training images, shape (N, H, W, C), float32.
        y_train: Training labels, shape (N,), int32, in [0, num_classes).
        x_test: Test images, shape (M, H, W, C), float32, same H, W, C as `x_train`.
        y_test: Test labels, shape (M,), int32, in [0, num_classes).
        num_classes: Number of classes (>= 1).
        name: A short name, e.g. "digits", "cifar10".
        mean: Per-channel mean of the unnormalized training images, shape (C,), float32.
        std: Per-channel standard deviation of the unnormalized training images, shape (C,), float32, all >= 0
            (> 0 when `normalized`).
        class_names: One name per class in label order, or () when unknown.
        normalized: Whether `(x - mean) / std` has been applied to `x_train` and `x_test`.

    Raises:
        TypeError: A field of the wrong kind (not a numpy array, images not float32, labels not int32, ...).
        ValueError: Wrong ranks or lengths, labels outside [0, num_classes), mismatched image shapes, a `mean`/`std`
            of the wrong shape, a negative `std` (zero too when `normalized`), `class_names` of the wrong length, or
            `normalized=True` without `mean` and `std`. The message names the field, the bad value and what is allowed.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((4, 8, 8, 1), np.float32); x[:2] = 1.0
        >>> y = np.array([0, 1, 0, 1], np.int32)
        >>> ds = Dataset(x, y, x[:2], y[:2], num_classes=2, name="toy")
        >>> ds.image_shape, ds.mean.tolist(), ds.std.tolist()
        ((8, 8, 1), [0.5], [0.5])
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    normalized: bool = False

    def __post_init__(self):
        num_classes = _check_int(self.num_classes, "Dataset.num_classes", minimum=1)
        object.__setattr__(self, "num_classes", num_classes)
        if not isinstance(self.name, str):
            raise TypeError(f"Dataset.name must be a str, got {type(self.name).__name__} {self.name!r}")
        object.__setattr__(self, "normalized", _check_bool(self.normalized, "Dataset.normalized"))

        for x_field, y_field in (("x_train", "y_train"), ("x_test", "y_test")):
            x, y = getattr(self, x_field), getattr(self, y_field)
            _check_images(x, f"Dataset.{x_field}")
            _check_labels(y, f"Dataset.{y_field}", num_classes, length=x.shape[0], length_of=f"Dataset.{x_field}")
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"Dataset.x_test has images of shape {self.x_test.shape[1:]} (H, W, C), but Dataset.x_train has "
                f"{self.x_train.shape[1:]}; both splits must share H, W and C"
            )

        channels = self.x_train.shape[-1]
        if self.mean is None or self.std is None:
            if self.mean is not None or self.std is not None:
                raise ValueError("Dataset.mean and Dataset.std must be given together or both left as None")
            if self.normalized:
                raise ValueError(
                    "Dataset.normalized=True needs the mean and std that were applied; pass mean= and std= "
                    "(computing them from already-normalized images would give 0 and 1)"
                )
            mean, std = channel_stats(self.x_train)
        else:
            mean, std = self.mean, self.std
        mean = _check_channel_vector(mean, "Dataset.mean", channels)
        std = _check_channel_vector(std, "Dataset.std", channels)
        if self.normalized:
            _check_positive_std(std, "Dataset.std")
        else:  # a constant channel has std 0: a fact about the data, only an error once something divides by it
            bad = np.flatnonzero(~(std >= 0) | ~np.isfinite(std))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"Dataset.std[{i}] = {std[i]} must be finite and >= 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise TypeError(
                f"Dataset.class_names must be a sequence of str, got {type(self.class_names).__name__} "
                f"{self.class_names!r}"
            )
        names = tuple(self.class_names)
        for i, n in enumerate(names):
            if not isinstance(n, str):
                raise TypeError(f"Dataset.class_names[{i}] must be a str, got {type(n).__name__} {n!r}")
        if names and len(names) != num_classes:
            raise ValueError(
                f"Dataset.class_names has {len(names)} names but num_classes is {num_classes}; "
                f"give one name per class or ()"
            )
        object.__setattr__(self, "class_names", names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, x_test={self.x_test.shape}, "
            f"num_classes={self.num_classes}, normalized={self.normalized})"
        )


def _check_images(x, what: str) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(x).__name__}; convert it with np.asarray")
    if x.ndim != 4:
        raise ValueError(f"{what} must be 4-D (N, H, W, C), got shape {x.shape}")
    if x.dtype != np.float32:
        raise TypeError(f"{what} must be float32, got {x.dtype}; convert it with .astype(np.float32)")
    if x.shape[0] == 0:
        raise ValueError(f"{what} has no images (shape {x.shape}); each split needs at least one")


def _check_labels(y, what: str, num_classes: int, *, length: int, length_of: str) -> None:
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(y).__name__}; convert it with np.asarray")
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D (N,), got shape {y.shape}")
    if y.dtype != np.int32:
        raise TypeError(f"{what} must be int32, got {y.dtype}; convert it with .astype(np.int32)")
    if y.shape[0] != length:
        raise ValueError(f"{what} has {y.shape[0]} labels but {length_of} has {length} images; they must match")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{what}[{i}] = {int(y[i])} is outside [0, {num_classes}) (num_classes={num_classes}); "
            f"{bad.size} label(s) out of range"
        )


def _check_channel_vector(v, what: str, channels: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.shape != (channels,):
        raise ValueError(f"{what} must have shape ({channels},), one value per channel, got shape {v.shape}")
    return v


def _check_positive_std(std: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~(std > 0) | ~np.isfinite(std))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{what}[{i}] = {std[i]} must be finite and > 0 (a constant channel cannot be normalized)")


# ----------------------------------------------------------------------------------------------------------------------
# Statistics and normalization
# ----------------------------------------------------------------------------------------------------------------------
def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population standard deviation of a batch of NHWC images.

    Computed in float64, two passes over chunks of images, so memory stays bounded and the result does not suffer the
    cancellation of the sum-of-squares formula.

    Args:
        images: Array of shape (N, H, W, C), N >= 1.

    Returns:
        `(mean, std)`, each float32 of shape (C,).

    Raises:
        ValueError: `images` is not 4-D or has no images.

    Example:
        >>> x = np.stack([np.zeros((2, 2, 2)), np.ones((2, 2, 2))]).astype(np.float32)
        >>> [v.tolist() for v in channel_stats(x)]
        [[0.5, 0.5], [0.5, 0.5]]
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be 4-D (N, H, W, C) with N >= 1, got shape {images.shape}")
    n, count = images.shape[0], images.shape[0] * images.shape[1] * images.shape[2]
    total = np.zeros(images.shape[-1], np.float64)
    for start in range(0, n, _STATS_CHUNK):
        total += images[start : start + _STATS_CHUNK].sum(axis=(0, 1, 2), dtype=np.float64)
    mean = total / count
    sq = np.zeros_like(total)
    for start in range(0, n, _STATS_CHUNK):
        d = images[start : start + _STATS_CHUNK].astype(np.float64) - mean
        sq += np.einsum("nhwc,nhwc->c", d, d)
    return mean.astype(np.float32), np.sqrt(sq / count).astype(np.float32)


def normalize(images, mean, std):
    """Per-channel standardization, `(images - mean) / std`, broadcast over the last (channel) axis.

    Works on numpy and JAX arrays alike; the result has the type of `images - mean` (float32 for float32 or uint8
    images).

    Args:
        images: Array of shape (..., C).
        mean: Per-channel means, shape (C,).
        std: Per-channel standard deviations, shape (C,), all finite and > 0.

    Returns:
        The normalized images, same shape as `images`.

    Raises:
        ValueError: `mean` or `std` is not of shape (C,) for the images' C, or a `std` entry is not > 0.

    Example:
        >>> normalize(np.array([[0.0, 2.0], [4.0, 6.0]], np.float32), [2.0, 4.0], [2.0, 2.0]).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """
    shape = np.shape(images)
    if len(shape) < 1:
        raise ValueError(f"images must have a trailing channel axis, got shape {shape}")
    mean = _check_channel_vector(mean, "mean", shape[-1])
    std = _check_channel_vector(std, "std", shape[-1])
    _check_positive_std(std, "std")
    return (images - mean) / std


def _normalize_inplace(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    # In place: a CIFAR or ImageNet-subset array is hundreds of MB; a second copy is avoidable.
    x -= mean
    x /= std


def _finish(x_train, y_train, x_test, y_test, *, num_classes, name, class_names, normalize: bool) -> Dataset:
    """Takes train statistics, optionally normalizes both splits with them, and builds the validated Dataset."""
    mean, std = channel_stats(x_train)
    if normalize:
        constant = np.flatnonzero(~(std > 0))
        if constant.size:
            raise ValueError(
                f"{name}: training channel {int(constant[0])} is constant (std 0), so it cannot be normalized; "
                f"load with normalize=False"
            )
        _normalize_inplace(x_train, mean, std)
        _normalize_inplace(x_test, mean, std)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=num_classes,
        name=name,
        mean=mean,
        std=std,
        class_names=class_names,
        normalized=normalize,
    )
