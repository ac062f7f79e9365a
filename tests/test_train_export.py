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
from musicgen_jax.train.model import build_model, training_layout
from tests.train_fixtures import save_tiny_transformers_musicgen, single_device_mesh


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
    got = jax.tree.map(np.asarray, training_layout(loaded.lm_params, model.config.lm.num_layers))
    assert jax.tree.structure(got) == jax.tree.structure(trained)
    jax.tree.map(np.testing.assert_array_equal, got, trained)

    codes = jnp.asarray(rng.integers(0, 33, (2, 4, 7)), jnp.int32)
    text = jnp.asarray(rng.standard_normal((2, 5, 24)), jnp.float32)
    mask = jnp.ones((2, 5), jnp.int32)
    ours = model.lm.apply({"params": trained}, codes, text=text, text_mask=mask)[0]  # training layout
    theirs = loaded.lm.apply({"params": loaded.lm_params}, codes, text=text, text_mask=mask)[0]  # inference
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
