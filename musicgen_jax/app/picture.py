"""The picture of a finished piece: its waveform over its spectrogram, drawn with matplotlib (its
object API and the Agg canvas: no pyplot state, safe in the app's worker threads) into a PNG."""
from __future__ import annotations

import numpy as np

WAVE_COLUMNS = 1600  # min/max pairs drawn for the waveform, whatever the length
N_FFT, HOP = 2048, 512
MAX_FRAMES = 2000  # spectrogram columns at most (the hop grows for long pieces)


def envelope(mono: np.ndarray, columns: int = WAVE_COLUMNS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column index, min, max) of `mono` in `columns` equal slices: a waveform at screen resolution."""
    columns = max(1, min(columns, mono.shape[-1]))
    edges = np.linspace(0, mono.shape[-1], columns + 1).astype(int)
    low = np.minimum.reduceat(mono, edges[:-1])
    high = np.maximum.reduceat(mono, edges[:-1])
    return edges[:-1], low, high


def spectrogram_db(mono: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Magnitude spectrogram [bins, frames] in dB (Hann window, 80 dB range below the peak)."""
    if mono.shape[-1] < n_fft:
        mono = np.pad(mono, (0, n_fft - mono.shape[-1]))
    frames = 1 + (mono.shape[-1] - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(mono[index] * np.hanning(n_fft)[None, :], axis=-1)).T
    db = 20 * np.log10(np.maximum(spectrum, 1e-8))
    return np.maximum(db, db.max() - 80.0)


def render(wav: np.ndarray, sample_rate: int, path: str) -> str:
    """wav [C, N] -> a PNG at `path` (waveform of each channel on top, spectrogram of the mix below)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wav = np.asarray(wav, np.float32)
    seconds = wav.shape[-1] / sample_rate
    figure = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(1, 2))
    for channel, samples in enumerate(wav):
        start, low, high = envelope(samples)
        top.fill_between(start / sample_rate, low, high, linewidth=0.5, alpha=0.8,
                         label=f"channel {channel + 1}" if wav.shape[0] > 1 else None)
    if wav.shape[0] > 1:
        top.legend(loc="upper right", fontsize="small")
    top.set_ylim(-1.05, 1.05)
    top.set_ylabel("amplitude")
    mix = wav.mean(axis=0)
    db = spectrogram_db(mix, hop=max(HOP, mix.shape[-1] // MAX_FRAMES))
    bottom.imshow(db, origin="lower", aspect="auto", cmap="magma",
                  extent=(0.0, seconds, 0.0, sample_rate / 2000.0))
    bottom.set_ylabel("frequency (kHz)")
    bottom.set_xlabel("time (s)")
    bottom.set_xlim(0.0, seconds)
    figure.savefig(path, format="png")
    return path
