"""The MusicGen training objective: the LM's codebook pattern in, per-codebook cross-entropy on valid
positions out (delay pattern shown; `LMConfig.pattern` picks another for the paper's ablation).

    codes [B, K, T] --pattern, its valid steps (audiocraft keep_only_valid_steps; T + 1 for delay)--> [B, K, T + 1]
    LM logits [B, K, T + 1, card] --revert pattern--> [B, K, T, card] predicting frame t of codebook q
    loss = mean over q of (sum of -log p(code) over valid (b, t)) / (number of valid (b, t))

A position is valid when the pattern gives it a prediction inside the T + 1 input steps (the last
max(d) frames of codebook q > 0 have none) and frame t < frames[b] (segments padded with silence
carry `frames` < T; audiocraft trains on the padding too, we do not).

Classifier-free guidance dropout replaces all conditions of a sample by the null condition: text
features zeroed with an all-zero mask (so the projected memory / prefix is zero) and, for melody
models, the one-hot chroma of silence (bin 0 everywhere).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from musicgen_jax.patterns import Pattern

Array = jax.Array


def loss_mask(frames: Array, pattern: Pattern) -> Array:
    """frames [B] valid frames per item -> [B, K, T] bool positions counted by the loss."""
    k, t = pattern.num_codebooks, pattern.timesteps
    _, predicted = pattern.revert_logits(jnp.zeros((1, k, pattern.valid_steps, 1)), valid_only=True)  # static [K, T]
    return jnp.asarray(predicted)[None] & (jnp.arange(t)[None, None, :] < frames[:, None, None])


def codebook_counts(frames: Array, pattern: Pattern) -> Array:
    """[K] float32: valid positions per codebook over the batch (independent of the parameters)."""
    return loss_mask(frames, pattern).sum(axis=(0, 2)).astype(jnp.float32)


def model_input(codes: Array, pattern: Pattern, special_token: int) -> Array:
    """codes [B, K, T] -> teacher-forcing input [B, K, S'] (the pattern's valid steps: T + 1 for delay)."""
    return pattern.build(codes, special_token, valid_only=True)


def codebook_nll(logits: Array, codes: Array, frames: Array, pattern: Pattern) -> Array:
    """logits [B, K, S', card] on the patterned input; codes [B, K, T]; frames [B].

    Returns [K] float32: summed negative log-likelihood over the valid positions of each codebook.
    """
    # fill 0 (not NaN) where no prediction exists: a NaN there would poison the gradients
    per_frame, _ = pattern.revert_logits(logits, fill=0.0, valid_only=True)  # [B, K, T, card]
    nll = optax.softmax_cross_entropy_with_integer_labels(per_frame, codes)  # [B, K, T]
    return jnp.where(loss_mask(frames, pattern), nll, 0.0).sum(axis=(0, 2))


def lm_nll(lm, params, codes: Array, frames: Array, rngs=None, **conditioning) -> Array:
    """The LM's per-codebook NLL sums [K] on codes [B, K, T] (teacher forcing through the LM's codebook
    pattern); conditioning: the LM's text / text_mask / chroma keywords; rngs: e.g. {"dropout": key}."""
    c = lm.config
    pattern = c.codebook_pattern(codes.shape[-1])
    x = model_input(codes, pattern, c.special_token)  # [B, K, S']
    logits, _ = lm.apply({"params": params}, x, rngs=rngs, **conditioning)  # [B, K, S', card] f32
    return codebook_nll(logits, codes, frames, pattern)


def keep_conditions(key: Array, batch: int, dropout: float) -> Array:
    """[B] bool: True where a sample keeps its conditions (probability 1 - dropout)."""
    if dropout <= 0:
        return jnp.ones((batch,), bool)
    return jax.random.uniform(key, (batch,)) >= dropout


def drop_text(text: Array, mask: Array, keep: Array) -> tuple[Array, Array]:
    """text [B, S, D], mask [B, S]: dropped rows become the null condition (zeros, all-zero mask)."""
    return jnp.where(keep[:, None, None], text, 0.0), jnp.where(keep[:, None], mask, 0)


def drop_chroma(chroma: Array, keep: Array) -> Array:
    """chroma [B, F, bins] one-hot: dropped rows become the chroma of silence (one-hot on bin 0)."""
    silence = jnp.zeros_like(chroma).at[..., 0].set(1.0)
    return jnp.where(keep[:, None, None], chroma, silence)


def one_hot_chroma(indices: np.ndarray | Array, bins: int) -> Array:
    """[B, F] int chroma bin per frame -> [B, F, bins] float32 one-hot."""
    return jax.nn.one_hot(indices, bins, dtype=jnp.float32)
