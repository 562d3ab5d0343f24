"""The digits pipeline behind `jaxprune demo`, `train`, `finetune` and `sensitivity` (jaxprune.demo).

The end-to-end test runs ``jaxprune demo --quick`` in a subprocess, interrupts it with SIGINT (Ctrl-C) while it
trains, checks that the last complete checkpoint is intact, runs the same command again (it resumes from that
checkpoint) and checks the files and the report's numbers. Other tests use checkpoints of random weights, which need
no training.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import USER_XLA_FLAGS

import jaxprune as jp
from jaxprune import cli, demo, models
from jaxprune.checkpoint import load_checkpoint, save_checkpoint
from jaxprune.demo import CHECKPOINT_FILE, digits
from jaxprune.demo import scan as demo_scan

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A ResNet-20 checkpoint of seeded random weights (no training)."""
    folder = tmp_path_factory.mktemp("random")
    m = models.resnet20()
    save_checkpoint(folder / CHECKPOINT_FILE, m, jp.random_variables(m, seed=0))
    return folder


# -- validation before any work --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "resnet57"}, ValueError, "unknown model 'resnet57'; valid models: resnet20"),
        ({"model": "resnet34"}, ValueError, "ImageNet model .* resnet20, resnet32"),
        ({"model": 20}, TypeError, "zoo model name"),
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"finetune_epochs": 1.5}, TypeError, "finetune epochs must be an int"),
        ({"tolerance": -0.1}, ValueError, "tolerance must be a number >= 0"),
        ({"target_macs": 0.0}, ValueError, r"target_macs must be a fraction .* \(0, 1\]"),
        ({"round_to": 0}, ValueError, "round_to must be >= 1"),
        ({"quick": "yes"}, TypeError, "quick must be a bool"),
        ({"tolerance": "0.1"}, TypeError, "tolerance must be a number, got str"),
        ({"target_macs": True}, TypeError, "target_macs must be a number, got bool"),
    ],
)
def test_run_demo_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        demo.run_demo(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_run_demo_out_is_a_file(tmp_path):
    f = tmp_path / "report"
    f.write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is a file"):
        demo.run_demo(f)
    assert f.read_text() == "mine"


def test_train_refuses_a_checkpoint_it_cannot_continue(random_checkpoint, capsys):
    # The folder holds a checkpoint without a training record: resuming it would train something else.
    code = cli.main(["train", "--out", str(random_checkpoint), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "already holds a checkpoint this run cannot continue" in err[0]


def test_finetune_rejects_a_model_the_digits_do_not_fit(tmp_path):
    m = models.resnet20(num_classes=100)
    save_checkpoint(tmp_path / CHECKPOINT_FILE, m, jp.random_variables(m))
    with pytest.raises(ValueError, match="10 classes"):
        demo.finetune_to_folder(tmp_path / "ft", checkpoint=tmp_path)


def test_recipes():
    assert demo.QUICK_RECIPE.epochs < demo.FULL_RECIPE.epochs
    assert demo.FULL_RECIPE.training(3) == {
        "data": "digits",
        "epochs": demo.FULL_RECIPE.epochs,
        "batch_size": demo.FULL_RECIPE.batch_size,
        "lr": demo.FULL_RECIPE.lr,
        "augment": demo.FULL_RECIPE.augment,
        "nesterov": demo.FULL_RECIPE.nesterov,
        "weight_decay": demo.FULL_RECIPE.weight_decay,
        "label_smoothing": demo.FULL_RECIPE.label_smoothing,
        "seed": 3,
    }
    assert set(demo.DIGITS_MODELS) < set(models.available())


# -- sensitivity of a checkpoint (random weights: no training) -------------------------------------------------------
def test_sensitivity_command(random_checkpoint, tmp_path, capsys):
    out = tmp_path / "sens"
    code = cli.main(
        ["sensitivity", "--checkpoint", str(random_checkpoint), "--ratios", "0.25,0.5", "--tolerance", "1", "--images", "32",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".jaxprune-run.json",  # the record of the run that wrote the folder (jaxprune._outdir)
        "fig2a_sorted_filter_norms.png",
        "fig2b_sensitivity.png",
        "sensitivity.md",
        "suggestion.txt",
    ]
    assert all(
        (out / n).read_bytes().startswith(PNG) for n in ("fig2a_sorted_filter_norms.png", "fig2b_sensitivity.png")
    )
    table = (out / "sensitivity.md").read_text()
    assert table.count("| stage") == 9 and "| 0.25 | 0.5 |" in table
    # tolerance 1 (a whole accuracy) lets every stage take the largest scanned ratio
    assert "make_plan arguments: {'prune_ratio': {'stage1': 0.5, 'stage2': 0.5, 'stage3': 0.5}, 'skip': []}" in text


def test_sensitivity_outcome_matches_a_single_scan(random_checkpoint):
    outcome = demo.sensitivity_from_checkpoint(
        random_checkpoint, ratios=(0.5,), tolerance=0.0, images=32, progress=False
    )
    sens = outcome.result
    ckpt = load_checkpoint(random_checkpoint / CHECKPOINT_FILE)
    x, y = demo_scan._scan_data(digits._load_data(), 32, 0)
    direct = jp.sensitivity(ckpt.model, ckpt.variables, data=(x, y), ratios=(0.5,))
    assert sens.groups == direct.groups and sens.kept.tolist() == direct.kept.tolist()
    np.testing.assert_allclose(sens.values, direct.values, atol=1e-12)
    assert sens.baseline == pytest.approx(direct.baseline, abs=1e-12)
    assert outcome.numbers["suggestion"] == json.loads(
        json.dumps(jp.suggest_ratios(direct, tolerance=0.0).plan_kwargs())
    )


# -- the end-to-end demo, interrupted and resumed --------------------------------------------------------------------
def _demo_cmd(out):
    return [sys.executable, "-m", "jaxprune", "demo", "--quick", "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: one persistent XLA compilation cache for both runs of the demo (the second
    run then skips most compiles; measured about 30 % less CPU time for ``demo --quick``), and XLA's default
    optimisation level, not the session's level 0 (tests/conftest.py): these runs train for hundreds of steps and
    mostly load their programs from that cache. Measured from an empty cache, the interrupted and resumed demo took
    128 s of CPU against 145 s at level 0, the random-interrupt loop 31 s against 43 s."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = USER_XLA_FLAGS
    if not env["XLA_FLAGS"]:
        del env["XLA_FLAGS"]
    env.pop("JAXPRUNE_TRACEBACK", None)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jax-compilation-cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


# Bounds that only catch a hang (>= 10x the expected time, which is seconds to a minute or two on a loaded 2-core
# machine); the tests wait on files, lines and exits, never on the clock.
HANG_S = 1800


def _interruptible() -> None:
    """Runs in the child before exec: SIGINT back to its default action. A shell starts background jobs with SIGINT
    ignored, a child inherits that, and Python then installs no KeyboardInterrupt handler; the test would wait for
    a Ctrl-C that can never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_file(path, proc) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < HANG_S, f"hang: no {path} after {HANG_S} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_demo_quick_interrupted_resumed_and_reported(tmp_path, env):
    out = tmp_path / "demo"
    ckpt_path = out / "baseline" / CHECKPOINT_FILE
    proc = subprocess.Popen(
        _demo_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_interruptible
    )
    try:
        _wait_for_file(ckpt_path, proc)  # the first epoch's checkpoint
        proc.send_signal(signal.SIGINT)  # Ctrl-C during the second epoch
        stdout, stderr = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted" in stdout and "run the same command again to resume" in stdout
    assert stderr.strip().splitlines()[-1] == "jaxprune demo: interrupted; checkpoints written so far are complete"

    ckpt = load_checkpoint(ckpt_path)  # intact: loads and passes its checksum
    info = ckpt.metadata["training"]
    spe = len(digits._load_data().x_train) // demo.QUICK_RECIPE.batch_size
    assert 1 <= info["epochs_done"] < demo.QUICK_RECIPE.epochs and not info["complete"]
    assert ckpt.step == info["epochs_done"] * spe
    assert [h["epoch"] for h in info["history"]] == list(range(1, info["epochs_done"] + 1))
    assert not [p.name for p in ckpt_path.parent.iterdir() if p.name != CHECKPOINT_FILE]  # no temporary files left

    r = subprocess.run(_demo_cmd(out), capture_output=True, text=True, env=env, timeout=HANG_S)
    assert r.returncode == 0, r.stderr
    assert f"resumed {ckpt_path} ({info['epochs_done']}/{demo.QUICK_RECIPE.epochs} epochs)" in r.stdout
    for i in range(1, 7):
        assert f"[{i}/6]" in r.stdout

    expected = {
        "plan.json", "report.md", "report.json", "sensitivity.md", "baseline", "pruned", "figures",
        ".jaxprune-run.json",  # the record of the run that wrote the folder (jaxprune._outdir)
    }  # fmt: skip
    assert {p.name for p in out.iterdir()} == expected
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["fig2a_sorted_filter_norms.png", "fig2b_sensitivity.png", "macs_per_layer.png", "widths.png"]
    assert all((out / "figures" / f).read_bytes().startswith(PNG) for f in figures)

    rep = json.loads((out / "report.json").read_text())
    b, a = rep["before"], rep["after"]
    assert a["params"] < b["params"] and a["macs"] < b["macs"] and a["xla_flops"] < b["xla_flops"]
    assert rep["mac_ratio"] == pytest.approx(a["macs"] / b["macs"], rel=1e-12)
    assert a["macs"] / b["macs"] <= 0.6  # the default budget keeps 60 % of the MACs
    for acc in (b["test_accuracy"], a["test_accuracy"], a["test_accuracy_pruned"]):
        assert 0.0 <= acc <= 1.0 and round(acc * 360) == pytest.approx(acc * 360, abs=1e-6)  # k of 360 images
    assert b["test_accuracy"] >= 0.8  # a trained network, not chance (0.1)
    assert set(b["latency_ms"]) == {"1", "32"} and all(v > 0 for v in b["latency_ms"].values())
    assert rep["baseline"] == "resumed" and rep["quick"] is True

    # The files agree with the report: the plan, and the pruned checkpoint at the plan's widths.
    m = models.resnet20()
    plan = jp.PruningPlan.load(out / "plan.json")
    pruned = load_checkpoint(out / "pruned" / CHECKPOINT_FILE)
    assert pruned.model.group_widths() == m.with_widths(plan.new_widths).group_widths()
    assert all(w % 8 == 0 for w in plan.new_widths.values())  # round_to 8
    assert jp.count_macs(pruned.model).macs == a["macs"] and jp.count_macs(pruned.model).params == a["params"]
    assert [p.keep for p in pruned.plans] == [plan.keep]
    baseline = load_checkpoint(ckpt_path)
    assert baseline.metadata["training"]["complete"] and baseline.step == demo.QUICK_RECIPE.epochs * spe

    md = (out / "report.md").read_text()
    assert f"| params | {b['params']:,} | {a['params']:,} |" in md
    assert f"| test accuracy | {100 * b['test_accuracy']:.2f} % | {100 * a['test_accuracy']:.2f} % |" in md
    assert "![Sensitivity, paper Fig. 2(b)](figures/fig2b_sensitivity.png)" in md
    assert f"{b['macs'] / 1e6:,.2f} M" in r.stdout  # the report table is printed


class _Forker:
    """``jaxprune`` runs forked from one server that imported jax and the command line once (tests/_cli_forker.py):
    each run skips the 3-5 s of CPU a fresh interpreter spends on imports. The fresh interpreter's own exit path is
    covered by test_demo_quick_interrupted_resumed_and_reported."""

    def __init__(self, env):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "_cli_forker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=_interruptible,
        )  # fmt: skip
        self.buf, self.running = b"", None

    def _readable(self, timeout: float) -> bool:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            return bool(sel.select(timeout=timeout))

    def _answer(self, word: str) -> int:
        while b"\n" not in self.buf:  # unbuffered reads: select() then sees every line not yet read
            assert self._readable(HANG_S), f"hang: the fork server said nothing in {HANG_S} s"
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, ("the fork server ended", self.proc.wait(timeout=HANG_S))
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        got = line.decode().split()
        assert got[0] == word, got
        return int(got[1])

    def answered(self) -> bool:
        """Whether the server has said something not yet read (after `start`: the run has ended)."""
        return b"\n" in self.buf or self._readable(0)

    def start(self, argv, stdout, stderr) -> int:
        """Forks a run of ``jaxprune *argv``; returns its pid."""
        self.proc.stdin.write(json.dumps({"argv": argv, "stdout": str(stdout), "stderr": str(stderr)}) + "\n")
        self.proc.stdin.flush()
        self.running = self._answer("pid")
        return self.running

    def exit_code(self) -> int:
        """The exit code of the run started last, once it has ended (negative: the signal that killed it)."""
        code = os.waitstatus_to_exitcode(self._answer("status"))
        self.running = None
        return code

    def close(self):
        """Ends the server; a run still going (a failed test) is killed first."""
        if self.running is not None:
            os.kill(self.running, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(timeout=HANG_S)


@pytest.mark.slow
def test_interrupt_at_random_moments_exits_130_with_complete_checkpoints(tmp_path, env):
    """Ctrl-C at 10 random moments after ``train`` or ``finetune`` printed its first line: every run exits 130 (not a
    signal death), says so, and leaves checkpoints that load.

    The runs are forked from a server that imported jax and the command line once (`_Forker`); each runs
    `jaxprune.cli.main` as the program does, with its SIGINT handler and its exit, and the compilation cache on.
    Four ``train`` runs (ResNet-20) each resume the last and are interrupted while loading, compiling (from the shared
    cache) or training. Six ``finetune`` runs start from a 75 %-pruned ResNet-20 (``prune --ratio 0.75``, random
    weights: nothing to train first) whose epochs take a fraction of a second, so their interrupts also fall while a
    checkpoint is being written; each resumes the last."""
    pruned, trained, tuned = tmp_path / "pruned", tmp_path / "trained", tmp_path / "tuned"
    assert cli.main(["prune", "--model", "resnet20", "--ratio", "0.75", "--out", str(pruned)]) == 0
    spe = len(digits._load_data().x_train) // 128
    rng = random.Random(1717)
    exits = []
    forker = _Forker(env)
    try:
        for i in range(10):
            command = "train" if i % 3 == 0 else "finetune"
            where = (
                ["--out", str(trained)] if command == "train" else ["--checkpoint", str(pruned), "--out", str(tuned)]
            )
            argv = [command, "--epochs", "1000", "--batch-size", "128", *where, "--no-progress"]
            out, err = tmp_path / f"out-{i}.txt", tmp_path / f"err-{i}.txt"
            pid = forker.start(argv, out, err)
            t0 = time.monotonic()
            while not out.exists() or "\n" not in out.read_text():  # its first line
                assert not forker.answered(), (i, "ended before its first line", err.read_text()[-3000:])
                assert time.monotonic() - t0 < HANG_S, f"hang: run {i} printed nothing in {HANG_S} s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 3.0))  # 1000 epochs: the run is still going
            os.kill(pid, signal.SIGINT)
            code = forker.exit_code()
            stderr = err.read_text()
            exits.append(code)
            assert code == 130, (i, command, code, stderr[-3000:])
            assert (
                stderr.strip().splitlines()[-1]
                == f"jaxprune {command}: interrupted; checkpoints written so far are complete"
            )
            for folder in (trained, tuned):
                if (folder / CHECKPOINT_FILE).exists():
                    ckpt = load_checkpoint(folder / CHECKPOINT_FILE)  # complete: it loads and passes its checksum
                    assert ckpt.step % spe == 0  # written at the end of an epoch
    finally:
        forker.close()
    assert exits == [130] * 10


@pytest.mark.slow
def test_train_prune_finetune_commands_chain(tmp_path, capsys, monkeypatch):
    """``train`` -> ``train`` again (reused) -> ``prune --checkpoint`` -> ``finetune``, in-process."""
    # The test is about the commands' plumbing (files, metadata, reuse), not about accuracy: the commands load a
    # 64-image train / 120-image test subset of digits (2 steps of 32 per epoch, one evaluation batch of 120).
    import dataclasses

    full = digits._load_data()
    small = dataclasses.replace(
        full, x_train=full.x_train[:64], y_train=full.y_train[:64], x_test=full.x_test[:120], y_test=full.y_test[:120]
    )
    monkeypatch.setattr(digits, "_load_data", lambda: small)
    a, b, c = tmp_path / "trained", tmp_path / "pruned", tmp_path / "finetuned"
    assert cli.main(["train", "--epochs", "1", "--batch-size", "32", "--out", str(a), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "after 1 epochs (trained)" in out and f"wrote {a / CHECKPOINT_FILE}" in out
    trained = load_checkpoint(a / CHECKPOINT_FILE)
    info = trained.metadata["training"]
    assert info["complete"] and info["epochs_done"] == 1 and info["recipe"]["batch_size"] == 32
    assert trained.step == 64 // 32

    # The same command again finds the finished run and does not train.
    assert cli.main(["train", "--epochs", "1", "--batch-size", "32", "--out", str(a), "--no-progress"]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert load_checkpoint(a / CHECKPOINT_FILE).step == trained.step

    args = ["prune", "--checkpoint", str(a), "--ratios", "stage3=0.5", "--round-to", "8", "--out", str(b)]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(["finetune", "--checkpoint", str(b), "--epochs", "1", "--out", str(c), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "after 1 fine-tuning epochs from lr 0.02" in out
    tuned = load_checkpoint(c / CHECKPOINT_FILE)
    plan = jp.PruningPlan.load(b / "plan.json")
    assert [p.keep for p in tuned.plans] == [plan.keep]
    assert [tuned.model.group_widths()[g] for g in tuned.model.stages()["stage3"]] == [32, 32, 32]
    assert len(tuned.metadata["finetuning"]["history"]) == 1
    assert 0.0 <= tuned.metadata["finetuning"]["history"][0]["test_accuracy"] <= 1.0


@pytest.mark.parametrize("command", [None, "demo", "prune", "report", "table", "sensitivity", "train", "finetune"])
def test_help_renders_as_meant(command, capsys):
    # argparse %-formats help strings but prints descriptions as written: "%%" must not reach the reader.
    assert cli.main(["--help"] if command is None else [command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "%%" not in text and "%(" not in text
    if command == "train":
        assert "at 50% and 75% of training" in " ".join(text.split())


def test_table_counts_its_rows_with_a_progress_bar(monkeypatch, capsys):
    from jaxprune import paper

    rows = paper.table1()  # computed once per process (shared with tests/test_paper.py)
    plain = paper.format_table1(progress=False)
    monkeypatch.setattr(paper, "_TABLE1", [])  # as in a fresh process
    monkeypatch.setattr(paper, "_table1_rows", lambda: iter(rows))
    capsys.readouterr()
    assert paper.format_table1(progress=True) == plain
    err = capsys.readouterr().err
    assert "Table 1" in err and f"/{len(rows)}" in err  # a bar over the 12 rows (tqdm redraws it at most every 0.1 s)
