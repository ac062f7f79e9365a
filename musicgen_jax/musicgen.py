"""The user-facing MusicGen class, shaped like audiocraft's so its users feel at home.

    mg = MusicGen.from_pretrained("facebook/musicgen-small")
    mg.set_generation_params(duration=8.0)
    wav = mg.generate(["lofi hip hop with a mellow piano"], progress=True)   # [B, C, N] at 32 kHz
    for chunk in mg.generate_stream(["lofi hip hop"], chunk_seconds=1.0): ...  # [B, C, n], as it comes

A thin facade: loading is convert/checkpoint.py, token generation (conditions, windows, buckets,
progress) is sampler.py, audio is codec.py. This class checks user input, keeps the generation
settings, and turns codes into audio.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax.codec import CompressionModel
from musicgen_jax.config import GenerationParams, MusicGenConfig, check_flag, check_number, check_seed
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
                        mesh=None, duration_limit: float | None = None, adapters: str | None = None) -> "MusicGen":
        """A hub name ('facebook/musicgen-small', or a preset name such as 'small') or a local directory,
        in the transformers or the audiocraft layout. dtype: compute dtype (bf16: the LM's matmul
        weights are held in bf16, which is what its matmuls read anyway; norms, embeddings and logits
        stay fp32). mesh: generate across its devices (see `shard`). duration_limit: the most
        seconds one call may generate (default 600, see `set_generation_params`). adapters: a LoRA adapter
        folder for this base (PEFT's format, e.g. from `musicgen-jax export --adapter-only`), merged in memory."""
        from musicgen_jax.convert.checkpoint import load_checkpoint
        from musicgen_jax.modules.lm import MusicGenLM, inference_params, unstack_layers
        from musicgen_jax.modules.t5 import T5Encoder

        ckpt = load_checkpoint(name_or_path, adapters=adapters)
        config = ckpt.config
        # inference layout: one module per layer (see MusicGenLM.scan_layers), matmul weights in `dtype`
        lm_params = inference_params(jax.tree.map(jnp.asarray, unstack_layers(ckpt.lm_params, config.lm.num_layers)),
                                     dtype)
        sampler = Sampler(config, MusicGenLM(config.lm, dtype=dtype, scan_layers=False), lm_params,
                          T5Encoder(config.t5, dtype=dtype), jax.tree.map(jnp.asarray, ckpt.t5_params),
                          ckpt.tokenizer)
        codec = CompressionModel(config.encodec, ckpt.codec_params, config.audio_channels)
        generation = ckpt.generation
        if duration_limit is not None:
            generation = generation.with_changes(duration_limit=duration_limit)
        mg = cls(sampler, codec, generation)
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

    @property
    def duration_limit(self) -> float:
        """The most seconds one call may generate (default 600); not the window, see `max_duration`."""
        return self.generation_params.duration_limit

    # ------------------------------------------------------------------ settings
    def set_generation_params(self, duration: float | None = None, use_sampling: bool | None = None,
                              top_k: int | None = None, top_p: float | None = None,
                              temperature: float | None = None, cfg_coef: float | None = None,
                              two_step_cfg: bool | None = None, extend_stride: float | None = None,
                              duration_limit: float | None = None) -> None:
        """Like audiocraft's; arguments left as None keep their current value. Each is checked here
        (ValueError naming it): finite, top_p in [0, 1], top_k and temperature >= 0 (temperature 0 is
        greedy, as in audiocraft), duration at most duration_limit (600 s unless raised here)."""
        changes = {k: v for k, v in dict(duration=duration, use_sampling=use_sampling, top_k=top_k, top_p=top_p,
                                         temperature=temperature, cfg_coef=cfg_coef, two_step_cfg=two_step_cfg,
                                         extend_stride=extend_stride, duration_limit=duration_limit).items()
                   if v is not None}
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
        """Text -> wav [B, C, N] (and tokens [B, K, T] with return_tokens).

        All descriptions run as one batch, as in audiocraft and transformers: memory grows with their
        number, and progress=True (or a custom progress callback) follows that one batch to its end. For
        hundreds of prompts call it on slices (the CLI's --batch-size does, with one bar over all)."""
        return self._generate(check_descriptions(descriptions), progress, return_tokens, seed)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False,
                               seed: int | None = None):
        """Null text condition for every sample."""
        return self._generate([None] * check_number("num_samples", num_samples, 1, integer=True), progress,
                              return_tokens, seed)

    def generate_continuation(self, prompt, prompt_sample_rate: int,
                              descriptions: Sequence[str | None] | None = None, progress: bool = False,
                              return_tokens: bool = False, seed: int | None = None):
        """Continue audio prompt [B, C, N] (or [C, N]) at prompt_sample_rate; the prompt stays in the output.
        The prompt is float audio in [-1, 1] (integer PCM is refused, see `float_audio`)."""
        descriptions, prompt = self._continuation_inputs(prompt, prompt_sample_rate, descriptions)
        return self._generate(descriptions, progress, return_tokens, seed, prompt=prompt)

    def generate_with_chroma(self, descriptions: Sequence[str | None], melody_wavs=None,
                             melody_sample_rate: int | None = None, progress: bool = False,
                             return_tokens: bool = False, seed: int | None = None, *, chroma=None):
        """Melody models: text + melody. melody_wavs: [B, C, N], [C, N] or a list of [C, N] / [N] arrays of
        different lengths (None entries: no melody), float audio at melody_sample_rate (integer PCM is
        refused, see `float_audio`). Or pass precomputed `chroma` [B, F, 12] (tiled/cut to the window).
        Drums and bass are not removed (audiocraft runs a source separator first): give a melodic stem
        for results closest to audiocraft's."""
        descriptions, melody = self._melody_inputs(descriptions, melody_wavs, melody_sample_rate, chroma)
        return self._generate(descriptions, progress, return_tokens, seed, melody=melody)

    def generate_stream(self, descriptions: Sequence[str | None] | None, *, prompt=None,
                        prompt_sample_rate: int | None = None, melody_wavs=None,
                        melody_sample_rate: int | None = None, chunk_seconds: float = 1.0,
                        seed: int | None = None, progress: bool = False) -> Iterator[np.ndarray]:
        """The audio of `generate` (or, with `prompt`, of `generate_continuation`; with `melody_wavs`, of
        `generate_with_chroma`) as it is generated: an iterator of float32 chunks [B, C, n] (n > 0) whose
        concatenation is that call's result, from the same tokens (same settings and seed), decoded with the
        same audio (up to float rounding: the codec runs on windows of other shapes). Long-form (duration
        past the window) streams across the windows; a continuation yields its prompt part first.

        The LM runs `chunk_seconds` of frames at a time; each chunk's audio comes once its frames are
        complete and the codec has the few frames of context after them it needs (7 at 50 Hz), so the
        first chunk comes after about chunk_seconds of generation. Inputs are checked here, as the one-shot
        calls check them; the work runs while the iterator is advanced: nothing runs between two chunks,
        and closing it (`close()`, or leaving a for loop) ends the generation there.
        """
        chunk = check_number("chunk_seconds", chunk_seconds, 0.0, strict=True)
        melody = None
        if prompt is not None and melody_wavs is not None:
            raise ValueError("give a prompt (continuation) or melody_wavs (melody conditioning), not both")
        if prompt is None and prompt_sample_rate is not None:
            raise ValueError("prompt_sample_rate is given without a prompt")
        if melody_wavs is None and melody_sample_rate is not None:
            raise ValueError("melody_sample_rate is given without melody_wavs")
        if melody_wavs is not None:
            descriptions, melody = self._melody_inputs(descriptions, melody_wavs, melody_sample_rate, None)
        elif prompt is not None:
            descriptions, prompt = self._continuation_inputs(prompt, prompt_sample_rate, descriptions)
        else:
            descriptions = check_descriptions(descriptions)
        frames = max(1, round(chunk * self.frame_rate))
        codes = self._codes(descriptions, progress, seed, prompt, melody, chunk_frames=frames)
        return self._audio_stream(codes, frames)

    def _audio_stream(self, codes: Iterator[jax.Array], chunk_frames: int) -> Iterator[np.ndarray]:
        decoder = self.compression_model.stream_decoder(chunk_frames)
        try:
            for piece in codes:  # [B, K, n] new final frames
                audio = decoder.push(piece)
                if audio.shape[-1]:
                    yield audio
            audio = decoder.finish()
            if audio.shape[-1]:
                yield audio
        finally:
            codes.close()  # stops the generation when the consumer stops early

    def _continuation_inputs(self, prompt, prompt_sample_rate, descriptions) -> tuple[list, np.ndarray]:
        prompt = prepare_prompt(prompt, prompt_sample_rate, self.sample_rate, self.duration)
        if descriptions is None:
            descriptions = [None] * prompt.shape[0]
        descriptions = check_descriptions(descriptions, allow_none=True)
        if len(descriptions) != prompt.shape[0]:
            raise ValueError(f"{len(descriptions)} descriptions for {prompt.shape[0]} prompt waveforms")
        return descriptions, prompt

    def _melody_inputs(self, descriptions, melody_wavs, melody_sample_rate, chroma) -> tuple[list, object]:
        if not self.config.lm.is_melody:
            raise ValueError(f"{self.config.name} is not a melody model: use generate() or a musicgen-melody "
                             "checkpoint")
        descriptions = check_descriptions(descriptions, allow_none=True)
        if (melody_wavs is None) == (chroma is None):
            raise ValueError("give either melody_wavs (with melody_sample_rate) or a precomputed chroma")
        if chroma is not None:
            return descriptions, check_chroma(chroma, len(descriptions), self.config.lm.chroma_bins)
        return descriptions, prepare_melodies(melody_wavs, melody_sample_rate, len(descriptions), self.sample_rate)

    def encode_text(self, descriptions: Sequence[str | None]) -> tuple[jax.Array, jax.Array]:
        """T5 features [B, S, D] and mask [B, S]; a None description is the null condition (mask 0)."""
        return self.sampler.conditioner.text(self.t5_params, descriptions)

    def _generate(self, descriptions, progress: bool, return_tokens: bool, seed: int | None, *,
                  prompt: np.ndarray | None = None, melody=None):
        """Checks the call's own arguments, then generates (audio prompt encoded here, after the checks)."""
        return_tokens = check_flag("return_tokens", return_tokens)
        pieces = list(self._codes(descriptions, progress, seed, prompt, melody))  # one per window
        tokens = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)
        wav = self.compression_model.decode(tokens)
        return (wav, tokens) if return_tokens else wav

    def _codes(self, descriptions, progress: bool, seed: int | None, prompt: np.ndarray | None, melody,
               chunk_frames: int | None = None) -> Iterator[jax.Array]:
        """Checks progress, seed and duration now; -> the sampler's iterator of codes [B, K, n] (one piece per
        window without chunk_frames). The audio prompt is encoded when the iterator starts."""
        progress = check_flag("progress", progress)
        seed = check_seed(seed)
        params = self.generation_params
        frames = int(params.duration * self.frame_rate)
        if frames < 1:
            raise ValueError(f"duration {params.duration:g} s is shorter than one frame "
                             f"({1 / self.frame_rate:g} s at {self.frame_rate:g} Hz)")
        self.sampler.plan(params)
        key = jax.random.PRNGKey(np.random.randint(0, 2 ** 31 - 1) if seed is None else seed)

        def start():
            prompt_tokens = None if prompt is None else self.compression_model.encode(prompt)
            reporter = Progress(frames, progress, self._progress_callback,
                                desc=f"generating {len(descriptions)} sample(s)")
            yield from self.sampler.stream(descriptions, params, key, prompt_tokens=prompt_tokens, melody=melody,
                                           progress=reporter, chunk_frames=chunk_frames)

        return start()


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


def float_audio(wav, name: str) -> np.ndarray:
    """Audio samples as float32, finite. Integer PCM (what scipy.io.wavfile returns) is refused, as
    `CompressionModel.encode` refuses it, with the conversion soundfile would apply: int16 / 32768,
    int32 / 2**31, (uint8 - 128) / 128; reading with soundfile.read(path, dtype="float32") avoids it."""
    wav = np.asarray(wav)
    if wav.dtype.kind in "iu":
        half = 2 ** (8 * wav.dtype.itemsize - 1)
        scaled = f"({name} - {half}) / {half}" if wav.dtype.kind == "u" else f"{name} / {half}"
        raise ValueError(f"{name} is integer PCM (dtype {wav.dtype}): pass float samples in [-1, 1], "
                         f"e.g. {scaled}, or read the file with soundfile.read(path, dtype='float32')")
    if wav.dtype.kind != "f":
        raise ValueError(f"{name} must be float audio samples in [-1, 1], got dtype {wav.dtype}")
    wav = wav.astype(np.float32)
    if not np.isfinite(wav).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return wav


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
        arr = float_audio(melody_wavs, "melody_wavs")
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
        wav = float_audio(wav, f"melody {i}")
        wav = wav[None] if wav.ndim == 1 else wav
        if wav.ndim != 2 or wav.shape[-1] == 0:
            raise ValueError(f"melody {i} must be a non-empty [C, N] or [N] array, got shape {wav.shape}")
        mono = wav.mean(axis=0)  # audiocraft mixes to the model's (mono) channels, then resamples
        out.append(resample_melody(mono, rate, sample_rate).astype(np.float32))
    return out


def prepare_prompt(prompt, rate: int, sample_rate: int, duration: float) -> np.ndarray:
    """An audio prompt [B, C, N] (or [C, N]) at `rate` -> float32 [B, C, N'] at the model's rate."""
    from musicgen_jax.audio import resample

    if not hasattr(prompt, "shape"):
        raise TypeError(f"prompt must be an array [B, C, N], got {type(prompt).__name__}")
    prompt = float_audio(prompt, "prompt")
    if prompt.ndim == 2:
        prompt = prompt[None]
    if prompt.ndim != 3 or prompt.shape[-1] == 0:
        raise ValueError(f"prompt must have shape [batch, channels, samples], got {prompt.shape}")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"prompt_sample_rate must be a positive integer, got {rate!r}")
    if rate != sample_rate:
        prompt = np.stack([resample(p, int(rate), sample_rate) for p in prompt])
    if prompt.shape[-1] / sample_rate > duration:
        raise ValueError(f"prompt ({prompt.shape[-1] / sample_rate:.2f} s) is longer than the "
                         f"requested duration ({duration} s)")
    return prompt
