"""Iterative schedules of `jaxprune.train.iterative_prune`: exact counts per step, per-step records, the
nothing-pruned warning and bad input.

TinyNet (3 convs) on 8 random 8x8 images with batch 4: every fine-tuning epoch is 2 SGD steps, and each width
configuration compiles one small train step.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tinynet import TinyNet

import jaxprune as jp
from jaxprune import train

SHAPE = (8, 8, 8, 3)
BATCH = 4  # 2 steps per epoch
FIT = {"batch_size": BATCH, "progress": False, "eval_every": 0}


def _state(widths):
    m = TinyNet(widths=widths)
    v = jp.random_variables(m, seed=0, input_shape=SHAPE)
    return train.TrainState.create(m, v, train.sgd(0.01))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=SHAPE).astype(np.float32), rng.integers(0, 3, size=SHAPE[0])


def test_schedule_ratios_are_cumulative_fractions_of_the_original():
    assert train.SCHEDULES == ("linear", "geometric")
    assert train.schedule_ratios("linear", 0.5, 4) == (0.125, 0.25, 0.375, 0.5)
    geo = train.schedule_ratios("geometric", 0.5, 4)
    assert geo[-1] == 0.5  # the final ratio exactly, not 1 - 0.5 ** (4 / 4) recomputed
    # 1 - r_k = 0.5 ** (k / 4): the same fraction of what is left is kept at every step (float64 powers: 1e-15).
    np.testing.assert_allclose([1 - r for r in geo], [0.5 ** (k / 4) for k in range(1, 5)], rtol=1e-15)
    assert train.schedule_ratios("linear", 0.3, 1) == (0.3,)
    assert train.schedule_ratios("geometric", 0.0, 3) == (0.0, 0.0, 0.0)


def test_linear_schedule_reaches_the_final_counts_exactly_and_reports_each_step(data):
    state = _state((8, 6, 4))
    out, rounds = train.iterative_prune(state, data, "linear", final_ratio=0.5, steps=2, **FIT)
    # Step 1, r = 0.25: kept_count(8, .25) = 6, kept_count(6, .25) = floor(4.5) = 4, kept_count(4, .25) = 3.
    # Step 2, r = 0.5 of the ORIGINAL widths: 4, 3, 2.
    assert [r["target_ratio"] for r in rounds] == [0.25, 0.5]
    assert [r["removed"] for r in rounds] == [
        {"conv1": 2, "conv2": 2, "conv3": 1},
        {"conv1": 2, "conv2": 1, "conv3": 1},
    ]
    assert [r["widths"] for r in rounds] == [{"conv1": 6, "conv2": 4, "conv3": 3}, {"conv1": 4, "conv2": 3, "conv3": 2}]
    assert [r["pruned_nothing"] for r in rounds] == [False, False]
    assert rounds[1]["plan"].widths == {"conv1": 6, "conv2": 4, "conv3": 3}  # step 2 plans on step 1's model
    one_shot = jp.make_plan(state.model, state.variables, prune_ratio=0.5)
    assert out.model.widths == tuple(one_shot.new_widths[f"conv{i}"] for i in (1, 2, 3)) == (4, 3, 2)
    # MACs and params per 8x8 image, exact integers from count_macs: each step starts where the last one ended.
    first = jp.count_macs(state.model, (1, *SHAPE[1:]))
    last = jp.count_macs(out.model, (1, *SHAPE[1:]))
    assert (rounds[0]["macs_before"], rounds[0]["params_before"]) == (first.macs, first.params)
    assert rounds[1]["macs_before"] == rounds[0]["macs_after"] < rounds[0]["macs_before"]
    assert (rounds[1]["macs_after"], rounds[1]["params_after"]) == (last.macs, last.params)
    # conv1 3->4 on 8x8, conv2 4->3 stride 2 on 4x4, conv3 3->2 on 4x4, 3x3 kernels; fc 2->3.
    assert last.macs == 64 * 9 * 3 * 4 + 16 * 9 * 4 * 3 + 16 * 9 * 3 * 2 + 2 * 3
    assert [len(r["history"]) for r in rounds] == [1, 1]  # one fine-tuning epoch (2 steps) per round
    assert int(out.step) == 2 * (SHAPE[0] // BATCH)


class _GroupNormed(nn.Module):
    c: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.GroupNorm(num_groups=4, name="gn")(nn.Conv(self.c, (3, 3), name="conv")(x)))
        return nn.Dense(3, name="fc")(h.mean((1, 2)))


def test_a_schedule_keeps_an_equal_count_in_every_groupnorm_group(data):
    m = _GroupNormed()
    v = jax.eval_shape(m.init, jax.random.key(0), data[0])
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(np.random.default_rng(0).normal(size=a.shape), a.dtype), v)
    tm = jp.trace_model(m, v, data[0], fields={"conv": "c"}, train_kwargs={})
    state = train.TrainState.create(tm, v, train.sgd(0.01))
    out, rounds = train.iterative_prune(state, data, "linear", final_ratio=0.3, steps=2, **FIT)
    # The ratio applies in each of the 4 norm groups of 4: r = 0.15 keeps floor(3.4) = 3 in each, r = 0.3 floor(2.8)
    # = 2 (a flat kept_count(16, 0.15) = 13 would split unequally).
    assert [r["widths"] for r in rounds] == [{"conv": 12}, {"conv": 8}]
    assert out.model.module.c == 8


def test_a_step_that_prunes_nothing_is_recorded_and_warned(data):
    state = _state((4, 4, 4))
    # Geometric to 0.5 in 4 steps: 1 - r_k = 0.5 ** (k / 4) = .841, .707, .595, .5 of 4 filters -> floors 3, 2, 2, 2:
    # steps 3 and 4 have nothing left to remove.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, rounds = train.iterative_prune(state, data, "geometric", final_ratio=0.5, steps=4, **FIT)
    said = [str(w.message) for w in caught if issubclass(w.category, train.NothingPrunedWarning)]
    assert len(said) == 2
    assert said[0].startswith("iterative_prune round 3/4 (target ratio 0.405396")
    assert said[1].startswith("iterative_prune round 4/4 (target ratio 0.5 of the original widths) removed no filter")
    assert [r["pruned_nothing"] for r in rounds] == [False, False, True, True]
    assert [r["removed"] for r in rounds] == [{"conv1": 1, "conv2": 1, "conv3": 1}] * 2 + [{}] * 2
    assert out.model.widths == (2, 2, 2)
    assert rounds[2]["macs_before"] == rounds[2]["macs_after"]
    assert [len(r["history"]) for r in rounds] == [1, 1, 1, 1]  # the budget is spent in every round


def test_per_round_ratios_report_too_and_a_mapping_final_ratio(data):
    state = _state((8, 6, 4))
    with pytest.warns(train.NothingPrunedWarning, match=r"round 2/2 \(prune_ratio 0\.0\) removed no filter"):
        _, rounds = train.iterative_prune(state, data, [0.25, 0.0], **FIT)
    assert [r["removed"] for r in rounds] == [{"conv1": 2, "conv2": 2, "conv3": 1}, {}]
    assert [r["target_ratio"] for r in rounds] == [None, None]
    # A mapping (here a stage): each reached group gets its own schedule, reported per group; the same widths as the
    # float (and so the same compiled steps as the linear test).
    out, rounds = train.iterative_prune(state, data, "linear", final_ratio={"stage1": 0.5}, steps=2, **FIT)
    assert [r["removed"] for r in rounds] == [
        {"conv1": 2, "conv2": 2, "conv3": 1},
        {"conv1": 2, "conv2": 1, "conv3": 1},
    ]
    assert rounds[1]["target_ratio"] == {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}
    assert out.model.widths == (4, 3, 2)


def test_bad_schedules(data):
    state = _state((8, 6, 4))
    with pytest.raises(ValueError, match=r"unknown schedule 'cosine'; valid schedules: linear, geometric"):
        train.iterative_prune(state, data, "cosine", final_ratio=0.5, steps=2)
    with pytest.raises(ValueError, match=r"steps must be >= 1, got 0"):
        train.iterative_prune(state, data, "linear", final_ratio=0.5, steps=0)
    with pytest.raises(TypeError, match=r"steps must be an int, got float 2.0"):
        train.iterative_prune(state, data, "linear", final_ratio=0.5, steps=2.0)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"final_ratio must be in \[0, 1\) \(the fraction of the original"):
            train.iterative_prune(state, data, "linear", final_ratio=bad, steps=2)
    with pytest.raises(ValueError, match=r"final_ratio\['conv1'\] must be in \[0, 1\)"):
        train.iterative_prune(state, data, "linear", final_ratio={"conv1": 1.0}, steps=2)
    with pytest.raises(TypeError, match=r"final_ratio must be a float in \[0, 1\), got str"):
        train.iterative_prune(state, data, "geometric", final_ratio="half", steps=2)
    with pytest.raises(ValueError, match=r"schedule 'linear' needs final_ratio= .* and steps="):
        train.iterative_prune(state, data, "linear", final_ratio=0.5)
    with pytest.raises(ValueError, match=r"final_ratio= and steps= go with a named schedule"):
        train.iterative_prune(state, data, [0.5], final_ratio=0.5)
    with pytest.raises(ValueError, match=r"epochs_per_round has 1 entries but the schedule has 3 rounds"):
        train.iterative_prune(state, data, "linear", final_ratio=0.5, steps=3, epochs_per_round=[1])
    with pytest.raises(ValueError, match=r"unknown schedule 'Linear'"):
        train.schedule_ratios("Linear", 0.5, 2)
