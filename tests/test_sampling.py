"""Sampler semantics (audiocraft's rules, computed independently in numpy) and sampled frequencies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from musicgen_jax.sampling import (SamplingParams, classifier_free_guidance, filtered_probs, sample_next,
                                   top_k_filter, top_p_filter)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_top_k_keeps_ties_with_the_kth():
    probs = jnp.array([[0.1, 0.3, 0.2, 0.2, 0.2]])
    kept = np.asarray(top_k_filter(probs, 2))
    # k-th largest is 0.2 and three tokens hold it: all kept, with the top one
    np.testing.assert_allclose(kept, [[0.0, 0.3, 0.2, 0.2, 0.2]] / np.float32(0.9), rtol=1e-6)


def test_top_p_drops_tokens_after_the_mass_is_reached():
    probs = jnp.array([[0.05, 0.5, 0.25, 0.15, 0.05]])
    np.testing.assert_allclose(np.asarray(top_p_filter(probs, 0.4)), [[0, 1, 0, 0, 0]], atol=1e-7)
    # mass before token 2 is exactly 0.5, not > 0.5: kept
    np.testing.assert_allclose(np.asarray(top_p_filter(probs, 0.5)), [[0, 0.5, 0.25, 0, 0]] / np.float32(0.75),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(top_p_filter(probs, 0.6)), [[0, 0.5, 0.25, 0, 0]] / np.float32(0.75),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(top_p_filter(probs, 0.7)), [[0, 0.5, 0.25, 0, 0]] / np.float32(0.75),
                               rtol=1e-6)


def test_top_p_takes_precedence_and_temperature_sharpens():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.25, 0.15, 0.05]]))
    probs = np.asarray(filtered_probs(logits, SamplingParams(top_k=1, top_p=0.6)))
    assert (probs > 0).sum() == 2  # top_p used, top_k ignored
    cold = np.asarray(filtered_probs(logits, SamplingParams(temperature=0.5, top_k=0)))
    np.testing.assert_allclose(cold, np_softmax(np.log([[0.05, 0.5, 0.25, 0.15, 0.05]]) / 0.5), rtol=1e-5)


def test_greedy_when_sampling_off_or_zero_temperature():
    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]])
    key = jax.random.PRNGKey(0)
    for params in (SamplingParams(use_sampling=False), SamplingParams(temperature=0.0)):
        np.testing.assert_array_equal(np.asarray(sample_next(key, logits, params)), [1, 0])


def test_cfg_formula():
    cond, uncond = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
    np.testing.assert_allclose(np.asarray(classifier_free_guidance(cond, uncond, 3.0)), [2.0, 8.0])


@pytest.mark.parametrize("params", [
    SamplingParams(top_k=0, temperature=1.3),
    SamplingParams(top_k=4),
    SamplingParams(top_p=0.7, temperature=0.8),
])
def test_sampled_frequencies_match_the_target(params):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(10).astype(np.float32) * 1.5
    # the target distribution, by audiocraft's rules, written out in numpy
    probs = np_softmax(logits / params.temperature)
    if params.top_p > 0:
        order = np.argsort(-probs)
        before = np.cumsum(probs[order]) - probs[order]
        target = np.zeros_like(probs)
        target[order] = np.where(before > params.top_p, 0, probs[order])
    elif params.top_k > 0:
        target = np.where(probs >= np.sort(probs)[-params.top_k], probs, 0)
    else:
        target = probs
    target = target.astype(np.float64) / target.sum()
    n = 40000
    tokens = np.asarray(sample_next(jax.random.PRNGKey(1), jnp.broadcast_to(jnp.asarray(logits), (n, 10)), params))
    counts = np.bincount(tokens, minlength=10)
    assert counts[target == 0].sum() == 0  # filtered tokens never drawn
    support = target > 0
    _, p_value = stats.chisquare(counts[support], counts.sum() * target[support] / target[support].sum())
    assert p_value > 1e-3


def test_same_seed_same_tokens():
    logits = jax.random.normal(jax.random.PRNGKey(3), (4, 2048))
    params = SamplingParams()
    a = sample_next(jax.random.PRNGKey(7), logits, params)
    b = sample_next(jax.random.PRNGKey(7), logits, params)
    c = sample_next(jax.random.PRNGKey(8), logits, params)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_settings_take_numpy_scalars_and_refuse_wrong_types():
    from musicgen_jax.config import GenerationParams

    params = SamplingParams(top_k=np.int64(5), temperature=np.float32(0.5))
    assert params == SamplingParams(top_k=5, temperature=0.5) and type(params.top_k) is int
    with pytest.raises(ValueError, match="use_sampling"):
        GenerationParams().with_changes(use_sampling="no")
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=2.5)
    with pytest.raises(ValueError, match="cfg_coef"):
        GenerationParams().with_changes(cfg_coef=float("nan"))
    with pytest.raises(TypeError, match="temprature"):
        GenerationParams().with_changes(temprature=1.0)
    assert GenerationParams().with_changes(cfg_coef=-1.0).guidance.coef == -1.0  # audiocraft allows it


def test_bad_params():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-2)
