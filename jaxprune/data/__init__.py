"""Data for the examples and experiments: the digits demo set, CIFAR-10, ImageNet-style folders, augmentation, batching.

This module owns turning files (or scikit-learn's bundled digits) into a validated, in-memory `Dataset` of NHWC
float32 images and int32 labels, the per-channel statistics taken on the training split, the pad-and-crop + flip
augmentation of the reference CIFAR recipe (on device, in JAX), and host-side batching. It does not download anything
(point it at files you already have), does not stream data sets larger than memory, does not train or evaluate models
(see `train`), and never imports TensorFlow or torch. scikit-learn (extra ``demo``) and Pillow (extra ``data``) are
imported only inside the loaders that need them, so ``import jaxprune`` stays light.

The package is split by decision: `dataset` (the `Dataset` type, statistics, normalization), `loaders` (digits,
CIFAR-10, image folders), `augment` (on-device augmentation) and `batching`; every public name is importable from
``jaxprune.data``.
"""

from __future__ import annotations

from jaxprune.data.augment import augment_cifar
from jaxprune.data.batching import batches, num_batches
from jaxprune.data.dataset import Dataset, channel_stats, normalize
from jaxprune.data.loaders import CIFAR10_CLASSES, load_cifar10, load_digits, load_image_folder

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
