"""Multi-head attention shared by T5 and the MusicGen LM, with an explicit KV-cache pytree.

One code path serves a full (teacher-forced) pass, a prefill and a single decode step: new keys and
values are written into the cache at `cache.index`, and queries attend causally over the buffer.
Cross-attention keys/values are computed once per generation with `Attention.project_kv`.

Keys and values are kept heads-major, [B, H, L, D]: a decode step's attention is then a batched GEMM
over contiguous [L, D] blocks. With [B, L, H, D], XLA's CPU backend transposes the whole cache every
step (8x slower attention at batch 16 x 150 steps).
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from musicgen_jax.modules.layers import Dense

Array = jax.Array


@flax.struct.dataclass
class KVCache:
    """Self-attention cache of one layer. k, v: [B, H, L, D]; index: [] int32 positions filled.

    k and v may instead be tuples of blocks [B, H, L_i, D] covering positions [0, sum L_i) in order
    (length-aware decoding on CPU, `generate.decode_steps`): new positions must fall in the last block,
    the only one written; attention reads every block in place.
    """

    k: Array
    v: Array
    index: Array

    @classmethod
    def zeros(cls, batch: int, length: int, heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch, heads, length, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class CrossKV:
    """Precomputed cross-attention keys/values of one layer: [B, H, S, D].

    mask: optional [B, S] bool, False for key positions that do not exist (shape-bucket padding).
    """

    k: Array
    v: Array
    mask: Array | None = None


def dot_product_attention(q: Array, k, v, *, mask: Array | None = None,
                          bias: Array | None = None, scale: float = 1.0) -> Array:
    """q [B, H, T, D], k/v [B, H, L, D] -> [B, H, T, D]; mask broadcastable to [B, H, T, L] (True = attend).

    k and v may also be tuples of blocks [B, H, L_i, D] (L = sum of L_i, see `KVCache`): each block is
    its own GEMM operand, so nothing is copied to put them together.
    Logits and softmax in float32; the weighted sum in the value dtype.
    """
    k_blocks = k if isinstance(k, tuple) else (k,)
    v_blocks = v if isinstance(v, tuple) else (v,)
    logits = jnp.concatenate([jnp.einsum("bhtd,bhld->bhtl", q, kb, preferred_element_type=jnp.float32)
                              for kb in k_blocks], axis=-1) * scale  # [B, H, T, L]
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v_blocks[0].dtype)
    out, start = None, 0
    for vb in v_blocks:
        part = jnp.einsum("bhtl,bhld->bhtd", weights[..., start:start + vb.shape[2]], vb)
        out = part if out is None else out + part
        start += vb.shape[2]
    return out


def _write(buffer, new: Array, offset: Array):
    """Write new [B, H, T, D] at position `offset` of a cache buffer [B, H, L, D], or of a tuple of
    blocks (into the last block, whose first position is the sum of the others' lengths)."""
    zero = jnp.zeros((), jnp.int32)
    if not isinstance(buffer, tuple):
        return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), (zero, zero, offset, zero))
    last = buffer[-1]
    start = offset - sum(b.shape[2] for b in buffer[:-1])
    return buffer[:-1] + (jax.lax.dynamic_update_slice(last, new.astype(last.dtype), (zero, zero, start, zero)),)


def causal_mask(query_offset: Array | int, num_queries: int, num_keys: int) -> Array:
    """[1, 1, T, L] boolean: key position <= query position (queries start at query_offset)."""
    q_pos = query_offset + jnp.arange(num_queries)
    k_pos = jnp.arange(num_keys)
    return (k_pos[None, :] <= q_pos[:, None])[None, None]


class Attention(nn.Module):
    """Multi-head attention; kernels [embed, heads, kv] and [heads, kv, embed] as in t5x.

    scale_queries: multiply logits by 1/sqrt(head_dim) (MusicGen); T5 folds that into its weights.
    lora: a `modules.lora.LoraConfig`: adapters on those projections it targets as
    `{lora_block}.{query,key,value,out}` (see modules/lora.py); None: none.
    """

    features: int  # model width: input of the projections, output of `out`
    num_heads: int
    head_dim: int
    scale_queries: bool = True
    dtype: Any = jnp.float32
    kernel_init: Any = None  # None: Dense's fan-in aware default
    lora: Any = None
    lora_block: str = ""  # "self_attn" / "cross_attn": the prefix of this block's LoRA target names
    # With a cache: attend to its first kv_length positions only (static; every position written so
    # far must lie below it), not the whole buffer. None: the whole buffer.
    kv_length: int | None = None

    def setup(self):
        def lora(projection: str):
            return None if self.lora is None else self.lora.for_target(f"{self.lora_block}.{projection}")

        qkv = dict(features=(self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
                   dtype=self.dtype, kernel_init=self.kernel_init)
        self.query = Dense(**qkv, lora=lora("query"))
        self.key = Dense(**qkv, lora=lora("key"))
        self.value = Dense(**qkv, lora=lora("value"))
        self.out = Dense(self.features, kernel_axes=("heads", "kv", "embed"), axis=(-2, -1),
                         dtype=self.dtype, kernel_init=self.kernel_init, lora=lora("out"))

    def _heads_major(self, x: Array) -> Array:
        return x.transpose(0, 2, 1, 3)  # [B, T, H, D] -> [B, H, T, D]

    def project_kv(self, memory: Array) -> CrossKV:
        """Keys and values [B, H, S, D] of a memory [B, S, E'] (cross-attention), computed once."""
        return CrossKV(self._heads_major(self.key(memory)), self._heads_major(self.value(memory)))

    def __call__(self, x: Array, *, memory: Array | None = None, cross_kv: CrossKV | None = None,
                 cache: KVCache | None = None, causal: bool = False, mask: Array | None = None,
                 bias: Array | None = None) -> tuple[Array, KVCache | None]:
        """x [B, T, E] -> ([B, T, E], updated cache).

        Self-attention unless `memory` or `cross_kv` is given. With a cache, new keys/values are
        written at cache.index and the queries sit at positions index .. index+T-1 (causal).
        mask: extra boolean mask broadcastable to [B, H, T, L]; bias: additive [B|1, H, T, L].
        """
        q = self._heads_major(self.query(x))  # [B, H, T, D]
        if cross_kv is None and memory is not None:
            cross_kv = self.project_kv(memory)
        if cross_kv is not None:
            k, v = cross_kv.k, cross_kv.v
            if cross_kv.mask is not None:
                key_mask = cross_kv.mask[:, None, None, :]  # [B, 1, 1, S]
                mask = key_mask if mask is None else jnp.logical_and(mask, key_mask)
        else:
            k, v = self._heads_major(self.key(x)), self._heads_major(self.value(x))
        offset = 0
        if cache is not None:
            offset = cache.index
            k, v = _write(cache.k, k, offset), _write(cache.v, v, offset)
            cache = KVCache(k, v, offset + x.shape[1])
            if not isinstance(k, tuple) and self.kv_length is not None and self.kv_length < k.shape[2]:
                k, v = k[:, :, : self.kv_length], v[:, :, : self.kv_length]  # [B, H, kv_length, D]
        if causal:
            num_keys = sum(b.shape[2] for b in k) if isinstance(k, tuple) else k.shape[2]
            cm = causal_mask(offset, x.shape[1], num_keys)
            mask = cm if mask is None else jnp.logical_and(mask, cm)
        scale = self.head_dim ** -0.5 if self.scale_queries else 1.0
        cast = lambda a: tuple(b.astype(q.dtype) for b in a) if isinstance(a, tuple) else a.astype(q.dtype)  # noqa: E731
        y = dot_product_attention(q, cast(k), cast(v), mask=mask, bias=bias, scale=scale)
        return self.out(self._heads_major(y)), cache  # out projection takes [B, T, H, D]
