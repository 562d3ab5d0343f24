"""Checkpoints of a Flax NNX module and its `nnx.Optimizer`: a pruned CNN saved with `save_checkpoint(path, module,
optimizer=opt, plans=[plan])` comes back from `load_checkpoint(path, model=<abstract unpruned module>, tx=tx)` as its
own class at the pruned widths, every variable and the optimizer state bit-identical; edited files and other models
are errors naming what differs.

One module, one plan and one saved file are built per module (abstract init plus seeded numpy leaves: no initializer
is compiled); the loaded module and the pruned one run the same jitted call.
"""

from __future__ import annotations

import hashlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CHECKPOINT_MAGIC, random_leaf, split_checkpoint
from flax import nnx

import jaxprune as jp


class Ema(nnx.Variable):
    """Per-channel state beside the parameters (sliced with its block's channels)."""


class Block(nnx.Module):
    def __init__(self, cin, cout, *, stride, rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, rngs=rngs)
        self.ema = Ema(jnp.zeros((cout,)))

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class SmallCNN(nnx.Module):
    """Conv-BN-relu x2, dropout (an RNG key and count in its state), a Linear head on pooled features."""

    def __init__(self, *, rngs, width=8, classes=10):
        self.b1 = Block(1, width, stride=1, rngs=rngs)
        self.b2 = Block(width, 2 * width, stride=2, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(2 * width, classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(self.b2(self.b1(x)).mean((1, 2))))


class OtherCNN(SmallCNN):
    pass


def _abstract(cls=SmallCNN, **kw):
    return nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **kw))


def _randomized(cls=SmallCNN, seed=0, **kw):
    graphdef, state = nnx.split(_abstract(cls, **kw))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.full(leaf.shape, 3, leaf.dtype)
        return random_leaf(rng, str(path[-2].key), leaf)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


_call = nnx.jit(lambda mod, inp: mod(inp))
TX = optax.adam(1e-3)


def _pure(tree):
    return jax.tree_util.tree_map(np.asarray, nnx.as_pure(nnx.state(tree)), is_leaf=lambda a: isinstance(a, jax.Array))


def _assert_same_state(a, b):
    """Equal pure states (PRNG keys compared by their key data), leaf by leaf, dtypes included."""

    def data(v):
        v = jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v
        return np.asarray(v)

    la, ta = jax.tree_util.tree_flatten_with_path(nnx.as_pure(nnx.state(a)))
    lb, tb = jax.tree_util.tree_flatten_with_path(nnx.as_pure(nnx.state(b)))
    assert ta == tb
    for (p, x), (_, y) in zip(la, lb, strict=True):
        assert x.dtype == y.dtype, jax.tree_util.keystr(p)
        np.testing.assert_array_equal(data(x), data(y), err_msg=jax.tree_util.keystr(p))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = _randomized()
    for b in (m.b1, m.b2):  # distinct per-channel values, to follow through the slicing
        b.ema[...] = jnp.arange(b.ema[...].shape[0], dtype=jnp.float32)
    m.eval()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    opt = nnx.Optimizer(m, TX, wrt=nnx.Param)
    for var in jax.tree_util.tree_leaves(opt.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable)):
        a = var.get_value()
        var.set_value(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape) + 1)  # a state worth restoring
    opt.step.set_value(jnp.asarray(7, opt.step.get_value().dtype))
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=x)
    m2, opt2 = jp.prune(m, plan, optimizer=opt)
    path = tmp_path_factory.mktemp("nnx") / "cnn.ckpt"
    jp.save_checkpoint(path, m2, optimizer=opt2, plans=[plan], metadata={"acc": 0.5})
    return path, m, m2, opt2, plan, x


@pytest.fixture(scope="module")
def loaded(saved):
    return jp.load_checkpoint(saved[0], model=_abstract(), tx=TX)


def test_pruned_module_and_optimizer_reload_exactly(saved, loaded):
    _, _, m2, opt2, plan, x = saved
    ck = loaded
    assert type(ck.model) is SmallCNN and ck.model is not m2
    assert (ck.step, ck.metadata, ck.plans[0].new_widths) == (7, {"acc": 0.5}, plan.new_widths)
    assert dict(plan.new_widths) == {"b1/conv": 4, "b2/conv": 8}
    assert (plan.made_for["class"], plan.made_for["name"]) == ("SmallCNN", "SmallCNN")  # the plan binds the class
    b1, b2 = ck.model.b1, ck.model.b2
    assert (b1.conv.out_features, b1.bn.num_features, b2.conv.in_features, b2.conv.out_features) == (4, 4, 4, 8)
    assert (ck.model.head.in_features, ck.model.head.kernel[...].shape) == (8, (8, 10))
    np.testing.assert_array_equal(b2.ema[...], np.array(plan.keep["b2/conv"], np.float32))  # the sliced custom state
    _assert_same_state(ck.model, m2)  # parameters, batch statistics, Ema, the dropout's RNG key and count
    _assert_same_state(ck.optimizer, opt2)  # step and Adam's count, mu, nu
    assert int(ck.optimizer.step[...]) == 7 and ck.opt_state is None
    ck.model.eval()
    np.testing.assert_array_equal(_call(ck.model, x), _call(m2, x))  # the same program on the same values
    jax.tree_util.tree_map(np.testing.assert_array_equal, ck.variables, jp.nnx_variables(m2))


@pytest.mark.slow
def test_a_fresh_process_reloads_the_pruned_module_and_its_optimizer(saved, tmp_path):
    """Another interpreter, which has the user's class (here: this file's `SmallCNN`) but nothing of this process,
    rebuilds the pruned module from the file and the unpruned abstract module: the same logits, bit for bit (the
    same program on the same values), and the optimizer's step."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from conftest import HANG_TIMEOUT_S

    path, _, m2, _, _, x = saved
    np.save(tmp_path / "x.npy", np.asarray(x))
    child = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import jaxprune as jp
        import test_nnx_checkpoint as t
        ck = jp.load_checkpoint({str(path)!r}, model=t._abstract(), tx=t.TX)
        ck.model.eval()
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "logits.npy")!r}, np.asarray(t._call(ck.model, x)))
        print(type(ck.model).__name__, int(ck.optimizer.step[...]), ck.model.b2.conv.out_features)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), *sys.path])}
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["SmallCNN", "7", "8"]
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), np.asarray(_call(m2, x)))


def test_an_orbax_directory_round_trips_module_and_optimizer(saved, tmp_path):
    _, _, m2, opt2, plan, _ = saved
    path = tmp_path / "cnn-orbax"
    jp.save_checkpoint(path, m2, optimizer=opt2, plans=[plan], format="orbax")
    header = jp.read_checkpoint_header(path)
    assert header["nnx"]["state"]["drop/rngs/key"] == [[], "key:threefry2x32"]
    assert header["payload"]["orbax"]["nnx_state"]["drop/rngs/key"] == [[2], "uint32"]  # stored as its key data
    ck = jp.load_checkpoint(path, model=_abstract(), tx=TX)
    assert type(ck.model) is SmallCNN and ck.step == 7
    _assert_same_state(ck.model, m2)
    _assert_same_state(ck.optimizer, opt2)
    # A flipped byte in the header (here: the NNX entry) is an error.
    head = path / "checkpoint.jaxprune"
    head.write_bytes(head.read_bytes().replace(b'"class": "SmallCNN"', b'"class": "SmallCNX"'))
    with pytest.raises(ValueError, match="is corrupted or was modified: its header's SHA-256 does not match"):
        jp.load_checkpoint(path, model=_abstract())


def test_loaded_module_prunes_and_saves_again_without_an_example_input(saved, loaded, tmp_path):
    _, _, _, _, plan, _ = saved
    module = loaded.model
    plan2 = jp.make_plan(module, prune_ratio={"b2/conv": 0.5})  # its trace came with it
    m3 = jp.prune(module, plan2)
    path = tmp_path / "twice.ckpt"
    jp.save_checkpoint(path, m3, plans=[plan, plan2])
    ck = jp.load_checkpoint(path, model=_abstract())
    assert ck.model.b2.conv.out_features == 4 and ck.optimizer is None and ck.step == 0
    _assert_same_state(ck.model, m3)


def test_an_unpruned_module_saves_with_an_example_input(tmp_path):
    m = _randomized(seed=3)
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"save_checkpoint on an NNX module needs an example input.*example_input=x"):
        jp.save_checkpoint(tmp_path / "a.ckpt", m)
    jp.save_checkpoint(tmp_path / "a.ckpt", m, example_input=x, step=3)
    header = jp.read_checkpoint_header(tmp_path / "a.ckpt")
    assert header["nnx"]["input"] == [[1, 8, 8, 1], "float32"] and header["nnx"]["optimizer"] is None
    ck = jp.load_checkpoint(tmp_path / "a.ckpt", model=_abstract())
    assert ck.step == 3 and ck.plans == ()
    _assert_same_state(ck.model, m)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: saving
# ----------------------------------------------------------------------------------------------------------------------
def test_save_refuses_wrong_arguments_for_an_nnx_module(saved, tmp_path):
    _, m, m2, opt2, plan, _ = saved
    p = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match="an NNX module carries its own variables"):
        jp.save_checkpoint(p, m2, jp.nnx_variables(m2))
    with pytest.raises(TypeError, match="pass its nnx.Optimizer as optimizer=, not variables or opt_state"):
        jp.save_checkpoint(p, m2, opt_state=nnx.as_pure(opt2.opt_state))
    with pytest.raises(TypeError, match="optimizer must be an nnx.Optimizer, got GradientTransformationExtraArgs"):
        jp.save_checkpoint(p, m2, optimizer=TX)
    with pytest.raises(ValueError, match="the plan history does not end at the model's widths"):
        jp.save_checkpoint(p, m, plans=[plan])  # the unpruned module with the plan that pruned it
    assert not p.exists()


def test_save_refuses_the_optimizer_of_another_module(saved, tmp_path):
    _, m, m2, _, _, _ = saved
    unpruned = nnx.Optimizer(m, TX, wrt=nnx.Param)
    with pytest.raises(
        ValueError, match=r"optimizer's state does not fit the parameters .*leaf \['opt_state'\]\[0\]\.mu\['b1'\]"
    ):
        jp.save_checkpoint(tmp_path / "x.ckpt", m2, optimizer=unpruned)


def test_save_refuses_optimizer_and_example_input_without_an_nnx_module(tmp_path):
    m = jp.models.vgg16()
    with pytest.raises(TypeError, match="optimizer= and example_input= are for an NNX module"):
        jp.save_checkpoint(tmp_path / "x.ckpt", m, {}, example_input=jnp.ones((1, 32, 32, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: loading into another model
# ----------------------------------------------------------------------------------------------------------------------
def test_load_needs_the_unpruned_module(saved):
    path = saved[0]
    with pytest.raises(
        ValueError, match=r"holds an NNX module of class SmallCNN: pass the unpruned module .*eval_shape"
    ):
        jp.load_checkpoint(path)
    with pytest.raises(TypeError, match="model= must be an nnx.Module, got dict"):
        jp.load_checkpoint(path, model={})


def test_load_refuses_a_module_of_another_class(saved):
    with pytest.raises(ValueError, match="holds an NNX module of class SmallCNN, the given model is a OtherCNN"):
        jp.load_checkpoint(saved[0], model=_abstract(OtherCNN))


def test_load_refuses_a_module_of_other_widths(saved):
    with pytest.raises(
        ValueError,
        match=r"not the one plan 0 was made for: .*made for SmallCNN .*b1/conv: 8 in the plan's, 6 in the given",
    ):
        jp.load_checkpoint(saved[0], model=_abstract(width=6))
    with pytest.raises(ValueError, match=r"not the one plan 0 was made for.*leaf params/head/bias had shape \(10,\)"):
        jp.load_checkpoint(saved[0], model=_abstract(classes=5))  # the same groups, another leaf shape
    with pytest.raises(ValueError, match="not the one plan 0 was made for"):
        jp.load_checkpoint(saved[0], model=saved[2])  # the pruned module: the plan does not fit it again


def test_load_refuses_an_optimizer_of_another_kind(saved):
    with pytest.raises(ValueError, match=r"optimizer state does not fit the given tx .*\['opt_state'\]\[0\]\.count"):
        jp.load_checkpoint(saved[0], model=_abstract(), tx=optax.sgd(0.1, momentum=0.9))
    with pytest.raises(ValueError, match="its optimizer was built with wrt=Param, the given wrt is BatchStat"):
        jp.load_checkpoint(saved[0], model=_abstract(), tx=TX, wrt=nnx.BatchStat)


def test_an_nnx_checkpoint_has_no_train_state(loaded):
    with pytest.raises(TypeError, match="an NNX checkpoint has no train state"):
        loaded.train_state(TX)


def test_a_traced_linen_checkpoint_is_not_an_nnx_one(tmp_path, saved):
    x = jnp.ones((2, 4))
    dense = nn.Dense(3)
    tm = jp.trace_model(dense, jax.eval_shape(dense.init, jax.random.key(0), x), x)
    v = {"params": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}}
    jp.save_checkpoint(tmp_path / "linen.ckpt", tm, v)
    with pytest.raises(ValueError, match="holds a traced model, not an NNX module: pass the unpruned TracedModel"):
        jp.load_checkpoint(tmp_path / "linen.ckpt", model=_abstract())
    with pytest.raises(TypeError, match="wrt= is for a checkpoint of an NNX module"):
        jp.load_checkpoint(tmp_path / "linen.ckpt", model=tm, wrt=nnx.Param)
    with pytest.raises(TypeError, match="model= must be an nnx.Module, got TracedModel"):
        jp.load_checkpoint(saved[0], model=tm)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: edited files
# ----------------------------------------------------------------------------------------------------------------------
MAGIC = CHECKPOINT_MAGIC
_split = split_checkpoint


def _forge(path, header, payload):
    """A file whose digest is right for what it holds (a consistent but edited file)."""
    line = json.dumps(header).encode() + b"\n"
    digest = hashlib.sha256(MAGIC + line + payload).hexdigest().encode()
    path.write_bytes(MAGIC + line + b"sha256:" + digest + b"\n" + payload)


def test_a_changed_byte_is_an_error(saved, tmp_path):
    raw = saved[0].read_bytes()
    edited = tmp_path / "edited.ckpt"
    edited.write_bytes(raw.replace(b'"class": "SmallCNN"', b'"class": "OtherCNN"'))
    with pytest.raises(ValueError, match="is corrupted or was modified: its SHA-256 over header and payload"):
        jp.load_checkpoint(edited, model=_abstract(OtherCNN))


def _edit(key, value):
    def edit(h):
        h["nnx"][key] = value

    return edit


def _drop_nnx(h):
    del h["nnx"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (_edit("class", 3), r"malformed header: 'nnx.class' must be a class name"),
        (_edit("input", [[2, 8], 1]), r"malformed header: 'nnx.input' must be \[shape"),
        (_edit("state", {"b1/ema": [[4], 5]}), r"malformed header: 'nnx.state' must map variable paths"),
        (_edit("optimizer", {"wrt": 1, "leaves": {}}), r"malformed header: 'nnx.optimizer.wrt'"),
        (_edit("extra", 1), r"malformed header: 'nnx' must be null or an object with exactly"),
        (_drop_nnx, r"holds a traced model, not an NNX module"),  # a consistent forgery: the header decides
    ],
)
def test_a_malformed_nnx_entry_is_a_value_error(saved, tmp_path, edit, match):
    header, payload = _split(saved[0])
    edit(header)
    forged = tmp_path / "forged.ckpt"
    _forge(forged, header, payload)
    with pytest.raises(ValueError, match=match):
        jp.load_checkpoint(forged, model=_abstract())


def test_an_edited_variable_table_names_the_leaf(saved, tmp_path):
    header, payload = _split(saved[0])
    header["nnx"]["state"]["b2/ema"] = [[16], "float32"]  # the unpruned width
    forged = tmp_path / "forged.ckpt"
    _forge(forged, header, payload)
    with pytest.raises(ValueError, match=r"other than parameters and batch statistics .*leaf b2/ema is \[\[16\]"):
        jp.load_checkpoint(forged, model=_abstract())


def test_a_plan_of_another_nnx_class_is_refused(saved):
    _, _, _, _, plan, x = saved
    other = _randomized(OtherCNN, seed=5)  # the same layers and shapes, another class
    other.eval()
    with pytest.raises(
        ValueError, match=r"made for SmallCNN \(SmallCNN\), not for the given OtherCNN .*classes differ"
    ):
        jp.prune(other, plan, example_input=x)
