"""The sampler layer on a random tiny model (JAX only, no PyTorch): every codebook pattern generates what
the model's own teacher-forced pass predicts, and progress reports arrive in order."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicgen_jax.config import GenerationParams, tiny
from musicgen_jax.modules.lm import MusicGenLM, init_lm, unstack_layers
from musicgen_jax.modules.t5 import T5Encoder, init_t5
from musicgen_jax.sampler import Progress, Sampler
from musicgen_jax.testing import train_spiece
from musicgen_jax.tokenizer import T5Tokenizer

PROMPTS = ["happy rock guitar", "slow sad violin"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spm")
    train_spiece(str(directory), vocab_size=100)
    return T5Tokenizer.from_pretrained(str(directory))


def make_sampler(tokenizer, pattern: str = "delay", **options) -> Sampler:
    config = tiny()
    config = dataclasses.replace(config, lm=dataclasses.replace(config.lm, pattern=pattern, pattern_options=options))
    lm_params = nn.meta.unbox(init_lm(config.lm, jax.random.PRNGKey(1)))["params"]
    t5 = T5Encoder(config.t5)
    t5_params = nn.meta.unbox(init_t5(t5, jax.random.PRNGKey(2)))["params"]
    lm = MusicGenLM(config.lm, scan_layers=False)
    return Sampler(config, lm, unstack_layers(lm_params, config.lm.num_layers), t5, t5_params, tokenizer)


@pytest.mark.parametrize("pattern,options", [("delay", {}), ("parallel", {}), ("unroll", {}),
                                             ("coarse_first", {"delays": [0, 1, 2]}), ("music_lm", {})])
def test_greedy_generation_follows_the_teacher_forced_model(tokenizer, pattern, options):
    """Greedy CFG tokens == argmax of the guided logits of one uncached pass over the generated sequence,
    at every generated position of the LM's pattern: the loop places, feeds and reverts by the pattern."""
    sampler = make_sampler(tokenizer, pattern, **options)
    frames = 12
    params = GenerationParams(duration=frames / sampler.config.frame_rate).with_changes(use_sampling=False)
    tokens = np.asarray(sampler.generate(PROMPTS, params, jax.random.PRNGKey(0)))  # [B, K, T]
    assert tokens.shape == (2, 4, frames) and tokens.max() < sampler.config.lm.codebook_size

    c = sampler.config.lm
    pattern_table = c.codebook_pattern(frames)
    sequence = jnp.asarray(pattern_table.build(jnp.asarray(tokens), c.special_token))  # [B, K, S]
    conditions = sampler.conditioner(sampler.lm_params, sampler.t5_params, PROMPTS, use_cfg=True)
    logits, _ = sampler.lm.apply({"params": sampler.lm_params}, jnp.concatenate([sequence, sequence]), conditions)
    cond, uncond = np.split(np.asarray(logits), 2)
    predicted = (uncond + params.guidance.coef * (cond - uncond)).argmax(-1)  # [B, K, S]: predicts step s + 1
    layout = pattern_table.layout
    q, s = np.nonzero(layout >= 0)
    np.testing.assert_array_equal(np.asarray(sequence)[:, q, s], predicted[:, q, s - 1])
    assert len(np.unique(tokens)) > 4  # not a constant generation


def test_window_seconds_round_trip_to_frames():
    """A training segment of F frames, stored in seconds, is a window of F frames again."""
    from musicgen_jax.config import seconds_for_frames

    for rate in (50.0, 10.0, 4000.0):
        assert all(int(seconds_for_frames(f, rate) * rate) == f for f in range(1, 5000))
    assert int(29 / 50 * 50) == 28  # what a plain division gives back for 29 frames


def test_long_form_refuses_a_stride_that_does_not_fit_the_window(tokenizer):
    sampler = make_sampler(tokenizer)
    window = sampler.config.max_duration
    for stride in (window, window + 1, 1e-6):
        params = GenerationParams(duration=2 * window, extend_stride=stride)
        with pytest.raises(ValueError, match="extend_stride"):
            sampler.generate(PROMPTS, params, jax.random.PRNGKey(0))


def test_progress_reports_frames_in_order(tokenizer):
    sampler = make_sampler(tokenizer, "unroll")
    frames = 30  # 121 steps with one codebook per step: reports at steps 50 and 100
    seen = []
    progress = Progress(frames, callback=lambda done, total: seen.append((done, total)))
    params = GenerationParams(duration=frames / sampler.config.frame_rate)
    sampler.generate(PROMPTS[:1], params, jax.random.PRNGKey(0), progress=progress)
    done = sampler.config.lm.codebook_pattern(frames).progress_frames()
    assert seen == [(int(done[50]), frames), (int(done[100]), frames), (frames, frames)]
    assert seen[0][0] == 12  # 50 steps of one token each, before step 50: 49 tokens / 4 codebooks
