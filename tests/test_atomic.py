"""Atomic writes (plans, checkpoints, figures): the umask decides the mode, a failed write leaves the old file."""

from __future__ import annotations

import os
import stat
import sys

import pytest

import jaxprune as jp
from jaxprune._atomic import atomic_write
from jaxprune.plan import PruningPlan

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o640  # 0o666 & ~0o027
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
def test_plan_checkpoint_and_figure_get_the_umask_mode(tmp_path, umask_027, zoo):
    import matplotlib

    matplotlib.use("Agg")
    from jaxprune import viz

    plan = PruningPlan(keep={"conv1": (0, 2)}, widths={"conv1": 64})
    plan.save(tmp_path / "plan.json")
    m, v = zoo("resnet20")
    jp.save_checkpoint(tmp_path / "m.ckpt", m, v)
    fig = viz.plot_widths(m, m.with_widths({"stage1_block1_conv1": 8}))
    viz.save_figure(fig, tmp_path / "w.png")
    for name in ("plan.json", "m.ckpt", "w.png"):
        assert _mode(tmp_path / name) == umask_027, name
    assert PruningPlan.load(tmp_path / "plan.json") == plan
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "plan.json", "w.png"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"), atomic_write(target, suffix=".bin") as f:
        f.write(b"new, half")
        raise RuntimeError("midway")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


def test_missing_folder_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "nope" / "f.bin") as f:
        f.write(b"x")


@posix_only
def test_an_existing_file_keeps_its_mode(tmp_path, umask_027):
    """Overwriting keeps the old file's mode, as `open(path, "w")` does: a private checkpoint stays private."""
    target = tmp_path / "plan.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    PruningPlan(keep={"a": (0,)}, widths={"a": 2}).save(target)
    assert _mode(target) == 0o600
    os.chmod(target, 0o664)
    PruningPlan(keep={"a": (1,)}, widths={"a": 2}).save(target)
    assert _mode(target) == 0o664 and PruningPlan.load(target).keep == {"a": (1,)}


def test_text_must_be_a_str(tmp_path):
    from jaxprune.plan import atomic_write_text

    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        atomic_write_text(tmp_path / "f.txt", b"bytes")
    assert list(tmp_path.iterdir()) == []
