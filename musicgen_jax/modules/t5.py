"""T5 encoder (the frozen text encoder of MusicGen), t5x style.

Pre-norm blocks: RMS norm -> self-attention (relative position bias, no 1/sqrt(d) scaling) ->
residual; RMS norm -> feed-forward (ReLU, or gated GELU for T5 v1.1 / flan-T5) -> residual; a final
RMS norm. The relative position bias is computed once from a single table (stored in the first block
of a transformers checkpoint) and shared by every layer, as transformers and t5x do.

Parameter tree (all with logical axis names):
  token_embedder/embedding        [vocab, embed]
  relpos_bias/rel_embedding       [heads, relpos_buckets]
  layers_{i}/pre_attention_layer_norm/scale, layers_{i}/attention/{query,key,value,out}/kernel,
  layers_{i}/pre_mlp_layer_norm/scale, layers_{i}/mlp/{wi | wi_0, wi_1}/kernel, layers_{i}/mlp/wo/kernel
  encoder_norm/scale
Activations are computed in `dtype` (bf16 on accelerators); parameters, norms, attention softmax and
the residual stream stay float32, and the output is float32.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax.config import T5Config
from musicgen_jax.modules.attention import Attention
from musicgen_jax.modules.layers import Dense, RMSNorm, param_with_axes

Array = jax.Array


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets of (key position - query position): [query_len, key_len] int32.

    Half of the buckets hold positive offsets. Within each half, offsets below num_buckets/4 get one
    bucket each; larger ones share logarithmically wider buckets up to max_distance, past which all
    fall in the last bucket. The logarithm is taken in float32 and truncated, as transformers does,
    so that offsets at bucket edges land in the same bucket. Shapes are static: numpy at trace time.
    """
    rel = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]  # [Q, K]
    half = num_buckets // 2
    offset = np.where(rel > 0, half, 0)
    dist = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) in the small-distance branch, which is unused
        log_ratio = np.log(dist.astype(np.float32) / np.float32(max_exact))
    scaled = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = max_exact + np.where(dist < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (offset + np.where(dist < max_exact, dist, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by relative position bucket."""

    num_heads: int
    num_buckets: int
    max_distance: int

    @nn.compact
    def __call__(self, query_len: int, key_len: int) -> Array:
        """-> additive attention bias [1, H, Q, K] float32."""
        table = param_with_axes(self, "rel_embedding", nn.initializers.normal(0.1),
                                (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
        buckets = relative_position_buckets(query_len, key_len, self.num_buckets, self.max_distance)
        bias = jnp.take(table, jnp.asarray(buckets), axis=1)  # [H, Q, K]
        return bias[None].astype(jnp.float32)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; lookups stay float32 (they start the residual stream)."""

    vocab_size: int
    features: int

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        table = param_with_axes(self, "embedding", nn.initializers.normal(1.0),
                                (self.vocab_size, self.features), ("vocab", "embed"))
        return jnp.take(table, ids, axis=0)  # [B, S, E]


class T5MLP(nn.Module):
    """Feed-forward: wo(relu(wi x)), or wo(gelu_tanh(wi_0 x) * wi_1 x) for 'gated-gelu'."""

    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dense_in = dict(features=cfg.d_ff, kernel_axes=("embed", "mlp"), dtype=self.dtype)
        if cfg.feed_forward == "gated-gelu":
            gate = jax.nn.gelu(Dense(name="wi_0", **dense_in)(x), approximate=True)  # [B, S, F]
            h = gate * Dense(name="wi_1", **dense_in)(x)
        else:
            h = jax.nn.relu(Dense(name="wi", **dense_in)(x))  # [B, S, F]
        return Dense(cfg.d_model, kernel_axes=("mlp", "embed"), dtype=self.dtype, name="wo")(h)


class T5Layer(nn.Module):
    """One encoder block: pre-norm self-attention and feed-forward, each with a residual."""

    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Array) -> Array:
        """x [B, S, E] float32; mask [B, 1, 1, S] bool (True = real key); bias [1, H, S, S]."""
        cfg = self.config
        h = RMSNorm(cfg.layer_norm_eps, name="pre_attention_layer_norm")(x)
        attn = Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, scale_queries=False, dtype=self.dtype,
                         name="attention")
        y, _ = attn(h, mask=mask, bias=bias)  # [B, S, E]
        x = x + y.astype(x.dtype)
        h = RMSNorm(cfg.layer_norm_eps, name="pre_mlp_layer_norm")(x)
        return x + T5MLP(cfg, self.dtype, name="mlp")(h).astype(x.dtype)


class T5Encoder(nn.Module):
    """T5 encoder stack: ids [B, S] and mask [B, S] -> hidden states [B, S, d_model] float32.

    Padded keys (mask 0) are excluded from attention; outputs at padded positions are computed but
    meaningless (MusicGen zeroes them). A row with no real token gives finite values, not NaN.
    """

    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        cfg = self.config
        seq_len = input_ids.shape[1]
        x = Embed(cfg.vocab_size, cfg.d_model, name="token_embedder")(input_ids)  # [B, S, E] float32
        key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
        bias = RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, name="relpos_bias")(seq_len, seq_len)
        for i in range(cfg.num_layers):
            x = T5Layer(cfg, self.dtype, name=f"layers_{i}")(x, key_mask, bias)
        return RMSNorm(cfg.layer_norm_eps, name="encoder_norm")(x).astype(jnp.float32)


def init_t5(t5: T5Encoder, rng: Array) -> Any:
    """Boxed variables of `t5` from the smallest input (one token): for shapes and axis names."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return t5.init(rng, ids, ids)
