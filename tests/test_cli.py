"""The `jaxprune` command line: --help everywhere, exit codes, one-line usage errors, prune/report/table outputs.

Most cases call `jaxprune.cli.main` in-process (no new interpreter, no recompiles); a few run the real console
script and ``python -m jaxprune`` in a subprocess to pin the entry points and exit statuses end to end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import HANG_TIMEOUT_S

import jaxprune as jp
from jaxprune import cli, models
from jaxprune._outdir import RUN_FILE
from jaxprune.checkpoint import load_checkpoint
from jaxprune.demo import CHECKPOINT_FILE, checkpoint_file, output_folder, parse_ratios

SUBCOMMANDS = ("demo", "prune", "report", "table", "sensitivity", "train", "finetune")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys, *argv) -> str:
    """Runs argv, asserts exit status 2 and exactly one line on stderr; returns that line."""
    code, _, err = run(capsys, *argv)
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- help -----------------------------------------------------------------------------------------------------------
def test_top_level_help_lists_every_subcommand(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(capsys, name):
    code, out, err = run(capsys, name, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: jaxprune {name}")
    assert "--help" in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"jaxprune {jp.__version__}"


# -- usage errors: exit 2, one line on stderr -----------------------------------------------------------------------
def test_missing_command(capsys):
    line = usage_error(capsys)
    assert line.startswith("jaxprune: error: missing command") and "demo" in line


def test_unknown_command(capsys):
    assert "invalid choice: 'frobnicate'" in usage_error(capsys, "frobnicate")


def test_unknown_model_lists_valid_ones(capsys):
    line = usage_error(capsys, "report", "--model", "resnet57")
    assert "resnet57" in line and all(n in line for n in models.available())


def test_unknown_preset_lists_valid_ones(capsys, tmp_path):
    line = usage_error(capsys, "prune", "--model", "resnet56", "--preset", "resnet56-C", "--out", str(tmp_path))
    assert "resnet56-C" in line and all(n in line for n in jp.presets.available())


def test_unknown_strategy_lists_valid_ones(capsys, tmp_path):
    line = usage_error(
        capsys, "prune", "--model", "resnet20", "--ratio", "0.5", "--strategy", "best", "--out", str(tmp_path)
    )
    assert "'best'" in line and "independent" in line and "greedy" in line


@pytest.mark.parametrize(
    ("ratios", "match"),
    [
        ("stage1=0.6,stage2", "'stage2' is malformed"),
        ("stage1=abc", "'abc' is not a number"),
        ("=0.5", "has no name"),
        ("stage1=1.2", "outside [0, 1)"),
        ("stage1=0.5,,stage2=0.1", "empty item"),
        ("stage1=0.5,stage1=0.1", "names 'stage1' twice"),
        ("stage1=0.5=0.1", "malformed"),
    ],
)
def test_malformed_ratios(capsys, tmp_path, ratios, match):
    line = usage_error(capsys, "prune", "--model", "resnet20", "--ratios", ratios, "--out", str(tmp_path))
    assert "argument --ratios" in line and match in line


def test_unknown_stage_in_ratios_lists_valid_ones(capsys, tmp_path):
    line = usage_error(capsys, "prune", "--model", "resnet20", "--ratios", "stage4=0.5", "--out", str(tmp_path))
    assert "unknown group or stage 'stage4'" in line and "stage3" in line


def test_bad_ratio(capsys, tmp_path):
    line = usage_error(capsys, "prune", "--model", "resnet20", "--ratio", "1.0", "--out", str(tmp_path))
    assert "outside [0, 1)" in line
    assert "not a number" in usage_error(capsys, "prune", "--model", "resnet20", "--ratio", "half", "--out", "x")


def test_prune_needs_exactly_one_way(capsys, tmp_path):
    assert "one of the arguments --preset --ratio --ratios is required" in usage_error(
        capsys, "prune", "--model", "resnet20", "--out", str(tmp_path)
    )
    assert "not allowed with" in usage_error(
        capsys, "prune", "--model", "resnet56", "--preset", "resnet56-A", "--ratio", "0.1", "--out", str(tmp_path)
    )


def test_prune_needs_a_model_or_checkpoint(capsys, tmp_path):
    assert "model" in usage_error(capsys, "prune", "--ratio", "0.5", "--out", str(tmp_path))


def test_preset_for_another_model(capsys, tmp_path):
    line = usage_error(capsys, "prune", "--model", "resnet20", "--preset", "resnet56-B", "--out", str(tmp_path))
    assert "resnet56-B" in line and "resnet56" in line


def test_bad_round_to(capsys, tmp_path):
    line = usage_error(capsys, "prune", "--model", "resnet20", "--ratio", "0.5", "--round-to", "0", "--out", "x")
    assert "--round-to" in line and "must be >= 1" in line


def test_out_exists_as_a_file(capsys, tmp_path):
    f = tmp_path / "taken"
    f.write_text("not a folder")
    line = usage_error(capsys, "prune", "--model", "resnet20", "--ratio", "0.5", "--out", str(f))
    assert "exists and is a file" in line and str(f) in line
    assert f.read_text() == "not a folder"


def test_checkpoint_folder_missing(capsys, tmp_path):
    line = usage_error(capsys, "report", "--checkpoint", str(tmp_path / "nowhere"))
    assert "does not exist" in line and "nowhere" in line


def test_checkpoint_folder_without_a_checkpoint(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    line = usage_error(capsys, "report", "--checkpoint", str(tmp_path))
    assert "is not a jaxprune checkpoint folder" in line and CHECKPOINT_FILE in line


def test_checkpoint_file_that_is_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not ours")
    line = usage_error(capsys, "report", "--checkpoint", str(tmp_path))
    assert "not a jaxprune checkpoint" in line


def test_report_needs_exactly_one_source(capsys, tmp_path):
    assert "one of the arguments --checkpoint --model is required" in usage_error(capsys, "report")
    assert "not allowed with" in usage_error(capsys, "report", "--model", "resnet20", "--checkpoint", str(tmp_path))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (("demo", "--epochs", "0"), "--epochs: 0 must be >= 1"),
        (("demo", "--target-macs", "1.5"), "(0, 1]"),
        (("demo", "--tolerance", "-1"), "must be >= 0"),
        (("demo", "--model", "alexnet"), "invalid choice: 'alexnet'"),
        (("train", "--out", "x", "--lr", "0"), "--lr: 0 must be > 0"),
        (("train", "--out", "x", "--batch-size", "many"), "not an integer"),
        (("finetune", "--out", "x"), "--checkpoint"),
        (("sensitivity", "--checkpoint", "x", "--ratios", "0.1,a"), "comma-separated list of ratios"),
    ],
)
def test_option_errors(capsys, argv, match):
    assert match in usage_error(capsys, *argv)


# -- success paths --------------------------------------------------------------------------------------------------
def test_table(capsys):
    code, out, err = run(capsys, "table")
    assert code == 0 and err == ""
    row = next(line for line in out.splitlines() if line.startswith("ResNet-56-pruned-B"))
    assert row.split()[:5] == ["ResNet-56-pruned-B", "90,907,264", "9.09e7", "=", "27.56"]


def test_table2(capsys):
    code, out, _ = run(capsys, "table", "--table2")
    assert code == 0 and "Table 2" in out and "Conv_13" in out


def test_report_model(capsys):
    code, out, _ = run(capsys, "report", "--model", "resnet56")
    assert code == 0
    assert "total: 125,485,696 MACs; params 853,018 (all leaves), 848,954 (no BN)" in out
    assert "convention:" in out


def test_report_resnet34_without_projections(capsys):
    code, out, _ = run(capsys, "report", "--model", "resnet34", "--exclude-projections")
    assert code == 0 and "total: 3,644,493,824 MACs" in out


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """`jaxprune prune --model resnet56 --preset resnet56-B` into a folder (in-process): (folder, its stdout)."""
    out = tmp_path_factory.mktemp("pruned")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli.main(["prune", "--model", "resnet56", "--preset", "resnet56-B", "--out", str(out)]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def pruned_folder(pruned_run):
    return pruned_run[0]


def test_prune_notes_widths_that_are_not_multiples_of_8(capsys, pruned_run, tmp_path):
    out = pruned_run[1]  # the same command without --round-to, run once for the module
    assert "note: 21 pruned width(s) not a multiple of 8 (stage1_block1_conv1 = 6," in out and "--round-to 8" in out
    code, out, _ = run(
        capsys, "prune", "--model", "resnet56", "--preset", "resnet56-B", "--round-to", "8", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0 and "note:" not in out


def test_prune_preset_writes_checkpoint_plan_and_comparison(pruned_folder):
    assert sorted(p.name for p in pruned_folder.iterdir()) == [RUN_FILE, CHECKPOINT_FILE, "comparison.txt", "plan.json"]
    m = models.resnet56()
    expected = jp.preset("resnet56-B", m, jp.random_variables(m, seed=0))
    plan = jp.PruningPlan.load(pruned_folder / "plan.json")
    assert plan.keep == expected.keep and plan.meta["preset"] == "resnet56-B"
    assert plan.meta["source"] == "random weights (seed 0)"
    ckpt = load_checkpoint(pruned_folder / CHECKPOINT_FILE)
    assert ckpt.model.group_widths() == m.with_widths(plan.new_widths).group_widths()
    assert [p.keep for p in ckpt.plans] == [plan.keep]
    assert jp.count_macs(ckpt.model).macs == 90_907_264
    text = (pruned_folder / "comparison.txt").read_text()
    assert "90,907,264" in text and "125,485,696" in text and "convention:" in text


def test_prune_slices_the_seeded_weights(pruned_folder):
    m = models.resnet56()
    v = jp.random_variables(m, seed=0)
    plan = jp.PruningPlan.load(pruned_folder / "plan.json")
    _, expected = jp.prune(m, v, plan)
    got = load_checkpoint(pruned_folder / CHECKPOINT_FILE).variables
    k = ("params", "stage1_block1_conv1", "kernel")
    np.testing.assert_array_equal(np.asarray(got[k[0]][k[1]][k[2]]), np.asarray(expected[k[0]][k[1]][k[2]]))


def test_report_checkpoint(capsys, pruned_folder):
    code, out, _ = run(capsys, "report", "--checkpoint", str(pruned_folder))
    assert code == 0 and "total: 90,907,264 MACs" in out and str(pruned_folder) in out


def test_prune_a_checkpoint_again_grows_the_plan_history(capsys, pruned_folder, tmp_path):
    code, out, _ = run(
        capsys, "prune", "--checkpoint", str(pruned_folder), "--ratios", "stage3=0.5", "--round-to", "8",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0 and f"checkpoint {pruned_folder}" in out
    ckpt = load_checkpoint(checkpoint_file(tmp_path))
    assert len(ckpt.plans) == 2
    stage3 = [ckpt.model.group_widths()[g] for g in ckpt.model.stages()["stage3"]]
    assert stage3 == [32, 32, 32, 32, 32, 32, 32, 32, 32]  # 64 and 57 at p = 0.5 keep 32 and 28 -> 32


def test_prune_checkpoint_of_another_model(capsys, pruned_folder, tmp_path):
    line = usage_error(
        capsys, "prune", "--checkpoint", str(pruned_folder), "--model", "resnet20", "--ratio", "0.2", "--out",
        str(tmp_path),
    )  # fmt: skip
    assert "does not match the checkpoint's model ResNet-56" in line


def test_prune_ratios_round_to_and_greedy(capsys, tmp_path):
    code, out, _ = run(
        capsys, "prune", "--model", "vgg16", "--ratios", "conv1=0.5,stage4=0.5,stage5=0.5", "--strategy", "greedy",
        "--round-to", "8", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0 and "MACs 313,463,808 -> 206,279,680" in out
    plan = jp.PruningPlan.load(tmp_path / "plan.json")
    assert plan.meta["strategy"] == "greedy" and plan.meta["round_to"] == 8
    assert all(w % 8 == 0 for w in plan.new_widths.values())


# -- helpers of jaxprune.demo the CLI relies on ---------------------------------------------------------------------
def test_parse_ratios():
    assert parse_ratios(" stage1 = 0.6 ,stage2=0.3") == {"stage1": 0.6, "stage2": 0.3}
    assert parse_ratios("conv1=0") == {"conv1": 0.0}
    with pytest.raises(ValueError, match="ratios is empty"):
        parse_ratios("  ")
    with pytest.raises(ValueError, match="outside"):
        parse_ratios("stage1=nan")
    with pytest.raises(TypeError, match="must be a str"):
        parse_ratios({"stage1": 0.5})


def test_output_folder(tmp_path):
    assert output_folder(tmp_path / "a" / "b").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="exists and is a file"):
        output_folder(f)
    with pytest.raises(FileExistsError, match="exists and is a file"):
        output_folder(f / "below")
    with pytest.raises(TypeError, match="must be a path"):
        output_folder(3)


def test_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a jaxprune checkpoint folder"):
        checkpoint_file(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"")
    assert checkpoint_file(tmp_path) == tmp_path / CHECKPOINT_FILE
    assert checkpoint_file(tmp_path / CHECKPOINT_FILE) == tmp_path / CHECKPOINT_FILE
    with pytest.raises(TypeError, match="must be a folder path"):
        checkpoint_file(None)


# -- the real entry points, in a subprocess -------------------------------------------------------------------------
def _env():
    env = dict(os.environ)
    env.pop("JAXPRUNE_TRACEBACK", None)
    return env


def test_python_dash_m_usage_error_exit_status():
    r = subprocess.run(
        [sys.executable, "-m", "jaxprune", "report", "--model", "nope"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=HANG_TIMEOUT_S,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("jaxprune report: error: argument --model")


def test_console_script_report():
    exe = shutil.which("jaxprune")
    if exe is None:
        pytest.skip("the jaxprune console script is not installed (pip install -e .)")
    r = subprocess.run(
        [exe, "report", "--model", "resnet20"], capture_output=True, text=True, env=_env(), timeout=HANG_TIMEOUT_S
    )
    assert r.returncode == 0, r.stderr
    assert "total: 40,551,040 MACs" in r.stdout


def test_json_plan_is_plain_json(pruned_folder):
    data = json.loads((pruned_folder / "plan.json").read_text())
    assert data["format"] == "jaxprune.PruningPlan" and data["meta"]["preset"] == "resnet56-B"
