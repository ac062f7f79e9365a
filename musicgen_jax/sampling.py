"""Next-token selection: greedy, temperature, top-k, top-p, and classifier-free guidance mixing.

Semantics follow audiocraft: probs = softmax(logits / temperature); top_p > 0 takes precedence over
top_k; top-k keeps every token whose probability is >= the k-th largest (ties kept); greedy when
sampling is off or the temperature is 0. `SamplingParams` (config.py) is static (hashable), so each
choice compiles to its own straight-line code inside the jitted decode loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from musicgen_jax.config import SamplingParams

Array = jax.Array


def classifier_free_guidance(cond: Array, uncond: Array, coef: float) -> Array:
    """Guided logits: uncond + coef * (cond - uncond), on raw logits."""
    return uncond + (cond - uncond) * coef


def top_k_filter(probs: Array, k: int) -> Array:
    """Zero every probability below the k-th largest (ties with it are kept); renormalise."""
    kth = jax.lax.top_k(probs, k)[0][..., -1:]
    kept = jnp.where(probs >= kth, probs, 0.0)
    return kept / kept.sum(-1, keepdims=True)


def top_p_filter(probs: Array, p: float) -> Array:
    """Keep the smallest prefix of tokens (by descending probability) whose mass reaches p; renormalise.

    A token is dropped when the mass strictly before it already exceeds p (audiocraft's rule).
    """
    order = jnp.argsort(-probs, axis=-1)
    sorted_probs = jnp.take_along_axis(probs, order, -1)
    before = jnp.cumsum(sorted_probs, -1) - sorted_probs
    sorted_kept = jnp.where(before > p, 0.0, sorted_probs)
    kept = jnp.zeros_like(probs)
    kept = jnp.put_along_axis(kept, order, sorted_kept, axis=-1, inplace=False)
    return kept / kept.sum(-1, keepdims=True)


def filtered_probs(logits: Array, params: SamplingParams) -> Array:
    """The distribution a sampling step draws from (float32), after temperature and filtering."""
    probs = jax.nn.softmax(logits.astype(jnp.float32) / params.temperature, axis=-1)
    if params.top_p > 0.0:
        return top_p_filter(probs, params.top_p)
    if params.top_k > 0:
        return top_k_filter(probs, min(params.top_k, probs.shape[-1]))
    return probs


def sample_next(key: Array, logits: Array, params: SamplingParams) -> Array:
    """logits [..., V] -> token ids [...] int32."""
    if params.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    probs = filtered_probs(logits, params)
    return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)
