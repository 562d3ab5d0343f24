"""Argument checks and optional-dependency imports shared by the data modules."""

from __future__ import annotations

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


def _import_pil_image():
    try:
        from PIL import Image
    except ImportError as e:
        raise _missing_extra("load_image_folder", "Pillow", "data") from e
    return Image
