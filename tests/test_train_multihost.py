"""Two processes on localhost (jax.distributed, gloo CPU collectives), one CPU device each, train the
same steps as one process: each reads its half of every global batch, gradients are all-reduced,
checkpoints are written by both; a corrupt newest checkpoint is moved aside by process 0 alone."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train_fixtures import compile_cache_env, corrupt_checkpoint, train_world

STEPS = 10  # of the 120-step schedule
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_world(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference_losses(world) -> dict[int, float]:
    """The single-process run of the loop tests (shared), or a fresh one."""
    from musicgen_jax.train.loop import Trainer
    from tests.train_fixtures import single_device_mesh

    path = os.path.join(world.root, "single-process.jsonl")
    if not os.path.isfile(path):
        trainer = Trainer(world.config(**{"log.jsonl": path}), mesh=single_device_mesh())
        trainer.run()
        trainer.close()
    return _read(path)


def _read(path: str) -> dict[int, float]:
    with open(path) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


def _launch(world, ckpt: str, jsonl: str) -> list[str]:
    """Two `musicgen-jax train` processes (ranks 0 and 1) for STEPS more steps -> their outputs."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_DEFAULT_MATMUL_PRECISION="highest", JAX_PLATFORMS="cpu", **compile_cache_env())
    procs = []
    for rank in range(2):
        overrides = world.overrides(**{
            "distributed.enabled": True, "distributed.coordinator": f"127.0.0.1:{port}",
            "distributed.num_processes": 2, "distributed.process_id": rank, "distributed.cpu_collectives": "gloo",
            "checkpoint.dir": ckpt, "checkpoint.every": 5, "log.jsonl": jsonl, "stop_after": STEPS})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "musicgen_jax.cli", "train", "--config", os.devnull, *overrides],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    return outputs


def test_two_processes_train_like_one(world, tmp_path):
    ckpt, jsonl = str(tmp_path / "ckpt"), str(tmp_path / "metrics.jsonl")
    _launch(world, ckpt, jsonl)
    got = _read(jsonl)  # written by process 0
    reference = _reference_losses(world)
    assert sorted(got) == list(range(1, STEPS + 1))
    steps = sorted(got)  # the reduction order differs (measured: |diff| < 1e-6, also over all 120 steps)
    np.testing.assert_allclose([got[s] for s in steps], [reference[s] for s in steps], rtol=0, atol=1e-5)
    assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [5, 10]

    # a corrupt newest step: process 0 moves it aside (the other waits), both resume from step 5
    corrupt_checkpoint(ckpt, 10)
    outputs = _launch(world, ckpt, jsonl)
    assert "moved unusable checkpoint step 10" in outputs[0] and "resumed from step 5" in outputs[0], outputs[0]
    assert "moved" not in outputs[1] and "resumed from step 5" in outputs[1], outputs[1]
    assert [name.split("-")[0] for name in os.listdir(os.path.join(ckpt, "corrupt"))] == ["10"]
    assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [5, 10, 15]
    with open(jsonl) as f:  # steps 6-10 ran again: one row each
        assert [json.loads(line)["step"] for line in f] == list(range(1, 2 * STEPS - 5 + 1))
    got = _read(jsonl)
    steps = sorted(got)
    np.testing.assert_allclose([got[s] for s in steps], [reference[s] for s in steps], rtol=0, atol=1e-5)
