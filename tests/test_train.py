"""Tests for jaxprune.train: optimizers, loss, TrainState, steps, fit/finetune, prune_state, iterative pruning, and
data parallelism (4 host devices in a subprocess against 1 device).

ResNet-8 on small subsets of the digits data at their original 8x8 pixels keeps compiles few and steps short: every
test here that compiles uses the same model, optimizer object and batch shape where it can, so the jit cache is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import HANG_TIMEOUT_S

import jaxprune as jp
from jaxprune import train
from jaxprune.data import batches, load_digits
from jaxprune.masking import full_masks, plan_masks

# docs/design.md §4: max|Δ| ≤ 1e-5 · max(1, max|y|) in float32.
REL = 1e-5
BATCH = 32
N_TRAIN = 128  # 4 steps per epoch at BATCH
N_TEST = 72  # not a multiple of BATCH: the last evaluation batch is padded


def assert_close(a, b, what="", rel=REL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    tol = rel * max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= tol, f"{what}: max|Δ| = {err:.3g} > {tol:.3g}"


def assert_trees_close(a, b, what="", rel=REL):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb, what
    for (p, x), (_, y) in zip(la, lb, strict=True):
        assert_close(x, y, f"{what}{jax.tree_util.keystr(p)}", rel=rel)


def assert_trees_equal(a, b, what=""):
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb, what
    for (p, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}{jax.tree_util.keystr(p)}")


@pytest.fixture(scope="session")
def digits():
    # The original 8x8 pixels (load_digits' default resizes to 32x32): a float32 ResNet-8 step on 32 images took 0.34 s
    # of CPU at 32x32 against 0.02 s at 8x8 (measured), and these tests run about 40 of them; nothing here depends on
    # the image size (stage 3 still sees 2x2 maps).
    return load_digits(image_size=8)


@pytest.fixture(scope="session")
def small(digits):
    """(x_train, y_train, x_test, y_test): 128 training and 72 test digits, 8x8."""
    return digits.x_train[:N_TRAIN], digits.y_train[:N_TRAIN], digits.x_test[:N_TEST], digits.y_test[:N_TEST]


@pytest.fixture(scope="session")
def model():
    # ResNet-8 (one block per stage, ResNet-20's widths): the same layer kinds, shortcuts and stage transitions as
    # ResNet-20, and a compile costs about its number of layers (these tests compile each step once).
    return jp.models.CifarResNet(depth=8, widths=(16, 32, 64))


@pytest.fixture(scope="session")
def variables(model):
    return jp.random_variables(model, seed=0)


@pytest.fixture(scope="session")
def tx():
    # One optimizer object for the module: the jit cache keys on it.
    return train.sgd(0.05)


@pytest.fixture(scope="session")
def trained(model, variables, tx, small):
    """A state after 2 epochs (8 steps) of fit, and its history."""
    state = train.TrainState.create(model, variables, tx, seed=1)
    return train.fit(state, small, epochs=2, batch_size=BATCH, progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# Import hygiene
# ----------------------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------------------
# Optimizers and schedule (docs/paper.md §7)
# ----------------------------------------------------------------------------------------------------------------------
def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    s = train.step_schedule(0.1, 160)
    got = [float(s(i)) for i in (0, 79, 80, 119, 120, 159)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_sgd_matches_pytorch_sgd_with_momentum_and_weight_decay():
    # torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4): d = g + wd*p; buf = 0.9*buf + d; p -= lr*buf.
    tx = train.sgd(0.1, momentum=0.9, weight_decay=1e-4)
    p = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(p)
    ref_p, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([0.5, 0.25], [-1.0, 2.0]):
        g = np.array(g)
        u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, p)
        p = optax.apply_updates(p, u)
        buf = 0.9 * buf + g + 1e-4 * ref_p
        ref_p = ref_p - 0.1 * buf
    assert_close(p["w"], ref_p, "sgd")


def test_sgd_and_paper_sgd_states_have_one_structure():
    p = {"w": jnp.zeros(3)}
    a = train.sgd(0.001).init(p)
    b = train.paper_sgd(epochs=3, steps_per_epoch=5).init(p)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


def test_steps_per_epoch_drops_the_partial_batch(digits):
    assert train.steps_per_epoch(1437, 64) == 22
    assert train.steps_per_epoch(digits, 128) == 11


# ----------------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------------
def test_cross_entropy_with_label_smoothing_and_mask():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]])
    labels = jnp.array([0, 2, 1])
    logp = np.asarray(jax.nn.log_softmax(logits))
    eps = 0.1
    target = np.full((3, 3), eps / 3) + (1 - eps) * np.eye(3)[np.asarray(labels)]
    per = -(target * logp).sum(-1)
    assert_close(train.cross_entropy_loss(logits, labels, label_smoothing=eps), per.mean(), "smoothed")
    mask = jnp.array([1.0, 1.0, 0.0])
    assert_close(train.cross_entropy_loss(logits, labels, label_smoothing=eps, mask=mask), per[:2].mean(), "masked")
    assert_close(train.cross_entropy_loss(logits, labels), -logp[np.arange(3), np.asarray(labels)].mean(), "plain")


# ----------------------------------------------------------------------------------------------------------------------
# TrainState
# ----------------------------------------------------------------------------------------------------------------------
def test_train_state_is_a_pytree_with_static_model_and_tx(model, variables, tx):
    s = train.TrainState.create(model, variables, tx, seed=5)
    leaves = jax.tree_util.tree_leaves(s)
    n_params = len(jax.tree_util.tree_leaves(variables["params"]))
    n_stats = len(jax.tree_util.tree_leaves(variables["batch_stats"]))
    n_opt = len(jax.tree_util.tree_leaves(s.opt_state))
    assert len(leaves) == n_params + n_stats + n_opt + 2  # + step + rng
    assert n_opt == n_params + 1  # momentum trace per parameter + the schedule count
    assert int(s.step) == 0
    np.testing.assert_array_equal(jax.random.key_data(s.rng), jax.random.key_data(jax.random.key(5)))
    doubled = jax.tree_util.tree_map(lambda x: x, s)
    assert doubled.model is model and doubled.tx is tx
    assert s.variables["params"] is s.params


# ----------------------------------------------------------------------------------------------------------------------
# Steps and fit
# ----------------------------------------------------------------------------------------------------------------------
def test_train_step_lowers_the_loss_on_a_fixed_batch(trained, small):
    x, y = small[0][:BATCH], small[1][:BATCH]
    s, _ = trained
    losses = []
    for _ in range(4):
        s, m = train.train_step(s, x, y)
        losses.append(float(m["loss"]))
    assert int(s.step) == int(trained[0].step) + 4
    assert losses[-1] < losses[0]


def test_fit_history_and_step_count(trained, small):
    state, history = trained
    assert int(state.step) == 2 * (N_TRAIN // BATCH)
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["step"] for h in history] == [4, 8]
    for h in history:
        assert set(h) == {
            "epoch",
            "step",
            "train_loss",
            "train_accuracy",
            "images_per_s",
            "seconds",
            "test_loss",
            "test_accuracy",
        }
        assert 0.0 <= h["train_accuracy"] <= 1.0 and np.isfinite(h["train_loss"])
        assert h["images_per_s"] > 0
        # N_TEST = 72: an accuracy is a multiple of 1/72, so the padded examples did not count.
        assert abs(h["test_accuracy"] * N_TEST - round(h["test_accuracy"] * N_TEST)) < 1e-9


def test_evaluate_pads_and_masks_the_last_batch(trained, small):
    state, history = trained
    x, y = small[2], small[3]
    ev = train.evaluate(state, x, y, batch_size=BATCH)  # 72 = 32 + 32 + 8 (padded to 32)
    logits = np.asarray(jax.jit(lambda v, x: state.model.apply(v, x, train=False))(state.variables, x))
    logp = np.asarray(jax.nn.log_softmax(logits))
    assert ev["count"] == N_TEST
    assert ev["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == y)), abs=1e-12)
    assert_close(ev["loss"], -logp[np.arange(N_TEST), y].mean(), "eval loss")
    assert ev["accuracy"] == pytest.approx(history[-1]["test_accuracy"], abs=1e-12)


def test_fit_is_deterministic_and_resumes_mid_epoch_exactly(trained, tx, small):
    """fit from step 8 for one epoch == two manual steps on fit's documented batch order, then fit finishing it."""
    state, _ = trained
    seed = 3
    straight, h1 = train.fit(state, small, epochs=1, batch_size=BATCH, seed=seed, progress=False, eval_every=0)
    # Epoch index 2 (steps 8..11) is shuffled with default_rng([seed, 2]).
    order = batches(small[0], small[1], BATCH, shuffle=True, seed=np.random.default_rng([seed, 2]), drop_last=True)
    s = state
    for xb, yb in list(order)[:2]:
        s, _ = train.train_step(s, xb, yb)
    assert int(s.step) == 10
    resumed, h2 = train.fit(s, small, epochs=1, batch_size=BATCH, seed=seed, progress=False, eval_every=0)
    assert int(resumed.step) == int(straight.step) == 12
    assert h2[0]["step"] == 12 and h2[0]["epoch"] == 3
    assert_trees_equal(resumed.params, straight.params, "params")
    assert_trees_equal(resumed.batch_stats, straight.batch_stats, "batch_stats")
    assert_trees_equal(resumed.opt_state, straight.opt_state, "opt_state")
    again, h3 = train.fit(state, small, epochs=1, batch_size=BATCH, seed=seed, progress=False, eval_every=0)
    assert_trees_equal(again.params, straight.params, "rerun")
    assert h3[0]["train_loss"] == h1[0]["train_loss"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_by_a_finaliser_stops_fit_before_its_next_step(model, variables, tx, small, monkeypatch):
    """A KeyboardInterrupt raised inside a ``__del__`` is printed and dropped by Python; the command line's SIGINT
    handler remembers it (jaxprune._interrupt) and `fit` raises it again before its next step."""
    import signal

    from jaxprune import _interrupt

    monkeypatch.setattr(_interrupt, "_pending", False)
    _interrupt.check()  # nothing signalled: a no-op

    class Swallows:
        def __del__(self):
            _interrupt.handler(signal.SIGINT, None)  # SIGINT arriving while a finaliser runs

    Swallows()  # Python ignores the KeyboardInterrupt raised in __del__ ("Exception ignored in ...")
    state = train.TrainState.create(model, variables, tx, seed=1)
    with pytest.raises(KeyboardInterrupt):
        train.fit(state, small, epochs=1, batch_size=BATCH, progress=False)
    assert int(state.step) == 0


def test_fit_progress_bar_shows_epoch_loss_accuracy_and_throughput(trained, small, capsys):
    state, _ = trained
    train.fit(state, small, epochs=1, batch_size=BATCH, progress=True, eval_every=0)
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "loss=" in err and "acc=" in err and "img/s=" in err


# ----------------------------------------------------------------------------------------------------------------------
# Pruning a train state
# ----------------------------------------------------------------------------------------------------------------------
def test_prune_state_slices_params_stats_optimizer_and_model(trained, model):
    state, _ = trained
    plan = jp.make_plan(model, state.variables, prune_ratio={"stage1": 0.5, "stage3_block1_conv1": 0.25})
    pruned = train.prune_state(state, plan)
    assert pruned.model.widths == (8, 32, 48)
    ref_model, ref_vars = jp.prune(model, state.variables, plan)
    assert pruned.model == ref_model
    assert_trees_equal(pruned.params, ref_vars["params"], "params")
    assert_trees_equal(pruned.batch_stats, ref_vars["batch_stats"], "batch_stats")
    assert_trees_equal(pruned.opt_state, jp.prune_like_params(state.opt_state, model, plan), "opt_state")
    assert pruned.opt_state[1].trace["stage3_block1_conv2"]["kernel"].shape == (3, 3, 48, 64)
    assert int(pruned.step) == int(state.step)
    np.testing.assert_array_equal(jax.random.key_data(pruned.rng), jax.random.key_data(state.rng))
    rep = pruned.params["stage1_block1_conv1"]["kernel"].sharding
    assert rep.is_fully_replicated


# Pruned and masked steps are the same mathematics computed in different orders. In float32 the rounding is lifted by
# the batch-norm gradients (sums of many terms with heavy cancellation) and by Adam, which normalizes gradients that
# are pure rounding noise into steps of up to ~lr: measured max|Δ| 1.6e-4 on the params after one clip+Adam step (at
# 32x32 inputs, batch 32). In float64 the same comparison agrees to ~6e-16 relative (measured at the 8x8 inputs and
# batch 8 used below, for both optimizers), so it is run in float64 with this tolerance.
REL64 = 1e-12
B64 = 8


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_tx",
    [
        pytest.param(lambda: train.sgd(0.05, momentum=0.9, weight_decay=1e-4), id="sgd-momentum"),
        pytest.param(lambda: optax.chain(optax.clip_by_global_norm(0.05), optax.adam(1e-3)), id="clip-adam"),
    ],
)
def test_one_step_after_pruning_equals_masked_original_on_kept_coordinates(make_tx, variables, small):
    """Issue 4's must-show: prune (params + optimizer state), step, and compare with a step of the original network
    whose removed channels are masked after BN (docs/design.md §4), restricted to the kept coordinates."""
    with jax.enable_x64(True):
        model = jp.models.CifarResNet(depth=8, widths=(16, 32, 64), dtype=jnp.float64)
        v64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
        x, y = small[0].astype(np.float64), small[1]
        tx = make_tx()
        full = {k: jnp.asarray(v) for k, v in full_masks(model).items()}
        s = train.TrainState.create(model, v64, tx)
        # Batches of B64 = 8 digits at 8x8: float64 convolutions are slow on CPU (a step took 2.8 s of CPU at 32x32,
        # 0.15 s at 8x8, measured), and 8 images (8 x 8 x 8 = 512 positions per channel in stage 1's batch norms, 128
        # in stage 2's, where the pruned groups are) exercise the same kept/removed coordinates as 32 larger ones.
        s, _ = train.train_step(s, x[:B64], y[:B64], full)  # non-zero momentum / moments before pruning
        plan = jp.make_plan(model, s.variables, prune_ratio={"stage1": 0.5, "stage2_block1_conv1": 0.75})
        masks = {k: jnp.asarray(v) for k, v in plan_masks(model, plan).items()}

        masked, m_masked = train.train_step(s, x[B64 : 2 * B64], y[B64 : 2 * B64], masks)
        pruned, m_pruned = train.train_step(train.prune_state(s, plan), x[B64 : 2 * B64], y[B64 : 2 * B64])

        assert pruned.params["fc"]["kernel"].dtype == jnp.float64
        assert pruned.model.widths == (8, 8, 64)
        assert_close(m_pruned["loss"], m_masked["loss"], "loss", rel=REL64)
        assert float(m_pruned["accuracy"]) == float(m_masked["accuracy"])
        _, kept_vars = jp.prune(model, masked.variables, plan)
        assert_trees_close(pruned.params, kept_vars["params"], "params", rel=REL64)
        assert_trees_close(pruned.batch_stats, kept_vars["batch_stats"], "batch_stats", rel=REL64)
        assert_trees_close(pruned.opt_state, jp.prune_like_params(masked.opt_state, model, plan), "opt", rel=REL64)
        # The step really moved the kept parameters.
        moved = np.abs(np.asarray(pruned.params["fc"]["kernel"]) - np.asarray(s.params["fc"]["kernel"])).max()
        assert moved > 1e-4


@pytest.mark.slow
def test_finetune_carries_momentum_and_iterative_prune_runs_rounds(trained, small):
    state, _ = trained
    out, rounds = train.iterative_prune(
        state,
        small,
        [{"stage1": 0.5}, {"stage1": 0.5, "stage3": 0.25}],
        epochs_per_round=1,
        batch_size=BATCH,
        progress=False,
        eval_every=0,
    )
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["plan"].new_widths["stage1_block1_conv1"] == 8
    assert rounds[1]["plan"].widths["stage1_block1_conv1"] == 8  # round 2 plans on round 1's model
    assert out.model.widths == (4, 32, 48)
    assert rounds[1]["widths"]["stage3_block1_conv1"] == 48
    assert int(out.step) == int(state.step) + 2 * (N_TRAIN // BATCH)
    # The optimizer state kept its structure (momentum carried, sliced) and fits the pruned params.
    trace = out.opt_state[1].trace
    assert jax.tree_util.tree_structure(trace) == jax.tree_util.tree_structure(out.params)
    for a, b in zip(jax.tree_util.tree_leaves(trace), jax.tree_util.tree_leaves(out.params), strict=True):
        assert a.shape == b.shape
    assert np.abs(np.asarray(trace["stage1_block1_conv2"]["kernel"])).max() > 0
    assert all(len(r["history"]) == 1 for r in rounds)


def test_finetune_keeps_the_momentum_it_was_given(trained, small):
    """finetune swaps the optimizer, and with keep_optimizer_state its first update uses the carried momentum."""
    state, _ = trained
    one_batch = (small[0][:BATCH], small[1][:BATCH])  # one epoch = one step
    lr = 0.001
    tx = train.sgd(lr)  # one object for both runs: one compile
    kw = dict(epochs=1, tx=tx, batch_size=BATCH, progress=False)
    a, _ = train.finetune(state, one_batch, keep_optimizer_state=True, **kw)
    b, _ = train.finetune(state, one_batch, keep_optimizer_state=False, **kw)
    assert a.tx is tx and int(a.step) == int(state.step) + 1
    da = np.asarray(a.params["fc"]["bias"]) - np.asarray(state.params["fc"]["bias"])
    db = np.asarray(b.params["fc"]["bias"]) - np.asarray(state.params["fc"]["bias"])
    # Same gradients, so the two first steps differ by lr * 0.9 * (carried trace); float32 rounding of parameters of
    # size ~0.1 is ~1e-8.
    expected = -lr * 0.9 * np.asarray(state.opt_state[1].trace["fc"]["bias"])
    assert np.abs(expected).max() > 1e-5
    np.testing.assert_allclose(da - db, expected, rtol=1e-3, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------------
# Data parallel: 4 host devices vs 1
# ----------------------------------------------------------------------------------------------------------------------
_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import jaxprune as jp
    from jaxprune import train
    from jaxprune.data import load_digits

    ds = load_digits()
    # Every 4th pixel: 8x8 digits (at 32x32 the steps, not the compiles, were two thirds of this process's time).
    x, y, xt, yt = ds.x_train[:128, ::4, ::4], ds.y_train[:128], ds.x_test[:72, ::4, ::4], ds.y_test[:72]
    # ResNet-8 (one block per stage, ResNet-20's widths): the loop, sharding and reductions are the same code for any
    # depth, and a compile costs about its number of layers.
    model = jp.models.CifarResNet(depth=8, widths=(16, 32, 64))
    variables = jp.random_variables(model, seed=0)

    def run(mesh):
        out = {"devices": len(mesh.devices.ravel())}
        # Whole loops (2 epochs x 4 steps, evaluation with a padded batch), float32, at a tiny rate: training at this
        # scale is chaotic (a 1e-7 relative change of the weights moves the loss by 1e-4 within 4 steps at lr 0.001),
        # so a tiny rate is what lets the comparison see the loop, sharding and reductions rather than the chaos.
        s = train.TrainState.create(model, variables, train.sgd(1e-6))
        s2, h = train.fit(s, (x, y, xt, yt), epochs=2, batch_size=32, progress=False, mesh=mesh)
        out["loop"] = {k: [r[k] for r in h] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
        out["loop"]["stats"] = np.asarray(s2.batch_stats["stage3_block1_bn2"]["var"]).tolist()
        out["replicated"] = all(l.sharding.is_fully_replicated for l in jax.tree_util.tree_leaves(s2))
        # One step at a real learning rate, in float64 (float32 gradients of batch-norm parameters are sums with heavy
        # cancellation whose rounding depends on the reduction order, ~1e-4 of their scale).
        with jax.enable_x64(True):
            m64 = jp.models.CifarResNet(depth=8, widths=(16, 32, 64), dtype=jnp.float64)
            v64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
            s = train.TrainState.create(m64, v64, train.sgd(0.1))
            s1, h = train.fit(s, (x[:32].astype(np.float64), y[:32]), epochs=1, batch_size=32, progress=False, mesh=mesh)
            out["one_step"] = {
                "loss": h[0]["train_loss"],
                "params": [np.asarray(l).ravel().tolist() for l in jax.tree_util.tree_leaves(s1.params)],
                "stats": [np.asarray(l).ravel().tolist() for l in jax.tree_util.tree_leaves(s1.batch_stats)],
            }
        return out, s2

    # One process with 4 host devices: the reference on a mesh of its first device alone, then the 4-device mesh.
    one, _ = run(train.data_mesh(jax.devices()[:1]))
    four, s2 = run(train.data_mesh())
    assert jax.device_count() == 4
    # Pruning sharded state keeps its sharding.
    plan = jp.make_plan(model, s2.variables, prune_ratio={"stage1": 0.5})
    p = train.prune_state(s2, plan)
    leaves = jax.tree_util.tree_leaves(p)
    four["pruned_sharding"] = sorted({str(l.sharding.spec) for l in leaves if isinstance(l, jax.Array)})
    four["pruned_devices"] = sorted({len(l.sharding.device_set) for l in leaves if isinstance(l, jax.Array)})
    errors = {}
    for name, call in {  # the default mesh: every device
        "fit": lambda: train.fit(s2, (x, y), epochs=1, batch_size=30, progress=False),
        "evaluate": lambda: train.evaluate(s2, xt, yt, batch_size=30),
    }.items():
        try:
            call()
            errors[name] = "no error"
        except ValueError as e:
            errors[name] = str(e)
    four["errors"] = errors
    print("RESULT " + json.dumps({"one": one, "four": four}))
    """
)


@pytest.fixture(scope="module")
def parallel_runs():
    """(one device, four devices): both in one fresh process with 4 host devices (the device count is fixed when jax
    initialises), the reference on a mesh of one of them."""
    env = dict(os.environ)
    # Appended to the session's XLA_FLAGS (conftest: LLVM optimisation and fusion emitters off), else lost here.
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", _PARALLEL_SCRIPT], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    return res["one"], res["four"]


@pytest.mark.slow
def test_four_host_devices_equal_one_device(parallel_runs):
    one, four = parallel_runs
    assert one["devices"] == 1 and four["devices"] == 4
    for k in ("train_loss", "test_loss"):
        assert_close(four["loop"][k], one["loop"][k], k)
    assert four["loop"]["train_accuracy"] == one["loop"]["train_accuracy"]
    assert four["loop"]["test_accuracy"] == one["loop"]["test_accuracy"]
    assert_close(four["loop"]["stats"], one["loop"]["stats"], "running var")
    assert four["replicated"] and one["replicated"]
    assert_close(four["one_step"]["loss"], one["one_step"]["loss"], "one-step loss", rel=REL64)
    for i, (a, b) in enumerate(zip(four["one_step"]["params"], one["one_step"]["params"], strict=True)):
        assert_close(a, b, f"params leaf {i} after one step", rel=REL64)
    for i, (a, b) in enumerate(zip(four["one_step"]["stats"], one["one_step"]["stats"], strict=True)):
        assert_close(a, b, f"batch_stats leaf {i} after one step", rel=REL64)
    assert four["pruned_sharding"] == ["P()"] and four["pruned_devices"] == [4]


@pytest.mark.slow
def test_batch_not_divisible_by_device_count_is_a_clear_error(parallel_runs):
    _, four = parallel_runs
    assert "batch_size=30 is not divisible by the 4 devices" in four["errors"]["fit"]
    assert "use a multiple of 4 (e.g. 28 or 32)" in four["errors"]["fit"]
    assert "batch_size=30 is not divisible by the 4 devices" in four["errors"]["evaluate"]


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan")])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(ValueError, match="learning_rate must be a finite float > 0"):
        train.sgd(lr)
    with pytest.raises(ValueError, match="learning_rate must be a finite float > 0"):
        train.paper_sgd(epochs=2, steps_per_epoch=3, learning_rate=lr)


def test_finetune_and_iterative_prune_reject_bad_lr_and_epochs(trained, small):
    state, _ = trained
    with pytest.raises(ValueError, match="lr must be a finite float > 0"):
        train.finetune(state, small, epochs=1, lr=0.0)
    with pytest.raises(ValueError, match="lr must be a finite float > 0"):
        train.iterative_prune(state, small, [0.5], lr=-1.0)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train.finetune(state, small, epochs=0)
    with pytest.raises(ValueError, match="not both"):
        train.finetune(state, small, epochs=1, lr=0.01, tx=train.sgd(0.01))
    with pytest.raises(ValueError, match="keep_optimizer_state=False"):
        train.finetune(state, small, epochs=1, tx=optax.adam(1e-3))
    with pytest.raises(ValueError, match="iterative_prune takes lr= or tx=, not both"):
        train.iterative_prune(state, small, [0.5], lr=0.01, tx=train.sgd(0.01))
    with pytest.raises(ValueError, match="at least one round"):
        train.iterative_prune(state, small, [])
    with pytest.raises(TypeError, match="schedule must be a sequence"):
        train.iterative_prune(state, small, 0.5)
    with pytest.raises(ValueError, match="epochs_per_round has 1 entries but the schedule has 2 rounds"):
        train.iterative_prune(state, small, [0.5, 0.5], epochs_per_round=[1])
    with pytest.raises(ValueError, match="epochs_per_round must be >= 1"):
        train.iterative_prune(state, small, [0.5], epochs_per_round=0)


def test_fit_rejects_bad_arguments(trained, small):
    state, _ = trained
    cases = [
        (dict(epochs=0), ValueError, "epochs must be >= 1, got 0"),
        (dict(epochs=-2), ValueError, "epochs must be >= 1"),
        (dict(epochs=1.0), TypeError, "epochs must be an int"),
        (dict(epochs=1, batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(epochs=1, batch_size=256), ValueError, "128 training examples do not fill one batch of 256"),
        (dict(epochs=1, label_smoothing=1.0), ValueError, r"label_smoothing must be in \[0, 1\)"),
        (dict(epochs=1, augment="mixup"), ValueError, "augment must be None, one of"),
        (dict(epochs=1, seed=-1), ValueError, "seed must be >= 0"),
        (dict(epochs=1, progress="yes"), TypeError, "progress must be a bool"),
        (dict(epochs=1, mesh="data"), TypeError, "mesh must be a jax.sharding.Mesh"),
    ]
    for kwargs, err, match in cases:
        with pytest.raises(err, match=match):
            train.fit(state, small, **kwargs)
    from jax.sharding import Mesh

    with pytest.raises(ValueError, match="mesh must have an axis named 'data'"):
        train.fit(state, small, epochs=1, mesh=Mesh(np.asarray(jax.devices()), ("batch",)))
    with pytest.raises(TypeError, match="state must be a jaxprune.train.TrainState"):
        train.fit({"params": {}}, small, epochs=1)
    with pytest.raises(TypeError, match="data must be a jaxprune.data.Dataset"):
        train.fit(state, "digits", epochs=1)
    x, y = small[0], small[1]
    with pytest.raises(ValueError, match=r"training label 10 at index 0 is outside \[0, 10\)"):
        train.fit(state, (x, np.full_like(y, 10)), epochs=1)
    with pytest.raises(ValueError, match=r"training images must be 4-D"):
        train.fit(state, (x[..., 0], y), epochs=1)
    with pytest.raises(ValueError, match="one label per image"):
        train.fit(state, (x, y[:-1]), epochs=1)
    with pytest.raises(TypeError, match="labels must be integers"):
        train.fit(state, (x, y.astype(np.float32)), epochs=1)
    with pytest.raises(ValueError, match="evaluate needs at least one example"):
        train.evaluate(state, x[:0], y[:0])


def test_create_and_prune_state_reject_bad_arguments(model, variables, tx):
    with pytest.raises(TypeError, match="tx must be an optax GradientTransformation"):
        train.TrainState.create(model, variables, "sgd")
    with pytest.raises(TypeError, match="variables must be a mapping with a 'params' entry"):
        train.TrainState.create(model, [1, 2], tx)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        train.TrainState.create(model, variables, tx, seed=-1)
    small_model = model.with_widths({"stage1_block1_conv1": 8})
    with pytest.raises(
        ValueError, match=r"leaf batch_stats/stage1_block1_bn1/mean has shape \(16,\), the model's widths need \(8,\)"
    ):
        train.TrainState.create(small_model, variables, tx)
    s = train.TrainState.create(model, variables, tx)
    with pytest.raises(TypeError, match="plan must be a jaxprune.PruningPlan"):
        train.prune_state(s, {"stage1": 0.5})
    bad = jp.PruningPlan(keep={"stage1_block1_conv1": (0, 1)}, widths={"stage1_block1_conv1": 8})
    with pytest.raises(ValueError, match="group 'stage1_block1_conv1' has width 16 in the model, the plan expects 8"):
        train.prune_state(s, bad)
    with pytest.raises(ValueError, match=r"boundaries must be strictly increasing"):
        train.step_schedule(0.1, 10, boundaries=(0.75, 0.5))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        train.sgd(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        train.sgd(0.1, weight_decay=-1e-4)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train.paper_sgd(epochs=0, steps_per_epoch=10)
