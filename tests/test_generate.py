"""End-to-end generation against transformers' MusicgenForConditionalGeneration.generate (greedy, CFG)."""
import dataclasses
import os

import jax
import numpy as np
import pytest
import torch

from musicgen_jax.musicgen import MusicGen
from tests.helpers import snr_db
from tests.lm_fixtures import widen_
from tests.t5_fixtures import train_spiece

PROMPTS_SAME_LENGTH = ["happy rock guitar", "happy jazz piano"]  # 13 tokens each
PROMPTS_UNEQUAL = ["happy rock guitar", "soft jazz piano"]  # 13 and 8 tokens


def build_reference(tmp_path, *, stereo=False, dim=32, layers=2, heads=4, seed=0):
    """A random-weight transformers MusicGen saved in the real layout, with a trained spiece.model."""
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=300, d_model=24, d_kv=8, d_ff=32, num_layers=2, num_heads=3)
    codec = EncodecConfig(sampling_rate=32000, num_filters=4, upsampling_ratios=[4, 2], hidden_size=8,
                          codebook_size=32, target_bandwidths=[80.0], use_causal_conv=False,
                          use_conv_shortcut=False, normalize=False, chunk_length_s=None)
    decoder = MusicgenDecoderConfig(vocab_size=32, hidden_size=dim, num_hidden_layers=layers,
                                    num_attention_heads=heads, ffn_dim=4 * dim, num_codebooks=8 if stereo else 4,
                                    audio_channels=2 if stereo else 1, pad_token_id=32, bos_token_id=32,
                                    dropout=0.0)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5, audio_encoder=codec, decoder=decoder))
    model.set_attn_implementation("eager")
    widen_(model, seed)
    with torch.no_grad():  # spread the codec's codebooks over its latents (they initialise to zeros)
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    model.eval()
    model.save_pretrained(tmp_path)
    train_spiece(str(tmp_path))
    return model


def reference_generate(model, mg: MusicGen, prompts, frames: int, cfg: float = 3.0, audiocraft_padding=False):
    """transformers greedy generation -> (tokens [B, K, T], audio [B, C, N]).

    audiocraft_padding: emulate audiocraft's unmasked text padding in transformers: T5 runs with the
    real mask, padded features are zeroed, and the decoder sees an all-ones mask. Exact when the
    model's enc_to_dec_proj has no bias (zero features then project to the zero memory audiocraft uses).
    """
    captured = {}
    decode = model.audio_encoder.decode

    def recording_decode(codes, *args, **kwargs):
        captured.setdefault("codes", []).append(codes[0].clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = recording_decode
    batch = mg.tokenizer(prompts)
    k = model.decoder.num_codebooks
    delay = max(mg.config.lm.delays)
    ids = torch.from_numpy(np.asarray(batch.ids)).long()
    mask = torch.from_numpy(np.asarray(batch.mask)).long()
    kwargs = {}
    with torch.no_grad():
        if audiocraft_padding:
            from transformers.modeling_outputs import BaseModelOutput

            hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
            # with encoder_outputs given, transformers expects the CFG null half appended by the caller
            hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=hidden)
            mask = torch.cat([torch.ones_like(mask), torch.zeros_like(mask)])
        audio = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=cfg,
                               max_new_tokens=frames + delay, **kwargs)
    model.audio_encoder.decode = decode
    codes = captured["codes"]
    tokens = torch.cat(codes, dim=1) if len(codes) == 1 else torch.stack([codes[0], codes[1]], 2).flatten(1, 2)
    return tokens.numpy(), audio.numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("musicgen_tiny")
    model = build_reference(path)
    return model, MusicGen.from_pretrained(str(path))


def greedy(mg: MusicGen, frames: int, cfg: float = 3.0):
    mg.set_generation_params(duration=frames / mg.frame_rate, use_sampling=False, cfg_coef=cfg)


@pytest.mark.parametrize("prompts", [["happy rock guitar"], PROMPTS_SAME_LENGTH])
def test_greedy_tokens_match_transformers(tiny, prompts):
    model, mg = tiny
    frames = 120
    greedy(mg, frames)
    wav, tokens = mg.generate(prompts, return_tokens=True)
    ref_tokens, ref_audio = reference_generate(model, mg, prompts, frames)
    assert tokens.shape == (len(prompts), 4, frames)
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    assert wav.shape == ref_audio.shape
    assert snr_db(ref_audio, np.asarray(wav)) >= 60
    assert len(np.unique(ref_tokens)) > 8  # not a degenerate constant generation


def test_text_changes_tokens(tiny):
    _, mg = tiny
    greedy(mg, 60)
    _, a = mg.generate(["happy rock guitar"], return_tokens=True)
    _, b = mg.generate(["sad jazz piano"], return_tokens=True)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_unequal_prompt_lengths_follow_audiocraft(tmp_path):
    """Padded text positions take attention mass in audiocraft (our reference), not in transformers."""
    model = build_reference(tmp_path)
    with torch.no_grad():
        model.enc_to_dec_proj.bias.zero_()
    model.save_pretrained(tmp_path)
    mg = MusicGen.from_pretrained(str(tmp_path))
    greedy(mg, 60)
    _, tokens = mg.generate(PROMPTS_UNEQUAL, return_tokens=True)
    audiocraft_like, _ = reference_generate(model, mg, PROMPTS_UNEQUAL, 60, audiocraft_padding=True)
    masked, _ = reference_generate(model, mg, PROMPTS_UNEQUAL, 60)
    np.testing.assert_array_equal(np.asarray(tokens), audiocraft_like)
    np.testing.assert_array_equal(masked[0], audiocraft_like[0])  # the longest prompt has no padding
    assert not np.array_equal(masked[1], audiocraft_like[1])  # the padded one differs between references


@pytest.mark.slow
def test_greedy_musicgen_small_shapes(tmp_path):
    """Decoder at the real musicgen-small shapes (1024 wide, 24 layers, 16 heads), 100 frames."""
    model = build_reference(tmp_path, dim=1024, layers=24, heads=16)
    mg = MusicGen.from_pretrained(str(tmp_path))
    greedy(mg, 100)
    wav, tokens = mg.generate(["happy rock guitar"], return_tokens=True)
    ref_tokens, ref_audio = reference_generate(model, mg, ["happy rock guitar"], 100)
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    assert snr_db(ref_audio, np.asarray(wav)) >= 60
