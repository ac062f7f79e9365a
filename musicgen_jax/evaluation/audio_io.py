"""Reading evaluation sets: audio folders (keys = relative paths without extension), caption CSVs, and
bringing audio to a model's rate the way audiocraft does (julius resampling, then a channel average)."""
from __future__ import annotations

import csv
import os

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
CAPTION_KEY_COLUMNS = ("ytid", "id", "name", "file", "filename", "path")
CAPTION_TEXT_COLUMNS = ("caption", "text", "description")


def as_channels_first(wav, name: str = "wav") -> np.ndarray:
    """[N] or [C, N] real samples -> float64 [C, N], with clear errors."""
    x = np.asarray(wav)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real samples, got dtype {x.dtype}")
    x = x.astype(np.float64)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[-1] == 0:
        raise ValueError(f"{name} must be [samples] or [channels, samples] and not empty, got shape {np.shape(wav)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return x


def to_mono(wav, sample_rate: int, target_rate: int) -> np.ndarray:
    """audiocraft's `convert_audio(wav, sample_rate, target_rate, to_channels=1)`: resampled with the julius
    resampler (`musicgen_jax.audio.resample_melody`, method "audiocraft"), then channels averaged ->
    float64 [N']."""
    from musicgen_jax.audio import resample_melody

    x = as_channels_first(wav)
    if sample_rate != target_rate:
        x = resample_melody(x, sample_rate, target_rate, method="audiocraft")
    return x.mean(axis=0)


def list_audio(directory: str, what: str = "audio") -> dict[str, str]:
    """{key: path} of the audio files under `directory` (recursive); key = relative path without extension,
    '/'-separated. Errors for a missing or empty folder and for two files with one key (a.wav, a.flac)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what} folder not found: {directory}")
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in AUDIO_EXTENSIONS or name.startswith("."):
                continue
            path = os.path.join(root, name)
            key = os.path.relpath(os.path.join(root, stem), directory).replace(os.sep, "/")
            if key in found:
                raise ValueError(f"{what} folder {directory} has two files for {key!r}: {found[key]} and {path}")
            found[key] = path
    if not found:
        raise ValueError(f"{what} folder {directory} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return found


def read_captions(path: str) -> dict[str, str]:
    """A CSV with a header -> {key: caption}. The key column is the first of ytid / id / name / file /
    filename / path (a file name's extension is dropped), the text column the first of caption / text /
    description (MusicCaps' CSV has `ytid` and `caption`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        lower = {c.lower(): c for c in columns}
        key_col = next((lower[c] for c in CAPTION_KEY_COLUMNS if c in lower), None)
        text_col = next((lower[c] for c in CAPTION_TEXT_COLUMNS if c in lower), None)
        if key_col is None or text_col is None:
            raise ValueError(f"{path}: needs a key column ({' / '.join(CAPTION_KEY_COLUMNS)}) and a caption column "
                             f"({' / '.join(CAPTION_TEXT_COLUMNS)}); its columns are {columns}")
        captions: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            key, text = (row.get(key_col) or "").strip(), (row.get(text_col) or "").strip()
            if not key:
                raise ValueError(f"{path}:{line}: empty {key_col!r}")
            stem, ext = os.path.splitext(key)
            key = stem if ext.lower() in AUDIO_EXTENSIONS else key
            if key in captions and captions[key] != text:
                raise ValueError(f"{path}:{line}: {key!r} has two different captions")
            captions[key] = text
    if not captions:
        raise ValueError(f"{path} has no caption rows")
    return captions


def load_audio(path: str) -> tuple[np.ndarray, int]:
    """A file at its own rate -> (wav [C, N] float32, rate)."""
    from musicgen_jax.audio import read_audio

    return read_audio(path)


__all__ = ["AUDIO_EXTENSIONS", "as_channels_first", "to_mono", "list_audio", "read_captions", "load_audio"]
