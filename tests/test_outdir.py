"""Output folders of the command line are never overwritten silently, never left half replaced, never left empty.

Every writing command (demo, prune, finetune, train, sensitivity) goes through `jaxprune._outdir.output_run`. The
refusals happen before any work, so most cases cost no compile; the cases that do run use ``prune`` of a ResNet-20
with random weights. CLI cases run in-process through `jaxprune.cli.main`; two also as subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import jaxprune as jp
from jaxprune import cli, demo, models
from jaxprune._outdir import RUN_FILE, check_out_path, output_run
from jaxprune.checkpoint import save_checkpoint
from jaxprune.demo import CHECKPOINT_FILE

PRUNE = ("prune", "--model", "resnet20", "--ratio", "0.5", "--round-to", "8")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(capsys, *argv, code: int = 2) -> str:
    got, _, err = run(capsys, *argv)
    assert got == code, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _dead_pid() -> int:
    """The pid of a process that has exited (not reused this soon: Linux hands out pids in increasing order)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def model_and_variables():
    m = models.resnet20()
    return m, jp.random_variables(m, seed=1)


@pytest.fixture
def trained(tmp_path, model_and_variables):
    """A folder as ``jaxprune train --out T`` leaves it: a checkpoint and the train run's record."""
    folder = tmp_path / "T"
    folder.mkdir()
    m, v = model_and_variables
    save_checkpoint(folder / CHECKPOINT_FILE, m, v, step=1234)
    record = {"command": "train", "args": {"model": "resnet20", "epochs": 3}, "command_line": "jaxprune train --out T"}
    (folder / RUN_FILE).write_text(json.dumps(record))
    return folder


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- refusals: exit 2, one line naming the folder and --overwrite, nothing changed --------------------------------
def test_prune_refuses_a_trained_folder(capsys, trained):
    before = _snapshot(trained)
    line = one_error_line(capsys, *PRUNE, "--out", str(trained))
    assert f"--out {str(trained)!r} already holds a checkpoint this run cannot continue" in line
    assert "jaxprune train --out T" in line and "--overwrite" in line
    assert _snapshot(trained) == before


def test_finetune_refuses_a_trained_folder(capsys, trained, tmp_path):
    before = _snapshot(trained)
    line = one_error_line(capsys, "finetune", "--checkpoint", str(trained), "--out", str(trained))
    assert str(trained) in line and "--overwrite" in line
    assert _snapshot(trained) == before


@pytest.mark.parametrize(
    "argv",
    [
        ("train", "--epochs", "1"),
        ("demo", "--quick"),
        ("sensitivity", "--checkpoint", "CKPT"),
    ],
)
def test_every_writing_command_refuses_another_runs_folder(capsys, trained, argv):
    argv = tuple(str(trained) if a == "CKPT" else a for a in argv)
    before = _snapshot(trained)
    line = one_error_line(capsys, *argv, "--out", str(trained))
    assert "already holds a checkpoint this run cannot continue" in line and "--overwrite" in line
    assert _snapshot(trained) == before


def test_a_folder_of_user_files_is_refused(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_error_line(capsys, *PRUNE, "--out", str(tmp_path))
    assert "already holds the results of another run (no record of the run that wrote it)" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["", "   "])
def test_empty_out_is_a_usage_error(capsys, out):
    line = one_error_line(capsys, *PRUNE, "--out", out)
    assert "argument --out: is empty" in line


def test_empty_out_of_train_is_a_usage_error(capsys):
    assert "argument --out: is empty" in one_error_line(capsys, "train", "--out", "")


def test_check_out_path_rejects_non_paths_and_empty():
    with pytest.raises(TypeError, match="must be a folder path"):
        check_out_path(None)
    with pytest.raises(TypeError, match="must be a folder path, got bytes"):
        check_out_path(b"T")
    with pytest.raises(ValueError, match="is empty"):
        check_out_path("")
    assert check_out_path("a/b/") == os.path.join("a", "b")


# -- OSErrors at the CLI: exit 2, one line ---------------------------------------------------------------------------
def test_unwritable_out_is_one_line(capsys):
    line = one_error_line(capsys, *PRUNE, "--out", "/sys/jaxprune-test/out")
    assert line.startswith("jaxprune prune: error: [Errno") and "not permitted" in line


@pytest.mark.parametrize(
    ("err", "phrase"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"), (errno.EACCES, "denied")],
)
def test_os_errors_during_a_run_are_one_line_and_leave_no_folder(capsys, tmp_path, monkeypatch, err, phrase):
    def fail(out, **kwargs):
        with open(os.path.join(out, "comparison.txt"), "w"):
            pass
        os.remove(os.path.join(out, "comparison.txt"))  # nothing complete was written when the error came
        raise OSError(err, os.strerror(err), os.path.join(out, CHECKPOINT_FILE))

    monkeypatch.setattr(demo, "prune_to_folder", fail)
    out = tmp_path / "new"
    line = one_error_line(capsys, *PRUNE, "--out", str(out))
    assert phrase in line and CHECKPOINT_FILE in line
    assert not out.exists()


def test_dev_full_is_one_line(capsys, tmp_path, monkeypatch):
    # A write to a full disk: the plan file is written through /dev/full (ENOSPC on every write).
    from jaxprune import plan as plan_module

    def full(path, text):
        with open("/dev/full", "w") as f:
            f.write(text)
            f.flush()

    monkeypatch.setattr(plan_module, "atomic_write_text", full)
    monkeypatch.setattr("jaxprune._outdir._write_run", lambda folder, run: None)
    out = tmp_path / "full"
    line = one_error_line(capsys, *PRUNE, "--out", str(out))
    assert "No space left on device" in line
    assert not out.exists()


def test_a_failed_run_leaves_no_empty_folder(capsys, tmp_path):
    out = tmp_path / "a" / "b"
    line = one_error_line(capsys, "prune", "--model", "resnet20", "--preset", "resnet56-B", "--out", str(out))
    assert "resnet56-B" in line
    assert not out.exists()


def test_a_failed_run_in_an_empty_folder_of_the_user_keeps_it_empty(capsys, tmp_path):
    one_error_line(capsys, "prune", "--model", "resnet20", "--preset", "resnet56-B", "--out", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


# -- the same run again, --overwrite --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_once(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "T"
    assert cli.main([*PRUNE, "--out", str(out)]) == 0
    return out


def test_the_same_command_again_is_the_same_run(capsys, pruned_once):
    record = json.loads((pruned_once / RUN_FILE).read_text())
    assert record["command"] == "prune" and record["args"]["prune_ratio"] == 0.5
    before = _snapshot(pruned_once)
    code, out, _ = run(capsys, *PRUNE, "--out", str(pruned_once))
    assert code == 0 and f"wrote {pruned_once / CHECKPOINT_FILE}" in out
    assert _snapshot(pruned_once) == before  # deterministic: the same files, byte for byte


def test_other_arguments_are_another_run(capsys, pruned_once):
    line = one_error_line(capsys, "prune", "--model", "resnet20", "--ratio", "0.25", "--out", str(pruned_once))
    assert "already holds a checkpoint this run cannot continue" in line and "--ratio 0.5" in line


def test_overwrite_replaces_through_new_and_old_folders(capsys, trained, monkeypatch):
    seen = {}
    real = demo.prune_to_folder

    def spy(out, **kwargs):
        seen["out"] = out
        seen["T still the old one"] = (trained / RUN_FILE).read_text()
        return real(out, **kwargs)

    monkeypatch.setattr(demo, "prune_to_folder", spy)
    code, out, _ = run(capsys, *PRUNE, "--out", str(trained), "--overwrite")
    assert code == 0
    assert seen["out"] == f"{trained}.new-{os.getpid()}"
    assert '"train"' in seen["T still the old one"]  # T was untouched while the run wrote
    assert f"wrote {trained / CHECKPOINT_FILE}" in out and ".new-" not in out
    assert sorted(p.name for p in trained.parent.iterdir()) == ["T"]  # no T.new-*, no T.old-*
    assert json.loads((trained / RUN_FILE).read_text())["command"] == "prune"
    assert jp.load_checkpoint(trained / CHECKPOINT_FILE).plans[0].meta["prune_ratio"] == 0.5


def test_an_interrupted_overwrite_leaves_the_folder_and_names_the_new_one(capsys, trained, monkeypatch):
    def interrupted(out, **kwargs):
        with open(os.path.join(out, CHECKPOINT_FILE), "wb") as f:
            f.write(b"epoch 1")
        raise KeyboardInterrupt

    before = _snapshot(trained)
    monkeypatch.setattr(demo, "prune_to_folder", interrupted)
    code, _, err = run(capsys, *PRUNE, "--out", str(trained), "--overwrite")
    new = f"{trained}.new-{os.getpid()}"
    assert code == 130
    assert f"--out {str(trained)!r} is left as it was; what this run wrote is in {new!r}" in err
    assert _snapshot(trained) == before
    assert open(os.path.join(new, CHECKPOINT_FILE), "rb").read() == b"epoch 1"
    # The next run into T clears the leftover (here: refused, yet the stale T.new-<pid> is gone).
    monkeypatch.undo()
    one_error_line(capsys, *PRUNE, "--out", str(trained))
    assert not os.path.exists(new)


def test_a_failed_overwrite_with_nothing_written_leaves_no_new_folder(capsys, trained):
    line = one_error_line(
        capsys, "prune", "--model", "resnet20", "--preset", "resnet56-B", "--out", str(trained), "--overwrite"
    )
    assert "resnet56-B" in line
    assert sorted(p.name for p in trained.parent.iterdir()) == ["T"]


def test_a_swap_killed_between_its_renames_gives_the_old_results_back(tmp_path):
    pid = _dead_pid()
    t = tmp_path / "T"
    old = tmp_path / f"T.old-{pid}"
    new = tmp_path / f"T.new-{pid}"
    old.mkdir()
    (old / "checkpoint.ckpt").write_text("previous")
    new.mkdir()
    (new / "checkpoint.ckpt").write_text("unfinished")
    run_id = {"command": "prune", "args": {}}
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        with output_run(t, run_id):
            pass
    assert (t / "checkpoint.ckpt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T"]


def test_leftovers_of_a_live_process_are_kept(tmp_path):
    t = tmp_path / "T"
    alive = tmp_path / f"T.new-{os.getppid()}"  # our parent runs
    alive.mkdir()
    with output_run(t, {"command": "prune", "args": {}}) as folder:
        (t / "x").write_text("1")
        assert folder == str(t)
    assert alive.is_dir()


# -- the real entry point, in a subprocess --------------------------------------------------------------------------
# Two processes, one per way a usage error leaves `jaxprune.cli.main`: argparse's (an empty --out) and the command's
# own refusal (`_INPUT_ERRORS`: ValueError, TypeError, OSError). An unwritable --out is an OSError of that same branch;
# its message is checked in-process (test_unwritable_out_is_one_line).
def _cli(*argv):
    env = dict(os.environ)
    env.pop("JAXPRUNE_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "jaxprune", *argv], capture_output=True, text=True, env=env, timeout=600
    )


def test_subprocess_refuses_a_trained_folder(trained):
    r = _cli(*PRUNE, "--out", str(trained))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "already holds a checkpoint this run cannot continue" in r.stderr and "--overwrite" in r.stderr


def test_subprocess_empty_out():
    r = _cli("train", "--out", "")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "argument --out: is empty" in r.stderr
