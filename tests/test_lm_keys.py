"""LM key tables (convert/lm.py): one table per layout drives reading and writing, so each is the exact
inverse of the other, and the written keys are exactly those of the reference models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import traverse_util

from musicgen_jax.config import tiny
from musicgen_jax.convert.common import CheckpointError
from musicgen_jax.convert.lm import (audiocraft_t5_name, lm_config_from_audiocraft, lm_config_from_hf,
                                     lm_param_specs, lm_params_from_audiocraft, lm_params_from_transformers,
                                     lm_state_dict)
from tests.lm_fixtures import TEXT_DIM, audiocraft_xp_cfg, hf_state_numpy, make_hf_model, to_audiocraft_state

pytestmark = pytest.mark.parity

KINDS = ["mono", "stereo", "melody"]
OTHER_MODELS = ("text_encoder.", "audio_encoder.")


def _tiny(kind: str):
    lm = tiny(melody=kind == "melody", stereo=kind == "stereo").lm
    return dataclasses.replace(lm, condition_dim=TEXT_DIM)


def _random_params(config, seed: int = 0):
    rng = np.random.default_rng(seed)
    flat = {path: rng.standard_normal(s.shape).astype(np.float32) for path, s in lm_param_specs(config).items()}
    return traverse_util.unflatten_dict(flat)


def _assert_trees_equal(got, want):
    got, want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg="/".join(path))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["transformers", "audiocraft"])
def test_write_then_read_is_the_identity(kind, layout):
    config = _tiny(kind)
    params = _random_params(config)
    state = lm_state_dict(params, config, layout=layout)
    read = lm_params_from_transformers if layout == "transformers" else lm_params_from_audiocraft
    _assert_trees_equal(read(state, config), params)


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_keys_and_values_match_the_reference(kind):
    model = make_hf_model(kind, seed=1)
    config = lm_config_from_hf(model.config.to_dict())
    ref = {k: v for k, v in hf_state_numpy(model).items() if not k.startswith(OTHER_MODELS)}
    written = lm_state_dict(lm_params_from_transformers(hf_state_numpy(model), config), config)
    assert set(written) == set(ref)
    for key, value in ref.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)


@pytest.mark.parametrize("kind", ["mono", "melody"])
def test_audiocraft_keys_and_values_match_the_reference(kind):
    melody = kind == "melody"
    model = make_hf_model(kind, seed=2)
    config = lm_config_from_hf(model.config.to_dict())
    ref = {k: v.numpy() for k, v in to_audiocraft_state(model, melody=melody, mha_names=melody).items()}
    params = lm_params_from_audiocraft(ref, config)  # ".mha." keys and chroma buffers are tolerated
    _assert_trees_equal(params, lm_params_from_transformers(hf_state_numpy(model), config))
    written = lm_state_dict(params, config, layout="audiocraft")
    kept = {k.replace(".mha.", "."): v for k, v in ref.items() if ".self_wav.chroma." not in k}
    assert set(written) == set(kept)
    for key, value in kept.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_bare_decoder_and_omitted_text_projection():
    """transformers stores no enc_to_dec_proj when the text width equals the LM width: it reads as the
    identity (here from a bare MusicgenForCausalLM's keys), and such an LM cannot be written."""
    square = dataclasses.replace(_tiny("mono"), condition_dim=tiny().lm.dim)
    with pytest.raises(ValueError, match="no text projection"):
        lm_state_dict(_random_params(square), square)
    params = _random_params(_tiny("mono"))
    state = lm_state_dict(params, _tiny("mono"))
    bare = {k.removeprefix("decoder."): v for k, v in state.items() if not k.startswith("enc_to_dec_proj")}
    got = lm_params_from_transformers(bare, square)
    np.testing.assert_array_equal(got["text_proj"]["kernel"], np.eye(square.dim))
    np.testing.assert_array_equal(got["text_proj"]["bias"], np.zeros(square.dim))
    np.testing.assert_array_equal(got["layers"]["fc1"]["kernel"], params["layers"]["fc1"]["kernel"])


def test_errors_name_every_bad_checkpoint_key():
    config = _tiny("mono")
    state = lm_state_dict(_random_params(config), config, layout="audiocraft")
    packed = "transformer.layers.0.self_attn.in_proj_weight"
    changes = {"transformer.layers.1.linear1.weight": None, packed: np.zeros((3, 3), np.float32),
               "transformer.layers.0.surprise": np.zeros(3, np.float32)}
    state = {k: v for k, v in {**state, **changes}.items() if v is not None}
    with pytest.raises(CheckpointError) as err:
        lm_params_from_audiocraft(state, config)
    for expected in ("missing keys (1): transformer.layers.1.linear1.weight",
                     "unexpected keys (1): transformer.layers.0.surprise",
                     f"{packed}: checkpoint (3, 3), expected ({3 * config.dim}, {config.dim})"):
        assert expected in str(err.value)


def test_audiocraft_t5_name_and_chroma_frames():
    assert audiocraft_t5_name({}) == "t5-base"
    assert audiocraft_t5_name({"conditioners": {"other": {"model": "t5", "t5": {"name": "t5-large"}},
                                                "description": {"model": "t5", "t5": {"name": "t5-small"}}}}) \
        == "t5-small"
    assert audiocraft_t5_name({"conditioners": {"self_wav": {"model": "chroma_stem"},
                                                "text": {"model": "t5", "t5": {"name": "t5-large"}}}}) == "t5-large"
    melody = lm_config_from_audiocraft(audiocraft_xp_cfg(tiny(melody=True).lm, melody=True))
    assert melody.chroma_frames == 235  # 30 s at 32 kHz, n_fft 2**14, hop 4096
