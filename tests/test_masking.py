"""The masking reference: masks from plans, one compile for any mask, masking after BN is not zeroing filters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, input_batch

import jaxprune as jp
from jaxprune.groups import flatten_variables
from jaxprune.plan import PruningPlan


def test_plan_masks(zoo):
    m, _ = zoo("resnet20")
    plan = PruningPlan(keep={"stage1_block1_conv1": (0, 3)}, widths={"stage1_block1_conv1": 16})
    masks = jp.plan_masks(m, plan)
    assert set(masks) == {g.name for g in m.channel_groups()}
    assert masks["stage1_block1_conv1"].tolist() == [1, 0, 0, 1] + [0] * 12
    assert masks["stage3_stream"].tolist() == [1] * 64
    with pytest.raises(ValueError, match=r"plan names unknown group 'conv1'"):
        jp.plan_masks(m, PruningPlan(keep={"conv1": (0,)}, widths={"conv1": 4}))
    with pytest.raises(ValueError, match=r"plan prunes group 'stage2_stream', which the model declares not prunable"):
        jp.plan_masks(m, PruningPlan(keep={"stage2_stream": (0,)}, widths={"stage2_stream": 32}))
    with pytest.raises(ValueError, match=r"group 'stage1_block1_conv1' has width 16 in the model, the plan expects 8"):
        jp.plan_masks(m, PruningPlan(keep={"stage1_block1_conv1": (0,)}, widths={"stage1_block1_conv1": 8}))


def test_one_compile_serves_every_mask(zoo):
    m, v = zoo("resnet20")
    f = jp.masked_forward(m)
    assert jp.masked_forward(m) is f
    x = input_batch(m, 2)
    outs = []
    for r in (0.1, 0.5, 0.9):
        plan = jp.make_plan(m, v, prune_ratio=r)
        outs.append(f(v, x, {k: jnp.asarray(a) for k, a in jp.plan_masks(m, plan).items()}))
    assert f._cache_size() == 1
    assert not np.allclose(outs[0], outs[2])


def test_all_ones_masks_equal_the_plain_model(zoo):
    m, v = zoo("vgg11")
    x = input_batch(m, 2)
    # The two sides are the same float32 math compiled as two programs: the mask multiply changes XLA's fusions and
    # so the order of each layer's accumulations. Each of the `depth` layers (8 convs + 2 dense for VGG-11) may then
    # round differently by about 2 ulp of the output scale on each side, and these add up along the depth, so the
    # bound is 2 sides x 2 ulp x depth x max(1, max|y|) (4.8e-6 relative here). Measured over 3 seeds x 3 inputs:
    # with the plain side run op by op, at most 9 ulp (1.1e-6 relative), each side within 8 ulp of a float64
    # forward; with both sides jitted as here, 0 ulp on those 9 cases (XLA:CPU, level-0 backend optimisation).
    depth = sum(1 for path in flatten_variables(v) if path[0] == "params" and path[-1] == "kernel")
    assert depth == 10
    rel = 2 * 2 * depth * float(np.finfo(np.float32).eps)
    # The plain side jitted too: op by op, every op of every distinct layer shape would compile on its own.
    assert_close(jp.masked_forward(m)(v, x, jp.full_masks(m)), jax.jit(lambda v, x: m.apply(v, x))(v, x), rel=rel)


def test_zeroing_filters_alone_is_not_pruning(zoo):
    """The BN shift of a zeroed filter still flows, so zeroing kernels differs from the masking reference."""
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio={"stage2_block2_conv1": 0.5})
    x = input_batch(m, 2)
    removed = list(plan.removed("stage2_block2_conv1"))
    zeroed = jax.tree_util.tree_map(lambda a: a, v)
    k = np.array(v["params"]["stage2_block2_conv1"]["kernel"])
    k[..., removed] = 0
    zeroed["params"]["stage2_block2_conv1"]["kernel"] = k
    m2, v2 = jp.prune(m, v, plan)
    # Jitted forwards: op by op, every op of every distinct layer shape would compile on its own.
    pruned = jax.jit(lambda v, x: m2.apply(v, x))(v2, x)
    assert_close(pruned, jp.mask_dropped(m, v, plan, x))  # the float32 bound of docs/design.md §4
    assert float(jnp.max(jnp.abs(jax.jit(lambda v, x: m.apply(v, x))(zeroed, x) - pruned))) > 1e-3
