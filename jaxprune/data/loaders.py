"""Loaders: scikit-learn's digits, CIFAR-10 (python version) and ImageNet-style image folders."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxprune.data._checks import _check_bool, _check_int, _digits_arrays, _import_pil_image
from jaxprune.data.dataset import Dataset, _finish

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

    raw_images, labels = _digits_arrays()
    num_classes = 10
    train_idx, test_idx = _stratified_split(labels, num_classes, float(test_fraction), seed)

    images = _resize_bilinear(raw_images / 16.0, image_size).astype(np.float32)
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
