"""Tests for jaxprune.checkpoint: exact round trips, pruned checkpoints loading in a fresh process, bit-identical
resume, atomic writes under a crash mid-save, and every kind of bad file.

Variables come from `jaxprune.random_variables` (no compile); only the resume test trains (ResNet-20, 128 digits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from conftest import HANG_TIMEOUT_S

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


@pytest.fixture
def saved(tmp_path, pruned, plan, adam_state):
    m, v = pruned
    _, st = adam_state
    path = tmp_path / "pruned.ckpt"
    save_checkpoint(
        path, m, v, opt_state=st, step=17, rng=jax.random.key(42), plans=[plan], metadata={"test_accuracy": 0.99}
    )
    return path


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
    assert header == read_checkpoint_header(saved)
    assert header["version"] == CHECKPOINT_FORMAT_VERSION == 1
    assert header["model"]["widths"] == [8, 8, 8, 32, 32, 32, 48, 64, 64]
    assert header["variables"]["params/stage1_block1_conv2/kernel"] == [[3, 3, 8, 16], "float32"]
    assert header["step"] == 17 and header["has_opt_state"] is True
    assert header["payload"]["bytes"] == os.path.getsize(saved) - len(b"JAXPRUNE-CHECKPOINT\n") - len(
        json.dumps(header, sort_keys=True).encode() + b"\n"
    )


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
def test_pruned_checkpoint_loads_in_a_fresh_process_with_no_user_code(saved, pruned):
    m, v = pruned
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.save(saved.parent / "x.npy", x)
    code = textwrap.dedent(
        f"""
        import json, numpy as np, jax
        from jaxprune.checkpoint import load_checkpoint
        ck = load_checkpoint({str(saved)!r})
        x = np.load({str(saved.parent / "x.npy")!r})
        y = jax.jit(lambda v, x: ck.model.apply(v, x, train=False))(ck.variables, x)
        print("RESULT " + json.dumps({{"config": ck.model.config(), "logits": np.asarray(y).tolist(),
                                       "plans": [p.new_widths for p in ck.plans]}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
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
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, model, variables):
    from jaxprune import train
    from jaxprune.data import load_digits

    ds = load_digits()
    data = (ds.x_train[:128], ds.y_train[:128])
    tx = train.paper_sgd(epochs=2, steps_per_epoch=4, learning_rate=0.05)  # the schedule spans the split
    start = train.TrainState.create(model, variables, tx, seed=7)
    kw = dict(batch_size=32, seed=11, augment="cifar", progress=False)
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


def test_a_process_killed_mid_save_leaves_the_last_good_checkpoint(saved):
    """A hard kill (no cleanup) during the payload write: the target is untouched, only a temporary file is left."""
    before = saved.read_bytes()
    code = textwrap.dedent(
        f"""
        import os, jaxprune as jp
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
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert saved.read_bytes() == before
    leftovers = [n for n in os.listdir(saved.parent) if n != "pruned.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
    assert load_checkpoint(saved).step == 17


# ----------------------------------------------------------------------------------------------------------------------
# Bad files and mismatches: each a clear error, never a partial load
# ----------------------------------------------------------------------------------------------------------------------
def _split(path):
    raw = path.read_bytes()
    magic_end = raw.index(b"\n") + 1
    header_end = raw.index(b"\n", magic_end) + 1
    return raw[:magic_end], json.loads(raw[magic_end:header_end]), raw[header_end:]


def _rewrite(path, header, payload, magic=b"JAXPRUNE-CHECKPOINT\n"):
    path.write_bytes(magic + json.dumps(header).encode() + b"\n" + payload)


def test_truncated_file_is_an_error(saved):
    raw = saved.read_bytes()
    saved.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match="is truncated or has trailing bytes"):
        load_checkpoint(saved)
    saved.write_bytes(raw[:30])  # cut inside the header
    with pytest.raises(ValueError, match="truncated or corrupted: its JSON header line never ends"):
        load_checkpoint(saved)


def test_corrupted_payload_byte_is_an_error(saved):
    raw = bytearray(saved.read_bytes())
    raw[-5000] ^= 0x01
    saved.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="is corrupted: payload SHA-256"):
        load_checkpoint(saved)


def test_corrupted_header_and_wrong_magic_are_errors(saved, tmp_path):
    magic, header, payload = _split(saved)
    saved.write_bytes(magic + b'{"format": "jaxprune.checkpoint", "vers\n' + payload)
    with pytest.raises(ValueError, match="its JSON header does not parse"):
        load_checkpoint(saved)
    other = tmp_path / "plan.json"
    other.write_text('{"format": "jaxprune.PruningPlan"}\n')
    with pytest.raises(ValueError, match="is not a jaxprune checkpoint"):
        load_checkpoint(other)
    del header["payload"]
    _rewrite(saved, header, payload)
    with pytest.raises(ValueError, match="its header has no 'payload' entry"):
        load_checkpoint(saved)


def test_unknown_format_version_is_an_error(saved):
    _, header, payload = _split(saved)
    header["version"] = 2
    _rewrite(saved, header, payload)
    with pytest.raises(ValueError, match="has format version 2; this jaxprune reads version 1"):
        load_checkpoint(saved)
    with pytest.raises(ValueError, match="has format version 2"):
        read_checkpoint_header(saved)


def test_config_edited_to_other_widths_is_caught_by_the_shape_check(saved):
    _, header, payload = _split(saved)
    header["model"]["widths"][6] = 64  # claim stage3_block1_conv1 is unpruned
    _rewrite(saved, header, payload)
    with pytest.raises(
        ValueError, match=r"leaf batch_stats/stage3_block1_bn1/mean has shape \(48,\), the model's widths need \(64,\)"
    ):
        load_checkpoint(saved)
    header["model"]["family"] = "alexnet"
    _rewrite(saved, header, payload)
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
    with pytest.raises(TypeError, match="has no config"):
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
