"""The user-facing MusicGen class, shaped like audiocraft's so its users feel at home.

    mg = MusicGen.from_pretrained("facebook/musicgen-small")
    mg.set_generation_params(duration=8.0)
    wav = mg.generate(["lofi hip hop with a mellow piano"], progress=True)   # [B, C, N] at 32 kHz

A thin facade: loading is convert/checkpoint.py, token generation (conditions, windows, buckets,
progress) is sampler.py, audio is codec.py. This class checks user input, keeps the generation
settings, and turns codes into audio.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax.codec import CompressionModel
from musicgen_jax.config import GenerationParams, MusicGenConfig
from musicgen_jax.sampler import Progress, ProgressCallback, Sampler


def _from_sampler(name: str, doc: str | None = None) -> property:
    """A read-only attribute of the facade that is the sampler's."""
    return property(lambda self: getattr(self.sampler, name), doc=doc)


class MusicGen:
    """Text (and audio-prompt, melody) conditioned music generation with the official MusicGen weights."""

    def __init__(self, sampler: Sampler, compression_model: CompressionModel,
                 generation_params: GenerationParams | None = None):
        self.sampler = sampler
        self.compression_model = compression_model
        self.generation_params = generation_params or GenerationParams()
        self._progress_callback: ProgressCallback | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str = "facebook/musicgen-small", *, dtype=jnp.float32,
                        mesh=None) -> "MusicGen":
        """A hub name ('facebook/musicgen-small', or a preset name such as 'small') or a local directory,
        in the transformers or the audiocraft layout. dtype: compute dtype (bf16: params, norms and
        logits stay fp32). mesh: generate across its devices (see `shard`)."""
        from musicgen_jax.convert.checkpoint import load_checkpoint
        from musicgen_jax.modules.lm import MusicGenLM, unstack_layers
        from musicgen_jax.modules.t5 import T5Encoder

        ckpt = load_checkpoint(name_or_path)
        config = ckpt.config
        # inference layout: one module per layer (see MusicGenLM.scan_layers)
        lm_params = jax.tree.map(jnp.asarray, unstack_layers(ckpt.lm_params, config.lm.num_layers))
        sampler = Sampler(config, MusicGenLM(config.lm, dtype=dtype, scan_layers=False), lm_params,
                          T5Encoder(config.t5, dtype=dtype), jax.tree.map(jnp.asarray, ckpt.t5_params),
                          ckpt.tokenizer)
        codec = CompressionModel(config.encodec, ckpt.codec_params, config.audio_channels)
        mg = cls(sampler, codec, ckpt.generation)
        return mg if mesh is None else mg.shard(mesh)

    def shard(self, mesh) -> "MusicGen":
        """Generate across the devices of `mesh` (`musicgen_jax.sharding.make_mesh`, one process): weights
        placed by the logical-axis rules, rows split over data x fsdp when that divides the batch
        (replicated otherwise); tokens equal those of one device. Returns self."""
        self.sampler = self.sampler.shard(mesh)
        return self

    # ------------------------------------------------------------------ facts
    config: MusicGenConfig = _from_sampler("config")
    lm = _from_sampler("lm", "the LM module (inference layout: one module per layer)")
    lm_params = _from_sampler("lm_params")
    t5_params = _from_sampler("t5_params")
    tokenizer = _from_sampler("tokenizer")
    mesh = _from_sampler("mesh", "the device mesh generation runs on, or None")

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
        """The generation window in seconds: the checkpoint's training segment (30 s for official models)."""
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
        params = self.generation_params.with_changes(**changes)
        if not params.extend_stride < self.max_duration:
            raise ValueError(f"extend_stride must be in (0, {self.max_duration}) s (the model's window), "
                             f"got {params.extend_stride}")
        self.generation_params = params

    def set_custom_progress_callback(self, callback: ProgressCallback | None = None) -> None:
        """callback(frames_generated, frames_total), called every second of generated audio."""
        self._progress_callback = callback

    # ------------------------------------------------------------------ generation
    def generate(self, descriptions: Sequence[str], progress: bool = False, return_tokens: bool = False,
                 seed: int | None = None):
        """Text -> wav [B, C, N] (and tokens [B, K, T] with return_tokens)."""
        return self._generate(check_descriptions(descriptions), progress, return_tokens, seed)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False,
                               seed: int | None = None):
        """Null text condition for every sample."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        return self._generate([None] * num_samples, progress, return_tokens, seed)

    def generate_continuation(self, prompt, prompt_sample_rate: int,
                              descriptions: Sequence[str | None] | None = None, progress: bool = False,
                              return_tokens: bool = False, seed: int | None = None):
        """Continue audio prompt [B, C, N] (or [C, N]) at prompt_sample_rate; the prompt stays in the output."""
        prompt = prepare_prompt(prompt, prompt_sample_rate, self.sample_rate, self.duration)
        if descriptions is None:
            descriptions = [None] * prompt.shape[0]
        descriptions = check_descriptions(descriptions, allow_none=True)
        if len(descriptions) != prompt.shape[0]:
            raise ValueError(f"{len(descriptions)} descriptions for {prompt.shape[0]} prompt waveforms")
        prompt_tokens = self.compression_model.encode(prompt)
        return self._generate(descriptions, progress, return_tokens, seed, prompt_tokens=prompt_tokens)

    def generate_with_chroma(self, descriptions: Sequence[str | None], melody_wavs=None,
                             melody_sample_rate: int | None = None, progress: bool = False,
                             return_tokens: bool = False, seed: int | None = None, *, chroma=None):
        """Melody models: text + melody. melody_wavs: [B, C, N], [C, N] or a list of [C, N] / [N] arrays of
        different lengths (None entries: no melody), at melody_sample_rate. Or pass precomputed `chroma`
        [B, F, 12] (tiled/cut to the window). Drums and bass are not removed (audiocraft runs a source
        separator first): give a melodic stem for results closest to audiocraft's."""
        if not self.config.lm.is_melody:
            raise ValueError(f"{self.config.name} is not a melody model: use generate() or a musicgen-melody "
                             "checkpoint")
        descriptions = check_descriptions(descriptions, allow_none=True)
        if (melody_wavs is None) == (chroma is None):
            raise ValueError("give either melody_wavs (with melody_sample_rate) or a precomputed chroma")
        if chroma is not None:
            melody = check_chroma(chroma, len(descriptions), self.config.lm.chroma_bins)
        else:
            melody = prepare_melodies(melody_wavs, melody_sample_rate, len(descriptions), self.sample_rate)
        return self._generate(descriptions, progress, return_tokens, seed, melody=melody)

    def encode_text(self, descriptions: Sequence[str | None]) -> tuple[jax.Array, jax.Array]:
        """T5 features [B, S, D] and mask [B, S]; a None description is the null condition (mask 0)."""
        return self.sampler.conditioner.text(self.t5_params, descriptions)

    def _generate(self, descriptions, progress: bool, return_tokens: bool, seed: int | None, **inputs):
        params = self.generation_params
        key = jax.random.PRNGKey(np.random.randint(0, 2 ** 31 - 1) if seed is None else seed)
        reporter = Progress(int(params.duration * self.frame_rate), progress, self._progress_callback)
        tokens = self.sampler.generate(descriptions, params, key, progress=reporter, **inputs)
        wav = self.compression_model.decode(tokens)
        return (wav, tokens) if return_tokens else wav


# ---------------------------------------------------------------------------------------------------
# input checks (clear errors before any compute)


def check_descriptions(descriptions, allow_none: bool = False) -> list:
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


def check_chroma(chroma, batch: int, bins: int) -> np.ndarray:
    chroma = np.asarray(chroma, np.float32)
    if chroma.ndim != 3 or chroma.shape[0] != batch or chroma.shape[2] != bins or chroma.shape[1] == 0:
        raise ValueError(f"chroma must have shape [{batch}, frames, {bins}], got {chroma.shape}")
    if not np.isfinite(chroma).all():
        raise ValueError("chroma contains NaN or infinite values")
    return chroma


def prepare_melodies(melody_wavs, rate, batch: int, sample_rate: int) -> list:
    """-> a list of mono float32 wavs at the model rate (None: no melody), checked."""
    from musicgen_jax.audio import check_sample_rate, resample_melody

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
        out.append(resample_melody(mono, rate, sample_rate).astype(np.float32))
    return out


def prepare_prompt(prompt, rate: int, sample_rate: int, duration: float) -> np.ndarray:
    """An audio prompt [B, C, N] (or [C, N]) at `rate` -> float32 [B, C, N'] at the model's rate."""
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
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"prompt_sample_rate must be a positive integer, got {rate!r}")
    if rate != sample_rate:
        prompt = np.stack([resample(p, int(rate), sample_rate) for p in prompt])
    if prompt.shape[-1] / sample_rate > duration:
        raise ValueError(f"prompt ({prompt.shape[-1] / sample_rate:.2f} s) is longer than the "
                         f"requested duration ({duration} s)")
    return prompt
