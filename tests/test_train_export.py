"""Fine-tuning starts from a transformers checkpoint; export writes one that `MusicGen.from_pretrained`
(and transformers) load back with the same weights and logits."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicgen_jax.train import trainer as T
from musicgen_jax.train.config import ModelSection, OptimSection
from musicgen_jax.train.export import export_transformers, lm_state_dict
from musicgen_jax.modules.lm import stack_layers
from musicgen_jax.train.model import build_model
from tests.train_fixtures import save_tiny_transformers_musicgen, single_device_mesh

pytestmark = pytest.mark.parity  # fine-tunes and exports a transformers checkpoint built with torch


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_transformers_musicgen(str(tmp_path_factory.mktemp("tiny-musicgen")))


def test_export_round_trip_gives_the_same_logits(base, tmp_path):
    from musicgen_jax.musicgen import MusicGen

    model = build_model(ModelSection(init_from=base))
    assert model.source == base and model.config.lm.condition_dim == 24 and model.pretrained is not None
    state, _ = T.create_state(model, OptimSection(), 10, single_device_mesh())
    start = jax.tree.map(np.asarray, state.params)
    np.testing.assert_array_equal(start["heads"], model.pretrained["heads"])  # starts from the checkpoint
    rng = np.random.default_rng(0)
    trained = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), start)

    out = export_transformers(str(tmp_path / "export"), model.config, trained, model.t5_params, base)
    loaded = MusicGen.from_pretrained(out)
    got = jax.tree.map(np.asarray, stack_layers(loaded.lm_params, model.config.lm.num_layers))
    assert jax.tree.structure(got) == jax.tree.structure(trained)
    jax.tree.map(np.testing.assert_array_equal, got, trained)

    codes = jnp.asarray(rng.integers(0, 33, (2, 4, 7)), jnp.int32)
    text = jnp.asarray(rng.standard_normal((2, 5, 24)), jnp.float32)
    mask = jnp.ones((2, 5), jnp.int32)
    fast = {"xla_backend_optimization_level": 0}  # compile time dominates at these sizes

    def logits(lm, params):
        return jax.jit(lambda p: lm.apply({"params": p}, codes, text=text, text_mask=mask)[0],
                       compiler_options=fast)(params)

    ours = logits(model.lm, trained)  # training layout
    theirs = logits(loaded.lm, loaded.lm_params)  # MusicGen's inference layout
    np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), rtol=0, atol=1e-5)

    # transformers reads every tensor it expects (nothing left randomly initialised)
    from transformers import MusicgenForConditionalGeneration

    _, info = MusicgenForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_export_refuses_mismatched_models(base, tmp_path):
    model = build_model(ModelSection(init_from=base))
    other_t5 = jax.tree.map(lambda x: np.asarray(x) + 1.0, model.t5_params)
    with pytest.raises(ValueError, match="not the one this model was trained with"):
        export_transformers(str(tmp_path / "x"), model.config, model.pretrained, other_t5, base)
    from musicgen_jax.config import tiny

    with pytest.raises(ValueError, match="no text projection"):
        lm_state_dict({}, tiny().lm)  # text width == LM width: transformers has no projection to store
    import dataclasses

    with pytest.raises(ValueError, match="delay pattern"):  # transformers knows no other codebook pattern
        lm_state_dict(model.pretrained, dataclasses.replace(model.config.lm, pattern="unroll"))


def test_cli_prepare_and_export_checkpoint(base, tmp_path, monkeypatch):
    """`prepare` with the codec of a MusicGen checkpoint, and `export` of a training checkpoint given by
    relative paths (from the working directory)."""
    from musicgen_jax import cli
    from musicgen_jax.train.checkpoint import Checkpointer
    from musicgen_jax.train.config import load_config, to_dict
    from musicgen_jax.train.records import read_index
    from tests.train_fixtures import tone, write_audio

    audio = tmp_path / "audio"
    audio.mkdir()
    write_audio(str(audio / "a.wav"), tone(0.25, 44100), 44100, "a test tone")
    assert cli.main(["prepare", str(audio), str(tmp_path / "data"), "--codec", base, "--segment-seconds", "0.1",
                     "--quiet"]) == 0
    assert read_index(str(tmp_path / "data")).num_records == 2  # the 0.05 s tail is below the 0.8 ratio

    cfg = load_config(None, [f"model.init_from={base}", "steps=10"])
    model = build_model(cfg.model)
    state, _ = T.create_state(model, cfg.optim, cfg.steps, single_device_mesh())
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer("ckpt", async_save=False)
    ckpt.save(3, state, {"config": to_dict(cfg), "data": {}, "max_duration": 0.1}, force=True)
    ckpt.close()
    assert cli.main(["export", "ckpt", "export"]) == 0
    from musicgen_jax.convert.lm import load_transformers_lm

    _, exported = load_transformers_lm(str(tmp_path / "export"))
    jax.tree.map(np.testing.assert_array_equal, exported, jax.tree.map(np.asarray, state.ema))
    # the run's training segment is the exported model's generation window
    from musicgen_jax.convert.checkpoint import load_checkpoint

    assert load_checkpoint(str(tmp_path / "export")).config.max_duration == 0.1
