"""Frozen configuration dataclasses and the named presets of every official MusicGen model.

Numbers come from the official checkpoints (see ../shared/REFERENCE.md). `tiny()` builds the same
architecture at toy sizes for tests.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from musicgen_jax.patterns import PATTERNS, Pattern, get_pattern


@dataclass(frozen=True)
class EncodecConfig:
    """SEANet EnCodec with a residual vector quantizer (defaults: facebook/encodec_32khz)."""

    sample_rate: int = 32000
    channels: int = 1  # channels the codec itself sees; stereo models run it per channel
    num_filters: int = 64
    ratios: tuple[int, ...] = (8, 5, 4, 4)  # decoder (upsampling) order; the encoder uses them reversed
    dimension: int = 128  # latent size
    num_residual_layers: int = 1
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    causal: bool = False
    pad_mode: str = "reflect"  # "reflect" or "constant" (zeros), as the checkpoint's config says
    true_skip: bool = True  # identity skip in residual blocks (False: a k=1 conv shortcut)
    trim_right_ratio: float = 1.0
    codebook_size: int = 2048
    num_codebooks: int = 4

    def __post_init__(self):
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError(f"EnCodec pad_mode must be 'reflect' or 'constant', got {self.pad_mode!r}")
        if not self.causal and self.trim_right_ratio != 1.0:
            raise ValueError("trim_right_ratio != 1.0 only makes sense for a causal EnCodec")
        if self.num_codebooks < 1:
            raise ValueError(f"EnCodec needs at least one codebook, got {self.num_codebooks}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


@dataclass(frozen=True)
class T5Config:
    """T5 encoder (defaults: t5-base, the text encoder of every MusicGen model)."""

    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_eps: float = 1e-6
    feed_forward: str = "relu"  # "relu" (t5-base) or "gated-gelu" (T5 v1.1, flan-T5)
    pad_id: int = 0
    eos_id: int = 1

    def __post_init__(self):
        if self.feed_forward not in ("relu", "gated-gelu"):
            raise ValueError(f"T5 feed_forward must be 'relu' or 'gated-gelu', got {self.feed_forward!r}")


@dataclass(frozen=True)
class LMConfig:
    """The MusicGen transformer decoder over interleaved codebook streams."""

    dim: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    num_codebooks: int = 4
    codebook_size: int = 2048  # the special (pad / BOS) token id equals this
    cross_attention: bool = True  # text via cross-attention; melody models prepend instead
    condition_dim: int = 768  # width of the text encoder output before projection
    chroma_bins: int = 0  # 12 for melody models (prepended chroma), 0 otherwise
    chroma_frames: int = 235  # chroma frames of the window: chroma.chroma_length(30 s) for the official models
    layer_norm_eps: float = 1e-5
    delays: tuple[int, ...] = (0, 1, 2, 3)  # the delay pattern's (and transformers') codebook delays
    pattern: str = "delay"  # codebook interleaving, audiocraft's codebooks_pattern.modeling (patterns.PATTERNS)
    pattern_options: tuple[tuple[str, Any], ...] = ()  # other patterns' options, e.g. (("flattening", (0, 1, 2, 3)),)

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown codebook pattern {self.pattern!r}; known: {', '.join(PATTERNS)}")
        if isinstance(self.pattern_options, Mapping):  # from YAML / JSON: hashable pairs
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in self.pattern_options.items()}
            object.__setattr__(self, "pattern_options", tuple(sorted(options.items())))
        if isinstance(self.delays, list):
            object.__setattr__(self, "delays", tuple(self.delays))
        if self.dim % self.num_heads:
            raise ValueError(f"LM dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if len(self.delays) != self.num_codebooks:
            raise ValueError(f"{len(self.delays)} delays given for {self.num_codebooks} codebooks")
        if self.pattern == "delay" and self.pattern_options:
            raise ValueError("the delay pattern takes its delays from `delays`; pattern_options are for the "
                             f"other patterns, got {dict(self.pattern_options)}")
        self.codebook_pattern(1)  # bad pattern options fail here, not at the first training step

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def codebook_pattern(self, timesteps: int) -> Pattern:
        """The interleaving of `timesteps` frames this LM was trained with."""
        options = {"delays": self.delays} if self.pattern == "delay" else dict(self.pattern_options)
        return get_pattern(self.pattern, timesteps, self.num_codebooks, **options)

    @property
    def special_token(self) -> int:
        return self.codebook_size

    @property
    def is_melody(self) -> bool:
        return self.chroma_bins > 0


@dataclass(frozen=True)
class MusicGenConfig:
    """A whole model: codec, text encoder and LM, plus window facts used by generation."""

    name: str = "musicgen-small"
    lm: LMConfig = field(default_factory=LMConfig)
    t5: T5Config = field(default_factory=T5Config)
    encodec: EncodecConfig = field(default_factory=EncodecConfig)
    audio_channels: int = 1  # 2 for stereo models: codec run per channel, streams interleaved
    max_duration: float = 30.0  # training segment (s): the generation window (audiocraft's max_duration)
    t5_name: str = "t5-base"

    def __post_init__(self):
        if not (isinstance(self.max_duration, (int, float)) and math.isfinite(self.max_duration)
                and self.max_duration > 0):
            raise ValueError(f"max_duration must be a positive number of seconds, got {self.max_duration!r}")
        if self.audio_channels not in (1, 2):
            raise ValueError(f"audio_channels must be 1 or 2, got {self.audio_channels}")
        if self.lm.num_codebooks != self.encodec.num_codebooks * self.audio_channels:
            raise ValueError(
                f"LM has {self.lm.num_codebooks} codebooks but the codec gives "
                f"{self.encodec.num_codebooks} x {self.audio_channels} channel(s)"
            )
        if self.lm.codebook_size != self.encodec.codebook_size:
            raise ValueError("LM and codec codebook sizes differ")

    @property
    def sample_rate(self) -> int:
        return self.encodec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.encodec.frame_rate


def seconds_for_frames(frames: int, frame_rate: float) -> float:
    """A duration that gives back exactly `frames` as generation counts them, int(seconds * frame_rate)
    (frames / frame_rate alone can fall one frame short in floating point, e.g. 29 frames at 50 Hz)."""
    seconds = frames / frame_rate
    while int(seconds * frame_rate) < frames:
        seconds = math.nextafter(seconds, math.inf)
    return seconds


def _lm(dim: int, layers: int, heads: int, *, melody: bool, stereo: bool) -> LMConfig:
    return LMConfig(
        dim=dim,
        num_layers=layers,
        num_heads=heads,
        ffn_dim=4 * dim,
        num_codebooks=8 if stereo else 4,
        delays=(0, 0, 1, 1, 2, 2, 3, 3) if stereo else (0, 1, 2, 3),
        cross_attention=not melody,
        chroma_bins=12 if melody else 0,
    )


_SIZES = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "large": (2048, 48, 32)}
_VARIANTS = {
    # name suffix -> (size, melody)
    "small": ("small", False),
    "medium": ("medium", False),
    "large": ("large", False),
    "melody": ("medium", True),
    "melody-large": ("large", True),
}


def _build_presets() -> dict[str, MusicGenConfig]:
    presets = {}
    for variant, (size, melody) in _VARIANTS.items():
        for stereo in (False, True):
            name = f"musicgen-{'stereo-' if stereo else ''}{variant}"
            presets[name] = MusicGenConfig(
                name=name,
                lm=_lm(*_SIZES[size], melody=melody, stereo=stereo),
                audio_channels=2 if stereo else 1,
            )
    return presets


PRESETS: dict[str, MusicGenConfig] = _build_presets()


def preset(name: str) -> MusicGenConfig:
    """A preset by name: 'small', 'musicgen-small' or 'facebook/musicgen-small' all work."""
    key = name.split("/")[-1]
    if not key.startswith("musicgen-"):
        key = f"musicgen-{key}"
    if key not in PRESETS:
        raise ValueError(f"unknown model name {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


def official_repo(name_or_path: str | os.PathLike) -> str:
    """A preset's short name ('small', 'musicgen-small') -> its hub id ('facebook/musicgen-small');
    hub ids and existing local paths are returned unchanged."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model name or path must be a string, got {type(name_or_path).__name__}")
    name_or_path = os.fspath(name_or_path)
    if "/" in name_or_path or os.path.exists(os.path.expanduser(name_or_path)):
        return name_or_path
    return "facebook/" + preset(name_or_path).name


def tiny(*, melody: bool = False, stereo: bool = False) -> MusicGenConfig:
    """The same architecture at toy sizes, for tests."""
    encodec = EncodecConfig(num_filters=4, ratios=(4, 2), dimension=8, codebook_size=32, lstm_layers=2)
    channels = 2 if stereo else 1
    k = encodec.num_codebooks * channels
    lm = LMConfig(
        dim=32,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        num_codebooks=k,
        codebook_size=encodec.codebook_size,
        condition_dim=32,
        cross_attention=not melody,
        chroma_bins=12 if melody else 0,
        delays=tuple(i // channels for i in range(k)),
    )
    t5 = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    name = f"tiny{'-stereo' if stereo else ''}{'-melody' if melody else ''}"
    return MusicGenConfig(name=name, lm=lm, t5=t5, encodec=encodec, audio_channels=channels)


# ---------------------------------------------------------------------------------------------------
# generation settings: SamplingParams (how a token is chosen) and Guidance (CFG) are the static parts
# of a compiled decode program; GenerationParams adds what changes between calls (duration, stride).


DEFAULT_DURATION_LIMIT = 600.0  # seconds one generate call may ask for (GenerationParams.duration_limit)
MAX_SEED = 2 ** 32 - 1  # jax.random.PRNGKey keeps 32 bits: larger seeds would repeat smaller ones


def number_requirement(low: float = -math.inf, high: float = math.inf, *, strict: bool = False,
                       integer: bool = False) -> str:
    """What `check_number` asks for, in words: 'a finite number > 0', 'an integer in [0, 10]'."""
    kind = "an integer" if integer else "a finite number"
    lo, hi = (f"{int(b)}" if integer and math.isfinite(b) else f"{b:g}" for b in (low, high))  # exact seeds
    if low > -math.inf and high < math.inf:
        return f"{kind} in {'(' if strict else '['}{lo}, {hi}]"
    if low > -math.inf:
        return f"{kind} {'>' if strict else '>='} {lo}"
    return kind if high == math.inf else f"{kind} <= {hi}"


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf, *, strict: bool = False,
                 integer: bool = False):
    """`value` as a plain int/float (numpy scalars accepted), or ValueError naming `name` and the value:
    finite, low <= value <= high (low < value when strict), a whole number type when `integer`."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind) or not math.isfinite(value) \
            or not low <= value <= high or (strict and value == low):
        raise ValueError(f"{name} must be {number_requirement(low, high, strict=strict, integer=integer)}, "
                         f"got {value!r}")
    return int(value) if integer else float(value)


def check_flag(name: str, value) -> bool:
    """True/False (numpy bools accepted), or ValueError naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_seed(seed) -> int | None:
    """None (a random seed) or an integer in [0, MAX_SEED]."""
    return None if seed is None else check_number("seed", seed, 0, MAX_SEED, integer=True)


def _set(obj, **values) -> None:
    """Store normalised values on a frozen dataclass (in __post_init__)."""
    for key, value in values.items():
        object.__setattr__(obj, key, value)


@dataclass(frozen=True)
class SamplingParams:
    """Next-token choice (audiocraft's semantics, see sampling.py): top_p > 0 takes precedence over
    top_k; greedy when use_sampling is off or the temperature is 0."""

    use_sampling: bool = True
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0

    def __post_init__(self):
        _set(self, use_sampling=check_flag("use_sampling", self.use_sampling),
             temperature=check_number("temperature", self.temperature, 0.0),
             top_k=check_number("top_k", self.top_k, 0, integer=True),
             top_p=check_number("top_p", self.top_p, 0.0, 1.0))

    @property
    def greedy(self) -> bool:
        return not self.use_sampling or self.temperature == 0.0


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: logits = uncond + coef * (cond - uncond); off when coef is 1.
    two_step: run the conditional and null halves as separate calls (audiocraft's two_step_cfg)."""

    coef: float = 3.0
    two_step: bool = False

    def __post_init__(self):
        _set(self, coef=check_number("cfg_coef", self.coef), two_step=check_flag("two_step_cfg", self.two_step))

    @property
    def enabled(self) -> bool:
        return self.coef != 1.0


@dataclass(frozen=True)
class GenerationParams:
    """audiocraft's defaults: sampling top-k 250, CFG 3, 15 s, 18 s stride for long-form.

    duration_limit: the most seconds one call may generate (default 10 minutes), so that a slip such as
    duration=1e9 is refused instead of running for days; raise it deliberately for longer pieces.
    `with_changes` takes audiocraft's flat names (use_sampling, top_k, top_p, temperature, cfg_coef,
    two_step_cfg, duration, extend_stride) and duration_limit, as `MusicGen.set_generation_params` does."""

    duration: float = 15.0
    extend_stride: float = 18.0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    guidance: Guidance = field(default_factory=Guidance)
    duration_limit: float = DEFAULT_DURATION_LIMIT

    def __post_init__(self):
        _set(self, duration=check_number("duration", self.duration, 0.0, strict=True),
             extend_stride=check_number("extend_stride", self.extend_stride, 0.0, strict=True),
             duration_limit=check_number("duration_limit", self.duration_limit, 0.0, strict=True))
        if self.duration > self.duration_limit:
            raise ValueError(
                f"duration {self.duration:g} s is over the limit of {self.duration_limit:g} s for one call; "
                f"to generate longer, raise it: set_generation_params(duration_limit=...), "
                f"MusicGen.from_pretrained(..., duration_limit=...) or --duration-limit on the command line")

    def with_changes(self, **changes) -> "GenerationParams":
        sampling = {k: changes.pop(k) for k in ("use_sampling", "temperature", "top_k", "top_p") if k in changes}
        guidance = {new: changes.pop(old) for old, new in (("cfg_coef", "coef"), ("two_step_cfg", "two_step"))
                    if old in changes}
        unknown = sorted(set(changes) - {"duration", "extend_stride", "duration_limit"})
        if unknown:
            raise TypeError(f"unknown generation parameter(s): {', '.join(unknown)}")
        return dataclasses.replace(self, sampling=dataclasses.replace(self.sampling, **sampling),
                                   guidance=dataclasses.replace(self.guidance, **guidance), **changes)
