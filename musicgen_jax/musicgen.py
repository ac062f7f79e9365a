"""The user-facing MusicGen class, shaped like audiocraft's so its users feel at home.

    mg = MusicGen.from_pretrained("facebook/musicgen-small")
    mg.set_generation_params(duration=8.0)
    wav = mg.generate(["lofi hip hop with a mellow piano"], progress=True)   # [B, C, N] at 32 kHz
"""
from __future__ import annotations

import dataclasses
import json
import os
from functools import cached_property
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from musicgen_jax import hub
from musicgen_jax.codec import CompressionModel
from musicgen_jax.config import MusicGenConfig
from musicgen_jax.generate import DecodeSettings, decode_jit
from musicgen_jax.modules.lm import MusicGenLM, dummy_inputs, unstack_layers
from musicgen_jax.modules.t5 import T5Encoder, init_t5
from musicgen_jax.patterns import prompt_sequence, revert_delay_sequence
from musicgen_jax.sampling import SamplingParams
from musicgen_jax.tokenizer import T5Tokenizer

ProgressCallback = Callable[[int, int], None]  # (frames generated, frames to generate)


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """audiocraft's defaults: sampling top-k 250, CFG 3, 15 s, 18 s stride for long-form."""

    duration: float = 15.0
    use_sampling: bool = True
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    two_step_cfg: bool = False
    extend_stride: float = 18.0

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.use_sampling, self.temperature, self.top_k, self.top_p)


def _has_checkpoint(directory: str) -> bool:
    """Whether a (cached) directory holds MusicGen weights in either layout."""
    from musicgen_jax.convert.common import has_transformers_weights

    return os.path.isfile(os.path.join(directory, "state_dict.bin")) or has_transformers_weights(directory)


def _bucket(n: int, size: int, cap: int | None = None) -> int:
    """Round n up to a multiple of `size` (at most `cap`, never below n)."""
    b = -(-n // size) * size
    return max(n, min(b, cap)) if cap else b


class MusicGen:
    """Text (and audio-prompt) conditioned music generation with the official MusicGen weights."""

    bucket_frames = 50  # static shapes: window lengths round up to whole seconds (50 frames)
    bucket_text = 16  # and text lengths to multiples of 16 tokens

    def __init__(self, config: MusicGenConfig, lm_params, t5_params, tokenizer: T5Tokenizer,
                 compression_model: CompressionModel, *, dtype=jnp.float32,
                 generation_params: GenerationParams | None = None):
        self.config = config
        # Inference layout: one module per layer (see MusicGenLM.scan_layers); converters give stacked params.
        self.lm = MusicGenLM(config.lm, dtype=dtype, scan_layers=False)
        self.lm_params = jax.tree.map(jnp.asarray, unstack_layers(lm_params, config.lm.num_layers))
        self.t5 = T5Encoder(config.t5, dtype=dtype)
        self.t5_params = jax.tree.map(jnp.asarray, t5_params)
        self.tokenizer = tokenizer
        self.compression_model = compression_model
        self.generation_params = generation_params or GenerationParams()
        self._progress_callback: ProgressCallback | None = None
        self.mesh: Mesh | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str = "facebook/musicgen-small", *, dtype=jnp.float32,
                        mesh: Mesh | None = None) -> "MusicGen":
        """A hub name or a local directory, in the transformers or the audiocraft layout.

        mesh: generate across its devices (see `shard`)."""
        if isinstance(name_or_path, str) and "/" not in name_or_path and not os.path.exists(name_or_path):
            from musicgen_jax.config import preset

            name_or_path = "facebook/" + preset(name_or_path).name  # 'small' -> facebook/musicgen-small
        directory = hub.resolve(name_or_path, complete=_has_checkpoint)
        if os.path.isfile(os.path.join(directory, "state_dict.bin")):
            mg = cls._from_audiocraft(directory, dtype)
        else:
            mg = cls._from_transformers(directory, dtype)
        return mg if mesh is None else mg.shard(mesh)

    def shard(self, mesh: Mesh) -> "MusicGen":
        """Generate across the devices of `mesh` (axes data, fsdp, tensor: `train.sharding.make_mesh`).

        The LM and T5 weights are placed by the same logical-axis rules as in training (heads, mlp
        and vocab over `tensor`, embed over `fsdp`); each generation's rows (CFG halves included) are
        split over data x fsdp when that divides the batch, and replicated otherwise. Tokens equal
        those of one device. Single-process meshes (all devices of one host). Returns self.
        """
        from musicgen_jax.sharding import place_params

        rng = jax.random.PRNGKey(0)
        self.lm_params, _ = place_params(self.lm_params, lambda: self.lm.init(rng, **dummy_inputs(self.config.lm)),
                                         mesh)
        self.t5_params, _ = place_params(self.t5_params, lambda: init_t5(self.t5, rng), mesh)
        self.mesh = mesh
        return self

    def _split_batch(self, tree):
        """Leading (batch) dimension of every array over the mesh's batch axes (no-op without a mesh)."""
        if self.mesh is None:
            return tree
        from musicgen_jax.sharding import logical_to_sharding

        return jax.tree.map(lambda x: jax.device_put(x, logical_to_sharding(P("batch"), x.shape, self.mesh)), tree)

    @classmethod
    def _from_transformers(cls, directory: str, dtype) -> "MusicGen":
        from musicgen_jax.convert.common import load_transformers_weights, sub_state
        from musicgen_jax.convert.encodec import encodec_config_from_hf, encodec_params_from_state_dict
        from musicgen_jax.convert.lm import lm_config_from_hf, lm_params_from_transformers
        from musicgen_jax.convert.t5 import t5_config_from_hf, t5_params_from_state_dict

        with open(os.path.join(directory, "config.json")) as f:
            raw = json.load(f)
        if raw.get("model_type") not in ("musicgen", "musicgen_melody"):
            raise ValueError(f"{directory} is not a MusicGen checkpoint (model_type {raw.get('model_type')!r})")
        state = load_transformers_weights(directory)
        lm_config = lm_config_from_hf(raw)
        t5_config = t5_config_from_hf(raw["text_encoder"])
        codec_config = encodec_config_from_hf(raw["audio_encoder"])
        channels = int(raw.get("decoder", {}).get("audio_channels", 1))
        config = MusicGenConfig(name=os.path.basename(os.path.normpath(directory)), lm=lm_config, t5=t5_config,
                                encodec=codec_config, audio_channels=channels)
        lm_params = lm_params_from_transformers(state, lm_config)
        t5_params = t5_params_from_state_dict(state, t5_config, prefix="text_encoder.")
        codec = CompressionModel(codec_config, encodec_params_from_state_dict(sub_state(state, "audio_encoder."),
                                                                             codec_config), channels)
        tokenizer = T5Tokenizer.from_pretrained(directory)
        return cls(config, lm_params, t5_params, tokenizer, codec, dtype=dtype,
                   generation_params=_generation_params_from_hf(directory))

    @classmethod
    def _from_audiocraft(cls, directory: str, dtype) -> "MusicGen":
        from musicgen_jax.convert.encodec import load_encodec_audiocraft
        from musicgen_jax.convert.lm import load_audiocraft_lm
        from musicgen_jax.convert.t5 import load_t5

        lm_config, lm_params, xp_cfg = load_audiocraft_lm(os.path.join(directory, "state_dict.bin"))
        codec_config, codec_params = load_encodec_audiocraft(os.path.join(directory, "compression_state_dict.bin"))
        t5_name = _audiocraft_t5_name(xp_cfg)
        t5_config, t5_params = load_t5(t5_name)
        channels = 2 if lm_config.num_codebooks == 2 * codec_config.num_codebooks else 1
        config = MusicGenConfig(name=os.path.basename(os.path.normpath(directory)), lm=lm_config, t5=t5_config,
                                encodec=codec_config, audio_channels=channels, t5_name=t5_name)
        codec = CompressionModel(codec_config, codec_params, channels)
        tokenizer = T5Tokenizer.from_pretrained(t5_name)
        return cls(config, lm_params, t5_params, tokenizer, codec, dtype=dtype,
                   generation_params=_generation_params_from_audiocraft(xp_cfg))

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return self.compression_model.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.compression_model.frame_rate

    @property
    def audio_channels(self) -> int:
        return self.config.audio_channels

    @property
    def max_duration(self) -> float:
        return self.config.max_duration

    @property
    def duration(self) -> float:
        return self.generation_params.duration

    # ------------------------------------------------------------------ settings
    def set_generation_params(self, duration: float | None = None, use_sampling: bool | None = None,
                              top_k: int | None = None, top_p: float | None = None,
                              temperature: float | None = None, cfg_coef: float | None = None,
                              two_step_cfg: bool | None = None, extend_stride: float | None = None) -> None:
        """Like audiocraft's; arguments left as None keep their current value."""
        changes = {k: v for k, v in dict(duration=duration, use_sampling=use_sampling, top_k=top_k, top_p=top_p,
                                         temperature=temperature, cfg_coef=cfg_coef, two_step_cfg=two_step_cfg,
                                         extend_stride=extend_stride).items() if v is not None}
        params = dataclasses.replace(self.generation_params, **changes)
        if not isinstance(params.duration, (int, float)) or not params.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {params.duration!r}")
        if not 0 < params.extend_stride < self.max_duration:
            raise ValueError(f"extend_stride must be in (0, {self.max_duration}) s, got {params.extend_stride}")
        params.sampling  # validates temperature / top_k / top_p
        self.generation_params = params

    def set_custom_progress_callback(self, callback: ProgressCallback | None = None) -> None:
        """callback(frames_generated, frames_total), called every second of generated audio."""
        self._progress_callback = callback

    # ------------------------------------------------------------------ generation API
    def generate(self, descriptions: Sequence[str], progress: bool = False, return_tokens: bool = False,
                 seed: int | None = None):
        """Text -> wav [B, C, N] (and tokens [B, K, T] with return_tokens)."""
        descriptions = _check_descriptions(descriptions)
        tokens = self._generate_tokens(descriptions, None, progress, seed)
        return self._finish(tokens, return_tokens)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False,
                               seed: int | None = None):
        """Null text condition for every sample."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        tokens = self._generate_tokens([None] * num_samples, None, progress, seed)
        return self._finish(tokens, return_tokens)

    def generate_continuation(self, prompt, prompt_sample_rate: int,
                              descriptions: Sequence[str | None] | None = None, progress: bool = False,
                              return_tokens: bool = False, seed: int | None = None):
        """Continue audio prompt [B, C, N] (or [C, N]) at prompt_sample_rate; the prompt stays in the output."""
        prompt = self._prepare_prompt(prompt, prompt_sample_rate)
        if descriptions is None:
            descriptions = [None] * prompt.shape[0]
        descriptions = _check_descriptions(descriptions, allow_none=True)
        if len(descriptions) != prompt.shape[0]:
            raise ValueError(f"{len(descriptions)} descriptions for {prompt.shape[0]} prompt waveforms")
        prompt_tokens = self.compression_model.encode(prompt)
        tokens = self._generate_tokens(descriptions, prompt_tokens, progress, seed)
        return self._finish(tokens, return_tokens)

    def generate_with_chroma(self, descriptions: Sequence[str | None], melody_wavs=None,
                             melody_sample_rate: int | None = None, progress: bool = False,
                             return_tokens: bool = False, seed: int | None = None, *, chroma=None):
        """Melody models: text + melody. melody_wavs: [B, C, N], [C, N] or a list of [C, N] / [N] arrays of
        different lengths (None entries: no melody), at melody_sample_rate. Or pass precomputed `chroma`
        [B, F, 12] (tiled/cut to the window). Drums and bass are not removed (audiocraft runs a source
        separator first): give a melodic stem for results closest to audiocraft's."""
        if not self.config.lm.is_melody:
            raise ValueError(f"{self.config.name} is not a melody model: use generate() or a musicgen-melody checkpoint")
        descriptions = _check_descriptions(descriptions, allow_none=True)
        if (melody_wavs is None) == (chroma is None):
            raise ValueError("give either melody_wavs (with melody_sample_rate) or a precomputed chroma")
        if chroma is not None:
            melody = _check_chroma(chroma, len(descriptions), self.config.lm.chroma_bins)
        else:
            melody = self._prepare_melodies(melody_wavs, melody_sample_rate, len(descriptions))
        tokens = self._generate_tokens(descriptions, None, progress, seed, melody)
        return self._finish(tokens, return_tokens)

    # ------------------------------------------------------------------ internals
    def _prepare_melodies(self, melody_wavs, rate, batch: int) -> list:
        """-> a list of mono float32 wavs at the model rate (None: no melody), checked."""
        from musicgen_jax.chroma import check_sample_rate, resample_melody

        rate = check_sample_rate(rate, "melody_sample_rate")
        if hasattr(melody_wavs, "shape"):
            arr = np.asarray(melody_wavs)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise ValueError(f"melody_wavs must be [B, C, N], [C, N] or a list, got shape {arr.shape}")
            melody_wavs = list(arr)
        if not isinstance(melody_wavs, (list, tuple)):
            raise TypeError(f"melody_wavs must be an array or a list of arrays, got {type(melody_wavs).__name__}")
        if len(melody_wavs) != batch:
            raise ValueError(f"{len(melody_wavs)} melodies for {batch} descriptions")
        out = []
        for i, wav in enumerate(melody_wavs):
            if wav is None:
                out.append(None)
                continue
            wav = np.asarray(wav, np.float32)
            wav = wav[None] if wav.ndim == 1 else wav
            if wav.ndim != 2 or wav.shape[-1] == 0:
                raise ValueError(f"melody {i} must be a non-empty [C, N] or [N] array, got shape {wav.shape}")
            if not np.isfinite(wav).all():
                raise ValueError(f"melody {i} contains NaN or infinite values")
            mono = wav.mean(axis=0)  # audiocraft mixes to the model's (mono) channels, then resamples
            out.append(resample_melody(mono, rate, self.sample_rate).astype(np.float32))
        return out

    def _melody_chroma(self, melody, offset_frames: int | None) -> np.ndarray:
        """Chroma [B, frames, 12] for a window: the whole melody (offset None) or, in long-form, the
        window's span of it taken periodically (audiocraft's positions % length)."""
        from musicgen_jax.chroma import extract_chroma, fit_chroma_length, melody_window, null_chroma

        frames = self.config.lm.chroma_frames
        if not isinstance(melody, list):  # precomputed chroma
            return fit_chroma_length(melody, frames)
        wavs = melody
        if offset_frames is not None:
            start = int(offset_frames / self.frame_rate * self.sample_rate)
            length = int(self.max_duration * self.sample_rate)
            wavs = [None if w is None else melody_window(w, start, length) for w in melody]
        if all(w is None for w in wavs):
            return null_chroma(len(wavs), frames)
        # audiocraft collates the batch first: shorter melodies are zero-padded to the longest (their
        # silent tail tiles with them) and a missing melody is silence, whose chroma is bin 0
        chroma = extract_chroma(list(wavs), self.sample_rate)
        return np.asarray(fit_chroma_length(chroma, frames), np.float32)

    def _prepare_prompt(self, prompt, rate: int) -> np.ndarray:
        from musicgen_jax.audio import resample

        if not hasattr(prompt, "shape"):
            raise TypeError(f"prompt must be an array [B, C, N], got {type(prompt).__name__}")
        prompt = np.asarray(prompt, np.float32)
        if prompt.ndim == 2:
            prompt = prompt[None]
        if prompt.ndim != 3 or prompt.shape[-1] == 0:
            raise ValueError(f"prompt must have shape [batch, channels, samples], got {prompt.shape}")
        if not np.isfinite(prompt).all():
            raise ValueError("prompt audio contains NaN or infinite values")
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"prompt_sample_rate must be a positive integer, got {rate!r}")
        if rate != self.sample_rate:
            prompt = np.stack([resample(p, int(rate), self.sample_rate) for p in prompt])
        if prompt.shape[-1] / self.sample_rate > self.duration:
            raise ValueError(f"prompt ({prompt.shape[-1] / self.sample_rate:.2f} s) is longer than the "
                             f"requested duration ({self.duration} s)")
        return prompt

    def _finish(self, tokens: jax.Array, return_tokens: bool):
        wav = self.compression_model.decode(tokens)
        return (wav, tokens) if return_tokens else wav

    def encode_text(self, descriptions: Sequence[str | None]) -> tuple[jax.Array, jax.Array]:
        """T5 features [B, S, D] and mask [B, S]; a None description is the null condition (mask 0)."""
        texts = ["" if d is None else d for d in descriptions]
        batch = self.tokenizer(texts)
        mask = np.asarray(batch.mask).copy()
        mask[[i for i, d in enumerate(descriptions) if d is None or d == ""]] = 0  # audiocraft: empty -> null
        features = self._t5_fn(self.t5_params, jnp.asarray(batch.ids), jnp.asarray(batch.mask))
        return features, jnp.asarray(mask)

    @cached_property
    def _t5_fn(self):
        return jax.jit(lambda p, ids, mask: self.t5.apply({"params": p}, ids, mask))

    @cached_property
    def _conditions_fn(self):
        return jax.jit(lambda p, text, mask, exists: self.lm.apply(
            {"params": p}, text=text, text_mask=mask, text_exists=exists, method=MusicGenLM.encode_conditions))

    @cached_property
    def _melody_conditions_fn(self):
        return jax.jit(lambda p, text, mask, chroma: self.lm.apply(
            {"params": p}, text=text, text_mask=mask, chroma=chroma, method=MusicGenLM.encode_conditions))

    def _conditions(self, descriptions, use_cfg: bool, chroma: np.ndarray | None = None):
        """Conditions of [conditional; null] (CFG) or conditional rows. chroma: melody models only."""
        text, mask = self.encode_text(descriptions)
        if use_cfg:  # [conditional; null]: the null half is all-zero memory with an all-zero mask
            text = jnp.concatenate([text, jnp.zeros_like(text)])
            mask = jnp.concatenate([mask, jnp.zeros_like(mask)])
        if self.config.lm.is_melody:  # [chroma, text] prepended; the null melody is one-hot on bin 0
            from musicgen_jax.chroma import null_chroma

            frames = self.config.lm.chroma_frames
            if chroma is None:
                chroma = null_chroma(len(descriptions), frames)
            if use_cfg:
                chroma = np.concatenate([chroma, null_chroma(len(descriptions), frames)])
            return self._melody_conditions_fn(self.lm_params, text, mask, jnp.asarray(chroma))
        # (melody models returned above: their text is part of the prefix, not bucketed)
        # Bucket the text length so new prompts reuse the compiled decode loop; the added positions
        # are masked out of cross-attention (the batch's own padding stays visible, as in audiocraft).
        length = text.shape[1]
        padded = _bucket(length, self.bucket_text)
        text = jnp.pad(text, ((0, 0), (0, padded - length), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, padded - length)))
        exists = jnp.broadcast_to(jnp.arange(padded) < length, mask.shape)
        return self._conditions_fn(self.lm_params, text, mask, exists)

    def _generate_tokens(self, descriptions, prompt_tokens, progress: bool, seed: int | None,
                         melody=None) -> jax.Array:
        """Long-form aware: windows of max_duration, each restarting from the last (window - stride).

        melody: melody models only, a list of mono wavs at the model rate (or precomputed chroma); a
        long-form window takes the chroma of its own span of the melody, as audiocraft does.
        """
        params = self.generation_params
        total = int(params.duration * self.frame_rate)
        window = int(self.max_duration * self.frame_rate)
        stride = int(params.extend_stride * self.frame_rate)
        key = jax.random.PRNGKey(np.random.randint(0, 2 ** 31 - 1) if seed is None else seed)
        use_cfg = params.cfg_coef != 1.0

        def conditions_at(offset):
            chroma = None if melody is None else self._melody_chroma(melody, offset)
            return self._conditions(descriptions, use_cfg, chroma)

        reporter = _Progress(total, progress, self._progress_callback)
        if total <= window:
            tokens = self._generate_window(conditions_at(None), prompt_tokens, total, key, reporter, 0)
            reporter.close()
            return tokens
        conditions = None if melody is not None and isinstance(melody, list) else conditions_at(None)
        pieces = [prompt_tokens] if prompt_tokens is not None else []
        offset = 0
        while True:
            frames = min(total - offset, window)
            key, sub = jax.random.split(key)
            window_conditions = conditions if conditions is not None else conditions_at(offset)
            generated = self._generate_window(window_conditions, prompt_tokens, frames, sub, reporter, offset)
            done = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
            pieces.append(generated[:, :, done:])
            if offset + frames >= total:
                break
            prompt_tokens = generated[:, :, stride:]
            offset += stride
        reporter.close()
        return jnp.concatenate(pieces, axis=-1)[:, :, :total]

    def _report_progress(self, step) -> None:
        self._reporter.report(self._window_offset + int(step))

    def _generate_window(self, conditions, prompt_tokens, frames: int, key, reporter, offset: int) -> jax.Array:
        """One window of `frames` frames (prompt included) -> codes [B, K, frames]."""
        c = self.config.lm
        batch = jax.tree.leaves(conditions.cross_kv)[0].shape[0] if conditions.cross_kv is not None \
            else conditions.prefix.shape[0]
        batch //= 2 if self.generation_params.cfg_coef != 1.0 else 1
        if prompt_tokens is None:
            prompt_tokens = jnp.zeros((batch, c.num_codebooks, 0), jnp.int32)
        prompt_len = prompt_tokens.shape[-1]
        buffer = prompt_sequence(prompt_tokens, frames, c.delays, c.special_token)  # [B, K, frames + max(d) + 1]
        steps = buffer.shape[-1]
        window_steps = int(self.max_duration * self.frame_rate) + max(c.delays) + 1
        padded = _bucket(steps, self.bucket_frames, window_steps)
        buffer = jnp.pad(buffer, ((0, 0), (0, 0), (0, padded - steps)), constant_values=c.special_token)
        start = prompt_len + 1
        settings = DecodeSettings(
            sampling=self.generation_params.sampling, cfg_coef=self.generation_params.cfg_coef,
            two_step_cfg=self.generation_params.two_step_cfg,
            prefill_length=1 if start == 1 else min(_bucket(start, self.bucket_frames), padded),
            progress_every=self.bucket_frames if reporter.active else 0)
        # A stable (bound-method) callback keeps the jit cache warm; it forwards to the current reporter.
        self._reporter, self._window_offset = reporter, offset - 1
        callback = self._report_progress if reporter.active else None
        buffer, conditions = self._split_batch((buffer, conditions))
        out = decode_jit(self.lm, self.lm_params, conditions, buffer, start, steps - 1, key, settings, callback,
                         cache_dtype=self.lm.dtype, mesh=self.mesh)
        if callback is not None:  # progress callbacks run asynchronously: none may reach the next reporter
            jax.effects_barrier()
        return revert_delay_sequence(out[:, :, :steps], frames, c.delays, c.special_token)


class _Progress:
    """tqdm bar and/or user callback fed from inside the jitted loop (every `bucket_frames` steps)."""

    def __init__(self, total: int, bar: bool, callback: ProgressCallback | None):
        self.total, self.callback = total, callback
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="frame", desc="generating")
        self.active = bar or callback is not None
        self._done = 0

    def report(self, frames: int) -> None:
        done = min(self.total, max(self._done, frames))
        if self.bar is not None:
            self.bar.update(done - self._done)
        self._done = done
        if self.callback is not None:
            self.callback(done, self.total)

    def close(self):
        if self._done < self.total:
            self.report(self.total)
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_descriptions(descriptions, allow_none: bool = False) -> list:
    if isinstance(descriptions, str):
        raise TypeError("descriptions must be a list of strings, not a single string: wrap it in a list")
    if not isinstance(descriptions, (list, tuple)):
        raise TypeError(f"descriptions must be a list of strings, got {type(descriptions).__name__}")
    if len(descriptions) == 0:
        raise ValueError("descriptions is empty: give at least one prompt")
    for d in descriptions:
        if not (isinstance(d, str) or (allow_none and d is None)):
            raise TypeError(f"each description must be a string, got {type(d).__name__}: {d!r}")
    return list(descriptions)


def _check_chroma(chroma, batch: int, bins: int) -> np.ndarray:
    chroma = np.asarray(chroma, np.float32)
    if chroma.ndim != 3 or chroma.shape[0] != batch or chroma.shape[2] != bins or chroma.shape[1] == 0:
        raise ValueError(f"chroma must have shape [{batch}, frames, {bins}], got {chroma.shape}")
    if not np.isfinite(chroma).all():
        raise ValueError("chroma contains NaN or infinite values")
    return chroma


def _generation_params_from_hf(directory: str) -> GenerationParams:
    """Defaults from generation_config.json where present (guidance_scale, top_k, do_sample, ...)."""
    path = os.path.join(directory, "generation_config.json")
    params = GenerationParams()
    if not os.path.isfile(path):
        return params
    with open(path) as f:
        g = json.load(f)
    changes = {}
    if g.get("guidance_scale") is not None:
        changes["cfg_coef"] = float(g["guidance_scale"])
    if g.get("do_sample") is not None:
        changes["use_sampling"] = bool(g["do_sample"])
    if g.get("top_k") is not None:
        changes["top_k"] = int(g["top_k"])
    if g.get("top_p") is not None and float(g["top_p"]) < 1.0:
        changes["top_p"] = float(g["top_p"])
    if g.get("temperature") is not None:
        changes["temperature"] = float(g["temperature"])
    return dataclasses.replace(params, **changes)


def _generation_params_from_audiocraft(xp_cfg: dict) -> GenerationParams:
    changes = {}
    cfg_section = xp_cfg.get("classifier_free_guidance") or {}
    if cfg_section.get("inference_coef") is not None:
        changes["cfg_coef"] = float(cfg_section["inference_coef"])
    return dataclasses.replace(GenerationParams(), **changes)


def _audiocraft_t5_name(xp_cfg: dict) -> str:
    conditioners = xp_cfg.get("conditioners") or {}
    for cond in conditioners.values():
        if isinstance(cond, dict) and cond.get("model") == "t5":
            return cond.get("t5", {}).get("name", "t5-base")
    return "t5-base"
