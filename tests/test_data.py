"""Tests for jaxprune.data: loaders (digits, CIFAR-10 format, image folders), Dataset validation, augmentation, batches.

The CIFAR and image-folder tests write tiny data sets of known pixels into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import ast
import pickle
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn import datasets as sk_datasets

from jaxprune import data
from jaxprune.data import (
    CIFAR10_CLASSES,
    Dataset,
    augment_cifar,
    batches,
    channel_stats,
    load_cifar10,
    load_digits,
    load_image_folder,
    loaders,
    normalize,
    num_batches,
)

# Per-channel statistics after normalization, taken in float64 on float32 images: observed |mean| ~ 1e-7 and
# |std - 1| ~ 1e-7; 1e-5 leaves room for other BLAS/reduction orders.
NORM_TOL = 1e-5
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _stats64(x):
    # numpy's float32 reduction over strided axes accumulates visible error (std 0.9986 for 1.0); use float64.
    x = x.astype(np.float64)
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


# ----------------------------------------------------------------------------------------------------------------------
# Module hygiene
# ----------------------------------------------------------------------------------------------------------------------
def test_package_top_level_imports_only_numpy_jax_and_stdlib():
    files = sorted(Path(data.__file__).parent.glob("*.py"))
    assert len(files) > 1  # the package, not a single module
    roots = set()
    for file in files:
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add((node.module or "").split(".")[0])
    third_party = {r for r in roots if r not in sys.stdlib_module_names and r not in ("__future__", "jaxprune")}
    assert third_party == {"numpy", "jax"}


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        (("sklearn", "sklearn.datasets"), lambda tmp: load_digits(), "demo"),
        (("PIL", "PIL.Image"), lambda tmp: load_image_folder(tmp), "data"),
    ],
)
def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path, blocked, call, extra):
    for mod in blocked:
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    with pytest.raises(ImportError, match=rf'pip install "jaxprune\[{extra}\]"'):
        call(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def digits_raw():
    return load_digits(normalize=False)


def test_digits_shapes_dtypes_and_split_sizes(digits):
    assert digits.x_train.shape == (1437, 32, 32, 3)
    assert digits.x_test.shape == (360, 32, 32, 3)
    assert digits.x_train.dtype == digits.x_test.dtype == np.float32
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.y_train.dtype == digits.y_test.dtype == np.int32
    assert digits.num_classes == 10 and digits.name == "digits" and digits.normalized
    assert digits.class_names == tuple("0123456789")
    assert digits.image_shape == (32, 32, 3)


def test_digits_other_sizes_and_fractions():
    ds = load_digits(image_size=16, channels=1, test_fraction=0.5, normalize=False)
    assert ds.x_train.shape == (898, 16, 16, 1) and ds.x_test.shape == (899, 16, 16, 1)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


def test_digits_split_is_deterministic_and_seeded(digits):
    again = load_digits()
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    other = load_digits(seed=1)
    assert other.x_test.shape == digits.x_test.shape
    assert not np.array_equal(other.x_test, digits.x_test)
    # Same stratified per-class sizes whatever the seed.
    np.testing.assert_array_equal(np.bincount(other.y_test), np.bincount(digits.y_test))


def test_digits_split_is_stratified(digits):
    test_counts = np.bincount(digits.y_test, minlength=10)
    train_counts = np.bincount(digits.y_train, minlength=10)
    np.testing.assert_array_equal(test_counts + train_counts, DIGITS_CLASS_COUNTS)
    assert test_counts.min() >= 1
    # Largest-remainder allocation: each class within one image of its exact share.
    assert np.all(np.abs(test_counts - 0.2 * np.array(DIGITS_CLASS_COUNTS)) < 1)
    assert test_counts.sum() == 360


def test_digits_split_partitions_the_original_images():
    ds = load_digits(image_size=8, channels=1, normalize=False)  # size 8: resize is the identity
    raw = sk_datasets.load_digits()
    got = np.concatenate([ds.x_train, ds.x_test])[..., 0].reshape(-1, 64) * 16
    got = np.column_stack([got, np.concatenate([ds.y_train, ds.y_test])])
    want = np.column_stack([raw.images.reshape(-1, 64), raw.target])
    np.testing.assert_allclose(np.unique(got, axis=0), np.unique(want, axis=0), atol=1e-5)
    assert got.shape == want.shape == (1797, 65)


def test_digits_file_read_equals_scikit_learns_loader(monkeypatch):
    """The digits are parsed from scikit-learn's shipped csv.gz without importing it; the result is exactly
    ``sklearn.datasets.load_digits()``'s, and a scikit-learn whose file is elsewhere falls back to that loader."""
    from jaxprune.data import _checks

    images, labels = _checks._digits_arrays()
    raw = sk_datasets.load_digits()
    np.testing.assert_array_equal(images, raw.images)
    np.testing.assert_array_equal(labels, raw.target)
    assert images.dtype == np.float64 and labels.dtype == np.int32 and not images.flags.writeable
    monkeypatch.setattr(_checks.os.path, "isfile", lambda path: False)  # no file where scikit-learn 1.x keeps it
    images2, labels2 = _checks._digits_arrays()
    np.testing.assert_array_equal(images2, raw.images)
    np.testing.assert_array_equal(labels2, raw.target)


def test_resize_keeps_constants_and_matches_jax_bilinear():
    const = np.full((2, 8, 8), 0.375)
    out = loaders._resize_bilinear(const, 32)
    assert out.shape == (2, 32, 32)
    np.testing.assert_allclose(out, 0.375, rtol=0, atol=1e-12)
    x = np.random.default_rng(0).random((3, 8, 8))
    for size in (8, 13, 32):
        ref = np.asarray(jax.image.resize(jnp.asarray(x, jnp.float32), (3, size, size), "bilinear"))
        np.testing.assert_allclose(loaders._resize_bilinear(x, size), ref, atol=1e-6)
    np.testing.assert_array_equal(loaders._resize_bilinear(x, 8), x)


def test_digits_upsampling_preserves_content(digits_raw):
    # Same seed, same split: row i of the 8x8 load is row i of the 32x32 load. Undo the 4x upsampling by 4x4 block
    # averages and compare with the original pixels.
    ds8 = load_digits(image_size=8, channels=1, normalize=False)
    blocks = digits_raw.x_train[..., 0].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
    orig = ds8.x_train[..., 0]
    np.testing.assert_array_equal(ds8.y_train, digits_raw.y_train)
    assert np.corrcoef(blocks.ravel(), orig.ravel())[0, 1] > 0.97  # measured 0.980
    per_image = [np.corrcoef(b.ravel(), o.ravel())[0, 1] for b, o in zip(blocks, orig, strict=True)]
    assert min(per_image) > 0.93  # measured 0.958
    assert np.abs(blocks - orig).mean() < 0.1  # [0, 1] scale; measured 0.070 (bilinear blurs strokes)
    # Channels are copies of the grey image.
    np.testing.assert_array_equal(digits_raw.x_train[..., 0], digits_raw.x_train[..., 2])


def test_digits_normalization(digits, digits_raw):
    mean, std = _stats64(digits.x_train)
    np.testing.assert_allclose(mean, 0.0, atol=NORM_TOL)
    np.testing.assert_allclose(std, 1.0, atol=NORM_TOL)
    raw_mean, raw_std = _stats64(digits_raw.x_train)
    np.testing.assert_allclose(digits.mean, raw_mean, rtol=1e-6)
    np.testing.assert_allclose(digits.std, raw_std, rtol=1e-6)
    np.testing.assert_allclose(digits_raw.mean, digits.mean, rtol=0)
    # The test split is normalized with the *train* statistics.
    np.testing.assert_allclose(digits.x_test, (digits_raw.x_test - digits.mean) / digits.std, atol=1e-5)
    assert not digits_raw.normalized


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"image_size": 7}, ValueError, "image_size must be >= 8, got 7"),
        ({"image_size": 32.0}, TypeError, "image_size must be an int"),
        ({"channels": 2}, ValueError, "channels must be 1 or 3, got 2"),
        ({"test_fraction": 0.0}, ValueError, "test_fraction must be strictly between 0 and 1, got 0.0"),
        ({"test_fraction": 1}, ValueError, "test_fraction must be strictly between 0 and 1, got 1"),
        ({"test_fraction": "0.2"}, TypeError, "test_fraction must be a float"),
        ({"test_fraction": 0.001}, ValueError, r"test_fraction=0.001 puts 0 of class \d's"),
        ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
        ({"normalize": 1}, TypeError, "normalize must be a bool"),
    ],
)
def test_digits_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        load_digits(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Dataset validation and helpers
# ----------------------------------------------------------------------------------------------------------------------
def _toy(**overrides):
    x = np.arange(4 * 2 * 2 * 3, dtype=np.float32).reshape(4, 2, 2, 3)
    fields = dict(
        x_train=x,
        y_train=np.array([0, 1, 2, 1], np.int32),
        x_test=x[:2].copy(),
        y_test=np.array([2, 0], np.int32),
        num_classes=3,
        name="toy",
    )
    fields.update(overrides)
    return Dataset(**fields)


def test_dataset_computes_train_statistics_and_is_frozen():
    ds = _toy()
    x = ds.x_train.astype(np.float64)
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), rtol=1e-6)
    assert ds.mean.dtype == ds.std.dtype == np.float32 and ds.mean.shape == (3,)
    assert ds.class_names == () and not ds.normalized
    with pytest.raises(AttributeError):
        ds.name = "other"
    assert repr(ds) == "Dataset(name='toy', x_train=(4, 2, 2, 3), x_test=(2, 2, 2, 3), num_classes=3, normalized=False)"
    assert _toy(class_names=["a", "b", "c"]).class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("overrides", "exc", "match"),
    [
        (
            {"x_train": np.zeros((4, 2, 2), np.float32)},
            ValueError,
            r"Dataset.x_train must be 4-D .* got shape \(4, 2, 2\)",
        ),
        ({"x_test": np.zeros((2, 2, 2, 3))}, TypeError, "Dataset.x_test must be float32, got float64"),
        ({"x_train": [[0.0]]}, TypeError, "Dataset.x_train must be a numpy array, got list"),
        ({"x_test": np.zeros((0, 2, 2, 3), np.float32), "y_test": np.zeros(0, np.int32)}, ValueError, "no images"),
        ({"x_test": np.zeros((2, 3, 2, 3), np.float32)}, ValueError, r"Dataset.x_test has images of shape \(3, 2, 3\)"),
        ({"y_train": np.array([[0, 1, 2, 1]], np.int32)}, ValueError, r"Dataset.y_train must be 1-D"),
        (
            {"y_train": np.array([0, 1, 2], np.int32)},
            ValueError,
            "Dataset.y_train has 3 labels but Dataset.x_train has 4",
        ),
        ({"y_train": np.array([0, 1, 2, 1])}, TypeError, "Dataset.y_train must be int32, got int64"),
        ({"y_test": np.array([2, 3], np.int32)}, ValueError, r"Dataset.y_test\[1\] = 3 is outside \[0, 3\)"),
        ({"y_train": np.array([0, -1, 2, 1], np.int32)}, ValueError, r"Dataset.y_train\[1\] = -1 is outside \[0, 3\)"),
        ({"num_classes": 0}, ValueError, "Dataset.num_classes must be >= 1, got 0"),
        ({"num_classes": 3.0}, TypeError, "Dataset.num_classes must be an int"),
        ({"name": 7}, TypeError, "Dataset.name must be a str"),
        ({"mean": np.zeros(2), "std": np.ones(2)}, ValueError, r"Dataset.mean must have shape \(3,\)"),
        ({"mean": np.zeros(3), "std": np.array([1.0, -1.0, 1.0])}, ValueError, r"Dataset.std\[1\] = -1.0 must be"),
        (
            {"mean": np.zeros(3), "std": np.array([1.0, 0.0, 1.0]), "normalized": True},
            ValueError,
            r"Dataset.std\[1\] = 0.0 must be finite and > 0",
        ),
        ({"mean": np.zeros(3)}, ValueError, "must be given together"),
        ({"normalized": True}, ValueError, "normalized=True needs the mean and std"),
        ({"class_names": ("a", "b")}, ValueError, "Dataset.class_names has 2 names but num_classes is 3"),
        ({"class_names": "abc"}, TypeError, "Dataset.class_names must be a sequence of str"),
        ({"class_names": ("a", 1, "c")}, TypeError, r"Dataset.class_names\[1\] must be a str"),
    ],
)
def test_dataset_validation_errors(overrides, exc, match):
    with pytest.raises(exc, match=match):
        _toy(**overrides)


def test_normalize_and_channel_stats():
    x = np.array([[[[0.0, 10.0]], [[2.0, 30.0]]]], np.float32)  # (1, 2, 1, 2)
    mean, std = channel_stats(x)
    np.testing.assert_array_equal(mean, [1.0, 20.0])
    np.testing.assert_array_equal(std, [1.0, 10.0])
    out = normalize(x, mean, std)
    np.testing.assert_array_equal(out[0, :, 0], [[-1.0, -1.0], [1.0, 1.0]])
    assert out.dtype == np.float32
    out_jax = normalize(jnp.asarray(x), mean, std)
    assert isinstance(out_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(out_jax), out)
    # Large batch: chunked float64 accumulation agrees with a one-shot float64 computation.
    big = np.random.default_rng(0).random((1300, 4, 4, 2)).astype(np.float32)
    m, s = channel_stats(big)
    np.testing.assert_allclose(m, big.astype(np.float64).mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(s, big.astype(np.float64).std((0, 1, 2)), rtol=1e-6)


def test_normalize_and_channel_stats_errors():
    x = np.zeros((1, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"mean must have shape \(3,\), one value per channel, got shape \(2,\)"):
        normalize(x, [0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"std\[2\] = -1.0 must be finite and > 0"):
        normalize(x, [0.0] * 3, [1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match=r"images must be 4-D \(N, H, W, C\) with N >= 1, got shape \(0, 2, 2, 3\)"):
        channel_stats(x[:0])


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle format)
# ----------------------------------------------------------------------------------------------------------------------
TRAIN_PER_BATCH, N_TEST = 4, 3


def _cifar_pixels(batch: int, n: int) -> np.ndarray:
    """Known, distinct uint8 values: pixel (c, h, w) of image i in batch b."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    rows = [((batch * 7 + i * 3 + c * 50 + h * 5 + w) % 256).astype(np.uint8).ravel() for i in range(n)]
    return np.stack(rows)  # (n, 3072) in CHW order, as CIFAR stores it


def _write_batch(file: Path, batch_data, labels, *, protocol=2, str_keys=False, legacy_numpy=False):
    record = {b"batch_label": b"test", b"labels": labels, b"data": batch_data, b"filenames": [b"x.png"] * len(labels)}
    if str_keys:
        record = {k.decode(): v for k, v in record.items()}
    payload = pickle.dumps(record, protocol=protocol)
    if legacy_numpy:  # the official files were written by numpy 1.x, whose arrays pickle as numpy.core.multiarray
        assert protocol == 2 and b"numpy._core.multiarray" in payload
        payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    file.write_bytes(payload)


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(TRAIN_PER_BATCH)]
        # Protocols 3, 4, 5, 2 and 3; the protocol-2 batch as numpy 1.x wrote it (the official files' form).
        protocol = 2 + b % 4
        _write_batch(
            root / f"data_batch_{b}", _cifar_pixels(b, TRAIN_PER_BATCH), labels, protocol=protocol, legacy_numpy=b == 4
        )
    _write_batch(root / "test_batch", _cifar_pixels(0, N_TEST), [9, 0, 5], str_keys=True)
    return root


@pytest.mark.filterwarnings("error")  # the legacy numpy.core path must load without deprecation warnings
def test_cifar_loads_known_pixels_in_nhwc(cifar_dir):
    ds = load_cifar10(cifar_dir, normalize=False)
    assert ds.x_train.shape == (5 * TRAIN_PER_BATCH, 32, 32, 3) and ds.x_test.shape == (N_TEST, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.class_names == CIFAR10_CLASSES
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    # Batches concatenated in order 1..5; labels as written.
    np.testing.assert_array_equal(ds.y_train, [(b + i) % 10 for b in range(1, 6) for i in range(TRAIN_PER_BATCH)])
    np.testing.assert_array_equal(ds.y_test, [9, 0, 5])
    # Image 1 of data_batch_3 is train image 4*2+1 = 9. Its green (c=1) pixel at row 5, column 7 is flat CHW index
    # 1*1024 + 5*32 + 7 = 1191 and holds (3*7 + 1*3 + 50 + 25 + 7) % 256 = 106.
    assert _cifar_pixels(3, TRAIN_PER_BATCH)[1, 1191] == 106
    assert ds.x_train[9, 5, 7, 1] == np.float32(106) / np.float32(255)
    # Red (c=0) pixel at row 0, column 31 of test image 2: (0 + 6 + 0 + 0 + 31) = 37.
    assert ds.x_test[2, 0, 31, 0] == np.float32(37) / np.float32(255)
    # Every pixel: value at NHWC (n, h, w, c) equals the CHW row entry c*1024 + h*32 + w.
    for n, (b, i) in enumerate((b, i) for b in range(1, 6) for i in range(TRAIN_PER_BATCH)):
        chw = _cifar_pixels(b, TRAIN_PER_BATCH)[i].reshape(3, 32, 32)
        np.testing.assert_array_equal(ds.x_train[n] * 255, np.moveaxis(chw, 0, -1).astype(np.float32))


def test_cifar_parent_folder_and_normalization(cifar_dir):
    ds = load_cifar10(cifar_dir.parent)
    assert ds.normalized and ds.x_train.shape == (20, 32, 32, 3)
    mean, std = _stats64(ds.x_train)
    np.testing.assert_allclose(mean, 0.0, atol=NORM_TOL)
    np.testing.assert_allclose(std, 1.0, atol=NORM_TOL)
    raw = load_cifar10(str(cifar_dir), normalize=False)
    np.testing.assert_allclose(ds.x_test, (raw.x_test - raw.mean) / raw.std, atol=1e-5)
    np.testing.assert_array_equal(ds.mean, raw.mean)


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 folder .*nowhere does not exist"):
        load_cifar10(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 path .*file is not a folder"):
        load_cifar10(tmp_path / "file")


def test_cifar_incomplete_folder_lists_missing_files(cifar_dir):
    (cifar_dir / "data_batch_3").unlink()
    (cifar_dir / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: missing data_batch_3, test_batch \("):
        load_cifar10(cifar_dir)


@pytest.mark.parametrize(
    ("data_", "labels", "match"),
    [
        (np.zeros((4, 3000), np.uint8), [0] * 4, r"data_batch_2: b'data' must be a uint8 array of shape \(N, 3072\)"),
        (np.zeros((4, 3072), np.float32), [0] * 4, r"data_batch_2: b'data' must be a uint8 .* got float32"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 10, 2], r"data_batch_2: label 10 at index 2 is outside 0..9"),
        (np.zeros((4, 3072), np.uint8), [0, -1, 1, 2], r"data_batch_2: label -1 at index 1 is outside 0..9"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2], r"data_batch_2: b'labels' must be 4 integers"),
    ],
)
def test_cifar_bad_batch_names_the_file(cifar_dir, data_, labels, match):
    _write_batch(cifar_dir / "data_batch_2", data_, labels)
    with pytest.raises(ValueError, match=match):
        load_cifar10(cifar_dir)


class _Exploit:
    def __reduce__(self):
        return (sys.exit, ("pickle payload ran",))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (
            pickle.dumps({b"data": _Exploit(), b"labels": []}),
            r"test_batch is not a readable .* refusing to load sys.exit",
        ),
        (b"not a pickle at all", r"test_batch is not a readable CIFAR-10 batch"),
        (pickle.dumps([1, 2, 3]), r"test_batch should hold a dict .* got list"),
        (pickle.dumps({b"labels": [1]}), r"test_batch has no b'data' entry"),
    ],
    ids=["forbidden-global", "garbage", "not-a-dict", "no-data"],
)
def test_cifar_unsafe_or_malformed_pickles_are_refused(cifar_dir, payload, match):
    (cifar_dir / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        load_cifar10(cifar_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------------------------
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(size_wh, colours, *, vertical: bool) -> Image.Image:
    """Three equal bands (left/middle/right if vertical, else top/middle/bottom) of the given colours."""
    w, h = size_wh
    arr = np.zeros((h, w, 3), np.uint8)
    for k, colour in enumerate(colours):
        if vertical:
            arr[:, k * w // 3 : (k + 1) * w // 3] = colour
        else:
            arr[k * h // 3 : (k + 1) * h // 3] = colour
    return Image.fromarray(arr)


@pytest.fixture
def image_root(tmp_path):
    """Two classes written in reverse order; the middle band (the centre) is red for "cat", blue for "ant"."""
    root = tmp_path / "tiny-imagenet"
    for split, n in (("train", 2), ("val", 1)):
        for cls, centre in (("cat", RED), ("ant", BLUE)):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                # Landscape 90x30 and portrait 30x90 images: both need a centre crop along their long side.
                img = _bands((90, 30) if i == 0 else (30, 90), (GREEN, centre, GREEN), vertical=i == 0)
                img.save(d / f"img{i}.png")
            (d / "notes.txt").write_text("not an image")
    return root


def test_image_folder_shapes_class_order_and_centre_crop(image_root):
    ds = load_image_folder(image_root, image_size=16, resize=24, normalize=False)
    assert ds.x_train.shape == (4, 16, 16, 3) and ds.x_test.shape == (2, 16, 16, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.class_names == ("ant", "cat") and ds.num_classes == 2 and ds.name == "tiny-imagenet"
    np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1])
    np.testing.assert_array_equal(ds.y_test, [0, 1])
    # Shorter side 30 -> 24, long side 90 -> 72, bands 24 wide; the 16-wide centre crop (28..44) lies inside the
    # middle band (24..48): the whole crop has the centre colour, not the green of the sides.
    want = {0: np.array(BLUE) / 255.0, 1: np.array(RED) / 255.0}
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for img, label in zip(x, y, strict=True):
            np.testing.assert_allclose(img, np.broadcast_to(want[int(label)], img.shape), atol=1 / 255)


def test_image_folder_crop_offset_matches_pillow_reference(image_root):
    # The same transform done by hand with Pillow: shorter side 30 -> 24 (so 90 -> 72), then columns/rows 24..48.
    ds = load_image_folder(image_root, image_size=24, resize=24, normalize=False)
    land = Image.open(image_root / "train" / "ant" / "img0.png").convert("RGB").resize((72, 24), Image.BILINEAR)
    port = Image.open(image_root / "train" / "ant" / "img1.png").convert("RGB").resize((24, 72), Image.BILINEAR)
    np.testing.assert_array_equal(ds.x_train[0] * 255, np.asarray(land, np.float32)[:, 24:48])
    np.testing.assert_allclose(ds.x_train[1] * 255, np.asarray(port, np.float32)[24:48, :], atol=1e-4)
    # A crop taken from the left edge would be mostly green; the centre crop is mostly blue.
    assert ds.x_train[0][..., 1].mean() < 0.1 < np.asarray(land)[:, :24, 1].mean() / 255


def test_image_folder_jpeg_rgb_conversion_and_max_per_class(tmp_path):
    root = tmp_path / "jpgs"
    for split in ("train", "val"):
        d = root / split / "only"
        d.mkdir(parents=True)
        Image.new("L", (40, 40), 128).save(d / "a.JPEG")  # greyscale JPEG -> converted to RGB
        Image.new("RGB", (40, 50), (200, 100, 50)).save(d / "b.jpg", quality=95)
    ds = load_image_folder(root, image_size=8, resize=10, normalize=False, max_per_class=1)
    assert ds.x_train.shape == (1, 8, 8, 3) and ds.x_test.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(ds.x_train[0], 128 / 255, atol=2 / 255)  # a.JPEG sorts first
    full = load_image_folder(root, image_size=8, resize=10, normalize=True)
    assert full.x_train.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(
        full.x_train[1].mean(axis=(0, 1)) * full.std + full.mean, [200 / 255, 100 / 255, 50 / 255], atol=3 / 255
    )
    mean, std = _stats64(full.x_train)
    np.testing.assert_allclose(mean, 0.0, atol=NORM_TOL)
    np.testing.assert_allclose(std, 1.0, atol=NORM_TOL)


def test_image_folder_constant_channel(image_root):
    # Blue and red centres on green-free crops leave the green channel at exactly 0: fine unnormalized (std 0
    # recorded), an error when asked to normalize.
    ds = load_image_folder(image_root, image_size=16, resize=24, normalize=False)
    assert ds.std[1] == 0.0 and ds.std[0] > 0
    with pytest.raises(ValueError, match=r"tiny-imagenet: training channel 1 is constant \(std 0\).*normalize=False"):
        load_image_folder(image_root, image_size=16, resize=24)


def test_image_folder_errors(image_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder .*missing does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"image_size=32 is larger than resize=24"):
        load_image_folder(image_root, image_size=32, resize=24)
    with pytest.raises(FileNotFoundError, match=r"split folder .*test does not exist"):
        load_image_folder(image_root, split_dirs=("train", "test"))
    with pytest.raises(ValueError, match=r"split_dirs must name two different folders"):
        load_image_folder(image_root, split_dirs=("train", "train"))
    with pytest.raises(TypeError, match=r"split_dirs must be two folder names"):
        load_image_folder(image_root, split_dirs="train")
    with pytest.raises(ValueError, match=r"max_per_class must be >= 1, got 0"):
        load_image_folder(image_root, max_per_class=0)

    (image_root / "val" / "cat").rename(image_root / "val" / "dog")
    with pytest.raises(ValueError, match=r"only in train: \['cat'\], only in val: \['dog'\]"):
        load_image_folder(image_root, image_size=16, resize=24)
    (image_root / "val" / "dog").rename(image_root / "val" / "cat")

    for f in (image_root / "val" / "ant").glob("*.png"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"class folder .*val.ant has no images"):
        load_image_folder(image_root, image_size=16, resize=24)

    (image_root / "val" / "ant" / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken.png"):
        load_image_folder(image_root, image_size=16, resize=24)

    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no class subfolders in .*train"):
        load_image_folder(empty)


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------------
def _manual_crop_flip(img: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
    h, w, _ = img.shape
    padded = np.zeros((h + 2 * pad, w + 2 * pad, img.shape[2]), img.dtype)
    padded[pad : pad + h, pad : pad + w] = img
    out = padded[dy : dy + h, dx : dx + w]
    return out[:, ::-1] if flip else out


@pytest.fixture(scope="module")
def aug_images():
    return np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)


def test_augment_identity_and_shapes(aug_images):
    same = augment_cifar(jax.random.key(0), aug_images, pad=0, flip=False)
    np.testing.assert_array_equal(np.asarray(same), aug_images)
    out = augment_cifar(jax.random.key(1), aug_images)
    assert out.shape == aug_images.shape and out.dtype == jnp.float32
    u8 = augment_cifar(jax.random.key(1), (aug_images > 0).astype(np.uint8) * 255)
    assert u8.dtype == jnp.uint8 and u8.shape == aug_images.shape


def test_augment_matches_documented_sampling_and_manual_crop(aug_images):
    key, pad = jax.random.key(42), 2
    out = np.asarray(augment_cifar(key, aug_images, pad=pad, flip=True))
    crop_key, flip_key = jax.random.split(key)
    offsets = np.asarray(jax.random.randint(crop_key, (16, 2), 0, 2 * pad + 1))
    flips = np.asarray(jax.random.bernoulli(flip_key, 0.5, (16,)))
    assert len({tuple(o) for o in offsets}) > 1 and 0 < flips.sum() < 16  # this key exercises shifts and both flips
    for i in range(16):
        want = _manual_crop_flip(aug_images[i], *offsets[i], flips[i], pad)
        np.testing.assert_array_equal(out[i], want)


def test_augment_outputs_are_valid_shifts(aug_images):
    # Independent of how offsets are drawn: every output is one of the (2*pad+1)^2 * 2 candidates.
    pad = 1
    out = np.asarray(augment_cifar(jax.random.key(7), aug_images, pad=pad))
    chosen = set()
    for i in range(16):
        hits = [
            (dy, dx, fl)
            for dy in range(3)
            for dx in range(3)
            for fl in (False, True)
            if np.array_equal(out[i], _manual_crop_flip(aug_images[i], dy, dx, fl, pad))
        ]
        assert len(hits) == 1, i
        chosen.add(hits[0])
    assert len(chosen) > 3  # not stuck on one transform


def test_augment_under_jit_and_key_dependence(aug_images):
    step = jax.jit(lambda k, x: augment_cifar(k, x, pad=4, flip=True))
    a = step(jax.random.key(5), aug_images)
    b = augment_cifar(jax.random.key(5), aug_images, pad=4, flip=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = step(jax.random.key(6), aug_images)
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    raw_key = augment_cifar(jax.random.PRNGKey(5), aug_images)  # legacy uint32 keys work too
    assert raw_key.shape == aug_images.shape


def test_augment_errors(aug_images):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="pad must be >= 0, got -1"):
        augment_cifar(key, aug_images, pad=-1)
    with pytest.raises(TypeError, match="pad must be an int"):
        augment_cifar(key, aug_images, pad=4.0)
    with pytest.raises(TypeError, match="flip must be a bool"):
        augment_cifar(key, aug_images, flip="yes")
    with pytest.raises(ValueError, match=r"images must be 4-D \(N, H, W, C\), got shape \(8, 8, 3\)"):
        augment_cifar(key, aug_images[0])


# ----------------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------------
def test_batches_cover_every_index_once():
    x = np.arange(10)[:, None] * np.ones((1, 3), int)
    y = np.arange(10) * 10
    for shuffle, seed in ((False, None), (True, 0), (True, np.random.default_rng(1))):
        got = list(batches(x, y, 3, shuffle=shuffle, seed=seed))
        assert [len(yb) for _, yb in got] == [3, 3, 3, 1]
        ys = np.concatenate([yb for _, yb in got])
        np.testing.assert_array_equal(np.sort(ys), y)
        for xb, yb in got:
            np.testing.assert_array_equal(xb[:, 0] * 10, yb)  # pairs stay aligned
        if not shuffle:
            np.testing.assert_array_equal(ys, y)


def test_batches_shuffle_order_is_seeded():
    x = y = np.arange(100)
    order = lambda seed: np.concatenate([yb for _, yb in batches(x, y, 7, shuffle=True, seed=seed)])  # noqa: E731
    np.testing.assert_array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
    assert not np.array_equal(order(3), np.arange(100))
    rng = np.random.default_rng(0)
    assert not np.array_equal(order(rng), order(rng))  # a Generator advances: a new order per epoch


def test_batches_drop_last_and_num_batches():
    x = y = np.arange(10)
    dropped = list(batches(x, y, 3, shuffle=True, seed=0, drop_last=True))
    assert [len(yb) for _, yb in dropped] == [3, 3, 3]
    assert len(set(np.concatenate([yb for _, yb in dropped]).tolist())) == 9
    assert num_batches(10, 3) == 4 and num_batches(10, 3, True) == 3 and num_batches(10, 3, drop_last=True) == 3
    assert num_batches(9, 3) == 3 and num_batches(9, 3, True) == 3
    assert num_batches(0, 4) == 0 and num_batches(2, 4, True) == 0
    assert list(batches(np.arange(2), np.arange(2), 4, shuffle=False, drop_last=True)) == []
    for n, bs in ((10, 3), (12, 4), (1, 5)):
        for drop in (False, True):
            assert len(list(batches(np.arange(n), np.arange(n), bs, shuffle=False, drop_last=drop))) == num_batches(
                n, bs, drop
            )


def test_batches_errors_are_raised_at_call_time():
    x = y = np.arange(4)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batches(x, y, 0, shuffle=False)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        batches(x, y, 2.0, shuffle=False)
    with pytest.raises(ValueError, match="shuffle=True needs seed="):
        batches(x, y, 2, shuffle=True)
    with pytest.raises(TypeError, match="seed must be an int"):
        batches(x, y, 2, shuffle=True, seed="0")
    with pytest.raises(ValueError, match="x has 4 examples but y has 3"):
        batches(x, y[:3], 2, shuffle=False)
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        batches(x, y, 2, shuffle=None)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        num_batches(-1, 2)
