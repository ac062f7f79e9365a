"""Audio files (reading with resampling, writing atomically via files.atomic_write; soundfile/soxr imported
lazily) and the windowed-sinc resampler the melody path uses to match audiocraft (julius) and transformers
(torchaudio)."""
from __future__ import annotations

import math
import numbers
import os
import struct
import warnings

import numpy as np

from musicgen_jax.files import atomic_write

MAX_SAMPLE_RATE = 1_000_000
RESAMPLE_METHODS = ("audiocraft", "transformers")  # reference resamplers of the melody path
_RESAMPLE_BLOCK = 1 << 21  # (rows x output samples x filter taps) per resampling block
_KERNEL_TABLE_MAX = 1 << 22  # tabulate the filter of every output phase when it has at most this many taps


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
    declared = wav_declared_frames(path)
    if declared is not None and declared > wav.shape[1]:  # soundfile reads what is there, silently
        missing = declared - wav.shape[1]
        warnings.warn(f"audio file {path} is truncated: its header declares {declared} frames, the file holds "
                      f"{wav.shape[1]} ({missing} frames, {missing / rate:.3f} s missing); using what is there",
                      stacklevel=2)
    if sample_rate is not None:
        wav, rate = resample(wav, rate, sample_rate), sample_rate
    if channels is not None and wav.shape[0] != channels:
        wav = convert_channels(wav, channels)
    return wav, rate


def wav_declared_frames(path: str) -> int | None:
    """Frames a RIFF/RIFX WAVE file's data chunk declares (None: not a WAV, or a streamed header whose
    size field is 0 or 0xFFFFFFFF). Compared with the frames read, it reveals a cut file."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            endian = "<" if head[:4] == b"RIFF" else ">"
            size = os.fstat(f.fileno()).st_size
            block, pos = 0, 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk, length = struct.unpack(endian + "4sI", f.read(8))
                if chunk == b"fmt ":
                    fmt = f.read(min(length, 16))
                    block = struct.unpack(endian + "H", fmt[12:14])[0] if len(fmt) >= 14 else 0
                elif chunk == b"data":
                    if length in (0, 0xFFFFFFFF) or not block:
                        return None
                    return length // block
                pos += 8 + length + (length & 1)
    except (OSError, struct.error):
        pass
    return None


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


class WavStream:
    """A 16-bit PCM WAV written while its audio arrives, valid at every moment.

    `write` appends samples, then updates the header's two sizes: a reader sees a WAV whose header declares
    the samples written so far (or, between the two writes, fewer than are there). Samples are converted
    as `write_wav` converts them (soundfile, PCM_16), and the header is the one it writes (44 bytes, mono
    or stereo), so the finished file is byte for byte `write_wav` of the joined audio. The file appears at
    the first write (created through a temp file and renamed, like `write_wav`; an existing file at `path`
    stays until then), or at `close` as an empty WAV when nothing was written.

        with WavStream("out.wav", 32000, channels=1) as out:
            for chunk in chunks:  # [C, n]
                out.write(chunk)
    """

    def __init__(self, path: str, sample_rate: int, channels: int):
        from musicgen_jax.files import check_destination

        if channels not in (1, 2):
            raise ValueError(f"WavStream writes mono or stereo, got {channels} channels")
        self.path = check_destination(path)
        self.sample_rate, self.channels = check_sample_rate(sample_rate), channels
        self.frames = 0  # written so far
        self._file = None

    def _header(self, frames: int) -> bytes:
        data = 2 * self.channels * frames
        return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, self.channels,
                           self.sample_rate, 2 * self.channels * self.sample_rate, 2 * self.channels, 16,
                           b"data", data)

    def write(self, wav: np.ndarray) -> None:
        """Append wav [C, n] float (clipped to [-1, 1])."""
        import io

        import soundfile as sf

        wav = np.asarray(wav, np.float32)
        if wav.ndim != 2 or wav.shape[0] != self.channels:
            raise ValueError(f"wav must be [{self.channels}, samples], got shape {wav.shape}")
        if self._file is None:
            self._open()
        pcm = io.BytesIO()
        sf.write(pcm, np.clip(wav.T, -1.0, 1.0), self.sample_rate, subtype="PCM_16", format="RAW")
        self._file.seek(0, os.SEEK_END)
        self._file.write(pcm.getvalue())
        self._file.flush()
        self.frames += wav.shape[1]
        header = self._header(self.frames)
        self._file.seek(4)
        self._file.write(header[4:8])  # RIFF size
        self._file.seek(40)
        self._file.write(header[40:44])  # data size
        self._file.flush()

    def _open(self) -> None:
        from musicgen_jax.files import publish, temp_file

        target = os.path.realpath(self.path)  # a symlink is written through, as write_wav does
        tmp = temp_file(os.path.dirname(target), ".wav")
        try:
            with open(tmp, "wb") as f:
                f.write(self._header(0))
            publish(tmp, target)
        except BaseException:
            if os.path.lexists(tmp):
                os.remove(tmp)
            raise
        self._file = open(target, "r+b")

    def close(self) -> str:
        """Finish the file (an empty WAV if nothing was written); returns its path."""
        if self._file is None:
            self._open()
        self._file.close()
        return self.path

    def __enter__(self) -> "WavStream":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None or exc[0] is None:
            self.close()


def check_sample_rate(sample_rate, name: str = "sample_rate") -> int:
    """A sample rate as an int, or ValueError: must be a finite whole number in (0, 1e6] Hz."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise ValueError(f"{name} must be a number of Hz, got {sample_rate!r}")
    value = float(sample_rate)
    if not math.isfinite(value) or value <= 0 or value > MAX_SAMPLE_RATE:
        raise ValueError(f"{name} must be in (0, {MAX_SAMPLE_RATE}] Hz, got {sample_rate!r}")
    if value != int(value):
        raise ValueError(f"{name} must be a whole number of Hz, got {sample_rate!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------------------
# resampling (windowed-sinc, as julius.resample_frac / torchaudio.functional.resample)


def _sinc_kernel_rows(phases: np.ndarray, old: int, new: int, width: int, zeros: int, rolloff: float,
                      method: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights [P, 2 * width + 2] and first-tap offsets [P] for output phases `phases` (rates reduced by gcd).

    Output sample j = q * new + i reads input samples q * old + start[i] + m - width, m < 2 * width + 2.
    The conv kernels of julius/torchaudio span 2 * width + old taps; outside the ones kept here their
    values are sin(zeros*pi)/(zeros*pi) * cos(pi/2)**2 ~ 1e-33, i.e. zero.
    """
    sr = min(old, new) * rolloff
    start = (phases * old) // new  # floor(i * old / new)
    taps = np.arange(2 * width + 2)
    k = start[:, None] + taps[None, :]  # tap index in the conv kernel, [0, 2 * width + old]
    t = (-phases[:, None] / new + (k - width) / old) * sr
    t = np.clip(t, -zeros, zeros)
    window = np.cos(t * math.pi / zeros / 2) ** 2
    tp = t * math.pi
    safe = np.where(tp == 0, 1.0, tp)
    kernel = np.where(tp == 0, 1.0, np.sin(safe) / safe) * window
    kernel = np.where(k < 2 * width + old, kernel, 0.0)  # past the conv kernel's last tap
    if method == "audiocraft":
        kernel = kernel / kernel.sum(axis=1, keepdims=True)  # julius: each phase sums to one
    else:
        kernel = kernel * (sr / old)  # torchaudio: fixed gain base_freq / orig_freq
    return kernel, start


def resample_melody(wav: np.ndarray, from_rate: int, to_rate: int, *,
                    method: str = "audiocraft", zeros: int = 24, rolloff: float = 0.945) -> np.ndarray:
    """Resample along the last axis like the references do before chroma extraction (float64 out).

    method "audiocraft": `julius.resample_frac(wav, from_rate, to_rate)` (zeros=24, rolloff=0.945, edge
    samples repeated, floor(n * to / from) samples). method "transformers":
    `torchaudio.functional.resample(wav, from_rate, to_rate, rolloff=0.945, lowpass_filter_width=24)`
    (zero padding, gain rolloff * min / from, ceil(n * to / from) samples). Rates are reduced by their gcd
    first, as both do; the filter is evaluated on its support only, so any pair of rates is cheap.
    """
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"method must be one of {RESAMPLE_METHODS}, got {method!r}")
    from_rate = check_sample_rate(from_rate, "from_rate")
    to_rate = check_sample_rate(to_rate, "to_rate")
    x = np.asarray(wav, dtype=np.float64)
    if from_rate == to_rate:
        return x
    g = math.gcd(from_rate, to_rate)
    old, new = from_rate // g, to_rate // g
    sr = min(old, new) * rolloff
    width = math.ceil(zeros * old / sr)
    shape, length = x.shape[:-1], x.shape[-1]
    if length == 0:
        raise ValueError("cannot resample an empty wav")
    x = x.reshape(-1, length)
    if method == "audiocraft":
        out_len = (new * length) // old
    else:
        out_len = -((-new * length) // old)
    ntaps = 2 * width + 2
    table = None
    if new * ntaps <= _KERNEL_TABLE_MAX:  # small enough to tabulate every phase once
        table = _sinc_kernel_rows(np.arange(new), old, new, width, zeros, rolloff, method)
    out = np.empty((x.shape[0], out_len), np.float64)
    taps = np.arange(ntaps)
    block = max(256, _RESAMPLE_BLOCK // (ntaps * x.shape[0]))
    for lo in range(0, out_len, block):
        j = np.arange(lo, min(out_len, lo + block))
        q, i = j // new, j % new
        if table is not None:
            kernel, start = table[0][i], table[1][i]
        else:
            kernel, start = _sinc_kernel_rows(i, old, new, width, zeros, rolloff, method)
        idx = (q * old + start - width)[:, None] + taps[None, :]
        if method == "audiocraft":  # replicate padding
            vals = x[:, np.clip(idx, 0, length - 1)]
        else:  # zero padding
            valid = (idx >= 0) & (idx < length)
            vals = np.where(valid, x[:, np.clip(idx, 0, length - 1)], 0.0)
        out[:, lo:lo + len(j)] = np.einsum("rjm,jm->rj", vals, kernel)
    return out.reshape(shape + (out_len,))
