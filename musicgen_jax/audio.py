"""Audio files: reading with resampling, writing atomically. soundfile/soxr are imported lazily."""
from __future__ import annotations

import os
import tempfile

import numpy as np


def atomic_write(path: str, write_fn, suffix: str = "") -> str:
    """Write via `write_fn(tmp_path)` into the target's folder, then rename: never a half file."""
    path = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1])
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """wav [C, N] resampled with soxr (high quality)."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return wav
    import soxr

    return soxr.resample(wav.T, from_rate, to_rate, quality="HQ").T.astype(np.float32)


def read_audio(path: str, sample_rate: int | None = None, channels: int | None = None) -> tuple[np.ndarray, int]:
    """A file -> (wav [C, N] float32, rate); resampled to `sample_rate` and mixed/expanded to `channels`."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:
        raise ValueError(f"cannot read audio file {path}: {e}") from e
    wav = np.ascontiguousarray(data.T)
    if wav.shape[1] == 0:
        raise ValueError(f"audio file {path} is empty")
    if sample_rate is not None:
        wav, rate = resample(wav, rate, sample_rate), sample_rate
    if channels is not None and wav.shape[0] != channels:
        wav = convert_channels(wav, channels)
    return wav, rate


def convert_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """[C, N] -> [channels, N]: mono is repeated, multi-channel down-mixed to mono by averaging."""
    if wav.shape[0] == channels:
        return wav
    if channels == 1:
        return wav.mean(axis=0, keepdims=True)
    if wav.shape[0] == 1:
        return np.repeat(wav, channels, axis=0)
    raise ValueError(f"cannot convert {wav.shape[0]} channels to {channels}")


def write_wav(path: str, wav: np.ndarray, sample_rate: int) -> str:
    """wav [C, N] float -> 16-bit PCM wav at `path`, written atomically."""
    import soundfile as sf

    wav = np.asarray(wav, np.float32)
    if wav.ndim != 2:
        raise ValueError(f"wav must be [channels, samples], got shape {wav.shape}")
    data = np.clip(wav.T, -1.0, 1.0)
    return atomic_write(path, lambda tmp: sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV"))


def save_npy(path: str, array: np.ndarray) -> str:
    """np.save, atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write, suffix=".npy")
