"""Plans bound to their model, strict plan JSON, `meta` that cannot override, `select_top` bounds, and the checks at
the door of `make_plan`, `prune` and `prune_like_params` (shapes, abstract and non-array leaves).

ResNet-20/32 variables come from the session `zoo` (random, no compile); one plan per module is made once.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import models
from jaxprune.plan import PruningPlan, model_fingerprint


@pytest.fixture(scope="module")
def r20(zoo):
    return zoo("resnet20")


@pytest.fixture(scope="module")
def plan20(r20):
    m, v = r20
    return jp.make_plan(m, v, prune_ratio={"stage1": 0.5})


def _with_leaf(variables, path, value):
    out = jax.tree_util.tree_map(lambda a: a, variables)  # a fresh nesting of dicts (leaves shared)
    d = out
    for k in path[:-1]:
        d[k] = dict(d[k])
        d = d[k]
    d[path[-1]] = value
    return out


# -- plans bound to their model ---------------------------------------------------------------------------------
def test_make_plan_records_the_model(plan20, r20):
    m, v = r20
    fp = plan20.made_for
    assert fp["class"] == "CifarResNet" and fp["name"] == "resnet_cifar-20 with 10 classes"
    assert dict(fp["groups"]) == {g.name: g.width for g in m.channel_groups()}
    assert fp["leaves"]["params/stage1_block1_conv1/kernel"] == (3, 3, 16, 16)
    assert len(fp["leaves"]) == len(jax.tree_util.tree_leaves(v))


def test_a_resnet20_plan_does_not_apply_to_a_resnet56(plan20, zoo):
    m56, v56 = zoo("resnet56")
    with pytest.raises(
        ValueError, match="made for resnet_cifar-20 with 10 classes .* not for the given resnet_cifar-56"
    ) as info:
        jp.prune(m56, v56, plan20)
    assert "stage1_block4_conv1" in str(info.value)  # a group only the ResNet-56 has


def test_a_plan_does_not_apply_to_another_class(plan20, zoo):
    m, v = zoo("vgg11")
    with pytest.raises(ValueError, match="the model classes differ"):
        jp.prune(m, v, plan20)


def test_a_plan_does_not_apply_to_other_leaf_shapes(r20):
    m, v = r20
    m100 = models.resnet20(num_classes=100)
    v100 = jp.random_variables(m100)
    plan = jp.make_plan(m100, v100, prune_ratio={"stage1": 0.5})
    with pytest.raises(
        ValueError,
        match=r"made for resnet_cifar-20 with 100 classes .* leaf params/fc/bias had shape \(100,\), the given variables have \(10,\)",
    ):
        jp.prune(m, v, plan)


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # x64 is off: the clone computes in float32
def test_a_float64_clone_and_another_conv_impl_accept_the_plan(plan20, r20):
    m, v = r20
    for clone in (m.clone(dtype=jnp.float64), m.clone(conv_impl="im2col")):
        assert model_fingerprint(clone, v)["groups"] == dict(plan20.made_for["groups"])
        new_m, new_v = jp.prune(clone, v, plan20)
        assert new_m.group_widths()["stage1_block1_conv1"] == 8
        assert new_v["params"]["stage1_block1_conv1"]["kernel"].shape == (3, 3, 16, 8)


def test_made_for_survives_json_and_checkpoints(plan20, r20, tmp_path):
    assert PruningPlan.from_json(plan20.to_json()) == plan20
    m, v = r20
    new_m, new_v = jp.prune(m, v, plan20)
    jp.save_checkpoint(tmp_path / "c.ckpt", new_m, new_v, plans=[plan20])
    back = jp.load_checkpoint(tmp_path / "c.ckpt").plans[0]
    assert back == plan20 and back.made_for["leaves"] == plan20.made_for["leaves"]


def test_a_plan_without_made_for_is_not_bound(r20, plan20):
    m, v = r20
    loose = PruningPlan(keep=plan20.keep, widths=plan20.widths, meta=plan20.meta)
    assert loose.made_for is None and loose == plan20  # the same decision; equality ignores the binding
    assert jp.prune(m, v, loose)[0] == jp.prune(m, v, plan20)[0]


def test_made_for_must_agree_with_the_widths(plan20):
    fp = json.loads(plan20.to_json())["made_for"]
    fp["groups"]["stage1_block1_conv1"] = 32
    with pytest.raises(
        ValueError, match="group 'stage1_block1_conv1' has width 16, but made_for says the model's is 32"
    ):
        PruningPlan(keep=plan20.keep, widths=plan20.widths, made_for=fp)
    with pytest.raises(ValueError, match="made_for must be a mapping with exactly"):
        PruningPlan(keep=plan20.keep, widths=plan20.widths, made_for={"class": "X"})


def test_prune_like_params_refuses_another_models_plan(plan20, zoo):
    m56, v56 = zoo("resnet56")
    momentum = jax.tree_util.tree_map(np.zeros_like, v56["params"])
    with pytest.raises(ValueError, match="made for resnet_cifar-20"):
        jp.prune_like_params(momentum, m56, plan20)


# -- strict plan JSON -------------------------------------------------------------------------------------------
def _plan_json(**changes):
    data = {"format": "jaxprune.PruningPlan", "version": 2, "widths": {"a": 4}, "keep": {"a": [0, 3]}, "meta": {}}
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (_plan_json(keep={"a": [True, 3]}), r"plan field 'keep\['a'\]' must be a list of ints, got \[True, 3\]"),
        (_plan_json(keep={"a": None}), r"plan field 'keep\['a'\]' must be a list of ints"),
        (_plan_json(keep={"a": [0.0, 3]}), r"plan field 'keep\['a'\]' must be a list of ints"),
        (_plan_json(widths={"a": True}), r"plan field 'widths\['a'\]' must be an int, got True"),
        (_plan_json(widths={"a": 4.0}), r"plan field 'widths\['a'\]' must be an int, got 4.0"),
        (_plan_json(version=True), "unsupported plan version True"),
        (_plan_json(version=1.0), "unsupported plan version 1.0"),
        (_plan_json(version="2"), "unsupported plan version '2'"),
        (_plan_json(meta=[1]), "plan field 'meta' must be an object"),
        (_plan_json(extra=1), r"plan field\(s\) \['extra'\] are unknown"),
        (_plan_json(version=1, made_for=None), r"\['made_for'\] are unknown in a version-1 plan"),
        (_plan_json(made_for={"class": "X"}), "plan field 'made_for' is malformed"),
        (_plan_json(keep={"a": [3, 0]}), "plan field 'keep/widths' is malformed: .* unsorted"),
        ('{"format": "jaxprune.PruningPlan", "version": 2, "widths": {"a": NaN}}', "NaN is not a JSON number"),
        ('{"format": "jaxprune.PruningPlan", "format": "x"}', "key 'format' appears twice"),
        ("[" * 100_000 + "]" * 100_000, "plan JSON is malformed"),
    ],
)
def test_malformed_plan_json_is_a_value_error_naming_the_field(text, match):
    with pytest.raises(ValueError, match=match):
        PruningPlan.from_json(text)


def test_a_version_1_plan_still_loads():
    plan = PruningPlan.from_json(_plan_json(version=1))
    assert plan.keep == {"a": (0, 3)} and plan.made_for is None


def test_plan_files_that_are_not_plans_name_the_file(tmp_path):
    binary = tmp_path / "plan.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=f"plan file {binary} is not UTF-8 JSON text"):
        PruningPlan.load(binary)
    bad = tmp_path / "plan.json"
    bad.write_text(_plan_json(keep={"a": [True]}))
    with pytest.raises(ValueError, match=f"plan file {bad}: plan field 'keep"):
        PruningPlan.load(bad)
    with pytest.raises(TypeError, match="plan JSON must be a str"):
        PruningPlan.from_json(b"{}")


def test_nan_in_meta_is_refused_on_save(tmp_path):
    plan = PruningPlan(keep={"a": (0,)}, widths={"a": 2}, meta={"acc": float("nan")})
    with pytest.raises(ValueError, match="meta must not hold NaN or infinity"):
        plan.save(tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="PruningPlan.meta must be a mapping"):
        PruningPlan(keep={"a": (0,)}, widths={"a": 2}, meta=[("acc", 1)])


# -- make_plan's meta, select_top, skip ------------------------------------------------------------------------------
def test_meta_cannot_override_recorded_fields(r20):
    m, v = r20
    with pytest.raises(ValueError, match=r"meta cannot override what make_plan records: \['strategy'\]"):
        jp.make_plan(m, v, prune_ratio=0.5, meta={"strategy": "greedy"})
    with pytest.raises(ValueError, match=r"\['criterion', 'round_to'\]"):
        jp.make_plan(m, v, prune_ratio=0.5, meta={"round_to": 8, "criterion": "l2", "preset": "x"})
    with pytest.raises(TypeError, match="meta must be a mapping of extra entries"):
        jp.make_plan(m, v, prune_ratio=0.5, meta=["strategy"])
    assert jp.make_plan(m, v, prune_ratio=0.5, meta={"preset": "x"}).meta["preset"] == "x"


@pytest.mark.parametrize(
    ("scores", "k", "error", "match"),
    [
        (np.arange(3.0), -1, ValueError, r"k must be in \[0, 3\] \(the number of scores\), got -1"),
        (np.arange(3.0), 4, ValueError, r"k must be in \[0, 3\]"),
        (np.arange(3.0), 1.5, TypeError, "k must be an int, got float"),
        (np.arange(3.0), True, TypeError, "k must be an int, got bool"),
        (np.ones((2, 2)), 1, ValueError, r"needs 1-D scores, got shape \(2, 2\)"),
    ],
)
def test_select_top_refuses_k_outside_the_scores(scores, k, error, match):
    with pytest.raises(error, match=match):
        jp.strategies.select_top(scores, k)


def test_select_top_at_the_bounds():
    assert jp.strategies.select_top(np.array([1.0, 3.0, 2.0]), 0) == ()
    assert jp.strategies.select_top(np.array([1.0, 3.0, 2.0]), 3) == (0, 1, 2)
    assert jp.strategies.select_top(np.array([1.0, 3.0, 2.0]), np.int64(2)) == (1, 2)


@pytest.mark.parametrize(
    ("skip", "match"),
    [
        (None, "skip must be a group name or a sequence of group names, got NoneType"),
        ([3], "skip must hold group names"),
    ],
)
def test_bad_skip_is_a_type_error(r20, skip, match):
    m, v = r20
    with pytest.raises(TypeError, match=match):
        jp.make_plan(m, v, prune_ratio=0.5, skip=skip)


# -- shapes and leaf kinds at the door ------------------------------------------------------------------------------
KERNEL = ("params", "stage1_block1_conv1", "kernel")


def test_a_5x5_kernel_where_the_model_has_3x3_fails_at_the_door(r20, plan20):
    m, v = r20
    v5 = _with_leaf(v, KERNEL, np.ones((5, 5, 16, 16), np.float32))
    msg = r"leaf params/stage1_block1_conv1/kernel has shape \(5, 5, 16, 16\), the model CifarResNet needs \(3, 3, 16, 16\)"
    with pytest.raises(ValueError, match="make_plan: variables " + msg):
        jp.make_plan(m, v5, prune_ratio=0.5)
    with pytest.raises(ValueError, match=msg):
        jp.prune(m, v5, plan20)


def test_abstract_variables_are_a_type_error_naming_the_path(r20, plan20):
    m, v = r20
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), v)
    with pytest.raises(
        TypeError,
        match=r"make_plan: variables leaf params/stage1_block1_conv1/kernel is abstract \(a jax.ShapeDtypeStruct",
    ):
        jp.make_plan(m, abstract, prune_ratio=0.5)
    with pytest.raises(TypeError, match=r"prune: variables leaf batch_stats/.* is abstract"):
        jp.prune(m, abstract, plan20)


def test_non_array_leaves_are_a_type_error_naming_the_path(r20, plan20):
    m, v = r20
    with pytest.raises(
        TypeError, match=r"prune: variables leaf params/stage1_block1_conv1/kernel is a str, not an array"
    ):
        jp.prune(m, _with_leaf(v, KERNEL, "weights"), plan20)
    with pytest.raises(TypeError, match="variables must be a mapping of collections"):
        jp.make_plan(m, [v], prune_ratio=0.5)


def test_prune_like_params_refuses_abstract_optimizer_state(r20, plan20):
    m, v = r20
    momentum = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), v["params"])
    with pytest.raises(TypeError, match=r"prune_like_params: optimizer-state leaf \['.*'\]\['.*'\] is abstract"):
        jp.prune_like_params(momentum, m, plan20)
    zeros = jax.tree_util.tree_map(np.zeros_like, v["params"])
    out = jp.prune_like_params((3, zeros), m, plan20)  # a Python-number leaf (a step count) is fine
    assert out[0] == 3 and out[1]["stage1_block1_conv1"]["kernel"].shape == (3, 3, 16, 8)
