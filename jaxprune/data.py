"""Data for the examples and experiments: the digits demo set, CIFAR-10, ImageNet-style folders, augmentation, batching.

This module owns turning files (or scikit-learn's bundled digits) into a validated, in-memory `Dataset` of NHWC
float32 images and int32 labels, the per-channel statistics taken on the training split, the pad-and-crop + flip
augmentation of the reference CIFAR recipe (on device, in JAX), and host-side batching. It does not download anything
(point it at files you already have), does not stream data sets larger than memory, does not train or evaluate models
(see `train`), and never imports TensorFlow or torch. scikit-learn (extra ``demo``) and Pillow (extra ``data``) are
imported only inside the loaders that need them, so ``import jaxprune`` stays light.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "CIFAR10_CLASSES",
    "Dataset",
    "augment_cifar",
    "batches",
    "channel_stats",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "normalize",
    "num_batches",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_SUBDIR = "cifar-10-batches-py"
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# Images per chunk when taking statistics: bounds the float64 temporaries to a few MB whatever the data set size.
_STATS_CHUNK = 512


# ----------------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------------
def _check_int(value, what: str, *, minimum: int | None = None) -> int:
    """An int (numpy ints accepted; bools and floats are not), optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool(value, what: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _missing_extra(what: str, package: str, extra: str) -> ImportError:
    return ImportError(
        f'{what} needs {package}, which is not installed; install it with: pip install "jaxprune[{extra}]"'
    )


def _import_sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as e:
        raise _missing_extra("load_digits", "scikit-learn", "demo") from e
    return datasets


def _import_pil_image():
    try:
        from PIL import Image
    except ImportError as e:
        raise _missing_extra("load_image_folder", "Pillow", "data") from e
    return Image


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


# ----------------------------------------------------------------------------------------------------------------------
# Digits (scikit-learn)
# ----------------------------------------------------------------------------------------------------------------------
def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of 1-D bilinear weights, half-pixel centres, edges clamped.

    The convention of `jax.image.resize(..., "bilinear")` and PyTorch's `align_corners=False` when upsampling. Every row
    sums to 1, so a constant image stays exactly constant; `in_size == out_size` gives the identity.
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Resizes (N, h, w) images to (N, size, size) by separable bilinear interpolation, in float64 numpy."""
    images = np.asarray(images, np.float64)
    rows = _bilinear_matrix(images.shape[1], size)
    cols = _bilinear_matrix(images.shape[2], size)
    return np.einsum("oh,nhw,pw->nop", rows, images, cols)


def _stratified_split(labels: np.ndarray, num_classes: int, test_fraction: float, seed: int):
    """Train and test indices (each ascending): per class a seeded random subset goes to test.

    The test size is ceil(test_fraction * n) (scikit-learn's convention: 1,797 at 0.2 gives 360), guarded against float
    error. It is shared out over classes in proportion to their sizes by largest remainder, computed in integers; ties
    go to the lower class.
    """
    n = labels.shape[0]
    n_test = math.ceil(test_fraction * n - 1e-9)
    counts = np.bincount(labels, minlength=num_classes)
    base, rem = np.divmod(n_test * counts, n)
    extra = n_test - int(base.sum())
    per_class = base.copy()
    per_class[np.argsort(-rem, kind="stable")[:extra]] += 1
    for c in range(num_classes):
        if not 1 <= per_class[c] <= counts[c] - 1:
            raise ValueError(
                f"test_fraction={test_fraction} puts {per_class[c]} of class {c}'s {counts[c]} images in the test "
                f"split; each class needs at least one image in each split, so choose a test_fraction closer to 0.5"
            )
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n, bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        is_test[rng.permutation(members)[: per_class[c]]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_digits(
    *, image_size: int = 32, channels: int = 3, test_fraction: float = 0.2, seed: int = 0, normalize: bool = True
) -> Dataset:
    """scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes), shaped like a small CIFAR.

    The images ship inside scikit-learn (no download). Pixels 0..16 are scaled to [0, 1], upsampled to
    `image_size` x `image_size` by bilinear interpolation (half-pixel centres, the convention of
    `jax.image.resize(..., "bilinear")`; deterministic numpy), and replicated to `channels`. The split is stratified
    and fixed by `seed`: every call with the same arguments returns the same images in the same order (both splits
    ascending in scikit-learn's order). At the defaults that is 1,437 train and 360 test images, every class in both.

    Args:
        image_size: Output height and width, an int >= 8 (8 keeps the original pixels).
        channels: 1 (grey) or 3 (the grey image copied to RGB, for models built for CIFAR).
        test_fraction: Fraction of images in the test split, 0 < test_fraction < 1; the test size is
            ceil(test_fraction * 1797).
        seed: Non-negative int that fixes which images go to test.
        normalize: If True, standardize both splits per channel with the training mean and std.

    Returns:
        A `Dataset` named "digits" with class names "0".."9".

    Raises:
        ImportError: scikit-learn is not installed (``pip install "jaxprune[demo]"``).
        TypeError: A non-int `image_size`, `channels` or `seed`, or a non-number `test_fraction`.
        ValueError: `image_size` < 8, `channels` not 1 or 3, `test_fraction` outside (0, 1) or so extreme that a class
            would be missing from a split, a negative `seed`.

    Example:
        >>> ds = load_digits(image_size=16, channels=1)
        >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
        ((1437, 16, 16, 1), (360, 16, 16, 1), 10)
    """
    image_size = _check_int(image_size, "image_size", minimum=8)
    channels = _check_int(channels, "channels")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float | np.integer | np.floating):
        raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__} {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    seed = _check_int(seed, "seed", minimum=0)
    normalize = _check_bool(normalize, "normalize")

    raw = _import_sklearn_datasets().load_digits()
    labels = np.asarray(raw.target, np.int32)
    num_classes = 10
    train_idx, test_idx = _stratified_split(labels, num_classes, float(test_fraction), seed)

    images = _resize_bilinear(np.asarray(raw.images, np.float64) / 16.0, image_size).astype(np.float32)
    images = np.repeat(images[..., None], channels, axis=-1)
    return _finish(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        num_classes=num_classes,
        name="digits",
        class_names=tuple(str(i) for i in range(num_classes)),
        normalize=normalize,
    )


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle version)
# ----------------------------------------------------------------------------------------------------------------------
# The CIFAR "python version" is a pickle of a dict of lists, bytes and one numpy array. Unpickling can run arbitrary
# code, so only the globals a numpy array needs are resolved; anything else is refused before it is called.
_CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),  # the official files (numpy 1.x, Python 2)
        ("numpy._core.multiarray", "_reconstruct"),  # re-saved with numpy 2
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1")
    }
)


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only a dict, lists and a numpy array"
            )
        return super().find_class(module, name)


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file as (uint8 NHWC images, int32 labels), validated."""
    try:
        with open(file, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as e:  # unpickling garbage raises many types; all mean "not a CIFAR batch"
        raise ValueError(f"{file} is not a readable CIFAR-10 batch: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{file} should hold a dict with b'data' and b'labels', got {type(batch).__name__}")

    def field(key: str):
        for k in (key.encode(), key):  # bytes keys in the official (Python 2) files, str if re-saved by Python 3
            if k in batch:
                return batch[k]
        raise ValueError(f"{file} has no {key.encode()!r} entry; keys are {sorted(map(repr, batch))}")

    data, labels = field("data"), field("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{file}: b'data' must be a uint8 array of shape (N, 3072), got {desc}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(
            f"{file}: b'labels' must be {data.shape[0]} integers (one per image), got {labels.dtype} array of shape "
            f"{labels.shape}"
        )
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{file}: label {int(labels[i])} at index {i} is outside 0..9")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each a 32x32 image in row-major order.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def _to_float_images(parts: list[np.ndarray]) -> np.ndarray:
    x = np.concatenate(parts).astype(np.float32)
    x /= np.float32(255.0)
    return x


def load_cifar10(path: str | os.PathLike, *, normalize: bool = True) -> Dataset:
    """CIFAR-10 from the official "python version" folder (`cifar-10-batches-py`), as NHWC float32 in [0, 1].

    Reads `data_batch_1` ... `data_batch_5` (train, in that order) and `test_batch`; each is a pickle of a dict whose
    b'data' is a uint8 (N, 3072) array of CHW rows and b'labels' a list of N ints in 0..9. Unpickling resolves only
    the numpy globals an array needs and refuses anything else, but still read only files you trust. Nothing is
    downloaded.

    Args:
        path: The `cifar-10-batches-py` folder, or the folder that contains it.
        normalize: If True, standardize both splits per channel with the training mean and std.

    Returns:
        A `Dataset` named "cifar10" (50,000 train and 10,000 test images for the official files) with the standard
        class names, `CIFAR10_CLASSES`.

    Raises:
        FileNotFoundError: `path` does not exist or is not a folder, or batch files are missing (all missing names are
            listed).
        ValueError: A batch that is not a CIFAR pickle, has b'data' not uint8 (N, 3072), or labels that are not N
            integers in 0..9; the message names the file. A constant training channel with `normalize=True`.

    Example:
        >>> ds = load_cifar10("~/data/cifar-10-batches-py")  # doctest: +SKIP
        >>> ds.x_train.shape, ds.x_test.shape  # doctest: +SKIP
        ((50000, 32, 32, 3), (10000, 32, 32, 3))
    """
    normalize = _check_bool(normalize, "normalize")
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"CIFAR-10 folder {root} does not exist (expected the python version, {_CIFAR_SUBDIR})")
    if (root / _CIFAR_SUBDIR).is_dir():
        root = root / _CIFAR_SUBDIR
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 path {root} is not a folder (expected the {_CIFAR_SUBDIR} folder)")
    names = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 folder {root} is incomplete: missing {', '.join(missing)} (expected {', '.join(names)})"
        )

    train = [_read_cifar_batch(root / n) for n in _CIFAR_TRAIN_FILES]
    x_test_u8, y_test = _read_cifar_batch(root / _CIFAR_TEST_FILE)
    return _finish(
        _to_float_images([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        _to_float_images([x_test_u8]),
        y_test,
        num_classes=10,
        name="cifar10",
        class_names=CIFAR10_CLASSES,
        normalize=normalize,
    )


# ----------------------------------------------------------------------------------------------------------------------
# ImageNet-style image folders (Pillow)
# ----------------------------------------------------------------------------------------------------------------------
def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split folder {split_dir} does not exist")
    # Hidden folders (.ipynb_checkpoints, .DS_Store-style clutter) are never classes.
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"no class subfolders in {split_dir}; expected {split_dir}/<class>/<image>")
    return classes


def _image_files(class_dir: Path, max_per_class: int | None) -> list[Path]:
    files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"class folder {class_dir} has no images (looked for {', '.join(_IMAGE_SUFFIXES)})")
    return files if max_per_class is None else files[:max_per_class]


def _decode(file: Path, *, image_mod, image_size: int, resize: int) -> np.ndarray:
    """Decodes to RGB, resizes the shorter side to `resize` (bilinear), center-crops image_size; uint8 HWC."""
    try:
        with image_mod.open(file) as im:
            im = im.convert("RGB")
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, image_mod.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {file}: {type(e).__name__}: {e}") from e
    w, h = im.size
    if w <= h:
        new_w, new_h = resize, max(resize, round(h * resize / w))
    else:
        new_w, new_h = max(resize, round(w * resize / h)), resize
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), image_mod.Resampling.BILINEAR)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    return np.asarray(im, dtype=np.uint8)


def _load_split(files: list[Path], *, image_mod, image_size: int, resize: int) -> np.ndarray:
    out = np.empty((len(files), image_size, image_size, 3), np.float32)
    decode = functools.partial(_decode, image_mod=image_mod, image_size=image_size, resize=resize)
    # Pillow releases the GIL while decoding and resizing, so threads give a real speed-up; map keeps file order.
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, img in enumerate(pool.map(decode, files)):
            out[i] = img
    out /= np.float32(255.0)
    return out


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int = 224,
    resize: int = 256,
    split_dirs: tuple[str, str] = ("train", "val"),
    normalize: bool = True,
    max_per_class: int | None = None,
) -> Dataset:
    """An ImageNet-style folder of class subfolders, decoded with Pillow into memory.

    Layout: `path/<train>/<class>/<image>` and `path/<val>/<class>/<image>`, images ending in .jpeg, .jpg or .png (any
    case; other files are not images and are ignored, as are hidden folders). Classes are the subfolder names, sorted;
    label i is the i-th name. Both splits must have the same classes. Each image is converted to RGB, its shorter side
    resized to `resize` (bilinear, aspect ratio kept), then the central `image_size` square is cropped (the standard
    ImageNet evaluation transform) and scaled to [0, 1]. Files are read in sorted order, so the result is
    deterministic. Everything is held in memory as float32 (ImageNet's 1.28 M training images would need ~770 GB at
    224x224), so use `max_per_class` for subsets.

    Args:
        path: The root folder.
        image_size: Side of the square center crop, an int >= 1 and <= `resize`.
        resize: Length the shorter side is resized to before cropping, an int >= 1.
        split_dirs: Names of the (train, test) subfolders.
        normalize: If True, standardize both splits per channel with the training mean and std.
        max_per_class: If given (an int >= 1), keep only the first `max_per_class` files (sorted by name) of each class
            in each split.

    Returns:
        A `Dataset` named after the root folder, with `class_names` the sorted class folder names.

    Raises:
        ImportError: Pillow is not installed (``pip install "jaxprune[data]"``).
        FileNotFoundError: The root or a split folder does not exist, a split has no class subfolders, or a class
            folder has no images.
        TypeError: A non-int `image_size`, `resize` or `max_per_class`, or `split_dirs` not two strings.
        ValueError: `image_size` > `resize`, `max_per_class` < 1, two equal `split_dirs`, class folders that differ
            between the splits (the message names them), an image Pillow cannot decode (named), or a constant training
            channel with `normalize=True`.

    Example:
        >>> ds = load_image_folder("~/data/imagenet", max_per_class=10)  # doctest: +SKIP
        >>> ds.x_train.shape, ds.class_names[:2]  # doctest: +SKIP
        ((10000, 224, 224, 3), ('n01440764', 'n01443537'))
    """
    image_mod = _import_pil_image()
    image_size = _check_int(image_size, "image_size", minimum=1)
    resize = _check_int(resize, "resize", minimum=1)
    if image_size > resize:
        raise ValueError(
            f"image_size={image_size} is larger than resize={resize}; the center crop must fit in the resized "
            f"image, so image_size <= resize"
        )
    if max_per_class is not None:
        max_per_class = _check_int(max_per_class, "max_per_class", minimum=1)
    if (
        isinstance(split_dirs, str)
        or not isinstance(split_dirs, Sequence)
        or len(split_dirs) != 2
        or not all(isinstance(s, str) and s for s in split_dirs)
    ):
        raise TypeError(f"split_dirs must be two folder names (train, test), got {split_dirs!r}")
    if split_dirs[0] == split_dirs[1]:
        raise ValueError(f"split_dirs must name two different folders, got {split_dirs!r}")
    normalize = _check_bool(normalize, "normalize")

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    train_dir, test_dir = root / split_dirs[0], root / split_dirs[1]
    train_classes, test_classes = _class_dirs(train_dir), _class_dirs(test_dir)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ValueError(
            f"class folders differ between {train_dir} and {test_dir}: only in {split_dirs[0]}: {only_train}, "
            f"only in {split_dirs[1]}: {only_test}"
        )

    splits = []
    for split_dir in (train_dir, test_dir):
        files, labels = [], []
        for label, name in enumerate(train_classes):
            class_files = _image_files(split_dir / name, max_per_class)
            files += class_files
            labels += [label] * len(class_files)
        splits.append((files, np.asarray(labels, np.int32)))

    (train_files, y_train), (test_files, y_test) = splits
    return _finish(
        _load_split(train_files, image_mod=image_mod, image_size=image_size, resize=resize),
        y_train,
        _load_split(test_files, image_mod=image_mod, image_size=image_size, resize=resize),
        y_test,
        num_classes=len(train_classes),
        name=root.resolve().name,
        class_names=tuple(train_classes),
        normalize=normalize,
    )


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


# ----------------------------------------------------------------------------------------------------------------------
# Batching (host)
# ----------------------------------------------------------------------------------------------------------------------
def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `batches` yields for `n` examples.

    Args:
        n: Number of examples, an int >= 0.
        batch_size: An int >= 1.
        drop_last: If True, a final partial batch is not counted.

    Returns:
        `n // batch_size` if `drop_last`, else `ceil(n / batch_size)`.

    Raises:
        TypeError: `n` or `batch_size` not an int, `drop_last` not a bool.
        ValueError: `n` < 0 or `batch_size` < 1.

    Example:
        >>> num_batches(10, 3), num_batches(10, 3, drop_last=True)
        (4, 3)
    """
    n = _check_int(n, "n", minimum=0)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    drop_last = _check_bool(drop_last, "drop_last")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x,
    y,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | np.random.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (x, y) minibatches as numpy arrays, in order or shuffled.

    Every example appears exactly once per epoch (except the final partial batch when `drop_last`). Arguments are
    validated and the order is drawn when `batches` is called, not when iteration starts. An int `seed` gives the
    same order every call: pass a different seed per epoch (e.g. `seed=epoch`) or one `np.random.Generator`, which
    advances, to get a new order each epoch.

    Args:
        x: Inputs, an array of N examples along axis 0.
        y: Targets, an array of N examples along axis 0.
        batch_size: Examples per batch, an int >= 1.
        shuffle: Whether to visit examples in a random order (required, so the choice is explicit).
        seed: A non-negative int or a `np.random.Generator`; required when `shuffle` is True, ignored otherwise.
        drop_last: If True, leave out a final batch smaller than `batch_size`.

    Returns:
        A generator of `num_batches(N, batch_size, drop_last)` pairs `(x_batch, y_batch)`.

    Raises:
        TypeError: `batch_size` not an int, `shuffle`/`drop_last` not bools, or `seed` neither an int nor a Generator.
        ValueError: `batch_size` < 1, `x` and `y` of different lengths, or `shuffle=True` without a `seed`.

    Example:
        >>> x = np.arange(10); y = x * 10
        >>> [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False)]
        [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]]
        >>> sorted(int(v) for xb, _ in batches(x, y, 4, shuffle=True, seed=0) for v in xb)
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    shuffle = _check_bool(shuffle, "shuffle")
    drop_last = _check_bool(drop_last, "drop_last")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"x and y must have a leading example axis, got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; they must match")
    order = None
    if shuffle:
        if seed is None:
            raise ValueError("shuffle=True needs seed= (a non-negative int or a np.random.Generator)")
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            rng = np.random.default_rng(_check_int(seed, "seed", minimum=0))
        order = rng.permutation(x.shape[0])
    return _iter_batches(x, y, order, batch_size, num_batches(x.shape[0], batch_size, drop_last))


def _iter_batches(x, y, order, batch_size: int, count: int):
    for b in range(count):
        if order is None:
            sl = slice(b * batch_size, (b + 1) * batch_size)
            yield x[sl], y[sl]
        else:
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield x[idx], y[idx]
