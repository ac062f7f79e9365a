"""The jitted decode loop: prefill, then one `lax.while_loop` over fixed-size buffers.

    buffer [B, K, S]  (delay-patterned: prompt frames and special tokens in place, -1 to generate)
    prefill steps [0, start) -> tokens of step `start`                      -> DecodeState
    while step < end: feed step `step` (one token per codebook) -> tokens of step `step + 1`

Classifier-free guidance doubles the batch inside each model call ([conditional; null]) and mixes
the raw logits. Sampled tokens are written only where the buffer holds -1, so prompt tokens and
specials are never overwritten. `S` and the prefill length are static (bucketed by the caller);
`start` and `end` are traced, so a new duration or prompt length in the same bucket reuses the
compiled program.

Length-aware attention: a step attends only to the cache positions written so far, not the whole buffer,
when `lm.kv_length` is set (a static bound, one compiled program per value). `kv_pieces` cuts a stretch of
steps where the bound crosses a multiple of a segment, so a 30 s window with 512-step segments runs 3
programs that read about 2/3 of the cache on average. On GPU/TPU the attention reads a slice of the
buffer (fused into its kernels). XLA:CPU would copy such a slice on every step, so there `decode_steps`
splits the live part of the buffer into blocks once per call (`kv_block`), attends to them in place and
writes the one block the call changed back at its end.

The loop runs in chunks: `decode_steps` takes a DecodeState (step, buffer, KV caches, key) and runs
it on to step `end`, its buffers donated, so one compiled program serves every chunk, and
`prefill -> decode_steps(end=last)` (one chunk) is the whole generation. Streaming calls it with
successive ends; the random key travels in the state, so the tokens do not depend on the chunking.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from musicgen_jax.config import Guidance, SamplingParams
from musicgen_jax.modules.lm import Conditions, LMCache, MusicGenLM
from musicgen_jax.patterns import UNKNOWN
from musicgen_jax.sampling import classifier_free_guidance, sample_next
from musicgen_jax.sharding import constrain

Array = jax.Array
BUFFER_AXES = P("activation_batch", "codebooks", "activation_length")  # [B, K, S]


@dataclass(frozen=True)
class DecodeSettings:
    """Static choices of one compiled decode program: the token choice and guidance (config.py),
    plus the shape facts the caller bucketed."""

    sampling: SamplingParams = SamplingParams()
    guidance: Guidance = Guidance()
    prefill_length: int = 1  # static length of the prefill call (>= start)
    progress_every: int = 0  # report progress every N steps (0: never)


@flax.struct.dataclass
class DecodeState:
    step: Array  # [] int32: the step fed next; its output fills step + 1
    buffer: Array  # [B, K, S] int32
    cache: Any  # LMCache, or (conditional, null) caches with two_step guidance
    key: Array


def _guided_logits(lm: MusicGenLM, params, tokens: Array, conditions, cache,
                   guidance: Guidance) -> tuple[Array, Any]:
    """tokens [B, K, T] -> guided logits [B, K, T, card], updated cache(s).

    conditions: 2B rows ([conditional; null]) with guidance in one batch; a (conditional, null) pair
    of halves with two_step guidance (split once by `decode`, not every step); B rows without it.
    """
    if not guidance.enabled:
        return lm.apply({"params": params}, tokens, conditions, cache)
    if guidance.two_step:
        cond, cache_c = lm.apply({"params": params}, tokens, conditions[0], cache[0])
        uncond, cache_n = lm.apply({"params": params}, tokens, conditions[1], cache[1])
        return classifier_free_guidance(cond, uncond, guidance.coef), (cache_c, cache_n)
    both, cache = lm.apply({"params": params}, jnp.concatenate([tokens, tokens]), conditions, cache)
    cond, uncond = jnp.split(both, 2)
    return classifier_free_guidance(cond, uncond, guidance.coef), cache


def _split_halves(conditions: Conditions) -> tuple[Conditions, Conditions]:
    """[conditional; null] conditions -> the two halves, split on each array's batch axis (found by
    its logical name, whatever the layer layout)."""
    def half(i):
        return jax.tree.map(lambda spec, x: jnp.split(x, 2, axis=_batch_axis(spec))[i],
                            conditions.logical_axes(), conditions, is_leaf=lambda s: isinstance(s, P))

    return half(0), half(1)


def _batch_axis(spec: P) -> int:
    for i, name in enumerate(spec):
        if name in ("cache_batch", "activation_batch"):
            return i
    raise ValueError(f"no batch axis in {spec}")


def _write_step(buffer: Array, step: Array, tokens: Array) -> Array:
    """Write tokens [B, K] at `step` where the buffer still holds UNKNOWN."""
    current = jax.lax.dynamic_slice_in_dim(buffer, step, 1, axis=2)[..., 0]  # [B, K]
    chosen = jnp.where(current == UNKNOWN, tokens, current)
    return jax.lax.dynamic_update_slice_in_dim(buffer, chosen[..., None], step, axis=2)


def init_caches(lm: MusicGenLM, batch: int, length: int, guidance: Guidance, dtype=jnp.float32):
    def zeros(rows):
        cache = LMCache.zeros(lm.config, rows, length, dtype, stacked=lm.scan_layers)
        return constrain(cache, cache.logical_axes(), lm.mesh)

    if guidance.enabled and guidance.two_step:
        return zeros(batch), zeros(batch)
    return zeros(2 * batch if guidance.enabled else batch)


def _set_index(cache, index: Array):
    return jax.tree.map(lambda c: c.replace(index=index), cache, is_leaf=lambda c: isinstance(c, LMCache))


# Progress reports leave the compiled loop through `jax.debug.callback`; the program carries only a
# listener id (an argument), and the listener for that id is looked up here.
_LISTENERS: dict[int, Callable[[int], None]] = {}
_LISTENER_IDS = itertools.count(1)


@contextlib.contextmanager
def progress_listener(callback: Callable[[int], None] | None) -> Iterator[int]:
    """Register callback(steps done) for the decode calls inside the block; yields the id to pass as
    `decode_steps(..., progress_id=)` (0 when callback is None). Reports are asynchronous: leaving the
    block waits for those in flight, so none reaches a later listener."""
    if callback is None:
        yield 0
        return
    listener = next(_LISTENER_IDS)
    _LISTENERS[listener] = callback
    try:
        yield listener
    finally:
        jax.effects_barrier()
        del _LISTENERS[listener]


def _report(listener, step) -> None:
    callback = _LISTENERS.get(int(listener))
    if callback is not None:
        callback(int(step))


def prefill(lm: MusicGenLM, params, conditions: Conditions, buffer: Array, start: Array, key: Array,
            settings: DecodeSettings, cache_dtype=jnp.float32) -> DecodeState:
    """Feed steps [0, start) of buffer [B, K, S] (fully known: prompt frames / specials) in one call of
    static length `settings.prefill_length`, and write step `start`. -> the state at step `start`.

    Traceable: jit it with `lm`, `settings` and `cache_dtype` static. With `lm.mesh`, the buffer,
    conditions and KV caches are laid out by their logical axes (rows over data x fsdp, heads over tensor).
    """
    mesh = lm.mesh
    batch, _, total = buffer.shape
    prefix = 0
    if conditions.prefix is not None:
        prefix = conditions.prefix.shape[1]
    guidance = settings.guidance
    cache = init_caches(lm, batch, prefix + total, guidance, cache_dtype)
    conditions = constrain(conditions, conditions.logical_axes(), mesh)
    buffer = constrain(buffer.astype(jnp.int32), BUFFER_AXES, mesh)
    start = jnp.asarray(start, jnp.int32)

    # positions past `start` are junk that later steps overwrite before they are ever attended (causal
    # mask), and the cache index is reset to the true length.
    prefill_tokens = buffer[:, :, : settings.prefill_length]
    if guidance.enabled and guidance.two_step:
        conditions = _split_halves(conditions)
    logits_all, cache = _guided_logits(lm, params, prefill_tokens, conditions, cache, guidance)
    logits = jax.lax.dynamic_slice_in_dim(logits_all, start - 1, 1, axis=2)[:, :, 0]  # [B, K, card]
    cache = _set_index(cache, prefix + start)
    key, sub = jax.random.split(key)
    buffer = _write_step(buffer, start, sample_next(sub, logits, settings.sampling))
    return DecodeState(start, buffer, cache, key)


def decode_steps(lm: MusicGenLM, params, conditions: Conditions, state: DecodeState, end: Array,
                 settings: DecodeSettings, progress_id: Array | int = 0, kv_block: int | None = None) -> DecodeState:
    """Run the loop from `state.step` until step `end` is written (nothing when state.step >= end).

    conditions: the same as given to `prefill` (their prefix, if any, is dropped here). Traceable: jit it
    with `lm`, `settings` and `kv_block` static and `state` donated; `end` traced, so every chunk of a
    generation runs the same program. progress_id: a listener from `progress_listener`, told the step
    count every `settings.progress_every` steps. kv_block: with `lm.kv_length` (a multiple of it) and the
    unrolled layout, attend to blocks of that many positions (`split_cache`); every step of the call
    must write into the last block (as `kv_pieces` arranges).
    """
    guidance = settings.guidance
    step_conditions = constrain(conditions, conditions.logical_axes(), lm.mesh).without_prefix()
    if guidance.enabled and guidance.two_step:
        step_conditions = _split_halves(step_conditions)

    def cond_fn(state: DecodeState):
        return state.step < end

    def body_fn(state: DecodeState) -> DecodeState:
        tokens = jax.lax.dynamic_slice_in_dim(state.buffer, state.step, 1, axis=2)  # [B, K, 1]
        logits, cache = _guided_logits(lm, params, tokens, step_conditions, state.cache, guidance)
        logits = logits[:, :, -1]  # [B, K, card]
        key, sub = jax.random.split(state.key)
        buffer = _write_step(state.buffer, state.step + 1, sample_next(sub, logits, settings.sampling))
        if settings.progress_every:
            done = state.step + 1
            jax.lax.cond(done % settings.progress_every == 0,
                         lambda s: jax.debug.callback(_report, progress_id, s), lambda s: None, done)
        return DecodeState(state.step + 1, buffer, cache, key)

    state = state.replace(buffer=constrain(state.buffer, BUFFER_AXES, lm.mesh))
    if kv_block is None or lm.kv_length is None:
        return jax.lax.while_loop(cond_fn, body_fn, state)
    is_cache = lambda c: isinstance(c, LMCache)  # noqa: E731 - one cache, or a (conditional, null) pair
    blocked = jax.tree.map(lambda c: split_cache(c, lm.kv_length, kv_block), state.cache, is_leaf=is_cache)
    out = jax.lax.while_loop(cond_fn, body_fn, state.replace(cache=blocked))
    return out.replace(cache=jax.tree.map(lambda full, b: join_cache(full, b, lm.kv_length, kv_block),
                                          state.cache, out.cache, is_leaf=is_cache))


# Cache positions per length-aware segment, by backend (None: attend over the whole buffer), and the
# backends that attend to blocks in place of a slice: on XLA:CPU attention over a sliced cache ran 3-10x
# slower than over the whole buffer (the slice is copied each time; [16, 16, 1504, 64] fp32: 15-30 ms
# whole, 90-250 ms for a 1000-position slice, 2 cores), while separate blocks are read in place.
KV_SEGMENT = {"cpu": 512, "gpu": 512, "cuda": 512, "rocm": 512, "tpu": 512}
KV_BLOCKED = frozenset({"cpu"})


def split_cache(cache: LMCache, kv_length: int, block: int) -> LMCache:
    """Unrolled cache [B, H, L, D] per layer -> per layer a tuple of blocks of `block` positions
    covering [0, kv_length) (the live part; see KVCache)."""
    def split(buffer):
        return tuple(buffer[:, :, i:i + block] for i in range(0, kv_length, block))

    return LMCache(tuple(map(split, cache.k)), tuple(map(split, cache.v)), cache.index)


def join_cache(full: LMCache, blocked: LMCache, kv_length: int, block: int) -> LMCache:
    """Write the last block of each layer (the only one decode steps change) back into `full`."""
    def put(buffer, blocks):
        return jax.lax.dynamic_update_slice_in_dim(buffer, blocks[-1], kv_length - block, axis=2)

    return LMCache(tuple(map(put, full.k, blocked.k)), tuple(map(put, full.v, blocked.v)), blocked.index)


def kv_pieces(step: int, end: int, prefix: int, cache_length: int, segment: int | None) -> list[tuple[int, int | None]]:
    """Split the decode stretch [step, end) into (piece end, kv_length) calls of `decode_steps`.

    Feeding step s writes cache position prefix + s and attends to positions <= prefix + s, so a piece
    whose steps stay below the segment boundary `m * segment` (positions) needs kv_length = m * segment.
    kv_length None: the whole buffer (no segment, or the bound reaches the buffer's end).
    """
    if not segment:
        return [(end, None)] if step < end else []
    pieces = []
    while step < end:
        bound = ((prefix + step) // segment + 1) * segment  # positions below this are readable
        piece_end = min(end, bound - prefix)
        pieces.append((piece_end, None if bound >= cache_length else bound))
        step = piece_end
    return pieces


# XLA:CPU hands matmuls to YNNPACK by default; for the few-row GEMMs of a decode step its Eigen path is
# faster (musicgen-small, 16 rows: ~0.52 vs ~0.87 ms per 1024x1024 matmul, 2 cores). CPU only.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _jitted(backend: str):
    """(prefill, decode_steps) jitted for `backend`: buffers donated (the state is carried chunk to chunk)."""
    options = _CPU_DECODE_OPTIONS if backend == "cpu" and _option_known(_CPU_DECODE_OPTIONS) else None
    return (jax.jit(prefill, static_argnames=("lm", "settings", "cache_dtype"), donate_argnames=("buffer",),
                    compiler_options=options),
            jax.jit(decode_steps, static_argnames=("lm", "settings", "kv_block"), donate_argnames=("state",),
                    compiler_options=options))


def _option_known(options: dict[str, Any]) -> bool:
    """Whether this jaxlib's XLA accepts `options` (older ones reject unknown debug options)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.zeros(())).compile()
        return True
    except Exception:  # noqa: BLE001 - any rejection means: compile without them
        return False


def compiled_decode_programs() -> int:
    """How many decode programs this backend has compiled (a new shape bucket or setting adds some)."""
    return sum(fn._cache_size() for fn in _jitted(jax.default_backend()))


def prefill_jit(lm, params, conditions, buffer, start, key, settings, cache_dtype=jnp.float32) -> DecodeState:
    """`prefill`, jitted with `lm`, `settings` and `cache_dtype` static; `buffer` is donated."""
    return _jitted(jax.default_backend())[0](lm, params, conditions, buffer, start, key, settings,
                                             cache_dtype=cache_dtype)


def decode_steps_jit(lm, params, conditions, state: DecodeState, end, settings, progress_id=0,
                     kv_block: int | None = None) -> DecodeState:
    """`decode_steps`, jitted with `lm`, `settings` and `kv_block` static; `state` is donated (do not use
    it after)."""
    return _jitted(jax.default_backend())[1](lm, params, conditions, state, jnp.int32(end), settings,
                                             jnp.int32(progress_id), kv_block=kv_block)
