"""LoRA export and loading against the references (issue 15): a LoRA run's checkpoint exports merged weights
that MusicGen.from_pretrained and transformers load with the adapter forward's logits, and an adapter-only
PEFT folder that transformers + peft load onto the base with our logits; PEFT's own folders load into
MusicGen.from_pretrained(base, adapters=...) with PEFT's logits. Random-weight tiny reference MusicGen."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import no_grad
from tests.train_fixtures import save_tiny_transformers_musicgen, single_device_mesh

pytestmark = pytest.mark.parity  # transformers + peft (torch) are the references

FAST = {"xla_backend_optimization_level": 0}  # compile time dominates at these sizes
TOL = 1e-4  # fp32 torch vs fp32 XLA on CPU, as the other LM parity tests
RUN = ["lora.rank=4", "lora.alpha=6", "lora.targets=[all]", "steps=10"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_transformers_musicgen(str(tmp_path_factory.mktemp("lora-base")))


def _trained_adapters(model, seed: int = 1):
    """Adapters of a trained look (B != 0): A ~ U(+-1/sqrt(fan_in)), B ~ N(0, 0.3^2 / r)."""
    from musicgen_jax.modules.lora import split_adapters

    shapes = jax.tree.map(lambda x: x, split_adapters(jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
                                                      ["params"])[1])
    import flax.linen as nn

    shapes = nn.meta.unbox(shapes)
    rng = np.random.default_rng(seed)

    def draw(path, x):
        if path[-1].key == "lora_a":
            return (rng.uniform(-1, 1, x.shape) / np.sqrt(np.prod(x.shape[1:-1]))).astype(np.float32)
        return (0.3 * rng.standard_normal(x.shape) / np.sqrt(x.shape[1])).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    """A LoRA run's checkpoint (adapters on every target of the base, as after training)."""
    from musicgen_jax.train import trainer as T
    from musicgen_jax.train.checkpoint import Checkpointer
    from musicgen_jax.train.config import load_config, to_dict
    from musicgen_jax.train.model import build_model

    cfg = load_config(None, [f"model.init_from={base}", *RUN])
    model = build_model(cfg.model, cfg.lora)
    state, _ = T.create_state(model, cfg.optim, cfg.steps, single_device_mesh(), compiler_options=FAST)
    adapters = _trained_adapters(model)
    state = state.replace(params=jax.tree.map(jnp.asarray, adapters), ema=jax.tree.map(jnp.asarray, adapters))
    ckpt = str(tmp_path_factory.mktemp("lora-run") / "ckpt")
    saver = Checkpointer(ckpt, async_save=False)
    saver.save(10, state, {"config": to_dict(cfg), "data": {}, "max_duration": 0.5}, force=True)
    saver.close()
    return ckpt, model, adapters


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 33, (2, 4, 7)).astype(np.int64)
    text = rng.standard_normal((2, 5, 24)).astype(np.float32)
    return codes, text, np.ones((2, 5), np.int64)


def _ours(lm, params) -> np.ndarray:
    codes, text, mask = _inputs()
    fn = jax.jit(lambda p: lm.apply({"params": p}, jnp.asarray(codes, jnp.int32), text=jnp.asarray(text),
                                    text_mask=jnp.asarray(mask, jnp.int32))[0], compiler_options=FAST)
    return np.asarray(fn(params))


@no_grad
def _theirs(model) -> np.ndarray:
    """transformers (or PEFT-wrapped) teacher-forced logits, text encoder skipped (encoder_outputs given)."""
    import torch

    codes, text, mask = _inputs()
    b, k, s = codes.shape
    out = model(encoder_outputs=(torch.from_numpy(text),), attention_mask=torch.from_numpy(mask),
                decoder_input_ids=torch.from_numpy(codes).reshape(b * k, s))
    return out.logits.reshape(b, k, s, -1).numpy()


def _matters(adapted: np.ndarray, plain: np.ndarray) -> bool:
    """The adapters move the logits by a good part of their size (a loader that dropped them would fail)."""
    return float(np.abs(adapted - plain).max()) > 0.2 * float(np.abs(plain).max())


def _hf(path):
    from transformers import MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration.from_pretrained(path).eval()


def test_merged_export_equals_the_adapter_forward(run, tmp_path, capsys):
    from musicgen_jax import cli
    from musicgen_jax.modules.lora import combine
    from musicgen_jax.musicgen import MusicGen

    ckpt, model, adapters = run
    assert cli.main(["export", ckpt, str(tmp_path / "merged")]) == 0
    adapted = _ours(model.lm, combine(model.pretrained, adapters))  # the training LM with its adapters
    loaded = MusicGen.from_pretrained(str(tmp_path / "merged"))
    merged = _ours(loaded.lm, loaded.lm_params)  # the inference LM (one module per layer), no adapters
    np.testing.assert_allclose(merged, adapted, rtol=0, atol=1e-5)
    plain = _ours(model.lm, combine(model.pretrained, jax.tree.map(np.zeros_like, adapters)))
    assert _matters(adapted, plain)
    from transformers import MusicgenForConditionalGeneration

    hf, info = MusicgenForConditionalGeneration.from_pretrained(str(tmp_path / "merged"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    np.testing.assert_allclose(_theirs(hf.eval()), adapted, rtol=0, atol=TOL)


def test_peft_loads_our_adapter_folder(base, run, tmp_path):
    from peft import PeftModel

    from musicgen_jax import cli
    from musicgen_jax.modules.lora import combine
    from musicgen_jax.musicgen import MusicGen

    ckpt, model, adapters = run
    out = str(tmp_path / "adapter")
    assert cli.main(["export", ckpt, out, "--adapter-only"]) == 0
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 6
    assert config["base_model_name_or_path"] == base
    assert set(config["target_modules"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.out_proj", "encoder_attn.q_proj", "encoder_attn.k_proj",
                                             "encoder_attn.v_proj", "encoder_attn.out_proj", "fc1", "fc2"}

    peft_model = PeftModel.from_pretrained(_hf(base), out).eval()
    adapted_modules = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
    assert len(adapted_modules) == 2 * 10 and all(".decoder.layers." in n for n in adapted_modules)
    ours = _ours(model.lm, combine(model.pretrained, adapters))
    theirs = _theirs(peft_model)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=TOL)
    assert _matters(theirs, _theirs(_hf(base)))  # peft applied them

    # the same folder loads here onto the base, merged in memory: the merged export's weights
    with_adapters = MusicGen.from_pretrained(base, adapters=out)
    merged = MusicGen.from_pretrained(base, adapters=None)
    assert cli.main(["export", ckpt, str(tmp_path / "merged")]) == 0
    exported = MusicGen.from_pretrained(str(tmp_path / "merged"))
    close = jax.tree.map(lambda a, b: bool(np.allclose(a, b, rtol=0, atol=1e-6)), with_adapters.lm_params,
                         exported.lm_params)
    assert all(jax.tree.leaves(close))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, with_adapters.lm_params, merged.lm_params)))


def test_peft_s_own_folder_loads_with_its_logits(base, tmp_path):
    """A folder written by peft itself (suffix targets, rsLoRA, only layer 1 adapted) gives PEFT's logits."""
    import torch
    from peft import LoraConfig, get_peft_model

    from musicgen_jax.convert.adapters import load_adapters
    from musicgen_jax.convert.checkpoint import load_checkpoint
    from musicgen_jax.musicgen import MusicGen

    torch.manual_seed(0)
    peft_model = get_peft_model(_hf(base), LoraConfig(r=4, lora_alpha=6, target_modules=["q_proj", "v_proj",
                                                                                           "out_proj", "fc1"],
                                                      use_rslora=True, layers_to_transform=[1]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3 / 2)  # trained-looking (PEFT initialises B to zero)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    theirs = _theirs(peft_model.eval())

    adapters = load_adapters(str(tmp_path / "peft"), load_checkpoint(base).config.lm)
    assert adapters.lora.rslora and adapters.lora.scale == 6 / 2
    assert adapters.lora.targets == ("self_attn.query", "self_attn.value", "self_attn.out", "cross_attn.query",
                                     "cross_attn.value", "cross_attn.out", "fc1")
    assert not adapters.params["layers"]["fc1"]["lora_a"][0].any()  # layer 0 not adapted: zero
    loaded = MusicGen.from_pretrained(base, adapters=str(tmp_path / "peft"))
    np.testing.assert_allclose(_ours(loaded.lm, loaded.lm_params), theirs, rtol=0, atol=TOL)
    assert _matters(theirs, _theirs(_hf(base)))


def test_adapter_folders_are_checked(base, run, tmp_path):
    from musicgen_jax.convert.adapters import load_adapters, save_peft_adapters
    from musicgen_jax.convert.checkpoint import load_checkpoint
    from musicgen_jax.convert.common import CheckpointError
    from musicgen_jax.musicgen import MusicGen
    from musicgen_jax.train.export import export_state

    ckpt, model, adapters = run
    lm = load_checkpoint(base).config.lm
    with pytest.raises(ValueError, match="is a training checkpoint.*--adapter-only"):
        MusicGen.from_pretrained(base, adapters=ckpt)
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder: it has no adapter_config.json"):
        load_adapters(str(tmp_path), lm)
    folder = save_peft_adapters(str(tmp_path / "a"), model.lora, adapters, lm, base=base)
    with open(os.path.join(folder, "adapter_config.json")) as f:
        config = json.load(f)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(dict(config, rank_pattern={"fc1": 8}, use_dora=True), f)
    with pytest.raises(CheckpointError, match="rank_pattern.*per-module ranks.*DoRA is not supported"):
        load_adapters(folder, lm)
    import dataclasses

    deeper = dataclasses.replace(lm, num_layers=1)  # (shallower)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointError, match="adapters for layers 0..1, the LM has 1 layers: .*another model size"):
        load_adapters(folder, deeper)
    with pytest.raises(CheckpointError, match="adapters for layers 0..1, the LM has 3 layers: .*another model size"):
        load_adapters(folder, dataclasses.replace(lm, num_layers=3))
    full = dataclasses.replace(model, lora=None)
    with pytest.raises(ValueError, match="--adapter-only exports the adapters of a LoRA run"):
        export_state(str(tmp_path / "x"), full, None, adapter_only=True)
