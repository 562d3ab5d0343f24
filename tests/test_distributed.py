"""Multi-process training on JAX's own runtime: two processes with two CPU devices each against one with four.

Every run is a fresh subprocess, because the device count (``XLA_FLAGS=--xla_force_host_platform_device_count``) and
`jax.distributed.initialize` must come before jax initialises. The two processes find each other through a coordinator
on 127.0.0.1 at a free port and all-reduce through gloo (``jax_cpu_collectives_implementation``); docs/scaling.md
gives the same commands for GPU hosts and TPU pod slices.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import jaxprune as jp
from jaxprune import train

# ----------------------------------------------------------------------------------------------------------------------
# The worker: one process of a job (or the one-process reference), run as ``python -c WORKER role pid nproc port out``
# ----------------------------------------------------------------------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import json, os, sys
    role, pid, nproc, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    import jax
    jax.config.update("jax_enable_x64", True)
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
            initialization_timeout=120, heartbeat_timeout_seconds=int(os.environ.get("HEARTBEAT", "100")),
        )
    import jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec
    import jaxprune as jp
    from jaxprune import train
    from jaxprune.data import batches
    from jaxprune.checkpoint import host_tree
    from jaxprune.train.steps import _mesh_steps

    if role == "die":  # process 1 is killed by the test once both are up; process 0 waits for it in a collective
        multihost_utils.sync_global_devices("up")
        open(os.path.join(out, f"ready{pid}"), "w").close()
        if pid == 1:
            import time
            time.sleep(3600)
        multihost_utils.sync_global_devices("never reached")
        sys.exit(0)

    SHARDS, N, NT, BATCH, EVAL = 2, 32, 11, 16, 8  # per shard: 32 training and 11 test images; global batches
    SEED, TX, FT = 3, train.sgd(0.05), train.sgd(0.01)

    def shard(p, n_train=N):
        # Shard p "loaded" on its own: a seeded RNG per shard, so no process ever holds the other's shard.
        rng = np.random.default_rng([7, p])
        x, y = rng.normal(size=(n_train, 8, 8, 3)), rng.integers(0, 10, n_train).astype(np.int32)
        xt, yt = rng.normal(size=(NT, 8, 8, 3)), rng.integers(0, 10, NT).astype(np.int32)
        return x, y, xt, yt

    def whole(order=range(SHARDS)):
        parts = [shard(p) for p in order]
        return tuple(np.concatenate([q[i] for q in parts]) for i in range(4))

    # ResNet-8 (one block per stage) at half ResNet-20's widths: the job compiles every program in both processes (no
    # compilation cache, see _start), and a compile costs about its number of layers, not its widths; the widths set
    # the cost of the 64 float64 steps the three processes run (0.13 s of CPU per step at (8, 16, 32) against 0.27 s
    # at (16, 32, 64), measured). Every width and every pruned width (4, 12) still divides the 4 devices.
    W = (8, 16, 32)
    model = jp.models.CifarResNet(depth=8, widths=W, stream_widths=W, dtype=jnp.float64)
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jp.random_variables(model, seed=0))
    PLAN = {"stage1": 0.5, "stage2": 0.25}

    def flat(tree):
        return [np.asarray(l).ravel().tolist() for l in jax.tree_util.tree_leaves(host_tree(tree))]

    def summary(state, hist):
        return {"params": flat(state.params), "stats": flat(state.batch_stats), "opt": flat(state.opt_state),
                "hist": [{k: r[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
                         for r in hist]}

    def pipeline(data, per_process, ckpt=None):
        # train, prune, fine-tune, save, restore: the public API as a user calls it (the reference stops before saving:
        # only the job's checkpoint is checked)
        kw = dict(batch_size=BATCH, eval_batch_size=EVAL, seed=SEED, augment="crop", progress=False,
                  per_process_data=per_process)
        s = train.TrainState.create(model, variables, TX, seed=1)
        s, h1 = train.fit(s, data, epochs=1, **kw)
        plan = jp.make_plan(s.model, host_tree(s.variables), prune_ratio=PLAN)
        s = train.prune_state(s, plan)
        s, h2 = train.finetune(s, data, epochs=1, tx=FT, **kw)
        res = summary(s, h1 + h2)
        res["keep"] = {k: list(v) for k, v in plan.keep.items()}
        if ckpt is None:
            return res
        jp.save_checkpoint(ckpt, s, plans=[plan], metadata={"writer": jax.process_index()})
        # save_checkpoint returns in every process only once process 0 has written: read at once, no barrier here.
        c = jp.load_checkpoint(ckpt, tx=FT)
        r = c.train_state()
        ev = train.evaluate(r, data[2], data[3], batch_size=EVAL, per_process_data=per_process)
        res.update(writer=c.metadata["writer"],
                   restored_params=flat(r.params), restored_opt=flat(r.opt_state), restored_step=int(r.step),
                   restored_eval=[ev["loss"], ev["accuracy"], ev["count"]])
        return res

    def reference(parts):
        # One process, four devices: the per-process mode by its definition, global batch i = every shard's batch i
        # in process order, through fit's own step for this mesh (the jitted function fit calls, so its programs,
        # compiled by the replicated run before, are reused) with fit's arguments.
        mesh = train.data_mesh()
        step = _mesh_steps(mesh)[0]
        rep = NamedSharding(mesh, PartitionSpec())
        x, y, xt, yt = (np.concatenate([q[i] for q in parts]) for i in range(4))
        def epoch(s, e):
            its = [batches(q[0], q[1], BATCH // SHARDS, shuffle=True, seed=np.random.default_rng([SEED, e]),
                           drop_last=True) for q in parts]
            ms = []
            for bs in zip(*its):
                xb = np.concatenate([b[0] for b in bs]); yb = np.concatenate([b[1] for b in bs])
                s, m = step(s, train.shard_batch(mesh, xb), train.shard_batch(mesh, yb), label_smoothing=0.0,
                            augment="crop")
                ms.append(host_tree(m))
            ev = train.evaluate(s, xt, yt, batch_size=EVAL)
            return s, [{"train_loss": float(np.mean([m["loss"] for m in ms])),
                        "train_accuracy": float(np.mean([m["accuracy"] for m in ms])),
                        "test_loss": ev["loss"], "test_accuracy": ev["accuracy"]}]
        s = jax.device_put(train.TrainState.create(model, variables, TX, seed=1), rep)
        s, h1 = epoch(s, 0)
        plan = jp.make_plan(s.model, host_tree(s.variables), prune_ratio=PLAN)
        s = jax.device_put(train.prune_state(s, plan).replace(tx=FT), rep)
        s, h2 = epoch(s, 1)
        res = summary(s, h1 + h2)
        res["keep"] = {k: list(v) for k, v in plan.keep.items()}
        return res

    result = {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
              "local_devices": jax.local_device_count()}
    if role == "job":
        result["replicated"] = pipeline(whole(), False, os.path.join(out, "replicated", "model.ckpt"))
        result["per_process"] = pipeline(shard(pid), True, os.path.join(out, "per_process", "model.ckpt"))
        # Surgery on variables sharded across both processes (FSDP-style, output channels over all 4 devices): sliced
        # on device, then compared with the host path on the whole arrays.
        mesh = train.data_mesh()
        def place(a):
            d = a.ndim - 1
            spec = PartitionSpec(*[("data" if i == d and a.shape[d] % 4 == 0 else None) for i in range(a.ndim)])
            return jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec), lambda idx: a[idx])
        sharded = jax.tree_util.tree_map(place, variables)
        plan = jp.make_plan(model, variables, prune_ratio={"stage1": 0.5})
        _, on_device = jp.prune(model, sharded, plan)
        _, on_host = jp.prune(model, variables, plan)
        k = on_device["params"]["stage1_block1_conv1"]["kernel"]
        result["sharded_prune"] = {
            "equal": all(np.array_equal(host_tree(a), b) for a, b in zip(
                jax.tree_util.tree_leaves(on_device), jax.tree_util.tree_leaves(on_host), strict=True)),
            "shape": list(k.shape), "spec": str(k.sharding.spec), "fully_addressable": k.is_fully_addressable,
            "local_shards": sorted(tuple(sh.data.shape) for sh in k.addressable_shards),
        }
        try:  # process 1 drops two training images: both processes refuse before any step
            train.fit(train.TrainState.create(model, variables, TX), shard(pid, N - 2 * pid)[:2], epochs=1,
                      batch_size=BATCH, progress=False, per_process_data=True)
            result["unequal"] = "no error"
        except ValueError as e:
            result["unequal"] = str(e)
    else:
        result["replicated"] = pipeline(whole(), False)
        result["per_process"] = reference([shard(p) for p in range(SHARDS)])
        result["swapped"] = reference([shard(p) for p in (1, 0)])
        result["same_shard"] = reference([shard(0), shard(0)])
    with open(os.path.join(out, f"result{pid}.json"), "w") as f:
        json.dump(result, f)
    """
)

#: A bound that only catches hangs: the runs take seconds to a minute or two on a loaded 2-core machine.
HANG = 900
#: The heartbeat timeout the process-death test sets (seconds; jax's default is 100).
HEARTBEAT = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ)  # keeps JAX_COMPILATION_CACHE_DIR and friends: the processes share compiled programs
    # Appended to the session's XLA_FLAGS (conftest: LLVM optimisation and fusion emitters off), else lost here.
    flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return env


def _start(role: str, pid: int, nproc: int, port: int, out, devices: int, **extra) -> subprocess.Popen:
    if nproc > 1:
        # Measured with jax 0.10.2 on CPU: when both processes load their programs from a warm persistent compilation
        # cache, the first 4-device gloo all-reduce fails ("Gloo context initialization failed: GetKeyValue() timed
        # out"), every time; compiling (process 0 compiles and shares the binary) works. So the job compiles.
        extra.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")
    with open(os.path.join(out, f"log{pid}.txt"), "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, role, str(pid), str(nproc), str(port), str(out)],
            env=_env(devices, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finish(procs, out) -> list[dict]:
    for p in procs:
        try:
            p.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for i, p in enumerate(procs):
        if p.returncode != 0:
            with open(os.path.join(out, f"log{i}.txt")) as f:
                pytest.fail(f"process {i} exited with {p.returncode}:\n{f.read()[-4000:]}")
    results = []
    for i in range(len(procs)):
        with open(os.path.join(out, f"result{i}.json")) as f:
            results.append(json.load(f))
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(process 0, process 1) of a two-process job with 2 CPU devices each, and one process with 4 devices."""
    two = tmp_path_factory.mktemp("two")
    one = tmp_path_factory.mktemp("one")
    for d in (two, one):
        for mode in ("replicated", "per_process"):
            (d / mode).mkdir()
    port = _free_port()
    procs = [_start("job", i, 2, port, two, devices=2) for i in range(2)]
    p0, p1 = _finish(procs, two)
    (ref,) = _finish([_start("reference", 0, 1, 0, one, devices=4)], one)
    return p0, p1, ref, two


# Tolerance: float64 everywhere (model, data, optimizer). Two processes all-reduce through gloo, one process through
# XLA's in-process reduction, so sums may be ordered differently: each step adds a few ulps (2.2e-16 relative) and
# 8 steps at these rates amplify them far less than the 1e-6 it would take to reach the bound.
TOL = 1e-10


def _close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= TOL, f"{what}: max|delta| = {err:.3g} > {TOL}"
    return err


def _same_run(got: dict, want: dict, what: str) -> None:
    assert got["keep"] == want["keep"], f"{what}: kept indices differ"
    for key in ("params", "stats", "opt"):
        assert len(got[key]) == len(want[key])
        for i, (a, b) in enumerate(zip(got[key], want[key], strict=True)):
            _close(a, b, f"{what} {key} leaf {i}")
    assert len(got["hist"]) == len(want["hist"]) == 2
    for e, (a, b) in enumerate(zip(got["hist"], want["hist"], strict=True)):
        for k in a:
            _close(a[k], b[k], f"{what} epoch {e + 1} {k}")


def _max_param_delta(a: dict, b: dict) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a["params"], b["params"], strict=True)
    )


@pytest.mark.slow
def test_two_processes_see_one_global_job(runs):
    p0, p1, ref, _ = runs
    assert [p0["process"], p1["process"], ref["process"]] == [0, 1, 0]
    assert [p0["processes"], p0["devices"], p0["local_devices"]] == [2, 4, 2]
    assert [ref["processes"], ref["devices"], ref["local_devices"]] == [1, 4, 4]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replicated", "per_process"])
def test_two_processes_equal_one_process_with_four_devices(runs, mode):
    p0, p1, ref, _ = runs
    _same_run(p0[mode], ref[mode], f"{mode} process 0 vs one process")
    _same_run(p1[mode], ref[mode], f"{mode} process 1 vs one process")
    # The pruned group of stage 1 and that of stage 2 (ResNet-8 at widths 8, 16, 32: 1 block per stage), halved and
    # cut by a quarter.
    assert {k: len(v) for k, v in p0[mode]["keep"].items() if k.startswith(("stage1_block", "stage2_block"))} == {
        "stage1_block1_conv1": 4,
        "stage2_block1_conv1": 12,
    }


@pytest.mark.slow
def test_per_process_data_is_each_process_own_shard(runs):
    # Augmentation crops image j of a global batch at its own random offset, so the order of the shards inside the
    # global batch changes the result: swapped shards, or both processes on shard 0, give a visibly different model
    # (far beyond TOL). The two-process run equals the reference in process order only.
    p0, _, ref, _ = runs
    got = p0["per_process"]
    assert _max_param_delta(got, ref["per_process"]) <= TOL
    assert _max_param_delta(got, ref["swapped"]) > 1e-6
    assert _max_param_delta(got, ref["same_shard"]) > 1e-6
    # The two data modes train on different global batches: they must not coincide either.
    assert _max_param_delta(got, p0["replicated"]) > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replicated", "per_process"])
def test_one_checkpoint_written_by_process_zero_and_restored_everywhere(runs, mode):
    p0, p1, _, folder = runs
    assert sorted(os.listdir(folder / mode)) == ["model.ckpt"]  # one file, no temporary left behind
    header = jp.read_checkpoint_header(folder / mode / "model.ckpt")
    assert header["metadata"] == {"writer": 0}
    assert header["step"] == 4 + 4  # 2 shards x 32 images / 16 per global batch = 4 steps, twice
    for p in (p0, p1):
        r = p[mode]
        assert r["writer"] == 0 and r["restored_step"] == 8
        for i, (a, b) in enumerate(zip(r["restored_params"], r["params"], strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"restored params leaf {i}")  # stored bit for bit
        for i, (a, b) in enumerate(zip(r["restored_opt"], r["opt"], strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"restored optimizer leaf {i}")
        loss, accuracy, count = r["restored_eval"]
        assert count == 22  # every test image of both shards, counted once
        _close(loss, r["hist"][-1]["test_loss"], "restored test loss")
        assert accuracy == r["hist"][-1]["test_accuracy"]


@pytest.mark.slow
def test_variables_sharded_across_processes_are_pruned_on_device(runs):
    p0, p1, _, _ = runs
    for p in (p0, p1):
        assert p["sharded_prune"] == {
            "equal": True,  # every leaf, gathered afterwards, equals the host path on the whole arrays
            "shape": [3, 3, 8, 4],
            "spec": "P(None, None, None, 'data')",
            "fully_addressable": False,
            "local_shards": [[3, 3, 8, 1], [3, 3, 8, 1]],  # this process's two devices hold 1 of the 4 filters each
        }


@pytest.mark.slow
def test_per_process_shards_of_different_lengths_are_refused_in_every_process(runs):
    p0, p1, _, _ = runs
    for p in (p0, p1):
        assert "same number of training examples in every process, got process 0: 32, process 1: 30" in p["unequal"]


# ----------------------------------------------------------------------------------------------------------------------
# A process dies
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_survivor_aborts_after_the_heartbeat_timeout_when_a_process_dies(tmp_path):
    port = _free_port()
    procs = [_start("die", i, 2, port, tmp_path, devices=2, HEARTBEAT=str(HEARTBEAT)) for i in range(2)]
    try:
        deadline = time.monotonic() + HANG
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "the two processes never came up"
            assert all(p.poll() is None for p in procs), "a process exited before the kill"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        # Hang-catching bound: 20x the heartbeat timeout (measured: the survivor aborts within about 1x).
        rc = procs[0].wait(timeout=20 * HEARTBEAT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rc != 0
    assert rc == -signal.SIGABRT  # jax's coordination client terminates the process (absl CHECK failure)
    log = (tmp_path / "log0.txt").read_text()
    assert "Terminating process because the JAX distributed service detected fatal errors" in log


# ----------------------------------------------------------------------------------------------------------------------
# Bad input, in this process (jax.distributed not initialised)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_state():
    m = jp.models.CifarResNet(depth=8, widths=(16, 32, 64))  # the checks below refuse before any step: any model
    return train.TrainState.create(m, jp.random_variables(m), train.sgd(0.1))


def test_per_process_data_needs_jax_distributed(small_state):
    x, y = np.zeros((8, 8, 8, 3), np.float32), np.zeros(8, np.int32)
    msg = r"call jax.distributed.initialize\(\) in every process first \(jax.distributed is not initialised; "
    msg += r"jax.process_count\(\) is 1\)"
    with pytest.raises(ValueError, match=msg):
        train.fit(small_state, (x, y), epochs=1, batch_size=4, progress=False, per_process_data=True)
    with pytest.raises(ValueError, match=msg):
        train.evaluate(small_state, x, y, batch_size=4, per_process_data=True)
    with pytest.raises(ValueError, match=msg):
        train.check_per_process_lengths({"training examples": 8})


def test_per_process_data_must_be_a_bool(small_state):
    x, y = np.zeros((8, 8, 8, 3), np.float32), np.zeros(8, np.int32)
    with pytest.raises(TypeError, match="per_process_data must be a bool"):
        train.evaluate(small_state, x, y, batch_size=4, per_process_data="yes")
