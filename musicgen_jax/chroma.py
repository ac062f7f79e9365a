"""Chroma (melody) features for MusicGen melody checkpoints, in numpy.

What this reproduces (audiocraft `audiocraft/modules/chroma.py::ChromaExtractor` with the settings of the
`chroma_stem` conditioner, and transformers' `MusicgenMelodyFeatureExtractor`, which does the same):

1. The melody, at any rate, is resampled to 32 kHz and mixed down to mono by averaging its channels.
   audiocraft resamples with `julius.resample_frac` (windowed sinc, 24 zero crossings, rolloff 0.945,
   edge samples repeated, floor(length * new / old) samples out); transformers uses
   `torchaudio.functional.resample` with the same filter width and rolloff, but zero padding, a
   different gain normalisation and ceil(...) samples out. Both are implemented here (`resample_melody`),
   the audiocraft one is the default.
2. A wav shorter than n_fft is zero-padded to exactly n_fft samples (half on each side, the odd sample on
   the right). This is what turns audiocraft's "null" wav of one zero sample into silence.
3. Power spectrogram as torchaudio's `Spectrogram(n_fft=2**14, win_length=2**14, hop_length=2**12,
   power=2, center=True, pad=0, normalized=True)` computes it: `torch.stft` with a periodic Hann window
   of win_length samples, `center=True` (the signal is padded by n_fft // 2 on both sides with *reflect*
   padding, i.e. mirrored without repeating the edge sample), onesided, not frame-normalised; the complex
   STFT is divided by the L2 norm of the window, sqrt(sum(window ** 2)) (`normalized=True` means
   "window" normalisation in torchaudio, not the 1/sqrt(frame_length) of `torch.stft(normalized=True)`),
   then |.| ** 2. Frames: 1 + n_samples // hop (n_samples after step 2), so 30 s at 32 kHz gives
   1 + 960000 // 4096 = 235.
4. librosa's chroma filterbank, `librosa.filters.chroma(sr=32000, n_fft=16384, n_chroma=12, tuning=0)` with
   its defaults ctroct=5.0, octwidth=2, norm=2, base_c=True (bin 0 is C, bin 9 is A), float32; applied as
   `einsum('cf,bft->bct')`.
5. Per-frame normalisation by the max over the 12 bins, as `torch.nn.functional.normalize(p=inf, dim=chroma,
   eps=1e-6)`: x / max(max_c |x_c|, 1e-6).
6. argmax over the bins (first index on ties, so silence gives bin 0) -> one-hot, [B, frames, 12].

The conditioner then tiles (if shorter) or cuts (if longer) the chroma to the length of the training
window, 235 frames (`fit_chroma_length`); the "null" melody (no melody, and the unconditional half of
classifier-free guidance) is one-hot on bin 0 for every frame in both references (`null_chroma`).

Not reproduced: audiocraft's `ChromaStemConditioner` first runs the melody through the demucs source
separator (htdemucs at 44.1 kHz, stereo), keeps the "vocals" and "other" stems (drops drums and bass), sums
them, and converts back to 32 kHz mono. demucs is not available here, so this module works on the audio it
is given: pass a drums/bass-free stem yourself for the closest results, or pass precomputed chroma.

Spectra are computed in float64 with numpy (a melody is host-side input, computed once per call), in blocks
of frames so that long melodies need little memory. `fit_chroma_length` and `null_chroma` also work on jax
arrays and under `jax.jit` (frame counts are static).
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from musicgen_jax.audio import RESAMPLE_METHODS, check_sample_rate, resample_melody

SAMPLE_RATE = 32000  # rate the chroma is computed at (the model's)
N_FFT = 2 ** 14  # audiocraft radix2_exp=14: n_fft = win_length = 16384
HOP_LENGTH = N_FFT // 4  # chroma frames advance by 4096 samples
N_CHROMA = 12
NORM_EPS = 1e-6  # torch.nn.functional.normalize eps

_BLOCK_FRAMES = 64  # STFT frames per block


# ----------------------------------------------------------------------------------------------------------
# small helpers


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _stft_params(n_fft, win_length, hop_length) -> tuple[int, int, int]:
    n_fft = _check_positive_int("n_fft", n_fft)
    win_length = n_fft if win_length is None else _check_positive_int("win_length", win_length)
    if win_length > n_fft:
        raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
    hop_length = win_length // 4 if hop_length is None else _check_positive_int("hop_length", hop_length)
    if hop_length == 0:
        raise ValueError(f"hop_length is 0 for win_length {win_length}; pass hop_length explicitly")
    return n_fft, win_length, hop_length


def chroma_frames(num_samples: int, n_fft: int = N_FFT, hop_length: int | None = None) -> int:
    """Frames `extract_chroma` gives for `num_samples` samples (at the chroma rate): 1 + max(n, n_fft) // hop."""
    n_fft, _, hop_length = _stft_params(n_fft, None, hop_length)
    num_samples = _check_positive_int("num_samples", num_samples)
    return 1 + max(num_samples, n_fft) // hop_length


def chroma_length(duration: float = 30.0, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                  hop_length: int | None = None) -> int:
    """Chroma frames of a `duration`-second window, as audiocraft's `_get_chroma_len` (30 s -> 235)."""
    sample_rate = check_sample_rate(sample_rate)
    if not (isinstance(duration, numbers.Real) and math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    return chroma_frames(max(1, int(sample_rate * duration)), n_fft, hop_length)


# ----------------------------------------------------------------------------------------------------------
# filterbank


@functools.lru_cache(maxsize=16)
def _chroma_filterbank_cached(sample_rate: int, n_fft: int, n_chroma: int) -> np.ndarray:
    from librosa import filters  # lazy: librosa is slow to import and only needed here

    fb = filters.chroma(sr=sample_rate, n_fft=n_fft, n_chroma=n_chroma, tuning=0)
    fb = np.ascontiguousarray(fb, dtype=np.float32)
    fb.setflags(write=False)
    return fb


def chroma_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_chroma: int = N_CHROMA) -> np.ndarray:
    """librosa's chroma filterbank [n_chroma, n_fft // 2 + 1] float32 (read-only, cached).

    `librosa.filters.chroma(sr, n_fft, n_chroma, tuning=0)` with librosa's defaults ctroct=5, octwidth=2,
    norm=2 (each column L2-normalised), base_c=True (bin 0 = C), exactly the arguments audiocraft uses.
    """
    return _chroma_filterbank_cached(check_sample_rate(sample_rate), _check_positive_int("n_fft", n_fft),
                                     _check_positive_int("n_chroma", n_chroma))


# ----------------------------------------------------------------------------------------------------------
# spectrogram and chroma


def _hann_periodic(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # torch.hann_window(n) (periodic=True)


def _pad_to_n_fft(x: np.ndarray, n_fft: int) -> np.ndarray:
    """audiocraft/transformers: zero-pad a wav shorter than n_fft to n_fft (odd sample on the right)."""
    n = x.shape[-1]
    if n >= n_fft:
        return x
    pad = n_fft - n
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad // 2, pad // 2 + pad % 2)])


def _raw_chroma(x: np.ndarray, fbank: np.ndarray, n_fft: int, win_length: int, hop_length: int) -> np.ndarray:
    """x [B, N] (N >= n_fft) -> fbank @ power spectrogram, [B, frames, n_chroma] float64."""
    window = _hann_periodic(win_length)
    if win_length < n_fft:  # torch.stft centres a shorter window inside the n_fft frame
        left = (n_fft - win_length) // 2
        window = np.pad(window, (left, n_fft - win_length - left))
    scale = 1.0 / float(np.sum(window ** 2))  # torchaudio normalized=True: |X / ||w||_2|^2
    fb = fbank.astype(np.float64).T  # [bins, chroma]
    xp = np.pad(x, [(0, 0), (n_fft // 2, n_fft // 2)], mode="reflect")  # center=True, pad_mode="reflect"
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft, axis=-1)[:, ::hop_length]  # view
    num = frames.shape[1]
    out = np.empty((x.shape[0], num, fb.shape[1]), np.float64)
    for lo in range(0, num, _BLOCK_FRAMES):
        spec = np.fft.rfft(frames[:, lo:lo + _BLOCK_FRAMES] * window, n=n_fft, axis=-1)
        power = (spec.real ** 2 + spec.imag ** 2) * scale
        out[:, lo:lo + _BLOCK_FRAMES] = power @ fb
    return out


def normalize_chroma(raw: np.ndarray, argmax: bool = True) -> np.ndarray:
    """[..., n_chroma] -> x / max(max|x|, 1e-6) per frame, or its argmax one-hot (first index on ties)."""
    raw = np.asarray(raw)
    if raw.ndim == 0 or raw.shape[-1] == 0:
        raise ValueError(f"chroma must have a non-empty last (bins) axis, got shape {raw.shape}")
    peak = np.max(np.abs(raw), axis=-1, keepdims=True)
    normed = raw / np.maximum(peak, NORM_EPS)
    if argmax:  # argmax of the normalised values, as the references (first index on ties: silence -> 0)
        idx = np.argmax(normed, axis=-1)
        return (idx[..., None] == np.arange(raw.shape[-1])).astype(np.float32)
    return normed.astype(np.float32)


def _as_mono_batch(wav, sample_rate: int, target_rate: int, method: str) -> np.ndarray:
    """[B, N], [B, C, N] or a list of [N] / [C, N] (None = no melody) -> float64 mono [B, N'] at target_rate.

    Each item is resampled, then its channels averaged (audiocraft's convert_audio, then the conditioner's
    `wav.mean(1)`); items of different lengths are zero-padded at the end to the longest, as audiocraft's
    collate does. A None item is audiocraft's null wav, a single zero sample.
    """
    if isinstance(wav, (list, tuple)):
        if len(wav) == 0:
            raise ValueError("melody batch is empty")
        items = []
        for b, item in enumerate(wav):
            if item is None:
                items.append(np.zeros(1))
                continue
            arr = _check_array(item, f"melody {b}", (1, 2), "[samples] or [channels, samples]")
            arr = arr[None] if arr.ndim == 1 else arr
            if sample_rate != target_rate:
                arr = resample_melody(arr, sample_rate, target_rate, method=method)
            items.append(arr.mean(axis=0))
        longest = max(len(it) for it in items)
        return np.stack([np.pad(it, (0, longest - len(it))) for it in items])
    arr = _check_array(wav, "melody", (2, 3), "[batch, samples] or [batch, channels, samples]")
    if sample_rate != target_rate:
        arr = resample_melody(arr, sample_rate, target_rate, method=method)
    return arr.mean(axis=1) if arr.ndim == 3 else arr


def _check_array(wav, name: str, ranks: tuple[int, ...], layout: str) -> np.ndarray:
    try:
        arr = np.asarray(wav)
    except Exception as e:  # ragged nested lists and the like
        raise ValueError(f"{name} is not an array of samples: {e}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real float samples, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be float audio in [-1, 1], got integer dtype {arr.dtype}; convert PCM first")
    if arr.ndim not in ranks:
        raise ValueError(f"{name} must be {layout}, got shape {arr.shape} (rank {arr.ndim})")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite samples")
    return arr.astype(np.float64, copy=False)


def extract_chroma(wav, sample_rate: int, *, n_fft: int = N_FFT, win_length: int | None = None,
                   hop_length: int | None = None, n_chroma: int = N_CHROMA, argmax: bool = True,
                   target_sample_rate: int = SAMPLE_RATE, resample_method: str = "audiocraft",
                   max_seconds: float | None = None) -> np.ndarray:
    """Melody wav(s) -> chroma [B, frames, n_chroma] float32 (one-hot if `argmax`), frames = 1 + N // hop.

    wav: [B, N] or [B, C, N] float samples at `sample_rate`, or a list of [N] / [C, N] melodies of different
    lengths (zero-padded at the end to the longest; None = no melody). The audio is resampled to
    `target_sample_rate` (see `resample_melody`), mixed down to mono, padded to n_fft if shorter, and run
    through the pipeline in this module's docstring. win_length defaults to n_fft and hop_length to
    win_length // 4, as in audiocraft. With argmax=False the max-normalised chroma is returned instead.
    The result is not yet tiled/cut to the model's window: see `fit_chroma_length`.

    max_seconds: cut the resampled mono audio to int(max_seconds * target_sample_rate) samples before the
    STFT. transformers' feature extractor does this with 30 s (its `chunk_length`); audiocraft does not (it
    cuts the chroma afterwards, so the last frame before 30 s still sees the audio after it). None (the
    default) follows audiocraft; pass resample_method="transformers", max_seconds=30 for the
    transformers processor's exact output.
    """
    sample_rate = check_sample_rate(sample_rate)
    target_sample_rate = check_sample_rate(target_sample_rate, "target_sample_rate")
    n_fft, win_length, hop_length = _stft_params(n_fft, win_length, hop_length)
    if resample_method not in RESAMPLE_METHODS:
        raise ValueError(f"resample_method must be one of {RESAMPLE_METHODS}, got {resample_method!r}")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not (
            isinstance(max_seconds, numbers.Real) and math.isfinite(max_seconds)
            and max_seconds * target_sample_rate >= 1)):
        raise ValueError(f"max_seconds must be a positive number of seconds (>= 1 sample), got {max_seconds!r}")
    x = _as_mono_batch(wav, sample_rate, target_sample_rate, resample_method)
    if max_seconds is not None:
        x = x[:, :int(max_seconds * target_sample_rate)]
    if x.shape[-1] == 0:
        raise ValueError(f"melody is shorter than one sample at {target_sample_rate} Hz")
    x = _pad_to_n_fft(x, n_fft)
    fbank = chroma_filterbank(target_sample_rate, n_fft, n_chroma)
    return normalize_chroma(_raw_chroma(x, fbank, n_fft, win_length, hop_length), argmax=argmax)


# ----------------------------------------------------------------------------------------------------------
# length fitting, null melody, long-form windows


def _xp(x):
    """jax.numpy for jax arrays (and tracers), numpy for anything else."""
    if isinstance(x, np.ndarray) or "jax" not in type(x).__module__:
        return np
    import jax.numpy as jnp

    return jnp


def fit_chroma_length(chroma, frames: int = 235):
    """Tile (if shorter) or cut (if longer) chroma [B, F, C] (or [F, C]) to `frames` along F.

    As audiocraft's ChromaStemConditioner (`match_len_on_eval`) and transformers' MusicgenMelody: repeat
    the whole sequence ceil(frames / F) times, then keep the first `frames`. numpy in -> numpy out; jax
    arrays stay jax (jit-friendly: shapes are static).
    """
    frames = _check_positive_int("frames", frames)
    xp = _xp(chroma)
    chroma = xp.asarray(chroma)
    if chroma.ndim not in (2, 3):
        raise ValueError(f"chroma must be [batch, frames, bins] or [frames, bins], got shape {chroma.shape}")
    if chroma.shape[-2] == 0 or chroma.shape[-1] == 0:
        raise ValueError(f"chroma is empty (shape {chroma.shape})")
    if xp is np and not np.all(np.isfinite(chroma)):
        raise ValueError("chroma contains NaN or infinite values")
    t = chroma.shape[-2]
    if t < frames:
        reps = (1,) * (chroma.ndim - 2) + (-(-frames // t), 1)
        chroma = xp.tile(chroma, reps)
    return chroma[..., :frames, :]


def null_chroma(batch: int, frames: int = 235, n_chroma: int = N_CHROMA, dtype=np.float32) -> np.ndarray:
    """The "no melody" condition: one-hot on bin 0 for every frame, [batch, frames, n_chroma].

    audiocraft: an all-zero wav has an all-zero chroma, whose argmax is bin 0; transformers sets bin 0 of
    zeros explicitly. Use `jnp.asarray` on it inside jax code.
    """
    batch = _check_positive_int("batch", batch)
    frames = _check_positive_int("frames", frames)
    n_chroma = _check_positive_int("n_chroma", n_chroma)
    out = np.zeros((batch, frames, n_chroma), dtype)
    out[..., 0] = 1
    return out


def melody_window(wav: np.ndarray, start: int, length: int, wav_length: int | None = None) -> np.ndarray:
    """Samples [start, start + length) of a melody taken periodically along the last axis.

    audiocraft's long-form generation (beyond 30 s) re-extracts the chroma for each window from
    `wav[..., positions % wav_length]` with positions = arange(int(time_offset * sr), ... + int(30 * sr)),
    so short melodies loop and each window moves on through the melody. `wav_length` defaults to the
    wav's last dimension (audiocraft uses the melody's own, unpadded, length).
    """
    wav = np.asarray(wav)
    n = wav.shape[-1] if wav_length is None else _check_positive_int("wav_length", wav_length)
    if n == 0 or n > wav.shape[-1]:
        raise ValueError(f"wav_length must be in [1, {wav.shape[-1]}], got {n}")
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")
    length = _check_positive_int("length", length)
    return wav[..., (int(start) + np.arange(length)) % n]


__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "N_CHROMA", "check_sample_rate", "chroma_frames", "chroma_length",
    "chroma_filterbank", "resample_melody", "normalize_chroma", "extract_chroma", "fit_chroma_length",
    "null_chroma", "melody_window",
]
