"""Argument checks and optional-dependency imports shared by the data modules."""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np


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


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(images [1797, 8, 8] float64 in 0..16, labels [1797] int32)``, read-only.

    Read from the ``digits.csv.gz`` file scikit-learn ships (``sklearn/datasets/data/``), found with
    `importlib.util.find_spec` and parsed with numpy exactly as ``sklearn.datasets.load_digits`` parses it, so
    scikit-learn itself is not imported: ``import sklearn.datasets`` (scipy and more) costs seconds of CPU in every
    process that loads the digits. Where that file is not where scikit-learn 1.x keeps it, or not of the expected
    size, ``sklearn.datasets.load_digits`` is called instead (tests/test_data.py checks both give the same arrays).

    Raises:
      ImportError: scikit-learn is not installed (names the extra).
    """
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError, AttributeError):  # a None or spec-less entry in sys.modules: not importable
        spec = None
    if spec is None:
        raise _missing_extra("load_digits", "scikit-learn", "demo")
    for folder in spec.submodule_search_locations or ():
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            parsed = _parse_digits(path)
            if parsed is not None:
                return parsed
    raw = _import_sklearn_datasets().load_digits()
    return np.asarray(raw.images, np.float64), np.asarray(raw.target, np.int32)


@functools.lru_cache(maxsize=2)
def _parse_digits(path: str):
    data = np.loadtxt(path, delimiter=",")
    if data.shape != (1797, 65):
        return None
    images, labels = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int32)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _import_pil_image():
    try:
        from PIL import Image
    except ImportError as e:
        raise _missing_extra("load_image_folder", "Pillow", "data") from e
    return Image
