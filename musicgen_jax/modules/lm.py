"""The MusicGen language model: a pre-norm transformer decoder over K interleaved codebook streams.

    codes [B, K, T] --sum of K embeddings (card + 1 rows each)--> [B, T, dim]
    (melody) prepend [chroma_proj(chroma), text_proj(text) * mask]          -> [B, P + T, dim]
    + sinusoidal positions (prefix occupies positions; cached steps continue the count)
    N x { x += SelfAttn(LN(x)) causal;  x += CrossAttn(LN(x), memory);  x += FFN(LN(x)) }
    LN -> K bias-free heads -> logits [B, K, T, card] (prefix outputs dropped)

Text conditioning (cross-attention models): memory = text_proj(text) * mask, Linear with bias.
Padded memory positions are *not* masked in cross-attention (audiocraft, the reference; their keys
and values are those of a zero vector and still take softmax mass). transformers masks them, so the
two references agree only when every prompt of the batch has the same token length.

Entry points (one code path, the layers run under `nn.scan`, parameters stacked on a 'layers' axis):
  * `lm.apply(params, codes, text=..., text_mask=...)`: teacher-forced pass, no cache.
  * `conds = lm.apply(params, text=..., text_mask=..., chroma=..., method=MusicGenLM.encode_conditions)`
    once per generation: cross-attention K/V of every layer (`Conditions.cross_kv`, [L, B, H, S, D])
    or the projected prefix (melody, `Conditions.prefix`).
  * prefill: `logits, cache = lm.apply(params, codes, conditions=conds, cache=LMCache.zeros(...))`
    writes the keys/values of all given steps (and of the melody prefix) at `cache.index`;
  * decode step: the same call with codes [B, K, 1] and `conds.without_prefix()`; positions are offset
    by `cache.index`. Shapes are static, so the step can live in a `lax.while_loop`.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from musicgen_jax.config import LMConfig
from musicgen_jax.sharding import constrain
from musicgen_jax.modules.attention import Attention, CrossKV, KVCache
from musicgen_jax.modules.layers import Dense, LayerNorm, gelu_exact, param_with_axes, sinusoidal_embedding

Array = jax.Array

# Logical axes of the decode state and activations (mapped to mesh axes by sharding.LOGICAL_RULES)
KV_AXES = ("cache_batch", "cache_heads", "cache_sequence", "cache_kv")  # cache / cross K/V [B, H, L, D]
HIDDEN_AXES = P("activation_batch", "activation_length", "activation_embed")  # [B, T, dim]
LOGITS_AXES = P("activation_batch", "codebooks", "activation_length", "activation_vocab")  # [B, K, T, card]


def _per_layer(spec: P, stacked: bool, num_layers: int):
    """The spec of a per-layer array in either layout: one stacked array, or a tuple of L arrays."""
    return P("layers", *spec) if stacked else (spec,) * num_layers


@flax.struct.dataclass
class LMCache:
    """Self-attention cache of all layers; index: [] int32 steps written.

    k, v: one array [L, B, H, max_len, D] for the scanned model (`scan_layers=True`), or a tuple of L
    arrays [B, H, max_len, D] for the unrolled one, whose per-layer buffers update in place inside a
    decode loop. For melody models the prefix (chroma + text) counts as written steps.
    """

    k: Any
    v: Any
    index: Array

    @classmethod
    def zeros(cls, config: LMConfig, batch: int, max_length: int, dtype=jnp.float32,
              stacked: bool = True) -> "LMCache":
        shape = (batch, config.num_heads, max_length, config.head_dim)
        if stacked:
            shape = (config.num_layers, *shape)
            return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))
        k = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(k, v, jnp.zeros((), jnp.int32))

    def logical_axes(self) -> "LMCache":
        """This structure with a logical PartitionSpec in place of every array (see sharding.py)."""
        stacked = not isinstance(self.k, tuple)
        layers = self.k.shape[0] if stacked else len(self.k)
        kv = _per_layer(P(*KV_AXES), stacked, layers)
        return LMCache(kv, kv, P())


@flax.struct.dataclass
class Conditions:
    """Conditioning computed once per generation.

    cross_kv: cross-attention keys/values of every layer, CrossKV with k, v [L, B, H, S, D]
      (scanned model) or tuples of L arrays [B, H, S, D] (unrolled), for cross-attention models.
    prefix: [B, P, dim] embeddings prepended to the codes (melody models: [chroma, text]), else None.
      Give it to the first call (full pass or prefill) only: use `without_prefix()` for decode steps.
    """

    cross_kv: CrossKV | None = None
    prefix: Array | None = None

    def without_prefix(self) -> "Conditions":
        return self.replace(prefix=None)

    def logical_axes(self) -> "Conditions":
        """This structure with a logical PartitionSpec in place of every array (see sharding.py)."""
        cross = None
        if self.cross_kv is not None:
            stacked = not isinstance(self.cross_kv.k, tuple)
            layers = self.cross_kv.k.shape[0] if stacked else len(self.cross_kv.k)
            kv = _per_layer(P(*KV_AXES), stacked, layers)
            mask = None if self.cross_kv.mask is None else \
                _per_layer(P("cache_batch", "cache_sequence"), stacked, layers)
            cross = CrossKV(kv, kv, mask)
        return Conditions(cross, None if self.prefix is None else HIDDEN_AXES)

    @property
    def batch_size(self) -> int:
        if self.prefix is not None:
            return self.prefix.shape[0]
        return jax.tree.leaves(self.cross_kv.k)[0].shape[-4]  # [(L,) B, H, S, D]


class DecoderLayer(nn.Module):
    """One pre-norm layer. Called under nn.scan: (x, per-layer inputs) -> (x, per-layer outputs)."""

    config: LMConfig
    dtype: Any = jnp.float32
    lora: Any = None  # modules.lora.LoraConfig: adapters on its targets, or None
    kv_length: int | None = None  # self-attention reads the cache's first kv_length positions (see MusicGenLM)

    def setup(self):
        c = self.config
        attn = dict(features=c.dim, num_heads=c.num_heads, head_dim=c.head_dim, dtype=self.dtype, lora=self.lora)
        ffn_lora = (lambda name: None) if self.lora is None else self.lora.for_target
        self.self_attn_norm = LayerNorm(c.layer_norm_eps)
        self.self_attn = Attention(**attn, lora_block="self_attn", kv_length=self.kv_length)
        if c.cross_attention:
            self.cross_attn_norm = LayerNorm(c.layer_norm_eps)
            self.cross_attn = Attention(**attn, lora_block="cross_attn")
        self.ffn_norm = LayerNorm(c.layer_norm_eps)
        self.fc1 = Dense(c.ffn_dim, kernel_axes=("embed", "mlp"), dtype=self.dtype, lora=ffn_lora("fc1"))
        self.fc2 = Dense(c.dim, kernel_axes=("mlp", "embed"), dtype=self.dtype, lora=ffn_lora("fc2"))

    def __call__(self, x: Array, kv: tuple[Array, Array] | None, cross_kv: CrossKV | None,
                 memory: Array | None, index: Array | None):
        """x [B, T, dim]; kv: this layer's cache buffers or None; cross_kv: precomputed or None
        (then projected from `memory`); index: cache position (shared by all layers)."""
        cache = None if kv is None else KVCache(kv[0], kv[1], index)
        h, cache = self.self_attn(self.self_attn_norm(x), cache=cache, causal=True)
        x = x + h
        if self.config.cross_attention:
            if cross_kv is None:
                if memory is None:
                    raise ValueError("a cross-attention LM needs text conditioning")
                cross_kv = self.cross_attn.project_kv(memory)
            # audiocraft: no mask over padded memory positions (see module doc)
            h, _ = self.cross_attn(self.cross_attn_norm(x), cross_kv=cross_kv)
            x = x + h
        x = x + self.fc2(gelu_exact(self.fc1(self.ffn_norm(x))))
        return x, (None if cache is None else (cache.k, cache.v))

    def project_cross_kv(self, x: Array, kv, cross_kv, memory: Array, index):
        """Same signature as __call__ (one nn.scan serves both); returns this layer's CrossKV."""
        del kv, cross_kv, index
        return x, self.cross_attn.project_kv(memory)


class MusicGenLM(nn.Module):
    """MusicGen LM. dtype: compute dtype (bf16 fast path); params, norms and logits stay float32.

    scan_layers: layers under nn.scan with params stacked on a leading 'layers' axis (fast compiles;
    training). False: one module per layer (`layers_0` ...), the inference layout: slicing stacked
    weights inside a step costs XLA a copy of every weight, tripling a memory-bound decode step's
    traffic. `unstack_layers` / `stack_layers` convert between the two param layouts.

    lora: a `modules.lora.LoraConfig` adds low-rank adapters (lora_a / lora_b next to each targeted
    kernel; training). Their dropout runs when applied with a "dropout" rng.

    kv_length: with a cache, self-attention reads only its first kv_length positions (length-aware
    decoding: `generate.kv_pieces` picks it per stretch of steps so that every written position lies
    below it); None reads the whole buffer. Static: each value is its own compiled program.
    """

    config: LMConfig
    dtype: Any = jnp.float32
    remat: bool = False  # rematerialise each layer in the backward pass (training)
    scan_layers: bool = True
    mesh: Any = None  # a jax Mesh: hidden states and logits are constrained by their logical axes
    lora: Any = None
    kv_length: int | None = None

    def setup(self):
        c = self.config
        self.embeddings = param_with_axes(
            self, "embeddings", nn.initializers.truncated_normal(c.dim ** -0.5),
            (c.num_codebooks, c.codebook_size + 1, c.dim), ("codebooks", "vocab", "embed"))
        if c.cross_attention or c.condition_dim:
            self.text_proj = Dense(c.dim, kernel_axes=(None, "embed"), use_bias=True, dtype=self.dtype)
        if c.is_melody:
            self.chroma_proj = Dense(c.dim, kernel_axes=(None, "embed"), use_bias=True, dtype=self.dtype)
        layer = DecoderLayer
        if self.remat:
            layer = nn.remat(layer, prevent_cse=False)
        if not self.scan_layers:
            self.layer_list = [layer(c, self.dtype, self.lora, self.kv_length, name=f"layers_{i}")
                               for i in range(c.num_layers)]
            return self._setup_head()
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0, 0, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
            methods=["__call__", "project_cross_kv"],
        )(c, self.dtype, self.lora, self.kv_length, name="layers")
        self._setup_head()

    def _setup_head(self):
        c = self.config
        self.out_norm = LayerNorm(c.layer_norm_eps)
        self.heads = param_with_axes(  # [dim, K, card]: one GEMM for all codebooks, no transpose
            self, "heads", nn.initializers.truncated_normal(c.dim ** -0.5),
            (c.dim, c.num_codebooks, c.codebook_size), ("embed", "codebooks", "vocab"))

    def _run_layers(self, x: Array, kv, cross_kv: CrossKV | None, memory: Array | None, offset: Array):
        """All layers; kv / cross_kv / returned kv follow the layout of `scan_layers`."""
        if self.scan_layers:
            return self.layers(x, kv, cross_kv, memory, offset)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layer_list):
            layer_kv = None if kv is None else (kv[0][i], kv[1][i])
            layer_cross = None if cross_kv is None else CrossKV(
                cross_kv.k[i], cross_kv.v[i], None if cross_kv.mask is None else cross_kv.mask[i])
            x, out_kv = layer(x, layer_kv, layer_cross, memory, offset)
            x = constrain(x, HIDDEN_AXES, self.mesh)
            if out_kv is not None:
                new_k.append(out_kv[0])
                new_v.append(out_kv[1])
        return x, (tuple(new_k), tuple(new_v)) if kv is not None else None

    def _project_cross_kv(self, memory: Array, key_mask: Array | None) -> CrossKV:
        """Per-layer K/V (and the optional key mask, repeated per layer) in this model's layout."""
        num_layers = self.config.num_layers
        if self.scan_layers:
            kv = self.layers.project_cross_kv(memory, None, None, memory, None)[1]
            mask = None if key_mask is None else jnp.broadcast_to(key_mask, (num_layers, *key_mask.shape))
            return kv.replace(mask=mask)
        kvs = [layer.project_cross_kv(memory, None, None, memory, None)[1] for layer in self.layer_list]
        mask = None if key_mask is None else (key_mask,) * num_layers
        return CrossKV(tuple(kv.k for kv in kvs), tuple(kv.v for kv in kvs), mask)

    # -- conditioning -----------------------------------------------------------------------------

    def text_memory(self, text: Array, text_mask: Array | None = None) -> Array:
        """Projected text [B, S, dim] = (Linear(text) with bias) * mask."""
        x = self.text_proj(text)
        if text_mask is not None:
            x = x * text_mask[..., None].astype(x.dtype)
        return x

    def _prefix(self, text: Array | None, text_mask: Array | None, chroma: Array | None) -> Array | None:
        parts = []
        if chroma is not None:
            parts.append(self.chroma_proj(chroma.astype(jnp.float32)))
        if text is not None:
            parts.append(self.text_memory(text, text_mask))
        return jnp.concatenate(parts, axis=1) if parts else None

    def encode_conditions(self, text: Array | None = None, text_mask: Array | None = None,
                          chroma: Array | None = None, text_exists: Array | None = None) -> Conditions:
        """Once per generation. text [B, S, condition_dim] (T5 output), text_mask [B, S] (1 = token;
        an all-zero row is the null condition), chroma [B, F, chroma_bins] (melody models).

        text_exists: optional [B, S] bool, False on positions added only to bucket S (static shapes);
        those are masked out of cross-attention, while the batch's own padding (text_mask 0) stays
        visible as audiocraft has it. Cross-attention models only.
        """
        if self.config.cross_attention:
            if text is None:
                raise ValueError("a cross-attention LM needs text (zeros with an all-zero mask for the null "
                                 "condition)")
            memory = self.text_memory(text, text_mask)
            return Conditions(cross_kv=self._project_cross_kv(memory, text_exists))
        return Conditions(prefix=self._prefix(text, text_mask, chroma))

    # -- the model --------------------------------------------------------------------------------

    def embed(self, codes: Array) -> Array:
        """codes [B, K, T] -> summed embeddings [B, T, dim] (compute dtype)."""
        k = self.config.num_codebooks
        if codes.shape[1] != k:
            raise ValueError(f"codes have {codes.shape[1]} codebooks, the LM {k}")
        table = jnp.asarray(self.embeddings, jnp.float32)
        x = table[jnp.arange(k)[None, :, None], codes]  # [B, K, T, dim]
        return x.sum(axis=1).astype(self.dtype)

    def __call__(self, codes: Array, conditions: Conditions | None = None, cache: LMCache | None = None, *,
                 text: Array | None = None, text_mask: Array | None = None,
                 chroma: Array | None = None) -> tuple[Array, LMCache | None]:
        """codes [B, K, T] int -> (logits [B, K, T, card] float32, updated cache or None).

        Conditioning: precomputed `conditions` or raw `text`/`text_mask`/`chroma` (see
        encode_conditions). With a cache, steps are written at cache.index and positions continue
        from it.
        """
        c = self.config
        memory = cross_kv = prefix = None
        if conditions is not None:
            cross_kv, prefix = conditions.cross_kv, conditions.prefix
        elif c.cross_attention:
            if text is None:
                raise ValueError("a cross-attention LM needs text (zeros with an all-zero mask for the null "
                                 "condition)")
            memory = self.text_memory(text, text_mask)
        else:
            prefix = self._prefix(text, text_mask, chroma)

        x = self.embed(codes)
        num_prefix = 0
        if prefix is not None:
            num_prefix = prefix.shape[1]
            x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1)
        offset = jnp.zeros((), jnp.int32) if cache is None else cache.index
        positions = offset + jnp.arange(x.shape[1], dtype=jnp.int32)
        x = x + sinusoidal_embedding(positions, c.dim).astype(self.dtype)[None]
        x = constrain(x, HIDDEN_AXES, self.mesh)

        kv = None if cache is None else (cache.k, cache.v)
        x, new_kv = self._run_layers(x, kv, cross_kv, memory, offset)
        x = constrain(self.out_norm(x)[:, num_prefix:], HIDDEN_AXES, self.mesh)
        heads = jnp.asarray(self.heads).astype(self.dtype)  # [dim, K, card]
        batch, steps, dim = x.shape
        # one 2-D GEMM: as a 3-D einsum XLA's CPU backend copied (transposed) the 32 MB head every step
        logits = jnp.dot(x.astype(self.dtype).reshape(batch * steps, dim), heads.reshape(dim, -1),
                         preferred_element_type=jnp.float32)  # [B*T, K*card]
        logits = logits.reshape(batch, steps, *heads.shape[1:]).transpose(0, 2, 1, 3)  # [B, K, T, card]
        logits = constrain(logits, LOGITS_AXES, self.mesh)
        if cache is not None:
            cache = LMCache(new_kv[0], new_kv[1], offset + num_prefix + codes.shape[-1])
        return logits, cache


def dummy_inputs(config: LMConfig, batch: int = 1) -> dict[str, Any]:
    """Smallest inputs that touch every parameter (for init / eval_shape)."""
    kwargs: dict[str, Any] = {"codes": jnp.zeros((batch, config.num_codebooks, 1), jnp.int32)}
    if config.cross_attention or config.condition_dim:
        kwargs["text"] = jnp.zeros((batch, 1, config.condition_dim), jnp.float32)
        kwargs["text_mask"] = jnp.ones((batch, 1), jnp.int32)
    if config.is_melody:
        kwargs["chroma"] = jnp.zeros((batch, 1, config.chroma_bins), jnp.float32)
    return kwargs


def init_lm(config: LMConfig, rng: Array, dtype=jnp.float32, remat: bool = False, lora: Any = None) -> Any:
    """Random (boxed, logically partitioned) variables {'params': ...} in the scanned layout (with
    adapters when `lora` is a LoraConfig)."""
    return MusicGenLM(config, dtype=dtype, remat=remat, lora=lora).init(rng, **dummy_inputs(config))


def unstack_layers(params: Any, num_layers: int) -> Any:
    """Scanned params ({'layers': leaves [L, ...]}) -> unrolled ({'layers_0': ..., ...})."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def stack_layers(params: Any, num_layers: int) -> Any:
    """Unrolled params -> scanned (inverse of unstack_layers)."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    layers = [params[f"layers_{i}"] for i in range(num_layers)]
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def is_matmul_weight(path) -> bool:
    """Whether the param at this tree path is one the layers cast to the compute dtype before a matmul:
    every Dense `kernel` and the output `heads` (not norms, biases or the embedding tables)."""
    return getattr(path[-1], "key", None) in ("kernel", "heads")


def inference_params(params: Any, dtype=jnp.float32) -> Any:
    """Matmul weights (`is_matmul_weight`) stored in the compute dtype; norms, biases and embeddings kept
    as they are (float32). Takes arrays, or ShapeDtypeStructs (their shardings kept) for compile-only use.

    Exact: the layers cast each weight to the compute dtype before its matmul anyway. Stored that way,
    a bf16 decode step reads 2 bytes per weight and runs no convert kernels (XLA does not hoist the
    casts out of the decode loop: on an H100 target they were 121 of 711 kernels per step).
    """
    dtype = jnp.dtype(dtype)

    def cast(path, x):
        if not is_matmul_weight(path) or not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params)


def abstract_lm_params(config: LMConfig) -> Any:
    """Parameter shapes (ShapeDtypeStruct tree, unboxed) without allocating anything."""
    variables = jax.eval_shape(lambda: init_lm(config, jax.random.PRNGKey(0)))
    return nn.meta.unbox(variables)["params"]
