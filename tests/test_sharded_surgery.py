"""Sharded surgery: a leaf split over several devices is sliced on its devices, never gathered to the host.

The checks need 4 devices, and the device count is fixed when jax initialises, so this module runs itself in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the tests defined under
``JAXPRUNE_FOUR_DEVICES=1``). Transfer guards do not fire on the CPU backend (device memory is host memory), so the
proof that no sharded leaf reaches the host counts reads instead: `np.asarray`, `np.array`, `jax.device_get` and the
array's own ``__array__`` are wrapped while pruning, and every per-device buffer of the result is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxprune as jp
from jaxprune.surgery import ReshardWarning

_INNER = os.environ.get("JAXPRUNE_FOUR_DEVICES") == "1"


def test_sharded_surgery_on_four_host_devices():
    """Runs the 4-device tests below in a fresh process; they must all pass (and there must be as many as defined)."""
    if _INNER:
        pytest.skip("this is the inner run")
    env = dict(os.environ)
    # Appended to the session's XLA_FLAGS (conftest: LLVM optimisation and fusion emitters off), else lost here.
    flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAXPRUNE_FOUR_DEVICES="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    # Without the hypothesis and benchmark plugins, which no test here uses: loading them took 2 of the inner run's
    # 11 s of CPU (measured).
    plugins_off = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", *plugins_off, "-k", "four_devices_"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{_N_INNER} passed" in proc.stdout, proc.stdout[-2000:]


_N_INNER = 5

if _INNER:
    from flax.traverse_util import flatten_dict
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    @pytest.fixture(scope="module")
    def setup():
        assert jax.device_count() == 4
        # ResNet-8: one block per stage, ResNet-20's widths (16, 32, 64): every case below, a third of the leaves.
        m = jp.models.CifarResNet(depth=8, widths=(16, 32, 64))
        host = jax.tree_util.tree_map(np.asarray, jp.random_variables(m, seed=1))
        return m, host

    def _shard(host, spec_for):
        """Every leaf placed by `spec_for(path, leaf) -> NamedSharding`."""
        return jax.tree_util.tree_map_with_path(lambda p, a: jax.device_put(a, spec_for(p, a)), host)

    def _channels_over(mesh, axes):
        """FSDP-style: every leaf split along its last (output-channel) axis over `axes`; the classifier (10 outputs)
        along its input axis, its bias replicated."""
        size = int(np.prod([mesh.shape[n] for n in ((axes,) if isinstance(axes, str) else axes)]))

        def spec(p, a):
            for d in (a.ndim - 1, 0):
                if a.shape[d] % size == 0:
                    return NamedSharding(mesh, P(*[axes if i == d else None for i in range(a.ndim)]))
            return NamedSharding(mesh, P())

        return spec

    class _Reads:
        """Counts host reads of multi-device arrays: np.asarray / np.array / jax.device_get / Array.__array__."""

        def __init__(self, monkeypatch, cls):
            self.count = 0
            for mod, name in ((np, "asarray"), (np, "array"), (jax, "device_get")):
                monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name)))
            monkeypatch.setattr(cls, "__array__", self._wrap(cls.__array__))

        def _wrap(self, f):
            def wrapped(x, *a, **k):
                if jax.tree_util.tree_reduce(
                    lambda n, leaf: n or (isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1),
                    x,
                    False,
                ):
                    self.count += 1
                return f(x, *a, **k)

            return wrapped

    def _shards_ok(arr):
        """Each device holds exactly its own block of `arr` (not a full copy unless replicated there)."""
        for s in arr.addressable_shards:
            want = arr.sharding.shard_shape(arr.shape)
            assert s.data.shape == want, (s.data.shape, want)

    def _plan(m, v, ratios):
        return jp.make_plan(m, v, prune_ratio=ratios)

    def test_four_devices_channel_sharded_prune_happens_on_device_and_equals_the_host_path(setup, monkeypatch):
        m, host = setup
        mesh = Mesh(np.array(jax.devices()), ("model",))
        v = _shard(host, _channels_over(mesh, "model"))
        plan = _plan(m, host, {"stage1": 0.5, "stage2": 0.5, "stage3": 0.25})  # widths 8, 16, 48: all divisible by 4
        m_host, v_host = jp.prune(m, host, plan)
        reads = _Reads(monkeypatch, type(v["params"]["stem"]["kernel"]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no ReshardWarning: every width still divides
            m_dev, v_dev = jp.prune(m, v, plan)
        assert reads.count == 0
        monkeypatch.undo()
        assert m_dev == m_host
        flat_dev, flat_host = flatten_dict(v_dev), flatten_dict(v_host)
        assert flat_dev.keys() == flat_host.keys()
        before = flatten_dict(host)
        changed = 0
        for path, leaf in flat_dev.items():
            assert isinstance(leaf, jax.Array)
            _shards_ok(leaf)
            np.testing.assert_array_equal(np.asarray(leaf), flat_host[path], err_msg="/".join(path))  # exact: gathers
            if leaf.shape != np.shape(before[path]):
                changed += 1
                assert leaf.sharding.spec == P(*([None] * (leaf.ndim - 1)), "model"), path
        assert changed == 18  # 3 pruned blocks x (conv1 kernel, bn1 scale/bias/mean/var, conv2 kernel)

    def test_four_devices_two_axis_mesh_and_optimizer_state(setup, monkeypatch):
        m, host = setup
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))

        # Conv kernels split over input channels by "data" and output channels by "model"; the rest over both axes.
        rest = _channels_over(mesh, ("data", "model"))

        def spec(p, a):
            if a.ndim == 4 and a.shape[2] % 2 == 0:  # every conv but the stem (3 input channels)
                return NamedSharding(mesh, P(None, None, "data", "model"))
            return rest(p, a)

        v = _shard(host, spec)
        opt = (jax.tree_util.tree_map(lambda a: a * 2, v["params"]),)  # a mirror of params, sharded like them
        plan = _plan(m, host, {"stage2": 0.5})
        _, v_host = jp.prune(m, host, plan)
        opt_host = jp.prune_like_params((jax.tree_util.tree_map(lambda a: np.asarray(a) * 2, host["params"]),), m, plan)
        reads = _Reads(monkeypatch, type(v["params"]["stem"]["kernel"]))
        _, v_dev = jp.prune(m, v, plan)
        opt_dev = jp.prune_like_params(opt, m, plan, params=host["params"])
        assert reads.count == 0
        monkeypatch.undo()
        k = v_dev["params"]["stage2_block1_conv1"]["kernel"]  # its input: stage 1's 16-wide stream
        assert k.shape == (3, 3, 16, 16) and k.sharding.spec == P(None, None, "data", "model")
        _shards_ok(k)
        for a, b in zip(jax.tree_util.tree_leaves(v_dev), jax.tree_util.tree_leaves(v_host), strict=True):
            np.testing.assert_array_equal(np.asarray(a), b)
        for a, b, p in zip(
            jax.tree_util.tree_leaves(opt_dev),
            jax.tree_util.tree_leaves(opt_host),
            jax.tree_util.tree_leaves(v_dev["params"]),
            strict=True,
        ):
            assert a.sharding == p.sharding  # the momentum is sliced exactly like its parameter, on the same devices
            np.testing.assert_array_equal(np.asarray(a), b)

    def test_four_devices_width_that_no_longer_divides_warns_and_takes_the_nearest_sharding(setup):
        m, host = setup
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
        v = _shard(host, _channels_over(mesh, ("data", "model")))
        # stage1 groups 16 -> 14: divisible by "data" (2) but not by data x model (4): "model" is dropped.
        plan = _plan(m, host, {"stage1_block1_conv1": 0.125})
        _, v_host = jp.prune(m, host, plan)
        want = r"5 pruned leaf/leaves no longer divide.*\(data=2, model=2\).*params/stage1_block1_conv1/kernel "
        want += r"\(3, 3, 16, 14\): P\(None, None, None, \('data', 'model'\)\) -> P\(None, None, None, 'data'\)"
        with pytest.warns(ReshardWarning, match=want):
            _, v_dev = jp.prune(m, v, plan)
        k = v_dev["params"]["stage1_block1_conv1"]["kernel"]
        assert k.shape == (3, 3, 16, 14) and k.sharding.spec == P(None, None, None, "data")
        _shards_ok(k)
        np.testing.assert_array_equal(np.asarray(k), v_host["params"]["stage1_block1_conv1"]["kernel"])
        # Untouched dimensions keep their split: conv2's input axis is sliced, its output axis stays over both.
        k2 = v_dev["params"]["stage1_block1_conv2"]["kernel"]
        assert k2.shape == (3, 3, 14, 16) and k2.sharding.spec == P(None, None, None, ("data", "model"))

    def test_four_devices_odd_width_is_replicated_along_that_axis_with_a_warning(setup):
        m, host = setup
        mesh = Mesh(np.array(jax.devices()), ("model",))
        v = _shard(host, _channels_over(mesh, "model"))
        plan = jp.PruningPlan(keep={"stage1_block1_conv1": (0, 3, 5)}, widths={"stage1_block1_conv1": 16})
        want = r"stage1_block1_conv1/kernel \(3, 3, 16, 3\): P\(None, None, None, 'model'\) -> P\(None, None, None, None\) "
        want += r"\(dimension 3\).*Pass round_to= the mesh axis size"
        with pytest.warns(ReshardWarning, match=want):
            _, v_dev = jp.prune(m, v, plan)
        k = v_dev["params"]["stage1_block1_conv1"]["kernel"]
        assert k.shape == (3, 3, 16, 3) and k.sharding.is_fully_replicated and len(k.sharding.device_set) == 4
        np.testing.assert_array_equal(np.asarray(k), host["params"]["stage1_block1_conv1"]["kernel"][..., [0, 3, 5]])

    def test_four_devices_round_to_the_mesh_size_keeps_every_leaf_sharded(setup):
        m, host = setup
        mesh = Mesh(np.array(jax.devices()), ("model",))
        v = _shard(host, _channels_over(mesh, "model"))
        plan = jp.make_plan(m, host, prune_ratio=0.3, round_to=4)  # 16 -> 12, 32 -> 24 (22.4 rounds to 24), 64 -> 44
        assert sorted({len(plan.keep[g]) for g in plan.keep if len(plan.keep[g]) < plan.widths[g]}) == [12, 24, 44]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, v_dev = jp.prune(m, v, plan)
        before = flatten_dict(host)
        changed = {p: leaf for p, leaf in flatten_dict(v_dev).items() if leaf.shape != before[p].shape}
        assert len(changed) == 18  # 3 blocks x 6 leaves
        assert all(not leaf.sharding.is_fully_replicated for leaf in changed.values())

    assert _N_INNER == sum(1 for n in list(globals()) if n.startswith("test_four_devices_"))
