"""Codebook interleaving patterns: delay semantics, transformers' pattern mask, round trips."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from musicgen_jax import patterns as P

SPECIAL = 2048
MONO, STEREO = [0, 1, 2, 3], [0, 0, 1, 1, 2, 2, 3, 3]


def _codes(rng, k, t, b=2):
    return rng.integers(0, SPECIAL, size=(b, k, t))


@pytest.mark.parametrize("delays", [MONO, STEREO])
@pytest.mark.parametrize("frames", [1, 2, 5, 9])
def test_delay_pattern_semantics(delays, frames):
    """Step 0 all special; codebook q at step s holds frame s - 1 - d_q, else special."""
    codes = _codes(np.random.default_rng(frames), len(delays), frames)
    seq = np.asarray(P.delay_pattern(frames, delays).build(codes, SPECIAL))
    assert seq.shape == (2, len(delays), frames + max(delays) + 1)
    assert (seq[:, :, 0] == SPECIAL).all()
    for q, d in enumerate(delays):
        for s in range(seq.shape[-1]):
            t = s - 1 - d
            want = codes[:, q, t] if 0 <= t < frames else SPECIAL
            np.testing.assert_array_equal(seq[:, q, s], want)
    # training input keeps T + 1 steps
    assert P.delay_pattern(frames, delays).build(codes, SPECIAL, valid_only=True).shape[-1] == frames + 1


def test_delay_pattern_audiocraft_docstring_example():
    """audiocraft's DelayedPatternProvider example (T=4, K=3), valid steps only."""
    codes = np.array([[[1, 2, 3, 4]] * 3])
    s = -1
    want = [[s, 1, 2, 3, 4], [s, s, 1, 2, 3], [s, s, s, 1, 2]]
    np.testing.assert_array_equal(P.delay_pattern(4, [0, 1, 2]).build(codes, s, valid_only=True)[0], want)


@pytest.mark.parametrize("delays", [MONO, STEREO])
@pytest.mark.parametrize("frames", [1, 4, 11])
def test_build_revert_identity(delays, frames):
    codes = _codes(np.random.default_rng(0), len(delays), frames)
    pattern = P.delay_pattern(frames, delays)
    seq = pattern.build(codes, SPECIAL)
    np.testing.assert_array_equal(pattern.revert(seq, SPECIAL), codes)
    assert pattern.revert_mask(seq.shape[-1]).all()
    # a prefix of the sequence reverts the frames it holds; the rest is special
    part = seq[..., : frames + 1]
    got = np.asarray(pattern.revert(part, SPECIAL))
    valid = pattern.revert_mask(part.shape[-1])
    np.testing.assert_array_equal(got[:, valid], codes[:, valid])
    assert (got[:, ~valid] == SPECIAL).all()


def test_revert_logits_aligns_predictions_with_frames():
    """The output at step s predicts step s + 1: a model that 'predicts' the next input exactly gives
    back the codes on the valid positions."""
    frames, delays = 6, MONO
    codes = _codes(np.random.default_rng(1), 4, frames)
    pattern = P.delay_pattern(frames, delays)
    seq = np.asarray(pattern.build(codes, SPECIAL))
    nxt = np.concatenate([seq[..., 1:], np.full_like(seq[..., :1], SPECIAL)], axis=-1)
    logits = jax.nn.one_hot(nxt, SPECIAL + 1)
    out, mask = pattern.revert_logits(logits)
    assert mask.all()
    np.testing.assert_array_equal(np.asarray(out).argmax(-1), codes)
    # training: T + 1 input steps; audiocraft ignores the last output, so codebook q loses q frames
    valid_seq = pattern.build(codes, SPECIAL, valid_only=True)
    out, mask = pattern.revert_logits(logits[:, :, : valid_seq.shape[-1]], valid_only=True)
    assert [int(m.sum()) for m in mask] == [frames - q for q in range(4)]
    np.testing.assert_array_equal(np.asarray(out).argmax(-1)[:, mask], codes[:, mask])
    assert np.isnan(np.asarray(out)[:, ~mask]).all()


def test_patterns_are_jittable():
    pattern = P.delay_pattern(5, STEREO)
    codes = jnp.asarray(_codes(np.random.default_rng(2), 8, 5))
    seq = jax.jit(lambda c: pattern.build(c, SPECIAL))(codes)
    back = jax.jit(lambda s: pattern.revert(s, SPECIAL))(seq)
    np.testing.assert_array_equal(back, codes)
    buf = jax.jit(lambda p: P.generation_buffer(pattern, p, SPECIAL))(codes[..., :2])
    assert buf.shape == seq.shape


# audiocraft's providers give these tables (frame index; -1 = special) and valid-step counts.
AUDIOCRAFT_LAYOUTS = [
    (lambda: P.unrolled_pattern(3, 3, [0, 1, 1], [0, 3, 3]), 7,
     [[-1, 0, 1, 2, -1, -1, -1, -1, -1, -1], [-1, -1, -1, -1, 0, -1, 1, -1, 2, -1],
      [-1, -1, -1, -1, 0, -1, 1, -1, 2, -1]]),
    (lambda: P.unrolled_pattern(2, 3), 7,
     [[-1, 0, -1, -1, 1, -1, -1], [-1, -1, 0, -1, -1, 1, -1], [-1, -1, -1, 0, -1, -1, 1]]),
    (lambda: P.coarse_first_pattern(3, 3, [0, 1]), 7,
     [[-1, 0, 1, 2, -1, -1, -1, -1], [-1, -1, -1, -1, 0, 1, 2, -1], [-1, -1, -1, -1, -1, 0, 1, 2]]),
    (lambda: P.musiclm_pattern(2, 4, 2), 9,
     [[-1, 0, -1, 1, -1, -1, -1, -1, -1], [-1, -1, 0, -1, 1, -1, -1, -1, -1],
      [-1, -1, -1, -1, -1, 0, -1, 1, -1], [-1, -1, -1, -1, -1, -1, 0, -1, 1]]),
    (lambda: P.delay_pattern(2, [0, 0, 1, 1]), 3, [[-1, 0, 1, -1], [-1, 0, 1, -1], [-1, -1, 0, 1], [-1, -1, 0, 1]]),
]


@pytest.mark.parametrize("make,valid,layout", AUDIOCRAFT_LAYOUTS)
def test_layouts_match_audiocraft(make, valid, layout):
    pattern = make()
    np.testing.assert_array_equal(pattern.layout, layout)
    assert pattern.valid_steps == valid


@pytest.mark.parametrize("make", [
    lambda t: P.parallel_pattern(t, 4),
    lambda t: P.unrolled_pattern(t, 4),
    lambda t: P.unrolled_pattern(t, 4, [0, 0, 1, 1], [0, 0, 2, 2]),
    lambda t: P.coarse_first_pattern(t, 4),
    lambda t: P.coarse_first_pattern(t, 4, [0, 1, 2]),
    lambda t: P.musiclm_pattern(t, 4),
    lambda t: P.get_pattern("delay", t, 4),
])
@pytest.mark.parametrize("frames", [1, 6])
def test_other_patterns_round_trip(make, frames):
    pattern = make(frames)
    codes = _codes(np.random.default_rng(frames), 4, frames)
    seq = pattern.build(codes, SPECIAL)
    assert (np.asarray(seq)[:, :, 0] == SPECIAL).all()
    assert int((np.asarray(seq[0]) != SPECIAL).sum()) == 4 * frames  # every frame exactly once
    np.testing.assert_array_equal(pattern.revert(seq, SPECIAL), codes)


def test_bad_patterns_are_refused():
    with pytest.raises(ValueError):
        P.delay_pattern(3, [1, 0])
    with pytest.raises(ValueError):
        P.unrolled_pattern(3, 2, [0, 0], [0, 1])
    with pytest.raises(ValueError):
        P.get_pattern("spiral", 3, 4)


# ---------------------------------------------------------------------------------------------------
# transformers' generation helpers


def _hf_decoder(num_codebooks: int, channels: int):
    import torch
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = MusicgenDecoderConfig(vocab_size=SPECIAL, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                ffn_dim=16, num_codebooks=num_codebooks, audio_channels=channels)
    with torch.device("meta"):
        return MusicgenForCausalLM(cfg)


@pytest.mark.parity
@pytest.mark.parametrize("k,channels", [(4, 1), (8, 2)])
def test_generation_buffer_matches_transformers_delay_pattern_mask(k, channels):
    import torch

    """transformers' pattern mask of [BOS | prompt] == our generation buffer built from the raw prompt:
    prompt frames in place, the special token where no frame can be, -1 where tokens are generated."""
    model = _hf_decoder(k, channels)
    delays = MONO if channels == 1 else STEREO
    rng = np.random.default_rng(k)
    checked = 0
    for length in (1, 2, 4):
        for max_length in (8, 12, 30):
            frames = max_length - max(delays) - 1
            ids = rng.integers(0, SPECIAL, size=(2, k, length))
            ids[..., 0] = SPECIAL  # transformers' layout: generation starts from one BOS column
            _, ref_mask = model.build_delay_pattern_mask(torch.from_numpy(ids).reshape(2 * k, length),
                                                         SPECIAL, max_length)
            buf = np.asarray(P.generation_buffer(P.delay_pattern(frames, delays), ids[..., 1:], SPECIAL))
            np.testing.assert_array_equal(buf.reshape(2 * k, -1), ref_mask.numpy())
            checked += 1
    assert checked == 9


@pytest.mark.parametrize("make", [lambda t: P.delay_pattern(t, MONO), lambda t: P.unrolled_pattern(t, 4),
                                  lambda t: P.coarse_first_pattern(t, 4), lambda t: P.musiclm_pattern(t, 4)])
def test_generation_buffer_and_first_step(make):
    """The buffer holds the prompt frames, specials where no frame can be and UNKNOWN elsewhere; the
    decode loop starts at the first step holding a frame past the prompt."""
    frames, prompt_frames = 5, 2
    pattern = make(frames)
    codes = _codes(np.random.default_rng(3), 4, frames)
    buf = np.asarray(P.generation_buffer(pattern, codes[..., :prompt_frames], SPECIAL))
    layout = pattern.layout
    np.testing.assert_array_equal(buf[:, layout < 0], SPECIAL)
    assert (buf[:, layout >= prompt_frames] == P.UNKNOWN).all()
    full = np.asarray(pattern.build(codes, SPECIAL))
    known = (layout >= 0) & (layout < prompt_frames)
    np.testing.assert_array_equal(buf[:, known], full[:, known])
    start = P.first_generated_step(pattern, prompt_frames)
    assert (buf[..., :start] != P.UNKNOWN).all() and (buf[..., start] == P.UNKNOWN).any()
    done = pattern.progress_frames()  # frames' worth of tokens placed before each step
    assert done[0] == 0 and done[-1] == frames and (np.diff(done) >= 0).all()
    half = np.searchsorted(done, frames // 2)
    assert abs(half / pattern.num_steps - 0.5) < 0.25  # advances evenly, also when codebook 0 comes first


def test_lm_config_chooses_the_pattern():
    import dataclasses

    from musicgen_jax.config import tiny

    lm = tiny().lm
    np.testing.assert_array_equal(lm.codebook_pattern(3).layout, P.delay_pattern(3, lm.delays).layout)
    flat = dataclasses.replace(lm, pattern="unroll", pattern_options={"flattening": [0, 1, 2, 3]})
    assert flat.pattern_options == (("flattening", (0, 1, 2, 3)),) and hash(flat)  # YAML lists -> hashable
    np.testing.assert_array_equal(flat.codebook_pattern(3).layout, P.unrolled_pattern(3, 4, [0, 1, 2, 3]).layout)
    with pytest.raises(ValueError, match="unknown codebook pattern"):
        dataclasses.replace(lm, pattern="spiral")
    # bad options fail when the config is made, not at the first training step
    with pytest.raises(ValueError, match="group_by"):
        dataclasses.replace(lm, pattern="music_lm", pattern_options={"group_by": 0})
    with pytest.raises(ValueError, match="bad options"):
        dataclasses.replace(lm, pattern="unroll", pattern_options={"flatten": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="delay pattern takes its delays"):
        dataclasses.replace(lm, pattern_options={"delays": [0, 0, 0, 0]})
