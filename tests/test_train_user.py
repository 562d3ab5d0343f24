"""`jaxprune.train` on a user's own NNX and Equinox modules: `TrainState.create(module, tx)` /
`TrainState.create(model, tx, state=state)` train with `fit`, give the user's class back (`to_model`), are pruned with
`prune_state` and fine-tuned, and one step equals the user's own optax loop.

Cheap by construction: two tiny CNNs (4 and 8 channels, 8x8 digits, 256 training images), built abstractly and filled
with seeded random leaves (eager init would compile every initializer), one optimizer object shared by every state so
that states of one architecture share their compiled steps, and module-scoped runs reused by the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_eqx_tree, random_leaf
from flax import nnx

import jaxprune as jp
from jaxprune import train
from jaxprune.data import batches
from jaxprune.strategies import kept_count

eqx = pytest.importorskip("equinox")

N_TRAIN, N_TEST, BATCH = 256, 64, 64
TX = train.sgd(0.1)  # one object: the optimizer is static in the state, so one compiled step per architecture


@pytest.fixture(scope="module")
def digits():
    ds = jp.data.load_digits(image_size=8, channels=1)
    return ds.x_train[:N_TRAIN], ds.y_train[:N_TRAIN], ds.x_test[:N_TEST], ds.y_test[:N_TEST]


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ----------------------------------------------------------------------------------------------------------------------
# The user's models
# ----------------------------------------------------------------------------------------------------------------------
class FeatureMean(nnx.Variable):
    """A custom variable: a running mean of the pooled features, per channel, updated in training mode."""


class NNXCNN(nnx.Module):
    """Conv-BN-relu x2 (4 and 8 channels, the second strided), Dropout on the pooled features, a Linear head; NHWC.
    Its own `FeatureMean` variable is updated in training mode (``module.train()`` sets `use_running_average`)."""

    def __init__(self, *, rngs):
        self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.b1 = nnx.BatchNorm(4, rngs=rngs)
        self.c2 = nnx.Conv(4, 8, (3, 3), strides=2, rngs=rngs)
        self.b2 = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)
        self.feature_mean = FeatureMean(jnp.zeros((8,)))
        self.use_running_average = True

    def __call__(self, x):
        x = nnx.relu(self.b1(self.c1(x)))
        x = nnx.relu(self.b2(self.c2(x))).mean((1, 2))
        if not self.use_running_average:
            self.feature_mean[...] = 0.9 * self.feature_mean[...] + 0.1 * x.mean(0)
        return self.head(self.drop(x))


class EqxCNN(eqx.Module):
    """The same network in Equinox: one (C, H, W) example, BatchNorm over the vmapped axis "batch"."""

    c1: eqx.nn.Conv2d
    b1: eqx.nn.BatchNorm
    c2: eqx.nn.Conv2d
    b2: eqx.nn.BatchNorm
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.c1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k[0])
        self.b1 = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")
        self.c2 = eqx.nn.Conv2d(4, 8, 3, stride=2, padding=1, key=k[1])
        self.b2 = eqx.nn.BatchNorm(8, axis_name="batch", mode="batch")
        self.head = eqx.nn.Linear(8, 10, key=k[2])

    def __call__(self, x, state):
        x, state = self.b1(self.c1(x), state)
        x, state = self.b2(self.c2(jax.nn.relu(x)), state)
        return self.head(jax.nn.relu(x).mean((1, 2))), state


def _nnx_module(seed=0):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: NNXCNN(rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-2].key) if len(path) > 1 else ""
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jax.random.key(seed) if name == "key" else jnp.zeros(leaf.shape, leaf.dtype)
        return random_leaf(rng, name, leaf)

    m = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
    m.eval()  # traced (make_plan) in inference mode; the train state sets training mode itself
    return m


def _eqx_model(seed=0, make=EqxCNN):
    model, state = eqx.filter_eval_shape(eqx.nn.make_with_state(make), jax.random.key(0))
    rng = np.random.default_rng(seed)  # one sequence: the model's leaves, then the state's
    return random_eqx_tree(model, rng), random_eqx_tree(state, rng)


def _chw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _leaves(tree):
    """Every array leaf as numpy (typed PRNG keys as their key data)."""
    out = []
    for a in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        out.append(np.asarray(a))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Shared runs: create, fit 2 epochs, plan on the module given to create
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nnx_run(digits):
    x, y, xt, yt = digits
    m = _nnx_module()
    before = _leaves(nnx.state(m))
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=jnp.asarray(x[:1]))
    s0 = train.TrainState.create(m, TX)
    s, history = train.fit(s0, (x, y, xt, yt), epochs=2, batch_size=BATCH, progress=False)
    return {"module": m, "before": before, "plan": plan, "s0": s0, "s": s, "history": history}


@pytest.fixture(scope="module")
def eqx_run(digits):
    x, y, xt, yt = digits
    x, xt = _chw(x), _chw(xt)
    m, st = _eqx_model()
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=jnp.asarray(x[0]), state=st)
    s0 = train.TrainState.create(m, TX, state=st)
    s, history = train.fit(s0, (x, y, xt, yt), epochs=2, batch_size=BATCH, progress=False)
    return {"module": m, "state": st, "plan": plan, "s0": s0, "s": s, "history": history, "x": x}


# ----------------------------------------------------------------------------------------------------------------------
# NNX
# ----------------------------------------------------------------------------------------------------------------------
def test_nnx_fit_lowers_the_loss_and_gives_back_the_users_module(nnx_run, digits):
    x, y, _, _ = digits
    s0, s, m = nnx_run["s0"], nnx_run["s"], nnx_run["module"]
    assert int(s.step) == 2 * (N_TRAIN // BATCH)
    assert train.evaluate(s, x, y, batch_size=BATCH)["loss"] < train.evaluate(s0, x, y, batch_size=BATCH)["loss"]
    trained = s.to_model()
    assert type(trained) is NNXCNN and trained is not m
    # The batch statistics moved, the dropout stream advanced, the given module is untouched.
    assert not np.allclose(np.asarray(trained.b1.mean[...]), np.asarray(m.b1.mean[...]))
    assert int(trained.drop.rngs.count[...]) == int(m.drop.rngs.count[...]) + 2 * (N_TRAIN // BATCH)
    assert np.all(np.asarray(trained.feature_mean[...]) != np.asarray(m.feature_mean[...]))  # the custom variable
    for a, b in zip(_leaves(nnx.state(m)), nnx_run["before"], strict=True):
        np.testing.assert_array_equal(a, b)
    # The exported module is the state's model: same logits in inference mode (the same ops: float32 1e-6).
    xb = jnp.asarray(x[:8])
    np.testing.assert_allclose(trained(xb), s.model.apply(s.variables, xb), rtol=1e-6, atol=1e-6)


def test_nnx_prune_state_equals_prune_of_the_exported_module_and_fine_tunes(nnx_run, digits):
    x, y, _, _ = digits
    s, plan = nnx_run["s"], nnx_run["plan"]
    p = train.prune_state(s, plan)
    pruned = p.to_model()
    assert type(pruned) is NNXCNN
    assert (pruned.c1.out_features, pruned.c2.in_features, pruned.c2.out_features, pruned.b2.num_features) == (
        2,
        2,
        4,
        4,
    )
    assert p.opt_state[1].trace["c2"]["kernel"].shape == (3, 3, 2, 4)  # momentum sliced like the kernel
    keep = np.asarray(plan.keep["c2"])  # the custom per-channel variable keeps the kept channels' entries
    np.testing.assert_array_equal(pruned.feature_mean[...], np.asarray(s.to_model().feature_mean[...])[keep])
    ref = jp.prune(s.to_model(), plan, example_input=jnp.asarray(x[:1]))
    xb = jnp.asarray(x[:8])
    # The same pruned arrays through the same layers: float32 1e-6.
    np.testing.assert_allclose(p.model.apply(p.variables, xb), ref(xb), rtol=1e-6, atol=1e-6)
    tuned, history = train.finetune(p, (x, y), epochs=1, tx=TX, batch_size=BATCH, progress=False)
    assert int(tuned.step) == int(s.step) + N_TRAIN // BATCH and np.isfinite(history[-1]["train_loss"])
    assert not np.allclose(np.asarray(tuned.to_model().b2.mean[...]), np.asarray(pruned.b2.mean[...]))


def _first_batch(x, y):
    """The batch `fit` trains its first step on (epoch 0 of seed 0, shuffled as `fit` shuffles)."""
    xb, yb = next(batches(x, y, BATCH, shuffle=True, seed=np.random.default_rng([0, 0]), drop_last=True))
    return jnp.asarray(xb), jnp.asarray(yb)


def test_nnx_one_step_equals_the_users_nnx_optimizer_step(nnx_run, digits):
    x, y, _, _ = digits
    m = nnx_run["module"]
    s1, _ = train.fit(nnx_run["s0"], (x[:BATCH], y[:BATCH]), epochs=1, batch_size=BATCH, progress=False)  # one step
    assert int(s1.step) == 1
    xb, yb = _first_batch(x[:BATCH], y[:BATCH])

    mine = nnx.clone(m)
    mine.train()
    opt = nnx.Optimizer(mine, TX, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xs, ys):
        grads = nnx.grad(lambda mod: _ce(mod(xs), ys))(model)
        optimizer.update(model, grads)

    step(mine, opt, xb, yb)
    got = s1.to_model()
    # float32, two convs and a head, one jitted step each: the same ops, XLA may order reductions differently (1e-5).
    for a, b in zip(_leaves(nnx.state(got, nnx.Param)), _leaves(nnx.state(mine, nnx.Param)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for kind in (nnx.BatchStat, FeatureMean):
        for a, b in zip(_leaves(nnx.state(got, kind)), _leaves(nnx.state(mine, kind)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert int(got.drop.rngs.count[...]) == int(mine.drop.rngs.count[...]) == 1  # one dropout draw, the same key


def test_nnx_iterative_prune_two_rounds_reaches_the_final_ratio(nnx_run, digits):
    x, y, _, _ = digits
    s = nnx_run["s"]
    out, rounds = train.iterative_prune(
        s, (x, y), "linear", final_ratio=0.5, steps=2, tx=TX, batch_size=BATCH, progress=False
    )
    assert [r["widths"] for r in rounds] == [{"c1": 3, "c2": 6}, {"c1": 2, "c2": 4}]
    assert rounds[-1]["widths"] == {"c1": kept_count(4, 0.5), "c2": kept_count(8, 0.5)}
    final = out.to_model()
    assert type(final) is NNXCNN and (final.c1.out_features, final.c2.out_features) == (2, 4)
    assert rounds[0]["macs_before"] > rounds[0]["macs_after"] > rounds[1]["macs_after"]


# ----------------------------------------------------------------------------------------------------------------------
# Equinox
# ----------------------------------------------------------------------------------------------------------------------
def test_eqx_fit_lowers_the_loss_and_gives_back_the_users_model(eqx_run, digits):
    _, y, _, _ = digits
    x, s0, s, m = eqx_run["x"], eqx_run["s0"], eqx_run["s"], eqx_run["module"]
    assert train.evaluate(s, x, y, batch_size=BATCH)["loss"] < train.evaluate(s0, x, y, batch_size=BATCH)["loss"]
    trained, state = s.to_model()
    assert type(trained) is EqxCNN and trained is not m and isinstance(state, eqx.nn.State)
    mean_before = eqx_run["state"].get(m.b1.batch_state_index)[0]
    assert not np.allclose(np.asarray(state.get(trained.b1.batch_state_index)[0]), np.asarray(mean_before))
    assert not np.allclose(np.asarray(trained.c1.weight), np.asarray(m.c1.weight))
    # The exported model in inference mode, vmapped as its user calls it, gives the state's logits (float32 1e-6).
    xb = jnp.asarray(x[:8])
    inf = eqx.nn.inference_mode(trained)
    want, _ = jax.vmap(inf, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xb, state)
    np.testing.assert_allclose(s.model.apply(s.variables, xb), want, rtol=1e-6, atol=1e-6)


def test_eqx_prune_state_equals_prune_of_the_exported_model_and_fine_tunes(eqx_run, digits):
    _, y, _, _ = digits
    x, s, plan = eqx_run["x"], eqx_run["s"], eqx_run["plan"]
    p = train.prune_state(s, plan)
    pruned, pstate = p.to_model()
    assert type(pruned) is EqxCNN
    assert (pruned.c1.out_channels, pruned.c2.in_channels, pruned.c2.out_channels, pruned.b2.input_size) == (2, 2, 4, 4)
    trained, state = s.to_model()
    ref, ref_state = jp.prune(trained, plan, state=state, example_input=jnp.asarray(x[0]))
    # An optax state over the params dict (the train state's layout) is sliced by prune_like_params of the module.
    sliced = jp.prune_like_params(s.opt_state, trained, plan, state=state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, sliced, p.opt_state)
    xb = jnp.asarray(x[:8])
    want, _ = jax.vmap(eqx.nn.inference_mode(ref), axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        xb, ref_state
    )
    # The same pruned arrays through the same layers: float32 1e-6.
    np.testing.assert_allclose(p.model.apply(p.variables, xb), want, rtol=1e-6, atol=1e-6)
    tuned, history = train.finetune(p, (x, y), epochs=1, tx=TX, batch_size=BATCH, progress=False)
    assert int(tuned.step) == int(s.step) + N_TRAIN // BATCH and np.isfinite(history[-1]["train_loss"])
    tuned_model, tuned_state = tuned.to_model()
    assert not np.allclose(
        np.asarray(tuned_state.get(tuned_model.b2.batch_state_index)[0]),
        np.asarray(pstate.get(pruned.b2.batch_state_index)[0]),
    )


def test_eqx_one_step_equals_a_hand_written_filter_value_and_grad_step(eqx_run, digits):
    _, y, _, _ = digits
    x, m, st = eqx_run["x"], eqx_run["module"], eqx_run["state"]
    s1, _ = train.fit(eqx_run["s0"], (x[:BATCH], y[:BATCH]), epochs=1, batch_size=BATCH, progress=False)  # one step
    assert int(s1.step) == 1
    xb, yb = _first_batch(x[:BATCH], y[:BATCH])

    @eqx.filter_jit
    def step(model, state, opt_state, xs, ys):
        def loss(mod, sta):
            logits, sta = jax.vmap(mod, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xs, sta)
            return _ce(logits, ys), sta

        (_, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state)
        updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, opt_state

    mine, mine_state, _ = step(m, st, TX.init(eqx.filter(m, eqx.is_inexact_array)), xb, yb)
    got, got_state = s1.to_model()
    # float32, two convs and a head, one jitted step each: the same ops, XLA may order reductions differently (1e-5).
    for a, b in zip(
        _leaves(eqx.filter(got, eqx.is_inexact_array)), _leaves(eqx.filter(mine, eqx.is_inexact_array)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(_leaves(got_state), _leaves(mine_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_eqx_iterative_prune_two_rounds_reaches_the_final_ratio(eqx_run, digits):
    _, y, _, _ = digits
    x, s = eqx_run["x"], eqx_run["s"]
    out, rounds = train.iterative_prune(
        s, (x, y), "linear", final_ratio=0.5, steps=2, tx=TX, batch_size=BATCH, progress=False
    )
    assert [r["widths"] for r in rounds] == [{"c1": 3, "c2": 6}, {"c1": 2, "c2": 4}]
    final, _ = out.to_model()
    assert type(final) is EqxCNN and (final.c1.out_channels, final.c2.out_channels) == (2, 4)


class KeyedMLP(eqx.Module):
    """An Equinox module whose ``__call__`` takes ``key=`` (Dropout): keyed per example in training, off in inference."""

    lin: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, key):
        self.lin = eqx.nn.Linear(6, 3, key=key)
        self.drop = eqx.nn.Dropout(0.5)

    def __call__(self, x, *, key=None):
        return self.lin(self.drop(x, key=key))


def test_eqx_module_taking_a_key_gets_one_per_example_in_training():
    model = KeyedMLP(jax.random.key(0))
    s = train.TrainState.create(model, TX)
    assert s.model.train_rngs == ("dropout",)  # the train step passes rngs={"dropout": fold_in(step key, 1)}
    x = jnp.ones((4, 6))

    @jax.jit  # one compile for the three calls (eagerly, every op would compile on its own)
    def calls(variables, xs):
        a, b = (s.model.apply(variables, xs, train=True, rngs={"dropout": jax.random.key(i)}) for i in (1, 2))
        return a, b, s.model.apply(variables, xs), xs @ variables["params"]["lin"]["weight"].T

    a, b, inference, plain = calls(s.variables, x)
    assert not np.allclose(a, b)  # the step's key reaches the dropout
    assert not np.allclose(a[0], a[1])  # one key per example: the rows of one batch drop different units
    # Inference mode: dropout off, the plain linear layer (float32, one matmul: 1e-6).
    np.testing.assert_allclose(inference, plain + s.params["lin"]["bias"], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------------
def test_variables_with_an_nnx_module_are_refused(nnx_run):
    m = nnx_run["module"]
    with pytest.raises(TypeError, match=r"NNX module carries its own parameters.*TrainState.create\(module, tx\)"):
        train.TrainState.create(m, jp.nnx_variables(m), TX)


def test_an_equinox_model_with_state_needs_state(eqx_run):
    with pytest.raises(ValueError, match=r"holds state.*pass TrainState.create\(\.\.\., state=state\)"):
        train.TrainState.create(eqx_run["module"], TX)


def test_an_equinox_state_of_another_model_is_refused(eqx_run):
    class Other(EqxCNN):
        pass

    _, other_state = _eqx_model(make=Other)
    with pytest.raises(ValueError, match=r"no entry for b1/batch_counter.*not this module's state"):
        train.TrainState.create(eqx_run["module"], TX, state=other_state)


def test_cifar_augmentation_on_the_equinox_layout_is_refused(eqx_run, digits):
    _, y, _, _ = digits
    with pytest.raises(ValueError, match=r"augment='crop' pads and crops NHWC images.*Equinox module"):
        train.fit(eqx_run["s"], (eqx_run["x"], y), epochs=1, batch_size=BATCH, augment="crop", progress=False)


def test_labels_outside_the_user_modules_classes_are_refused(nnx_run, digits):
    x, y, _, _ = digits
    bad = np.array(y[:BATCH])
    bad[5] = 10  # the module has 10 logits (read abstractly from its output)
    with pytest.raises(ValueError, match=r"training label 10 at index 5 is outside \[0, 10\)"):
        train.fit(nnx_run["s"], (x[:BATCH], bad), epochs=1, batch_size=BATCH, progress=False)


def test_data_in_a_layout_the_equinox_module_cannot_take_is_named(eqx_run, digits):
    x, y, _, _ = digits  # NHWC digits, but the Equinox CNN takes (C, H, W) examples
    with pytest.raises(ValueError, match=r"Equinox module fails on one training example of shape \(1, 8, 8, 1\)"):
        train.fit(eqx_run["s"], (x, y), epochs=1, batch_size=BATCH, progress=False)


def test_a_plan_of_another_module_is_refused_by_prune_state(nnx_run, eqx_run):
    with pytest.raises(ValueError, match=r"made for"):
        train.prune_state(eqx_run["s"], nnx_run["plan"])


def test_prune_state_without_a_known_example_says_what_to_pass(digits):
    x, _, _, _ = digits
    m = _nnx_module(seed=4)
    m.train()  # as an NNX user leaves it; prune_state traces an evaluation-mode copy (Dropout draws nothing)
    s = train.TrainState.create(m, TX)  # never traced: no example input known
    plan = jp.make_plan(_nnx_module(seed=5), prune_ratio=0.5, example_input=jnp.asarray(x[:1]))
    with pytest.raises(ValueError, match=r"no example input is known.*example_input=x"):
        train.prune_state(s, plan)
    pruned = train.prune_state(s, plan, example_input=jnp.asarray(x[:1])).to_model()
    assert type(pruned) is NNXCNN and pruned.c2.out_features == 4 and m.c2.out_features == 8


def test_save_checkpoint_of_a_user_train_state_says_to_save_the_module(nnx_run, tmp_path):
    with pytest.raises(TypeError, match=r"user's NNX module; save the module itself.*state.to_model\(\)"):
        jp.save_checkpoint(tmp_path / "s.ckpt", nnx_run["s"])


def test_an_example_input_of_several_arrays_is_refused(nnx_run, digits):
    x, _, _, _ = digits
    one = jnp.asarray(x[:1])
    with pytest.raises(TypeError, match=r"example_input must be one array.*calls the module with one input"):
        train.prune_state(nnx_run["s"], nnx_run["plan"], example_input={"x": one, "t": one})


class TwoInputs(nnx.Module):
    """A module called as ``module(x, t)`` (a diffusion model's image and time)."""

    def __init__(self, rngs):
        self.a = nnx.Linear(3, 6, rngs=rngs)
        self.b = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x, t):
        return self.b(nnx.relu(self.a(x) * t))


def test_a_module_traced_with_two_inputs_is_refused_by_create():
    from jaxprune._models import remember_trace

    m = TwoInputs(nnx.Rngs(0))
    remember_trace(m, jp.trace_model(m, None, jnp.ones((1, 3)), jnp.ones((1, 1))))  # as `prune` records a trace
    with pytest.raises(ValueError, match=r"TwoInputs was traced with 2 inputs; jaxprune.train calls a module with one"):
        train.TrainState.create(m, TX)


def test_training_apply_of_a_keyed_equinox_module_needs_a_dropout_key():
    s = train.TrainState.create(KeyedMLP(jax.random.key(0)), TX)
    with pytest.raises(ValueError, match=r"takes key=: in training mode apply needs rngs=\{'dropout': key\}"):
        s.model.apply(s.variables, jnp.ones((2, 6)), train=True)


def test_prune_like_params_of_an_equinox_optimizer_state_refuses_params(eqx_run):
    m, st, plan = eqx_run["module"], eqx_run["state"], eqx_run["plan"]
    opt = jax.eval_shape(TX.init, eqx.filter(m, eqx.is_inexact_array))  # optax over the module's own arrays
    with pytest.raises(TypeError, match=r"params= is for an optax state over a params dict.*EqxCNN modules"):
        jp.prune_like_params(opt, m, plan, params={}, state=st)
