"""Tests for jaxprune.checkpoint: exact round trips, pruned checkpoints loading in a fresh process, bit-identical
resume, atomic writes under a crash mid-save, and every kind of bad file.

Variables come from `jaxprune.random_variables` (no compile); only the resume test trains (ResNet-8, 32 digits).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from conftest import CHECKPOINT_MAGIC, HANG_TIMEOUT_S, split_checkpoint

import jaxprune as jp
from jaxprune import checkpoint
from jaxprune.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
)


def assert_trees_equal(a, b, what=""):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb, what
    for (p, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype, f"{what}{jax.tree_util.keystr(p)}"
        np.testing.assert_array_equal(x, y, err_msg=f"{what}{jax.tree_util.keystr(p)}")


@pytest.fixture(scope="module")
def model():
    return jp.models.resnet20()


@pytest.fixture(scope="module")
def variables(model):
    return jp.random_variables(model, seed=0)


@pytest.fixture(scope="module")
def plan(model, variables):
    return jp.make_plan(model, variables, prune_ratio={"stage1": 0.5, "stage3_block1_conv1": 0.25})


@pytest.fixture(scope="module")
def pruned(model, variables, plan):
    return jp.prune(model, variables, plan)


@pytest.fixture(scope="module")
def adam_state(pruned):
    """A non-trivial adam state for the pruned params (moments filled by two updates of fixed pseudo-gradients)."""
    _, v = pruned
    tx = optax.adam(1e-3)
    st = jax.jit(tx.init)(v["params"])  # one compile instead of an eager dispatch per leaf and op
    update = jax.jit(tx.update)
    for k in range(2):
        g = jax.tree_util.tree_map(lambda p, k=k: np.full(p.shape, 0.01 * (k + 1), np.float32), v["params"])
        _, st = update(g, st, v["params"])
    return tx, st


def _save_pruned(path, pruned, plan, adam_state):
    """The pruned ResNet-20 with its Adam state, at step 17, as `saved` and the fresh-process fixture write it."""
    m, v = pruned
    _, st = adam_state
    save_checkpoint(
        path, m, v, opt_state=st, step=17, rng=jax.random.key(42), plans=[plan], metadata={"test_accuracy": 0.99}
    )
    return path


@pytest.fixture
def saved(tmp_path, pruned, plan, adam_state):
    return _save_pruned(tmp_path / "pruned.ckpt", pruned, plan, adam_state)


# ----------------------------------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------------------------------
def test_round_trip_is_exact(saved, pruned, plan, adam_state):
    m, v = pruned
    tx, st = adam_state
    ck = load_checkpoint(saved, tx=tx)
    assert isinstance(ck, Checkpoint)
    assert ck.model == m
    assert ck.model.widths == (8, 8, 8, 32, 32, 32, 48, 64, 64)
    assert_trees_equal(ck.variables, v, "variables")
    assert_trees_equal(ck.opt_state, st, "opt_state")
    assert type(ck.opt_state[0]).__name__ == "ScaleByAdamState"
    assert ck.step == 17
    np.testing.assert_array_equal(jax.random.key_data(ck.rng), jax.random.key_data(jax.random.key(42)))
    assert str(jax.random.key_impl(ck.rng)) == "threefry2x32"
    assert ck.plans == (plan,)
    assert ck.metadata == {"test_accuracy": 0.99}


def test_header_is_readable_json_without_the_arrays(saved):
    with open(saved, "rb") as f:
        assert f.readline() == b"JAXPRUNE-CHECKPOINT\n"
        header = json.loads(f.readline())
        digest_line = f.readline()
        payload = f.read()
    assert header == read_checkpoint_header(saved)
    assert header["version"] == CHECKPOINT_FORMAT_VERSION == 2
    assert header["model"]["widths"] == [8, 8, 8, 32, 32, 32, 48, 64, 64]
    assert header["variables"]["params/stage1_block1_conv2/kernel"] == [[3, 3, 8, 16], "float32"]
    assert header["step"] == 17 and header["has_opt_state"] is True
    assert header["payload"] == {"bytes": len(payload)}
    # One digest over the magic line, the header line and the payload.
    line = json.dumps(header, sort_keys=True).encode() + b"\n"
    expected = hashlib.sha256(b"JAXPRUNE-CHECKPOINT\n" + line + payload).hexdigest()
    assert digest_line == b"sha256:" + expected.encode() + b"\n"


def test_optimizer_state_without_tx_stays_raw_and_train_state_restores_it(saved, adam_state):
    tx, st = adam_state
    ck = load_checkpoint(saved)
    assert ck.opt_state is None
    assert set(ck.raw_opt_state) == {"0", "1"}  # chain of scale_by_adam and scale_by_learning_rate
    state = ck.train_state(tx)
    assert_trees_equal(state.opt_state, st, "opt_state")
    assert int(state.step) == 17 and state.model == ck.model and state.tx is tx
    with pytest.raises(ValueError, match="needs the optax transformation"):
        ck.train_state()


def test_save_refuses_a_plan_history_that_does_not_end_at_the_widths(tmp_path, model, variables, plan):
    with pytest.raises(ValueError, match="the plan history does not end at the model's widths"):
        save_checkpoint(tmp_path / "x.ckpt", model, variables, plans=[plan])  # unpruned model, pruning plan
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# A fresh process
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory, pruned, plan, adam_state):
    """One fresh process (one jax import) for both fresh-process tests: it loads a pruned checkpoint with no user
    code and prints the result (flushed), then starts overwriting that same checkpoint and is hard-killed
    (`os._exit`, no cleanup) half way through the payload write. Returns (checkpoint, its bytes before, the process, its input batch)."""
    d = tmp_path_factory.mktemp("fresh")
    saved = _save_pruned(d / "pruned.ckpt", pruned, plan, adam_state)
    before = saved.read_bytes()
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.save(d / "x.npy", x)
    code = textwrap.dedent(
        f"""
        import json, os, numpy as np, jax
        from jaxprune.checkpoint import load_checkpoint
        ck = load_checkpoint({str(saved)!r})
        x = np.load({str(d / "x.npy")!r})
        y = jax.jit(lambda v, x: ck.model.apply(v, x, train=False))(ck.variables, x)
        print("RESULT " + json.dumps({{"config": ck.model.config(), "logits": np.asarray(y).tolist(),
                                       "plans": [p.new_widths for p in ck.plans]}}), flush=True)

        import jaxprune as jp
        from jaxprune import checkpoint
        def dying_write(f, data):
            f.write(memoryview(data)[: len(data) // 2])
            f.flush()
            if len(data) > 10000:
                os._exit(9)
        checkpoint._write_chunks = dying_write
        m = jp.models.resnet20()
        checkpoint.save_checkpoint({str(saved)!r}, m, jp.random_variables(m, seed=5))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    return saved, before, proc, x


def test_pruned_checkpoint_loads_in_a_fresh_process_with_no_user_code(fresh_process, pruned):
    m, v = pruned
    _, _, proc, x = fresh_process
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert results, proc.stderr[-3000:]
    out = json.loads(results[-1][7:])
    assert out["config"] == m.config()
    assert out["plans"][0]["stage3_block1_conv1"] == 48
    want = np.asarray(jax.jit(lambda v, x: m.apply(v, x, train=False))(v, x))
    got = np.asarray(out["logits"], np.float32)
    # Same program on the same machine: equal to float32 tolerance (docs/design.md §4).
    assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, float(np.max(np.abs(want))))


# ----------------------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    from jaxprune import train
    from jaxprune.data import load_digits

    # ResNet-8 (one block per stage): the same leaf kinds as ResNet-20 for a third of the layers to compile.
    model = jp.models.CifarResNet(depth=8, widths=(16, 32, 64))
    variables = jp.random_variables(model, seed=0)

    ds = load_digits()
    # 32 digits in batches of 8: still 4 steps an epoch, each a quarter of the work of a batch of 32.
    data = (ds.x_train[:32], ds.y_train[:32])
    tx = train.paper_sgd(epochs=2, steps_per_epoch=4, learning_rate=0.05)  # the schedule spans the split
    start = train.TrainState.create(model, variables, tx, seed=7)
    kw = dict(batch_size=8, seed=11, augment="cifar", progress=False)
    straight, h_straight = train.fit(start, data, epochs=2, **kw)

    half, h_half = train.fit(start, data, epochs=1, **kw)
    path = tmp_path / "half.ckpt"
    save_checkpoint(path, half)
    resumed_state = load_checkpoint(path, model=model, tx=tx).train_state()
    resumed, h_resumed = train.fit(resumed_state, data, epochs=1, **kw)

    assert int(resumed.step) == int(straight.step) == 8
    assert_trees_equal(resumed.params, straight.params, "params")
    assert_trees_equal(resumed.batch_stats, straight.batch_stats, "batch_stats")
    assert_trees_equal(resumed.opt_state, straight.opt_state, "opt_state")
    assert [h["train_loss"] for h in h_half + h_resumed] == [h["train_loss"] for h in h_straight]


# ----------------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------------
def test_a_crash_mid_save_leaves_the_last_good_checkpoint(saved, pruned, adam_state, monkeypatch):
    m, v = pruned
    before = saved.read_bytes()
    calls = []

    def crashing_write(f, data):
        view = memoryview(data)
        f.write(view[: len(view) // 2])
        calls.append(len(view))
        if len(calls) == 3:  # magic, header, then half of the payload
            raise RuntimeError("simulated crash while writing the payload")

    monkeypatch.setattr(checkpoint, "_write_chunks", crashing_write)
    new_vars = jax.tree_util.tree_map(lambda a: a + 1, v)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(saved, m, new_vars, step=18)
    assert len(calls) == 3
    assert saved.read_bytes() == before
    assert sorted(os.listdir(saved.parent)) == ["pruned.ckpt"]  # the temporary file was removed
    ck = load_checkpoint(saved)
    assert ck.step == 17
    assert_trees_equal(ck.variables, v, "variables")


def test_a_process_killed_mid_save_leaves_the_last_good_checkpoint(fresh_process):
    """A hard kill (no cleanup) during the payload write: the target is untouched, only a temporary file is left."""
    saved, before, proc, _ = fresh_process
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert saved.read_bytes() == before
    leftovers = [n for n in os.listdir(saved.parent) if n not in ("pruned.ckpt", "x.npy")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
    assert load_checkpoint(saved).step == 17


# ----------------------------------------------------------------------------------------------------------------------
# Bad files and mismatches: each a clear error, never a partial load
# ----------------------------------------------------------------------------------------------------------------------
MAGIC = CHECKPOINT_MAGIC
_split = split_checkpoint


def _forge(path, header, payload, *, magic=MAGIC, header_line=None):
    """Writes a version-2 file whose digest is right for what it holds (a consistent but edited file)."""
    line = header_line if header_line is not None else json.dumps(header).encode() + b"\n"
    digest = hashlib.sha256(magic + line + payload).hexdigest().encode()
    path.write_bytes(magic + line + b"sha256:" + digest + b"\n" + payload)


def test_truncated_file_is_an_error(saved):
    raw = saved.read_bytes()
    saved.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match="is truncated or has trailing bytes"):
        load_checkpoint(saved)
    saved.write_bytes(raw[:30])  # cut inside the header
    with pytest.raises(ValueError, match="truncated or corrupted: its JSON header line never ends"):
        load_checkpoint(saved)
    saved.write_bytes(raw + b"x")
    with pytest.raises(ValueError, match="is truncated or has trailing bytes"):
        load_checkpoint(saved)


def test_corrupted_payload_byte_is_an_error(saved):
    raw = bytearray(saved.read_bytes())
    raw[-5000] ^= 0x01
    saved.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="is corrupted or was modified: its SHA-256 over header and payload"):
        load_checkpoint(saved)


def test_a_changed_header_byte_is_an_error(saved):
    raw = saved.read_bytes()
    saved.write_bytes(raw.replace(b'"step": 17', b'"step": 18'))
    with pytest.raises(ValueError, match=f"checkpoint {saved} is corrupted or was modified"):
        load_checkpoint(saved)


def test_swapped_headers_of_two_checkpoints_are_an_error(saved, tmp_path, pruned):
    m, v = pruned
    other = tmp_path / "other.ckpt"
    save_checkpoint(other, m, v, step=99, metadata={"who": "other"})
    save_checkpoint(saved, m, v, step=1, metadata={"who": "saved"})
    h_other, p_other = _split(other)
    _, p_saved = _split(saved)
    assert p_other == p_saved  # the same arrays: only the headers differ
    raw_saved = saved.read_bytes()
    digest_line = raw_saved.splitlines(keepends=True)[2]
    saved.write_bytes(MAGIC + json.dumps(h_other, sort_keys=True).encode() + b"\n" + digest_line + p_saved)
    with pytest.raises(ValueError, match="is corrupted or was modified"):
        load_checkpoint(saved)


def test_corrupted_header_and_wrong_magic_are_errors(saved, tmp_path):
    header, payload = _split(saved)
    _forge(saved, header, payload, header_line=b'{"format": "jaxprune.checkpoint", "vers\n')
    with pytest.raises(ValueError, match="its JSON header does not parse"):
        load_checkpoint(saved)
    other = tmp_path / "plan.json"
    other.write_text('{"format": "jaxprune.PruningPlan"}\n')
    with pytest.raises(ValueError, match="is not a jaxprune checkpoint"):
        load_checkpoint(other)
    del header["payload"]
    _forge(saved, header, payload)
    with pytest.raises(ValueError, match="its header's payload entry is malformed"):
        load_checkpoint(saved)


def test_unknown_format_version_is_an_error(saved):
    header, payload = _split(saved)
    header["version"] = 3
    _forge(saved, header, payload)
    with pytest.raises(ValueError, match="has format version 3; this jaxprune reads versions 1, 2"):
        load_checkpoint(saved)
    with pytest.raises(ValueError, match="has format version 3"):
        read_checkpoint_header(saved)


def test_config_edited_to_other_widths_is_caught_by_the_shape_check(saved):
    header, payload = _split(saved)
    header["model"]["widths"][6] = 64  # claim stage3_block1_conv1 is unpruned
    _forge(saved, header, payload)
    with pytest.raises(
        ValueError, match=r"leaf batch_stats/stage3_block1_bn1/mean has shape \(48,\), the model's widths need \(64,\)"
    ):
        load_checkpoint(saved)
    header["model"]["family"] = "alexnet"
    _forge(saved, header, payload)
    with pytest.raises(ValueError, match="stores a model config that builds no model: unknown model family 'alexnet'"):
        load_checkpoint(saved)


def test_a_different_expected_model_or_widths_is_an_error(saved, model):
    with pytest.raises(ValueError, match=r"different model than expected: widths\[0\]: checkpoint 8, expected 16"):
        load_checkpoint(saved, model=model)
    with pytest.raises(ValueError, match="depth: checkpoint 20, expected 32"):
        load_checkpoint(saved, model=jp.models.resnet32())
    with pytest.raises(ValueError, match="num_classes: checkpoint 10, expected 100"):
        load_checkpoint(saved, model=jp.models.resnet20(num_classes=100))
    with pytest.raises(ValueError, match="family: checkpoint 'resnet_cifar', expected 'vgg'"):
        load_checkpoint(saved, model=jp.models.vgg16())


def test_optimizer_state_of_another_optimizer_is_an_error(saved):
    with pytest.raises(ValueError, match="does not fit the given tx"):
        load_checkpoint(saved, tx=optax.sgd(0.1, momentum=0.9))
    with pytest.raises(TypeError, match="tx must be an optax GradientTransformation"):
        load_checkpoint(saved, tx="adam")


def test_save_rejects_bad_arguments(tmp_path, model, variables, pruned):
    m, v = pruned
    with pytest.raises(
        ValueError, match=r"leaf batch_stats/stage1_block1_bn1/mean has shape \(8,\), the model's widths need \(16,\)"
    ):
        save_checkpoint(tmp_path / "a.ckpt", model, v)
    with pytest.raises(TypeError, match="has neither config\\(\\) .* nor channel_groups\\(\\) and with_widths\\(\\)"):
        save_checkpoint(tmp_path / "a.ckpt", object(), v)
    with pytest.raises(TypeError, match="needs the model's variables as a mapping"):
        save_checkpoint(tmp_path / "a.ckpt", m, None)
    with pytest.raises(TypeError, match="plans\\[0\\] must be a jaxprune.PruningPlan"):
        save_checkpoint(tmp_path / "a.ckpt", m, v, plans=[{"keep": {}}])
    with pytest.raises(TypeError, match="metadata must be JSON-serializable"):
        save_checkpoint(tmp_path / "a.ckpt", m, v, metadata={"when": object()})
    with pytest.raises(ValueError, match="step must be >= 0"):
        save_checkpoint(tmp_path / "a.ckpt", m, v, step=-1)
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        save_checkpoint(tmp_path / "missing" / "a.ckpt", m, v)
    assert not os.listdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.ckpt")


def test_save_takes_a_train_state_alone(tmp_path, model, variables):
    from jaxprune import train

    s = train.TrainState.create(model, variables, train.sgd(0.1), seed=2)
    with pytest.raises(TypeError, match="pass it alone"):
        save_checkpoint(tmp_path / "s.ckpt", s, variables)
    save_checkpoint(tmp_path / "s.ckpt", s)
    ck = load_checkpoint(tmp_path / "s.ckpt", model=model, tx=s.tx)
    restored = ck.train_state()
    assert_trees_equal(restored.params, s.params, "params")
    assert_trees_equal(restored.opt_state, s.opt_state, "opt_state")
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(s.rng))


def test_checkpoint_names_are_exported_without_optax():
    assert jp.save_checkpoint is save_checkpoint and jp.load_checkpoint is load_checkpoint
    assert jp.Checkpoint is Checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# Format version 2: strict headers behind the digest, the previous version, stale temporary files
# ----------------------------------------------------------------------------------------------------------------------
def _set(*keys, value):
    def edit(h):
        d = h
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


def _drop(key):
    return lambda h: h.pop(key)


def _deep(depth):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


_LEAF = "params/stage1_block1_conv2/kernel"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("step", value=True), "'step' must be an int in"),
        (_set("step", value=17.0), "'step' must be an int in"),
        (_set("step", value=-1), "'step' must be an int in"),
        (_set("step", value=2**62), "'step' must be an int in"),
        (_set("has_opt_state", value="yes"), "'has_opt_state' must be true or false"),
        (_set("rng", "impl", value=3), "'rng.impl' must be null or a str"),
        (_set("rng", "data", value=[True, 1]), "'rng.data' must be a"),
        (_set("rng", "data", value="abc"), "'rng.data' must be a"),
        (_set("rng", "data", value=[2**32, 0]), "'rng.data' must be a"),
        (_set("rng", "extra", value=1), "'rng' must be null or an object with exactly"),
        (_set("rng", "impl", value="nope"), "'rng' does not make a PRNG key"),
        (_set("rng", "data", value=[1, 2, 3]), "'rng' does not make a PRNG key"),
        (_set("variables", _LEAF, value=["x", "float32"]), "must be \\[shape"),
        (
            _set("variables", _LEAF, value=[[3, 3, 8, 16], "float64"]),
            "the header says \\[\\[3, 3, 8, 16\\], 'float64'\\]",
        ),
        (lambda h: h["variables"].pop(_LEAF), "leaf table and its arrays differ"),
        (_set("metadata", value=[1]), "'metadata' must be an object"),
        (_set("plans", value={"keep": 1}), "'plans' must be a list"),
        (_set("plans", 0, "keep", value=None), "malformed plan history"),
        (_set("model", value=[1]), "'model' must be an object"),
        (_set("model", "widths", value="x"), "builds no model"),
        (_set("model", "depth", value=None), "builds no model"),
        (_set("surprise", value=1), "\\['surprise'\\] are unknown"),
        (_set("payload", "bytes", value=2**62), "is truncated or has trailing bytes"),
        (_set("payload", "bytes", value=True), "payload entry is malformed"),
        (_set("payload", "sha256", value="00"), "'payload' must be an object with exactly \\['bytes'\\]"),
        (_set("version", value=True), "has format version True"),
        (_set("version", value=2.0), "has format version 2.0"),
        (_set("has_opt_state", value=False), "disagree on the optimizer state"),
        (_drop("metadata"), "its header has no 'metadata' entry"),
        (_set("metadata", "deep", value=_deep(100_000)), "its JSON header does not parse"),
        (_set("format", value="jaxprune.PruningPlan"), "is not a 'jaxprune.checkpoint' header"),
    ],
)
def test_every_malformed_header_is_a_value_error_naming_the_file(saved, edit, match):
    header, payload = _split(saved)
    edit(header)
    try:
        line = json.dumps(header).encode() + b"\n"
    except RecursionError:  # json.dumps itself cannot write it: build the line by hand
        line = (
            json.dumps({**header, "metadata": {}})
            .encode()
            .replace(b'"metadata": {}', b'"metadata": {"deep": ' + b"[" * 100_000 + b"0" + b"]" * 100_000 + b"}")
            + b"\n"
        )
    _forge(saved, header, payload, header_line=line)
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(saved)
    assert str(saved) in str(info.value)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b'{"format": "jaxprune.checkpoint", "version": NaN}\n', "NaN is not a JSON number"),
        (b'{"format": "jaxprune.checkpoint", "format": "x"}\n', "key 'format' appears twice"),
        (b"[1, 2]\n", "is not a 'jaxprune.checkpoint' header"),
        (b'{"format": "\xff\xfe"}\n', "its JSON header does not parse"),
    ],
)
def test_header_lines_that_are_not_strict_json_are_value_errors(saved, line, match):
    header, payload = _split(saved)
    _forge(saved, header, payload, header_line=line)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(saved)
    with pytest.raises(ValueError, match=match):
        read_checkpoint_header(saved)


def test_a_garbled_digest_line_is_an_error(saved):
    raw = saved.read_bytes().split(b"\n", 3)
    saved.write_bytes(b"\n".join([raw[0], raw[1], b"sha256:" + b"0" * 64, raw[3]]))
    with pytest.raises(ValueError, match="is corrupted or was modified"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metadata": {"acc": float("nan")}}, ValueError, "must not hold NaN or infinity"),
        ({"metadata": {"acc": [1.0, float("inf")]}}, ValueError, "must not hold NaN or infinity"),
        ({"metadata": {3: "x"}}, TypeError, "keys must be str .* key 3 \\(int\\)"),
        ({"metadata": {"a": {(1, 2): "x"}}}, TypeError, "metadata\\['a'\\] has key \\(1, 2\\)"),
        ({"metadata": ["x"]}, TypeError, "metadata must be a mapping"),
        ({"step": True}, TypeError, "step must be an int \\(not a bool or float\\)"),
        ({"step": 1.5}, TypeError, "step must be an int \\(not a bool or float\\)"),
        ({"step": 2**40}, ValueError, "step must be >= 0 and <= 2147483647"),
    ],
)
def test_save_refuses_headers_that_would_not_load_back(tmp_path, pruned, kwargs, error, match):
    m, v = pruned
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path / "a.ckpt", m, v, **kwargs)
    assert not os.listdir(tmp_path)


def test_a_version_1_checkpoint_still_loads(saved, pruned, plan, adam_state):
    header, payload = _split(saved)
    header["version"] = 1
    assert header.pop("made_for") is None  # version 2 added it (a user model's fingerprint)
    header["payload"] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    saved.write_bytes(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
    tx, st = adam_state
    ck = load_checkpoint(saved, tx=tx)
    assert ck.step == 17 and ck.plans == (plan,) and ck.header["version"] == 1
    assert_trees_equal(ck.variables, pruned[1], "variables")
    assert_trees_equal(ck.opt_state, st, "opt_state")
    raw = bytearray(saved.read_bytes())
    raw[-100] ^= 0x10
    saved.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="payload SHA-256"):
        load_checkpoint(saved)


def test_stale_temporary_files_are_removed_by_the_next_save(saved, pruned, tmp_path):
    from jaxprune import _atomic

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # an exited process: its temporary files are stale
    stale = saved.parent / f".tmp-{p.pid}-{_atomic._HOST}-{'ab' * 8}.ckpt"
    stale.write_bytes(b"half a checkpoint")
    live = saved.parent / f".tmp-{os.getppid()}-{_atomic._HOST}-{'cd' * 8}.ckpt"  # our parent runs
    live.write_bytes(b"being written")
    other_host = saved.parent / f".tmp-{p.pid}-00000000-{'ef' * 8}.ckpt"
    other_host.write_bytes(b"another host's")
    legacy_old = saved.parent / f".tmp-{'12' * 8}.ckpt"
    legacy_old.write_bytes(b"old version")
    os.utime(legacy_old, (0, 0))
    legacy_new = saved.parent / f".tmp-{'34' * 8}.ckpt"
    legacy_new.write_bytes(b"old version, recent")
    save_checkpoint(saved, *pruned, step=3)
    left = sorted(os.listdir(saved.parent))
    assert left == sorted(["pruned.ckpt", live.name, other_host.name, legacy_new.name])
    assert load_checkpoint(saved).step == 3


# ----------------------------------------------------------------------------------------------------------------------
# Any changed byte, anywhere: hypothesis
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory, pruned, plan, adam_state):
    m, v = pruned
    path = tmp_path_factory.mktemp("orig") / "c.ckpt"
    save_checkpoint(path, m, v, opt_state=adam_state[1], step=1234, rng=jax.random.key(7), plans=[plan],
                    metadata={"acc": 0.5})  # fmt: skip
    return path.read_bytes()


def _small_header_biased_offsets(n: int):
    from hypothesis import strategies as st

    # Half the draws land in the first 8 KiB (magic, header, digest line), the rest anywhere.
    return st.one_of(st.integers(0, min(n, 8192) - 1), st.integers(0, n - 1))


def test_flipped_bytes_anywhere_are_value_errors(saved_bytes, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path = tmp_path_factory.mktemp("flip") / "c.ckpt"
    n = len(saved_bytes)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(st.lists(st.tuples(_small_header_biased_offsets(n), st.integers(1, 255)), min_size=1, max_size=3))
    def check(flips):
        raw = bytearray(saved_bytes)
        for at, mask in flips:
            raw[at] ^= mask
        if bytes(raw) == saved_bytes:  # two flips of one byte cancelled out: the file is the original
            return
        path.write_bytes(bytes(raw))
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)

    check()


def test_truncated_files_are_value_errors(saved_bytes, tmp_path_factory):
    from hypothesis import given, settings

    path = tmp_path_factory.mktemp("cut") / "c.ckpt"

    @settings(max_examples=100, deadline=None, database=None)
    @given(_small_header_biased_offsets(len(saved_bytes)))
    def check(cut):
        path.write_bytes(saved_bytes[:cut])
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)

    check()


def test_the_unchanged_file_loads_exactly(saved_bytes, tmp_path, pruned, adam_state):
    path = tmp_path / "c.ckpt"
    path.write_bytes(saved_bytes)
    ck = load_checkpoint(path, tx=adam_state[0])
    assert ck.step == 1234 and ck.metadata == {"acc": 0.5}
    assert_trees_equal(ck.variables, pruned[1], "variables")
    assert_trees_equal(ck.opt_state, adam_state[1], "opt_state")
    np.testing.assert_array_equal(jax.random.key_data(ck.rng), jax.random.key_data(jax.random.key(7)))


# ----------------------------------------------------------------------------------------------------------------------
# SIGKILL at random moments during saves
# ----------------------------------------------------------------------------------------------------------------------
def _logged_steps(log) -> list[int]:
    """The steps a saver child has logged, complete lines only (a kill may cut the last one)."""
    if not log.exists():
        return []
    text = log.read_text()
    return [int(line) for line in text[: text.rfind("\n") + 1].split()]


@pytest.mark.slow
def test_sigkill_during_saves_leaves_the_last_complete_checkpoint(tmp_path):
    """20 children, each killed by SIGKILL at a random moment of its save loop (tests/_sigkill_saver.py): the file
    always holds the last complete save, and the temporary files killed saves leave are removed by the next save."""
    import multiprocessing
    import random
    import time

    ctx = multiprocessing.get_context("forkserver")  # children forked from one process that imported jax once
    ctx.set_forkserver_preload(["_sigkill_saver"])
    import _sigkill_saver

    shapes = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), jp.abstract_variables(jp.models.resnet20())
    )
    rng = random.Random(0)
    path, folder = tmp_path / "c.ckpt", tmp_path
    step, kills, temps_seen, dead = 0, 0, 0, []
    while kills < 20:
        log = tmp_path.parent / f"{tmp_path.name}-steps-{kills}.txt"  # outside the checkpoint folder
        proc = ctx.Process(target=_sigkill_saver.save_forever, args=(str(path), step, shapes, str(log)))
        proc.start()
        t0 = time.monotonic()
        while not _logged_steps(log):  # the child's first save is complete
            assert proc.is_alive(), f"the saving child died with exit code {proc.exitcode}"
            assert time.monotonic() - t0 < 600, "the saving child logged nothing in 600 s (hung?)"
            time.sleep(0.01)
        assert _logged_steps(log)[0] == step
        # The child's first save is complete: the previous children's temporary files are gone.
        assert not [n for n in os.listdir(folder) if any(n.startswith(f".tmp-{pid}-") for pid in dead)]
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment: it saves a random number of times
        proc.kill()  # SIGKILL
        proc.join()
        assert proc.exitcode == -9
        kills += 1
        dead.append(proc.pid)
        last = _logged_steps(log)[-1]
        temps_seen += any(n.startswith(f".tmp-{proc.pid}-") for n in os.listdir(folder))
        ck = load_checkpoint(path)  # the last complete save, exactly
        assert ck.step >= last and ck.metadata == {"step": ck.step}
        for leaf in jax.tree_util.tree_leaves(ck.variables):
            np.testing.assert_array_equal(np.asarray(leaf), np.full(leaf.shape, ck.step, leaf.dtype))
        step = ck.step + 1
    save_checkpoint(path, ck.model, ck.variables, step=step)
    assert os.listdir(folder) == ["c.ckpt"]  # no temporary file survives the next save
    print(f"{kills} kills, {temps_seen} of them left a temporary file")
