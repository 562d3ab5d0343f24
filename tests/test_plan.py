"""PruningPlan: invariants, JSON round trip, summary, atomic save."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune.plan import PruningPlan


def test_json_round_trip_exact(zoo, tmp_path):
    m, v = zoo("resnet56")
    plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.6, "stage2": 0.3, "stage3": 0.1}, skip=["stage1_block8_conv1"])
    back = PruningPlan.from_json(plan.to_json())
    assert back == plan
    assert back.keep == plan.keep and back.widths == plan.widths and back.meta == plan.meta
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json") == plan
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left behind


def test_views_and_summary():
    plan = PruningPlan(keep={"a": (0, 2), "b": (0, 1, 2)}, widths={"a": 4, "b": 3})
    assert plan.new_widths == {"a": 2, "b": 3}
    assert plan.removed("a") == (1, 3)
    assert not plan.is_identity
    assert PruningPlan(keep={"b": (0, 1, 2)}, widths={"b": 3}).is_identity
    text = plan.summary()
    assert "a" in text and "50.0" in text and "2 groups: 7 -> 5 filters" in text


def test_numpy_indices_are_normalised_to_int_tuples():
    plan = PruningPlan(keep={"a": np.array([1, 3])}, widths={"a": np.int64(4)})
    assert plan.keep == {"a": (1, 3)} and type(plan.keep["a"][0]) is int and type(plan.widths["a"]) is int


@pytest.mark.parametrize(
    ("keep", "widths", "exc", "match"),
    [
        ({"a": (2, 1)}, {"a": 4}, ValueError, r"group 'a' are unsorted"),
        ({"a": (1, 1)}, {"a": 4}, ValueError, r"group 'a' are duplicated"),
        ({"a": ()}, {"a": 4}, ValueError, r"group 'a' must keep at least one filter"),
        ({"a": (0, 4)}, {"a": 4}, ValueError, r"group 'a' has indices out of range \[0, 4\): \[4\]"),
        ({"a": (-1, 2)}, {"a": 4}, ValueError, r"out of range \[0, 4\): \[-1\]"),
        ({"a": (0,)}, {"b": 4}, ValueError, r"must name the same groups"),
        ({"a": (0.5,)}, {"a": 4}, TypeError, r"indices of group 'a' must be ints"),
        ({"a": (0,)}, {"a": 0}, ValueError, r"width of group 'a' must be an int >= 1"),
        ({"a": (0,)}, {"a": 4.0}, TypeError, r"width of group 'a' must be an int, got float"),
        # Lists of plain ints take the fast path first; every failure must still raise the same message.
        ({"a": [2, 1]}, {"a": 4}, ValueError, r"group 'a' are unsorted"),
        ({"a": [1, 1]}, {"a": 4}, ValueError, r"group 'a' are duplicated"),
        ({"a": []}, {"a": 4}, ValueError, r"group 'a' must keep at least one filter"),
        ({"a": [0, 5]}, {"a": 4}, ValueError, r"out of range \[0, 4\): \[5\]"),
        ({"a": [-1]}, {"a": 4}, ValueError, r"out of range \[0, 4\): \[-1\]"),
        ({"a": (False, True)}, {"a": 4}, TypeError, r"indices of group 'a' must be ints, got dtype bool"),
        ({"a": ((0, 1),)}, {"a": 4}, ValueError, r"group 'a' must keep at least one filter \(1-D indices\)"),
    ],
)
def test_invariants(keep, widths, exc, match):
    with pytest.raises(exc, match=match):
        PruningPlan(keep=keep, widths=widths)


def test_from_json_errors():
    with pytest.raises(ValueError, match="malformed"):
        PruningPlan.from_json("{not json")
    with pytest.raises(ValueError, match="not a jaxprune plan"):
        PruningPlan.from_json('{"keep": {}}')
    with pytest.raises(ValueError, match=r"plan data lacks 'keep' and 'widths'"):
        PruningPlan.from_json('{"format": "jaxprune.PruningPlan", "version": 1}')
    with pytest.raises(ValueError, match="unsupported plan version 99"):
        PruningPlan.from_json('{"format": "jaxprune.PruningPlan", "version": 99, "keep": {}, "widths": {}}')


def test_plan_is_read_only():
    plan = PruningPlan(keep={"a": (0, 2)}, widths={"a": 4})
    with pytest.raises(TypeError):
        plan.keep["a"] = (3, 1)
    with pytest.raises(TypeError):
        plan.widths["a"] = 9


@settings(deadline=None, max_examples=200)
@given(idx=st.lists(st.integers(-2, 7), max_size=6), as_list=st.booleans())
def test_plain_int_indices_are_accepted_exactly_when_valid(idx, as_list):
    """The plain-int fast path accepts exactly what the rule allows: non-empty, strictly ascending, in [0, width)."""
    width = 6
    valid = bool(idx) and all(0 <= i < width for i in idx) and all(a < b for a, b in itertools.pairwise(idx))
    keep = list(idx) if as_list else tuple(idx)
    if valid:
        plan = PruningPlan(keep={"a": keep}, widths={"a": width})
        assert plan.keep["a"] == tuple(idx) and type(plan.keep["a"]) is tuple
    else:
        with pytest.raises(ValueError, match="group 'a'"):
            PruningPlan(keep={"a": keep}, widths={"a": width})
