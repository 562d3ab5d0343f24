"""Validated helpers and the checkpoint-folder convention shared by the demo's steps."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path


# ----------------------------------------------------------------------------------------------------------------------
# Small validated helpers
# ----------------------------------------------------------------------------------------------------------------------
def parse_ratios(text: str) -> dict[str, float]:
    """Parses a ratio mapping written as ``NAME=RATIO,NAME=RATIO`` (the CLI's ``--ratios``).

    Names are stage names (``stage1``...) or group names; they are checked against a model later, by
    `jaxprune.make_plan`, which lists the valid ones. A ratio is the fraction of filters removed, in [0, 1).

    Args:
      text: e.g. ``"stage1=0.6,stage2=0.3"``; spaces around items, names and numbers are ignored.

    Returns:
      ``{name: ratio}`` in the order written.

    Raises:
      TypeError: `text` is not a str.
      ValueError: an empty text or item, an item without exactly one ``=``, an empty name, a ratio that is not a
        number or lies outside [0, 1), or a name given twice. The message quotes the offending item.

    Example:
      >>> parse_ratios("stage1=0.6, stage2=0.3")
      {'stage1': 0.6, 'stage2': 0.3}
    """
    if not isinstance(text, str):
        raise TypeError(f"ratios must be a str like 'stage1=0.6,stage2=0.3', got {type(text).__name__}")
    if not text.strip():
        raise ValueError("ratios is empty; write NAME=RATIO pairs separated by commas, e.g. 'stage1=0.6,stage2=0.3'")
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"ratios {text!r} has an empty item; write NAME=RATIO pairs separated by single commas")
        if item.count("=") != 1:
            raise ValueError(f"ratios item {item!r} is malformed; expected NAME=RATIO, e.g. 'stage1=0.6'")
        name, _, value = (s.strip() for s in item.partition("="))
        if not name:
            raise ValueError(f"ratios item {item!r} has no name; expected NAME=RATIO, e.g. 'stage1=0.6'")
        try:
            p = float(value)
        except ValueError:
            raise ValueError(f"ratios item {item!r}: {value!r} is not a number; a ratio is in [0, 1)") from None
        if not 0.0 <= p < 1.0:  # also refuses nan
            raise ValueError(f"ratios item {item!r}: ratio {value} is outside [0, 1) (the fraction of filters removed)")
        if name in out:
            raise ValueError(f"ratios names {name!r} twice; give each stage or group once")
        out[name] = p
    return out


def output_folder(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Creates (if needed) and returns an output folder, refusing a path that exists as something else.

    Args:
      path: The folder.
      what: How error messages name it (e.g. ``--out``).

    Returns:
      The folder as a `Path`.

    Raises:
      TypeError: `path` is not a str or path.
      FileExistsError: `path` (or a parent) exists and is not a folder.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{what} must be a path, got {type(path).__name__}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"{what} {str(p)!r} exists and is a file, not a folder; choose another path")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"{what} {str(p)!r}: {str(parent)!r} exists and is a file, not a folder")
            break
    p.mkdir(parents=True, exist_ok=True)
    return p


def _check_choice(value, what: str, valid: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")
    return value


def _check_int(value, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _pct(before: float, after: float) -> str:
    return f"{100.0 * (before - after) / before:.1f} %" if before else "-"


def _write_text(path: Path, text: str) -> None:
    from jaxprune.plan import atomic_write_text

    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


#: The file a CLI checkpoint folder holds (`jaxprune.checkpoint.save_checkpoint` format).
CHECKPOINT_FILE = "checkpoint.ckpt"


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file of a checkpoint folder (one holding `CHECKPOINT_FILE`), or `path` itself if it is a file
    or an orbax checkpoint directory (``save_checkpoint(..., format="orbax")``).

    Args:
      path: A folder written by ``jaxprune train``/``prune``/``finetune`` (or `run_demo`'s ``baseline``/``pruned``),
        or a checkpoint file.

    Returns:
      The path of the checkpoint file (not yet validated: `jaxprune.load_checkpoint` checks its contents).

    Raises:
      TypeError: `path` is not a str or path.
      FileNotFoundError: nothing exists at `path`.
      ValueError: `path` is a folder without a checkpoint file (not a jaxprune checkpoint folder).
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"checkpoint must be a folder path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint folder {str(p)!r} does not exist")
    if p.is_dir():
        from jaxprune import _orbax

        if _orbax.is_orbax_dir(str(p)):  # a format="orbax" checkpoint is itself a directory
            return p
        f = p / CHECKPOINT_FILE
        if not f.is_file():
            raise ValueError(
                f"{str(p)!r} is not a jaxprune checkpoint folder: it holds no {CHECKPOINT_FILE} "
                "(write one with 'jaxprune train' or jaxprune.save_checkpoint)"
            )
        return f
    return p


def _load_checkpoint(path):
    """(model, variables, Checkpoint) from a jaxprune checkpoint folder or file."""
    from jaxprune.checkpoint import load_checkpoint

    c = load_checkpoint(checkpoint_file(path))
    return c.model, c.variables, c


def _describe(model) -> str:
    family = getattr(model, "family", type(model).__name__)
    depth = getattr(model, "depth", None)
    label = {"vgg": "VGG", "resnet_cifar": "ResNet", "resnet_imagenet": "ResNet"}.get(family, family)
    return f"{label}-{depth}" if depth else label


def _same_architecture(a, b) -> bool:
    return getattr(a, "family", None) == getattr(b, "family", None) and getattr(a, "depth", None) == getattr(
        b, "depth", None
    )


def _json_ready(obj):
    import json

    return json.loads(json.dumps(obj, default=float))


def _quiet_log(*_args, **_kwargs) -> None:
    return None


def _one_line_text(e) -> str:
    return " ".join(str(e).split())


def _check_positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number > 0, got {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return float(value)
