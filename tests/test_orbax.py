"""Orbax checkpoint directories (`save_checkpoint(..., format="orbax")`): exact round trips, a fresh process that
knows only the directory, tamper evidence (orbax's metadata included), shapes checked before any array is restored,
and arrays sharded over 4 host devices.

A pruned ResNet-20 with SGD-momentum state, saved once per module; the 4-device case (a pruned ResNet-8) runs in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune import checkpoint
from jaxprune._orbax import HEADER_FILE

pytest.importorskip("orbax.checkpoint")


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def pruned():
    m = jp.models.resnet20()
    v = jp.random_variables(m, seed=3)
    plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.5, "stage3": 0.25}, round_to=8)
    m2, v2 = jp.prune(m, v, plan)
    tx = optax.sgd(0.1, momentum=0.9)
    st = tx.init(v2["params"])
    st = jax.tree_util.tree_map(lambda a: a + 0.5 if a.ndim else a, st)  # non-zero momentum traces
    return m2, v2, plan, tx, st


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, pruned):
    m, v, plan, _, st = pruned
    d = tmp_path_factory.mktemp("orbax") / "ckpt"
    jp.save_checkpoint(
        d, m, v, opt_state=st, step=41, rng=jax.random.key(9), plans=[plan], metadata={"acc": 0.75}, format="orbax"
    )
    return d


@pytest.fixture
def copy(saved_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(saved_dir, d)
    return d


def test_round_trip_is_exact(saved_dir, pruned):
    m, v, plan, tx, st = pruned
    assert sorted(os.listdir(saved_dir)) == ["arrays", HEADER_FILE]
    ck = jp.load_checkpoint(saved_dir, tx=tx)
    assert ck.model == m and ck.step == 41 and ck.plans == (plan,) and ck.metadata == {"acc": 0.75}
    assert_trees_equal(ck.variables, v)
    assert_trees_equal(ck.opt_state, st)
    np.testing.assert_array_equal(jax.random.key_data(ck.rng), jax.random.key_data(jax.random.key(9)))
    assert ck.plans[0].made_for == plan.made_for


def test_the_header_and_the_cli_folder_lookup_read_an_orbax_directory(saved_dir, pruned):
    from jaxprune.demo import checkpoint_file

    header = jp.read_checkpoint_header(saved_dir)
    assert header["step"] == 41 and header["metadata"] == {"acc": 0.75}
    assert header["model"] == pruned[0].config()
    assert checkpoint_file(saved_dir) == saved_dir  # `--checkpoint DIR` of the CLI takes the directory itself


def test_a_fresh_process_rebuilds_the_pruned_model_from_the_directory_alone(fresh_process, pruned):
    m, v, _, _, st = pruned
    got = np.load(fresh_process / "resnet.npz")
    assert tuple(got["widths"]) == m.widths and int(got["step"]) == 41
    mine = jax.tree_util.tree_leaves(v) + jax.tree_util.tree_leaves(jax.device_get(optax_state_dict(st)))
    assert len(got.files) == 3 + len(mine)
    for i, a in enumerate(mine):
        np.testing.assert_array_equal(got[f"leaf{i}"], np.asarray(a))
    x = np.linspace(-1, 1, 2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
    # Jitted on both sides: one compile instead of an eager one per op. Same program, same bits.
    np.testing.assert_array_equal(got["logits"], np.asarray(jax.jit(lambda v, x: m.apply(v, x, train=False))(v, x)))


def optax_state_dict(st):
    from flax import serialization

    return serialization.to_state_dict(st)


# -- tamper evidence and mismatches: each a ValueError naming the directory --------------------------------------
def _flip(path, at: int = 10):
    raw = bytearray(path.read_bytes())
    raw[min(at, len(raw) - 1)] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt"])
def test_a_flipped_byte_in_orbax_metadata_is_an_error(copy, name):
    _flip(copy / "arrays" / name)
    with pytest.raises(
        ValueError, match=f"orbax checkpoint {copy} is corrupted or was modified: arrays/{name} changed"
    ):
        jp.load_checkpoint(copy)


def test_a_flipped_byte_in_the_array_data_is_an_error(copy):
    data = sorted(p for p in (copy / "arrays").rglob("*") if p.is_file() and p.parent.name == "d")
    _flip(data[0], at=100)
    with pytest.raises(ValueError, match="is corrupted or was modified: arrays/(.*/)?d/[0-9a-f]+ changed"):
        jp.load_checkpoint(copy)


def test_a_flipped_byte_in_the_header_is_an_error(copy):
    header = copy / HEADER_FILE
    raw = header.read_bytes()
    header.write_bytes(raw.replace(b'"step": 41', b'"step": 42'))
    with pytest.raises(ValueError, match=f"orbax checkpoint {copy} is corrupted or was modified: its header's SHA-256"):
        jp.load_checkpoint(copy)


def test_added_or_missing_files_are_errors(copy):
    (copy / "arrays" / "extra").write_text("x")
    with pytest.raises(ValueError, match=r"incomplete or was modified: files added or missing \['extra'\]"):
        jp.load_checkpoint(copy)
    (copy / "arrays" / "extra").unlink()
    (copy / "arrays" / "_METADATA").unlink()
    with pytest.raises(ValueError, match=r"files added or missing \['_METADATA'\]"):
        jp.load_checkpoint(copy)


def _forge(d, edit):
    """Rewrites the header with a right digest for what it holds (a consistent but edited directory)."""
    raw = (d / HEADER_FILE).read_bytes().split(b"\n")
    header = json.loads(raw[1])
    edit(header)
    line, digest = checkpoint._encode_header(header)
    (d / HEADER_FILE).write_bytes(checkpoint._MAGIC + line + digest)


def test_a_table_that_does_not_fit_the_model_is_refused_before_any_array_is_read(copy, monkeypatch):
    from jaxprune import _orbax

    def edit(h):
        h["variables"]["params/stage1_block1_conv1/kernel"][0] = [3, 3, 16, 16]

    _forge(copy, edit)
    monkeypatch.setattr(_orbax, "read", lambda *a, **k: pytest.fail("orbax was asked to restore"))
    with pytest.raises(
        ValueError, match=r"leaf params/stage1_block1_conv1/kernel has shape \(3, 3, 16, 16\), the model's"
    ):
        jp.load_checkpoint(copy)


def test_a_restore_target_of_another_size_is_an_error_never_a_partial_load(copy):
    # The header claims a wider model, consistently (config and tables): orbax holds the narrower arrays.
    def edit(h):
        h["model"]["widths"][0] = 16
        h["plans"] = []
        for leaf in ("params/stage1_block1_conv1/kernel",):
            h["variables"][leaf][0] = [3, 3, 16, 16]
        for leaf in ("params/stage1_block1_conv2/kernel",):
            h["variables"][leaf][0] = [3, 3, 16, 16]
        for leaf in ("params/stage1_block1_bn1/scale", "params/stage1_block1_bn1/bias"):
            h["variables"][leaf][0] = [16]
        for leaf in ("batch_stats/stage1_block1_bn1/mean", "batch_stats/stage1_block1_bn1/var"):
            h["variables"][leaf][0] = [16]

    _forge(copy, edit)
    with pytest.raises(ValueError, match=f"orbax could not restore checkpoint directory {copy}"):
        jp.load_checkpoint(copy)


def test_another_expected_model_is_an_error(saved_dir):
    with pytest.raises(ValueError, match=r"holds a different model than expected: widths\[0\]: checkpoint 8"):
        jp.load_checkpoint(saved_dir, model=jp.models.resnet20())


def test_malformed_orbax_payload_is_an_error(copy):
    _forge(copy, lambda h: h["payload"]["orbax"].update(files=[]))
    with pytest.raises(ValueError, match=r"'payload.orbax.files' must map file names to SHA-256"):
        jp.load_checkpoint(copy)


def test_unknown_format_and_occupied_path(tmp_path, pruned):
    m, v, *_ = pruned
    with pytest.raises(ValueError, match="unknown checkpoint format 'zarr'; valid formats: 'file', 'orbax'"):
        jp.save_checkpoint(tmp_path / "c", m, v, format="zarr")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a jaxprune orbax directory"):
        jp.save_checkpoint(tmp_path / "taken", m, v, format="orbax")
    assert os.listdir(tmp_path / "taken") == ["mine.txt"]


def test_saving_again_replaces_the_directory_whole(copy, pruned):
    m, v, *_ = pruned
    jp.save_checkpoint(copy, m, v, step=7, format="orbax")
    ck = jp.load_checkpoint(copy)
    assert ck.step == 7 and ck.raw_opt_state is None
    assert sorted(os.listdir(copy.parent)) == ["ckpt"]  # no ckpt.partial, no ckpt.old


# -- 4 host devices ------------------------------------------------------------------------------------------------
_SHARDED = textwrap.dedent(
    """
    import sys, jax, numpy as np, optax, jaxprune as jp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))

    def spec(shape):  # the last axis over the 4 devices where it divides, else replicated
        return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), "d") if shape and shape[-1] % 4 == 0 else P())

    m = jp.models.CifarResNet(depth=8, widths=(16, 32, 64))  # ResNet-8: a third of ResNet-20's leaves and layers
    v = jp.random_variables(m, seed=3)
    plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.5}, round_to=8)
    m2, v2 = jp.prune(m, v, plan)
    tx = optax.sgd(0.1, momentum=0.9)
    host_st = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.5, tx.init(v2["params"]))
    x = np.linspace(-1, 1, 2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    sv = jax.tree_util.tree_map(lambda a: jax.device_put(a, spec(a.shape)), v2)
    st = jax.tree_util.tree_map(lambda a: jax.device_put(a, spec(a.shape)), host_st)
    assert any(len(a.sharding.device_set) == 4 and not a.is_fully_replicated for a in jax.tree_util.tree_leaves(sv))
    jp.save_checkpoint(sys.argv[1], m2, sv, opt_state=st, step=3, plans=[plan], format="orbax")
    del sv, st  # restored from the directory alone (a fresh process does that in the 1-device tests above)
    ck = jp.load_checkpoint(sys.argv[1], tx=tx, sharding=lambda leaf, shape: spec(shape))
    for a, b in zip(jax.tree_util.tree_leaves(ck.variables), jax.tree_util.tree_leaves(v2), strict=True):
        assert a.sharding == spec(a.shape), (a.sharding, a.shape)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(ck.opt_state), jax.tree_util.tree_leaves(host_st), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    host = jax.tree_util.tree_map(np.asarray, ck.variables)
    # Jitted on both sides (one compile, not one per op, ~9 s less CPU here): same program, same bits.
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v, x: ck.model.apply(v, x, train=False))(host, x)),
                                  np.asarray(jax.jit(lambda v, x: m2.apply(v, x, train=False))(v2, x)))
    assert ck.model.widths == m2.widths and ck.step == 3
    try:
        jp.load_checkpoint(sys.argv[1], model=m)
    except ValueError as e:
        assert "different model than expected" in str(e)
    else:
        raise AssertionError("a mismatched restore target loaded")
    print("ok")
    """
)


@pytest.mark.slow
def test_arrays_sharded_over_4_host_devices_round_trip(tmp_path):
    """Saved sharded over 4 host devices and restored sharded again, in one fresh process with 4 devices (that a
    process knowing only the directory restores it is proven with 1 device above, without this one's 5 s import)."""
    # Appended to the session's XLA_FLAGS (conftest: LLVM optimisation and fusion emitters off), else lost here.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    d = str(tmp_path / "sharded")
    r = subprocess.run([sys.executable, "-c", _SHARDED, d], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]


# -- a user's own model: a traced Linen module --------------------------------------------------------------------
_USER_MODEL = textwrap.dedent(
    """
    import jax, numpy as np, flax.linen as nn, jaxprune as jp

    class SmallCNN(nn.Module):
        width: int = 16

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(self.width, (3, 3), name="c1")(x))
            x = nn.relu(nn.Conv(32, (3, 3), name="c2")(x))
            return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))

    def traced(width=16):
        m = SmallCNN(width)
        x = np.linspace(-1, 1, 2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
        v = m.init(jax.random.key(0), x)
        return jp.trace_model(m, v, x), v, x
    """
)


@pytest.fixture(scope="module")
def user_model():
    scope: dict = {}
    exec(_USER_MODEL, scope)  # the same source the fresh process runs
    tm, v, x = scope["traced"]()
    plan = jp.make_plan(tm, v, prune_ratio=0.5)
    tm2, v2 = jp.prune(tm, v, plan)
    return scope, tm, tm2, v2, plan, x


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory, saved_dir, user_model):
    """One fresh process (one jax import) loads every checkpoint the fresh-process tests check; the results come
    back as files and each test asserts on its own. First the pruned ResNet-20 from its directory alone, before any
    user code exists in the process; then the user's source (the traced Linen model) and its file and orbax
    checkpoints, each loaded with the unpruned model."""
    _, _, tm2, v2, plan, _ = user_model
    out = tmp_path_factory.mktemp("fresh")
    paths = {"file": out / "user.ckpt", "orbax": out / "user"}
    for fmt, path in paths.items():
        jp.save_checkpoint(path, tm2, v2, plans=[plan], step=5, format=fmt)
    user_paths = {fmt: str(path) for fmt, path in paths.items()}
    code = (
        textwrap.dedent(
            f"""
            import json, jax, numpy as np, jaxprune as jp
            ck = jp.load_checkpoint({str(saved_dir)!r})
            x = np.linspace(-1, 1, 2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
            logits = jax.jit(lambda v, x: ck.model.apply(v, x, train=False))(ck.variables, x)
            leaves = jax.tree_util.tree_leaves(ck.variables) + jax.tree_util.tree_leaves(ck.raw_opt_state)
            np.savez({str(out / "resnet.npz")!r}, logits=np.asarray(logits), widths=np.asarray(ck.model.widths),
                     step=ck.step, **{{f"leaf{{i}}": np.asarray(a) for i, a in enumerate(leaves)}})
            """
        )
        + _USER_MODEL
        + textwrap.dedent(
            f"""
            tm, _, x = traced()
            for fmt, path in {user_paths!r}.items():
                ck = jp.load_checkpoint(path, model=tm)  # the unpruned model; the plans rebuild the rest
                np.save({str(out)!r} + f"/user_{{fmt}}.npy", np.asarray(jax.jit(ck.model.apply)(ck.variables, x)))
                with open({str(out)!r} + f"/user_{{fmt}}.json", "w") as f:
                    json.dump({{"step": ck.step, "new_widths": dict(ck.plans[0].new_widths)}}, f)
            """
        )
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("fmt", ["file", "orbax"])
def test_a_traced_linen_model_reloads_in_a_fresh_process(fresh_process, user_model, fmt):
    _, _, tm2, v2, plan, x = user_model
    got = json.loads((fresh_process / f"user_{fmt}.json").read_text())
    assert got == {"step": 5, "new_widths": dict(plan.new_widths)}
    # Jitted on both sides (one compile, not one per op): same program, same bits.
    np.testing.assert_array_equal(np.load(fresh_process / f"user_{fmt}.npy"), np.asarray(jax.jit(tm2.apply)(v2, x)))


def test_a_user_model_checkpoint_needs_its_unpruned_model(tmp_path, user_model):
    scope, tm, tm2, v2, plan, _ = user_model
    path = tmp_path / "user.ckpt"
    jp.save_checkpoint(path, tm2, v2, plans=[plan])
    with pytest.raises(ValueError, match="holds a user model .* pass the unpruned model it was pruned from as model="):
        jp.load_checkpoint(path)
    other, _, _ = scope["traced"](width=24)
    with pytest.raises(ValueError, match="the given model is not the one plan 0 was made for"):
        jp.load_checkpoint(path, model=other)
    with pytest.raises(ValueError, match="is not the one plan 0 was made for: plan does not match the model"):
        jp.load_checkpoint(path, model=tm2)  # already pruned: the plan does not fit it
    ck = jp.load_checkpoint(path, model=tm)
    assert_trees_equal(ck.variables, v2)
