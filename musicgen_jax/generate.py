"""The jitted decode loop: prefill, then one `lax.while_loop` over fixed-size buffers.

    buffer [B, K, S]  (delay-patterned: prompt frames and special tokens in place, -1 to generate)
    prefill steps [0, start) -> tokens of step `start`
    while step < end: feed step `step` (one token per codebook) -> tokens of step `step + 1`

Classifier-free guidance doubles the batch inside each model call ([conditional; null]) and mixes
the raw logits. Sampled tokens are written only where the buffer holds -1, so prompt tokens and
specials are never overwritten. `S` and the prefill length are static (bucketed by the caller);
`start` and `end` are traced, so a new duration or prompt length in the same bucket reuses the
compiled program.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from musicgen_jax.modules.lm import Conditions, LMCache, MusicGenLM
from musicgen_jax.sampling import SamplingParams, classifier_free_guidance, sample_next

Array = jax.Array
UNKNOWN = -1


@dataclass(frozen=True)
class DecodeSettings:
    """Static choices of one compiled decode program."""

    sampling: SamplingParams = SamplingParams()
    cfg_coef: float = 3.0
    two_step_cfg: bool = False  # run conditional and null halves as separate calls (audiocraft option)
    prefill_length: int = 1  # static length of the prefill call (>= start)
    progress_every: int = 0  # call the progress callback every N steps (0: never)

    @property
    def use_cfg(self) -> bool:
        return self.cfg_coef != 1.0


@flax.struct.dataclass
class DecodeState:
    step: Array  # [] int32: the step fed next; its output fills step + 1
    buffer: Array  # [B, K, S] int32
    cache: Any  # LMCache, or (conditional, null) caches with two_step_cfg
    key: Array


def _guided_logits(lm: MusicGenLM, params, tokens: Array, conditions, cache,
                   settings: DecodeSettings) -> tuple[Array, Any]:
    """tokens [B, K, T] -> guided logits [B, K, T, card], updated cache(s).

    conditions: 2B rows ([conditional; null]) with CFG in one batch; a (conditional, null) pair of
    halves with two_step_cfg (split once by `decode`, not every step); B rows without CFG.
    """
    if not settings.use_cfg:
        return lm.apply({"params": params}, tokens, conditions, cache)
    if settings.two_step_cfg:
        cond, cache_c = lm.apply({"params": params}, tokens, conditions[0], cache[0])
        uncond, cache_n = lm.apply({"params": params}, tokens, conditions[1], cache[1])
        return classifier_free_guidance(cond, uncond, settings.cfg_coef), (cache_c, cache_n)
    both, cache = lm.apply({"params": params}, jnp.concatenate([tokens, tokens]), conditions, cache)
    cond, uncond = jnp.split(both, 2)
    return classifier_free_guidance(cond, uncond, settings.cfg_coef), cache


def _split_halves(conditions: Conditions, scan_layers: bool) -> tuple[Conditions, Conditions]:
    """[conditional; null] conditions -> the two halves. Scanned cross K/V lead with the layer axis."""
    def half(i):
        cross = None if conditions.cross_kv is None else jax.tree.map(
            lambda x: jnp.split(x, 2, axis=1 if scan_layers else 0)[i], conditions.cross_kv)
        prefix = None if conditions.prefix is None else jnp.split(conditions.prefix, 2)[i]
        return Conditions(cross_kv=cross, prefix=prefix)

    return half(0), half(1)


def _write_step(buffer: Array, step: Array, tokens: Array) -> Array:
    """Write tokens [B, K] at `step` where the buffer still holds UNKNOWN."""
    current = jax.lax.dynamic_slice_in_dim(buffer, step, 1, axis=2)[..., 0]  # [B, K]
    chosen = jnp.where(current == UNKNOWN, tokens, current)
    return jax.lax.dynamic_update_slice_in_dim(buffer, chosen[..., None], step, axis=2)


def init_caches(lm: MusicGenLM, batch: int, length: int, settings: DecodeSettings, dtype=jnp.float32):
    def zeros(rows):
        return LMCache.zeros(lm.config, rows, length, dtype, stacked=lm.scan_layers)

    if settings.use_cfg and settings.two_step_cfg:
        return zeros(batch), zeros(batch)
    return zeros(2 * batch if settings.use_cfg else batch)


def _constrain_caches(cache, mesh: Mesh):
    """Cache buffers [rows, H, L, D]: rows over the batch axes, heads over `tensor`, like the attention
    weights that fill them (an axis that does not divide its dimension is left out)."""
    from musicgen_jax.sharding import logical_to_sharding

    def constrain(x):
        if x.ndim != 4:
            return x
        spec = logical_to_sharding(P("batch", "heads", None, "kv"), x.shape, mesh)
        return jax.lax.with_sharding_constraint(x, spec)

    return jax.tree.map(constrain, cache)


def _set_index(cache, index: Array):
    return jax.tree.map(lambda c: c.replace(index=index), cache, is_leaf=lambda c: isinstance(c, LMCache))


def decode(lm: MusicGenLM, params, conditions: Conditions, buffer: Array, start: Array, end: Array,
           key: Array, settings: DecodeSettings, progress: Callable[[Any], None] | None = None,
           cache_dtype=jnp.float32, mesh: Mesh | None = None) -> Array:
    """Fill buffer [B, K, S] from step `start` to step `end` (inclusive); returns the buffer.

    Steps [0, start) must be fully known (prompt frames / specials). Traceable: jit it with `lm`,
    `settings`, `progress`, `cache_dtype` and `mesh` static. mesh: the KV caches are laid out over it
    (batch rows over data x fsdp, heads over tensor); the inputs carry their own shardings.
    """
    batch, _, total = buffer.shape
    prefix = 0
    if conditions.prefix is not None:
        prefix = conditions.prefix.shape[1]
    cache = init_caches(lm, batch, prefix + total, settings, cache_dtype)
    if mesh is not None:
        cache = _constrain_caches(cache, mesh)
    buffer = buffer.astype(jnp.int32)
    start = jnp.asarray(start, jnp.int32)

    # prefill: a static-length call; positions past `start` are junk that later steps overwrite
    # before they are ever attended (causal mask), and the cache index is reset to the true length.
    prefill = buffer[:, :, : settings.prefill_length]
    step_conditions = conditions.without_prefix()
    if settings.use_cfg and settings.two_step_cfg:
        conditions = _split_halves(conditions, lm.scan_layers)
        step_conditions = _split_halves(step_conditions, lm.scan_layers)
    logits_all, cache = _guided_logits(lm, params, prefill, conditions, cache, settings)
    logits = jax.lax.dynamic_slice_in_dim(logits_all, start - 1, 1, axis=2)[:, :, 0]
    cache = _set_index(cache, prefix + start)
    key, sub = jax.random.split(key)
    buffer = _write_step(buffer, start, sample_next(sub, logits, settings.sampling))

    def cond_fn(state: DecodeState):
        return state.step < end

    def body_fn(state: DecodeState) -> DecodeState:
        tokens = jax.lax.dynamic_slice_in_dim(state.buffer, state.step, 1, axis=2)  # [B, K, 1]
        logits, cache = _guided_logits(lm, params, tokens, step_conditions, state.cache, settings)
        logits = logits[:, :, -1]  # [B, K, card]
        key, sub = jax.random.split(state.key)
        buffer = _write_step(state.buffer, state.step + 1, sample_next(sub, logits, settings.sampling))
        if progress is not None and settings.progress_every:
            jax.lax.cond((state.step + 1) % settings.progress_every == 0,
                         lambda s: jax.debug.callback(progress, s), lambda s: None, state.step + 1)
        return DecodeState(state.step + 1, buffer, cache, key)

    state = jax.lax.while_loop(cond_fn, body_fn, DecodeState(start, buffer, cache, key))
    return state.buffer


# XLA:CPU hands matmuls to YNNPACK by default; for the few-row GEMMs of a decode step its Eigen path is
# faster (musicgen-small, 16 rows: ~0.52 vs ~0.87 ms per 1024x1024 matmul, 2 cores). CPU only.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_STATIC = ("lm", "settings", "progress", "cache_dtype", "mesh")


@functools.cache
def _jitted_decode(backend: str):
    options = _CPU_DECODE_OPTIONS if backend == "cpu" and _option_known(_CPU_DECODE_OPTIONS) else None
    return jax.jit(decode, static_argnames=_STATIC, compiler_options=options)


def _option_known(options: dict[str, Any]) -> bool:
    """Whether this jaxlib's XLA accepts `options` (older ones reject unknown debug options)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.zeros(())).compile()
        return True
    except Exception:  # noqa: BLE001 - any rejection means: compile without them
        return False


def compiled_decode_programs() -> int:
    """How many decode programs this backend has compiled (a new shape bucket or setting adds one)."""
    return _jitted_decode(jax.default_backend())._cache_size()


def decode_jit(lm, params, conditions, buffer, start, end, key, settings, progress=None,
               cache_dtype=jnp.float32, mesh: Mesh | None = None):
    """`decode`, jitted with `lm`, `settings`, `progress`, `cache_dtype` and `mesh` static."""
    return _jitted_decode(jax.default_backend())(lm, params, conditions, buffer, start, end, key, settings,
                                                  progress, cache_dtype, mesh)
