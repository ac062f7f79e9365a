"""LoRA training (issue 15): only the adapters train (the base stays bit-identical and is in neither the
optimizer, the EMA nor the checkpoints), adapters shard like their kernels, the loss falls on the synthetic
codes, resume is exact and refuses another base. The tiny preset with a random base on an fsdp x tensor
mesh (no torch); the PEFT / transformers side is tests/test_lora_peft.py."""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from musicgen_jax import sharding as S
from musicgen_jax.train.checkpoint import Checkpointer
from musicgen_jax.train.config import load_config
from musicgen_jax.train.loop import Trainer
from tests.train_fixtures import train_world

EVERY, STOP = 4, 12
LORA = {"lora.rank": 4, "lora.alpha": 8, "lora.dropout": 0.1, "lora.targets": "[attention, ffn]"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_world(tmp_path_factory)


def _config(world, ckpt, **extra):
    return world.config(**{**LORA, "checkpoint.dir": ckpt, "checkpoint.every": EVERY, "checkpoint.keep": 10,
                           **extra})


def _mesh():
    """fsdp x tensor over 4 devices: adapters, moments and base sharded (one step compile serves all tests)."""
    return S.make_mesh(1, 2, 2, devices=jax.devices()[:4])


def _host(tree):
    return jax.tree.map(lambda x: np.array(x), jax.device_get(tree))


@pytest.fixture(scope="module")
def lora_run(world):
    """STOP steps of a LoRA run on the tiny preset, checkpointing every EVERY steps."""
    ckpt = os.path.join(world.root, "lora-run")
    trainer = Trainer(_config(world, ckpt), mesh=_mesh())
    start = {"adapters": _host(trainer.state.params), "base": _host(trainer.base)}
    history = trainer.run(stop_at=STOP)
    trainer.close()
    return ckpt, trainer, start, {int(r["step"]): r["loss"] for r in history}


def _keys(tree, arrays_only: bool = False) -> set[str]:
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if not arrays_only or np.ndim(leaf) > 0}


def test_only_the_adapters_train(lora_run):
    _, trainer, start, _ = lora_run
    state = trainer.state
    adapters = _keys(state.params)
    assert len(adapters) == 2 * 10 and all(k.endswith(("lora_a", "lora_b")) for k in adapters)  # A, B x 10 targets
    # optimizer moments and EMA mirror the adapters: no slot for a base weight exists
    moments = _keys(state.opt_state, arrays_only=True)
    assert moments and all(k.endswith(("lora_a", "lora_b")) for k in moments), moments
    assert _keys(state.ema) == adapters
    # the frozen base is bit-identical after the steps
    jax.tree.map(np.testing.assert_array_equal, _host(trainer.base), start["base"])
    # every B started at zero, and both factors of every adapter moved
    assert all(not np.any(v) for k, v in _flat(start["adapters"]).items() if k.endswith("lora_b"))
    moved = {k: float(np.abs(v - _flat(start["adapters"])[k]).max()) for k, v in _flat(_host(state.params)).items()}
    assert min(moved.values()) > 0, moved
    # adapters and their moments shard like the kernels they adapt; the base by the same rules
    query = state.params["layers"]["self_attn"]["query"]
    assert query["lora_a"].sharding.spec == P(None, "fsdp", None)  # [layers, embed, rank]
    assert query["lora_b"].sharding.spec == P(None, None, "tensor", None)  # [layers, rank, heads, kv]
    assert state.opt_state[1][0].mu["layers"]["self_attn"]["query"]["lora_a"].sharding.spec == P(None, "fsdp", None)
    assert trainer.base["layers"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_loss_falls(lora_run):
    _, _, _, losses = lora_run
    assert sorted(losses) == list(range(1, STOP + 1))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (STOP - 2, STOP - 1, STOP)])
    assert last < first - 0.1, (first, last, losses)


def test_checkpoints_hold_the_adapters_and_name_the_base(lora_run):
    ckpt, trainer, _, _ = lora_run
    meta = Checkpointer(ckpt, read_only=True).latest_meta()
    assert meta["step"] == STOP and meta["config"]["lora"]["rank"] == 4
    base = meta["lora_base"]
    assert "random init" in base["source"] and base["dtype"] == "float32"
    assert len(base["checksums"]) == len(jax.tree.leaves(trainer.base))
    # the saved state's checksums cover the adapters' state only (a full LM state has far more leaves)
    assert len(meta["checksums"]) == len(jax.tree.leaves(trainer.state))


def _resumable_copy(ckpt, target, step):
    shutil.copytree(ckpt, target, ignore=shutil.ignore_patterns("tensorboard"))
    for name in os.listdir(target):
        if name.isdigit() and int(name) > step:
            shutil.rmtree(os.path.join(target, name))
    return target


def test_resume_is_exact(world, lora_run, tmp_path):
    ckpt, _, _, losses = lora_run
    copy = _resumable_copy(ckpt, str(tmp_path / "ckpt"), EVERY)
    trainer = Trainer(_config(world, copy), mesh=_mesh())
    assert trainer.step == EVERY
    history = trainer.run(stop_at=2 * EVERY)
    trainer.close()
    assert {int(r["step"]): r["loss"] for r in history} == {s: losses[s] for s in range(EVERY + 1, 2 * EVERY + 1)}
    # the whole state (adapters, moments, EMA, rng) equals the uninterrupted run's at the same step
    ours = Checkpointer(copy, read_only=True).latest_meta()
    reference = Checkpointer(ckpt, read_only=True).manager
    theirs = dict(reference.restore(2 * EVERY, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    assert ours["step"] == theirs["step"] == 2 * EVERY and ours["checksums"] == theirs["checksums"]


def test_resume_refuses_another_base(world, lora_run, tmp_path):
    ckpt, _, _, _ = lora_run
    copy = _resumable_copy(ckpt, str(tmp_path / "ckpt"), EVERY)
    with pytest.raises(ValueError, match="trained on base .*random init.*seed 0.*differs from this run's base"):
        Trainer(_config(world, copy, **{"model.seed": 1}), mesh=_mesh())


@pytest.mark.parametrize("name", ["lora-small", "lora-medium", "lora-melody"])
def test_lora_recipes_load(name):
    from musicgen_jax.config import preset
    from musicgen_jax.train.model import lora_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "train", f"{name}.yaml"))
    assert cfg.lora.enabled and cfg.model.init_from and cfg.lora.base_dtype == "bfloat16"
    assert cfg.model.init_from == f"facebook/musicgen-{name.split('-')[1]}"
    melody = name == "lora-melody"
    lora = lora_config(cfg.lora, preset(cfg.model.init_from))
    assert any(t.startswith("self_attn.") for t in lora.targets)
    assert any(t.startswith("cross_attn.") for t in lora.targets) != melody


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match="lora.targets: unknown LoRA target 'q_proj'"):
        load_config(None, ["lora.rank=4", "lora.targets=[q_proj]"])
    with pytest.raises(ValueError, match="lora.rank must be an integer >= 0"):
        load_config(None, ["lora.rank=-1"])
    with pytest.raises(ValueError, match="lora.base_dtype must be float32 or bfloat16"):
        load_config(None, ["lora.rank=4", "lora.base_dtype=float16"])
    with pytest.raises(ValueError, match="export_adapter_only is for LoRA runs"):
        load_config(None, ["checkpoint.export_adapter_only=true"])
    cfg = load_config(None, ["lora.rank=8", "lora.targets=self_attn"])
    assert cfg.lora.targets == ("self_attn",) and cfg.lora.alpha is None
