"""Training loop: the loss falls on learnable data, resume is exact, SIGTERM saves and exits,
corrupt or partial checkpoints are skipped for the previous good one."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from musicgen_jax.train.loop import Trainer
from tests.train_fixtures import compile_cache_env, single_device_mesh, train_world

STEPS, EVERY = 120, 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_world(tmp_path_factory)


def _trainer(world, ckpt_dir, **extra):
    cfg = world.config(**{"checkpoint.dir": ckpt_dir, "checkpoint.every": EVERY, "checkpoint.keep": 5, **extra})
    return Trainer(cfg, mesh=single_device_mesh())


def _losses(history):
    return {int(r["step"]): r["loss"] for r in history}


@pytest.fixture(scope="module")
def full_run(world):
    """One uninterrupted run of STEPS steps, checkpointing every EVERY steps."""
    ckpt = os.path.join(world.root, "full-run")
    trainer = _trainer(world, ckpt, **{"log.jsonl": os.path.join(world.root, "single-process.jsonl")})
    history = trainer.run()
    trainer.close()
    return ckpt, _losses(history), history


def test_loss_falls_below_half(full_run):
    ckpt, losses, history = full_run
    assert sorted(losses) == list(range(1, STEPS + 1))
    start, end = losses[1], np.mean([losses[s] for s in range(STEPS - 9, STEPS + 1)])
    assert end < 0.5 * start, (start, end)
    assert "tokens_per_second" in history[-1] and history[-1]["ppl/0"] > 1
    from musicgen_jax.train.events import read_records

    (events,) = os.listdir(os.path.join(ckpt, "tensorboard"))
    records = read_records(os.path.join(ckpt, "tensorboard", events))  # checks the CRCs
    assert len(records) == 1 + STEPS and b"loss" in records[-1] and b"tokens_per_second" in records[-1]
    # the training segment (24 frames at 50 Hz) is recorded as the model's window, for export
    from musicgen_jax.train.checkpoint import Checkpointer

    assert Checkpointer(ckpt, read_only=True).latest_meta()["max_duration"] == 24 / 50


def test_resume_reproduces_the_losses_exactly(world, full_run, tmp_path):
    """Restart from the run's step-40 checkpoint (its later steps removed): state, data iterator and
    step counter continue, and the next losses are bit-identical to the uninterrupted run's."""
    src, reference, _ = full_run
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(src, ckpt, ignore=shutil.ignore_patterns("80", "120", "tensorboard"))
    trainer = _trainer(world, ckpt)
    assert trainer.step == EVERY
    losses = _losses(trainer.run(stop_at=EVERY + 10))
    trainer.close()
    assert losses == {s: reference[s] for s in range(EVERY + 1, EVERY + 11)}


def test_corrupt_and_partial_checkpoints_fall_back(world, full_run, tmp_path, caplog):
    from tests.train_fixtures import corrupt_checkpoint

    src, _, _ = full_run
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(src, ckpt)
    assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [40, 80, 120]
    corrupt_checkpoint(ckpt, 120)  # silent corruption: bytes flipped in the newest step's data
    shutil.copytree(os.path.join(ckpt, "80"), os.path.join(ckpt, "130.orbax-checkpoint-tmp-1"))  # crash mid-save
    os.makedirs(os.path.join(ckpt, "140"))  # a partial copy: the step directory, nothing inside
    shutil.copy(os.path.join(ckpt, "80", "_CHECKPOINT_METADATA"), os.path.join(ckpt, "140"))
    trainer = _trainer(world, ckpt)
    assert trainer.step == 80
    trainer.close()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "step 120" in messages and "checksums" in messages


def test_sigterm_saves_a_checkpoint_and_exits(world, full_run, tmp_path):
    _, reference, _ = full_run
    ckpt = str(tmp_path / "ckpt")
    overrides = world.overrides(**{"checkpoint.dir": ckpt, "checkpoint.every": 1000, "checkpoint.keep": 5,
                                   "log.every": 1, "log.progress": True, "mesh.num_devices": 1})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({}))
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest", **compile_cache_env())
    proc = subprocess.Popen([sys.executable, "-m", "musicgen_jax.cli", "train", "--config", str(config),
                             *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    output = []
    try:
        for line in proc.stdout:  # tqdm writes "k/120" as steps complete
            output.append(line)
            if "training:" in line and "/120" in line and not line.split("training:")[1].strip().startswith("0%"):
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(output)[-3000:]
    steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
    assert len(steps) == 1 and 0 < steps[0] < STEPS, steps
    resumed = _trainer(world, ckpt)
    assert resumed.step == steps[0]
    losses = _losses(resumed.run(stop_at=steps[0] + 3))
    resumed.close()
    assert losses == {s: reference[s] for s in range(steps[0] + 1, steps[0] + 4)}
