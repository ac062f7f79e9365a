"""Token generation for a loaded model: conditions (text, melody, CFG rows), shape buckets, long-form
windows and progress.

The middle of three layers, as in gemma's ChatSampler / Sampler / SamplerLoop: `musicgen.py` checks
user input and decodes audio, this module turns checked inputs into codes [B, K, T], and
`generate.py` runs one window as a jitted loop. Everything a generation needs travels as arguments
(`GenerationParams`, a `Progress`); a `Sampler` holds only the model and its weights.

    descriptions --Conditioner--> Conditions ([conditional; null] rows with CFG)
    window of F frames: the LM's codebook pattern -> bucketed buffer [B, K, S] -> prefill, then the loop
        in chunks of steps (`decode_steps`, state carried) -> revert -> [B, K, F]
    long-form (duration > window): windows restart from the last (window - stride) frames

`Sampler.stream` yields the codes as frames complete (a chunk of `chunk_frames` frames at a time);
`Sampler.generate` is the same code with one chunk per window, so both give the same tokens.
"""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax import sharding
from musicgen_jax.config import GenerationParams, MusicGenConfig
from musicgen_jax.generate import (BUFFER_AXES, KV_BLOCKED, KV_SEGMENT, DecodeSettings, decode_steps_jit, kv_pieces, prefill_jit,
                                   progress_listener)
from musicgen_jax.modules.lm import Conditions, MusicGenLM, dummy_inputs
from musicgen_jax.modules.t5 import T5Encoder, init_t5
from musicgen_jax.patterns import Pattern, first_generated_step, generation_buffer
from musicgen_jax.tokenizer import T5Tokenizer

ProgressCallback = Callable[[int, int], None]  # (frames generated, frames to generate)


def bucket(n: int, size: int, cap: int | None = None) -> int:
    """Round n up to a multiple of `size` (at most `cap`, never below n)."""
    b = -(-n // size) * size
    return max(n, min(b, cap)) if cap else b


def frames_done_steps(pattern: Pattern) -> np.ndarray:
    """[T] int: once the steps [0, done[t]] of the pattern's sequence are written, frames [0, t] are complete
    (every codebook's token written; for the delay pattern done[t] = t + 1 + max delay)."""
    return np.maximum.accumulate(pattern.step_of_frame().max(axis=0))


def complete_frames(pattern: Pattern) -> np.ndarray:
    """[S] int: how many leading frames are complete once the steps [0, s] are written."""
    return np.searchsorted(frames_done_steps(pattern), np.arange(pattern.num_steps), side="right")


def chunk_ends(pattern: Pattern, prompt_frames: int, start: int, chunk_frames: int | None) -> list[int]:
    """The steps at which the decode loop pauses, ending with the pattern's last step: each chunk completes
    `chunk_frames` more frames (the first chunk: past the prompt). chunk_frames None: one chunk."""
    last = pattern.num_steps - 1
    if chunk_frames is None:
        return [last]
    done = frames_done_steps(pattern)
    ends = {int(done[t - 1]) for t in range(prompt_frames + chunk_frames, pattern.timesteps, chunk_frames)}
    return sorted({e for e in ends if start < e < last} | {last})


class Progress:
    """A tqdm bar and/or callback(frames done, frames total) over one whole generation (all windows), or
    over several (the CLI's batches, fed by each call's callback)."""

    def __init__(self, total: int, bar: bool = False, callback: ProgressCallback | None = None,
                 desc: str = "generating"):
        self.total, self.callback = total, callback
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="frame", desc=desc)
        self.active = bar or callback is not None
        self._done = 0

    def report(self, frames: int) -> None:
        done = min(self.total, max(self._done, frames))
        if self.bar is not None:
            self.bar.update(done - self._done)
        self._done = done
        if self.callback is not None:
            self.callback(done, self.total)

    def window_listener(self, offset: int, frames_done: np.ndarray) -> Callable[[int], None] | None:
        """For a window starting at frame `offset`: after writing step s, frames_done[s] of its frames
        are generated (`Pattern.progress_frames`)."""
        if not self.active:
            return None
        return lambda step: self.report(offset + int(frames_done[min(step, len(frames_done) - 1)]))

    def write(self, line: str) -> None:
        """Print a line (stdout) without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line)

    def close(self, complete: bool = True) -> None:
        """Finish the bar (and tell the callback the total, when `complete` and not yet told)."""
        if complete and self._done < self.total:
            self.report(self.total)
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Conditioner:
    """Descriptions (and melody chroma) -> the LM's Conditions. With CFG the rows are
    [conditional; null]: the null text is all-zero memory with an all-zero mask, the null melody is
    one-hot on bin 0 (REFERENCE.md). Text lengths are bucketed so new prompts reuse compiled code."""

    bucket_text = 16

    def __init__(self, lm: MusicGenLM, t5: T5Encoder, tokenizer: T5Tokenizer):
        self.lm, self.t5, self.tokenizer = lm, t5, tokenizer

    @cached_property
    def _t5_fn(self):
        return jax.jit(lambda p, ids, mask: self.t5.apply({"params": p}, ids, mask))

    @cached_property
    def _conditions_fn(self):
        return jax.jit(lambda p, text, mask, exists, chroma: self.lm.apply(
            {"params": p}, text=text, text_mask=mask, text_exists=exists, chroma=chroma,
            method=MusicGenLM.encode_conditions))

    def text(self, t5_params, descriptions: Sequence[str | None]) -> tuple[jax.Array, jax.Array]:
        """T5 features [B, S, D] and mask [B, S]; None or "" is the null condition (mask 0), as audiocraft."""
        batch = self.tokenizer(["" if d is None else d for d in descriptions])
        mask = np.asarray(batch.mask).copy()
        mask[[i for i, d in enumerate(descriptions) if not d]] = 0
        features = self._t5_fn(t5_params, jnp.asarray(batch.ids), jnp.asarray(batch.mask))
        return features, jnp.asarray(mask)

    def window_chroma(self, melody, offset_seconds: float | None, window_seconds: float, sample_rate: int
                      ) -> np.ndarray:
        """Chroma [B, frames, 12] for a window: the whole melody (offset None) or, in long-form, the
        window's span of it taken periodically (audiocraft's positions % length)."""
        from musicgen_jax.chroma import extract_chroma, fit_chroma_length, melody_window, null_chroma

        frames = self.lm.config.chroma_frames
        if not isinstance(melody, list):  # precomputed chroma
            return fit_chroma_length(melody, frames)
        wavs = melody
        if offset_seconds is not None:
            start = int(offset_seconds * sample_rate)
            length = int(window_seconds * sample_rate)
            wavs = [None if w is None else melody_window(w, start, length) for w in melody]
        if all(w is None for w in wavs):
            return null_chroma(len(wavs), frames)
        # audiocraft collates the batch first: shorter melodies are zero-padded to the longest (their
        # silent tail tiles with them) and a missing melody is silence, whose chroma is bin 0
        return np.asarray(fit_chroma_length(extract_chroma(list(wavs), sample_rate), frames), np.float32)

    def __call__(self, lm_params, t5_params, descriptions, use_cfg: bool, chroma: np.ndarray | None = None
                 ) -> Conditions:
        text, mask = self.text(t5_params, descriptions)
        rows = len(descriptions)
        if use_cfg:
            text = jnp.concatenate([text, jnp.zeros_like(text)])
            mask = jnp.concatenate([mask, jnp.zeros_like(mask)])
        if self.lm.config.is_melody:  # [chroma, text] prepended; text is part of the prefix, not bucketed
            from musicgen_jax.chroma import null_chroma

            frames = self.lm.config.chroma_frames
            chroma = null_chroma(rows, frames) if chroma is None else chroma
            if use_cfg:
                chroma = np.concatenate([chroma, null_chroma(rows, frames)])
            return self._conditions_fn(lm_params, text, mask, None, jnp.asarray(chroma))
        # Bucketed text positions are masked out of cross-attention; the batch's own padding stays
        # visible, as in audiocraft.
        length = text.shape[1]
        padded = bucket(length, self.bucket_text)
        text = jnp.pad(text, ((0, 0), (0, padded - length), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, padded - length)))
        exists = jnp.broadcast_to(jnp.arange(padded) < length, mask.shape)
        return self._conditions_fn(lm_params, text, mask, exists, None)


class Sampler:
    """Codes [B, K, T] from checked inputs. lm runs unrolled (one module per layer: the inference
    layout, see MusicGenLM.scan_layers); lm_params are in that layout."""

    bucket_frames = 50  # window lengths round up to whole seconds (50 frames at 50 Hz)
    # length-aware attention: cache positions per segment (generate.kv_pieces); "auto": by backend
    kv_segment: int | None | str = "auto"

    def __init__(self, config: MusicGenConfig, lm: MusicGenLM, lm_params, t5: T5Encoder, t5_params,
                 tokenizer: T5Tokenizer):
        self.config, self.lm, self.lm_params = config, lm, lm_params
        self.t5, self.t5_params, self.tokenizer = t5, t5_params, tokenizer
        self.conditioner = Conditioner(lm, t5, tokenizer)

    @property
    def mesh(self):
        return self.lm.mesh

    def shard(self, mesh) -> "Sampler":
        """A sampler over `mesh` (axes data, fsdp, tensor: `sharding.make_mesh`): LM and T5 weights placed
        by the logical-axis rules (heads, mlp, vocab over `tensor`; embed over `fsdp`); rows of each
        window, caches and activations laid out by their logical axes (rows over data x fsdp)."""
        lm = self.lm.clone(mesh=mesh)
        rng = jax.random.PRNGKey(0)
        lm_params, _ = sharding.place_params(self.lm_params, lambda: lm.init(rng, **dummy_inputs(lm.config)), mesh)
        t5_params, _ = sharding.place_params(self.t5_params, lambda: init_t5(self.t5, rng), mesh)
        return Sampler(self.config, lm, lm_params, self.t5, t5_params, self.tokenizer)

    def generate(self, descriptions: Sequence[str | None], params: GenerationParams, key: jax.Array, *,
                 prompt_tokens: jax.Array | None = None, melody=None, progress: Progress | None = None
                 ) -> jax.Array:
        """Codes [B, K, T] with T = duration x frame rate (prompt frames included).

        Past the window (config.max_duration): windows of the window's length, each restarting from the
        last (window - extend_stride) frames of the previous one; only new frames are appended. A melody
        (list of mono wavs at the model rate, or chroma [B, F, 12]) gives each window the chroma of its
        own span (wavs) or the same chroma (precomputed), as audiocraft does.
        """
        pieces = list(self.stream(descriptions, params, key, prompt_tokens=prompt_tokens, melody=melody,
                                  progress=progress))
        return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)

    def stream(self, descriptions: Sequence[str | None], params: GenerationParams, key: jax.Array, *,
               prompt_tokens: jax.Array | None = None, melody=None, progress: Progress | None = None,
               chunk_frames: int | None = None) -> Iterator[jax.Array]:
        """`generate`'s codes as they become final: an iterator of codes [B, K, n] (n > 0) whose concatenation
        is `generate`'s result, token for token (the random key travels with the loop).

        The loop pauses after every `chunk_frames` frames (None: only at the end of each window) and yields
        the frames completed since the last pause. Settings are checked here; the work runs while the
        iterator is advanced, and stops when it is closed (nothing runs between two `next` calls).
        """
        total, window, stride = self.plan(params)
        if chunk_frames is not None and not (isinstance(chunk_frames, int) and chunk_frames >= 1):
            raise ValueError(f"chunk_frames must be a positive integer or None, got {chunk_frames!r}")
        return self._stream(descriptions, params, key, prompt_tokens, melody, progress or Progress(total),
                            chunk_frames, total, window, stride)

    def plan(self, params: GenerationParams) -> tuple[int, int, int]:
        """(frames to generate, window, stride) in frames, or ValueError for a stride that cannot serve."""
        frame_rate = self.config.frame_rate
        total = int(params.duration * frame_rate)
        window = int(self.config.max_duration * frame_rate)
        stride = int(params.extend_stride * frame_rate)
        if total > window and not 0 < stride < window:
            raise ValueError(f"extend_stride ({params.extend_stride} s) must be at least one frame and shorter "
                             f"than the model's window ({self.config.max_duration} s) to generate past it")
        return total, window, stride

    def _stream(self, descriptions, params: GenerationParams, key, prompt_tokens, melody, progress: Progress,
                chunk_frames, total: int, window: int, stride: int) -> Iterator[jax.Array]:
        frame_rate = self.config.frame_rate
        use_cfg = params.guidance.enabled

        def conditions_at(offset):
            chroma = None if melody is None else self.conditioner.window_chroma(
                melody, None if offset is None else offset / frame_rate, self.config.max_duration,
                self.config.sample_rate)
            return self.conditioner(self.lm_params, self.t5_params, descriptions, use_cfg, chroma)

        completed = False
        try:
            per_window = melody is not None and isinstance(melody, list) and total > window
            conditions = None if per_window else conditions_at(None)
            emitted = 0  # frames of the whole piece yielded so far
            offset = 0  # the window's first frame: later windows start with the last (window - stride) frames
            while True:  # of the one before, already yielded
                frames = min(total - offset, window)
                key, sub = jax.random.split(key) if total > window else (key, key)
                window_conditions = conditions_at(offset) if per_window else conditions
                for codes, ready in self._window(window_conditions, prompt_tokens, frames, sub, params, progress,
                                                 offset, chunk_frames):
                    upto = min(total, offset + ready)
                    if upto > emitted:
                        lo, hi = emitted - offset, upto - offset
                        yield codes if (lo, hi) == (0, frames) else codes[:, :, lo:hi]  # [B, K, new frames]
                        emitted = upto
                if offset + frames >= total:
                    break
                prompt_tokens = codes[:, :, stride:]
                offset += stride
            completed = True
        finally:
            progress.close(completed)

    def _window(self, conditions: Conditions, prompt_tokens, frames: int, key, params: GenerationParams,
                progress: Progress, offset: int, chunk_frames: int | None
                ) -> Iterator[tuple[jax.Array, int]]:
        """One window of `frames` frames (prompt included), generated in chunks (`chunk_ends`): yields after
        each chunk (codes [B, K, frames], frames not complete yet holding the special token; the number of
        leading frames complete)."""
        c = self.config.lm
        batch = conditions.batch_size // (2 if params.guidance.enabled else 1)
        if prompt_tokens is None:
            prompt_tokens = jnp.zeros((batch, c.num_codebooks, 0), jnp.int32)
        pattern = c.codebook_pattern(frames)
        buffer = generation_buffer(pattern, prompt_tokens, c.special_token)  # [B, K, S]
        steps = buffer.shape[-1]
        window = int(self.config.max_duration * self.config.frame_rate)
        padded = bucket(steps, self.bucket_frames, c.codebook_pattern(window).num_steps)
        buffer = jnp.pad(buffer, ((0, 0), (0, 0), (0, padded - steps)), constant_values=c.special_token)
        start = first_generated_step(pattern, prompt_tokens.shape[-1])
        listener = progress.window_listener(offset, pattern.progress_frames())
        settings = DecodeSettings(
            sampling=params.sampling, guidance=params.guidance,
            prefill_length=1 if start == 1 else min(bucket(start, self.bucket_frames), padded),
            progress_every=self.bucket_frames if listener else 0)
        buffer = sharding.place(buffer, BUFFER_AXES, self.mesh)
        conditions = sharding.place(conditions, conditions.logical_axes(), self.mesh)
        complete = complete_frames(pattern)  # [S]
        backend = jax.default_backend()
        segment = KV_SEGMENT.get(backend) if self.kv_segment == "auto" else self.kv_segment
        block = segment if backend in KV_BLOCKED and not self.lm.scan_layers else None
        prefix = 0 if conditions.prefix is None else conditions.prefix.shape[1]
        with progress_listener(listener) as listener_id:
            state = prefill_jit(self.lm, self.lm_params, conditions, buffer, start, key, settings,
                                cache_dtype=self.lm.dtype)
            step = start
            for end in chunk_ends(pattern, prompt_tokens.shape[-1], start, chunk_frames):
                for piece_end, kv_length in kv_pieces(step, end, prefix, prefix + padded, segment):
                    if kv_length is None:
                        state = decode_steps_jit(self.lm, self.lm_params, conditions, state, piece_end, settings,
                                                 listener_id)
                    else:
                        state = decode_steps_jit(self.lm.clone(kv_length=kv_length), self.lm_params, conditions,
                                                 state, piece_end, settings, listener_id, kv_block=block)
                step = max(step, end)
                codes = pattern.revert(state.buffer[:, :, :steps], c.special_token)  # [B, K, frames]
                yield codes.block_until_ready(), int(complete[end])  # the chunk is done: nothing runs on
