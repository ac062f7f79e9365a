"""Chroma extraction vs the audiocraft / transformers recipe.

The reference here is written in torch, from the references' definitions:
- spectrogram: torchaudio `Spectrogram(n_fft=16384, win_length=16384, hop_length=4096, power=2, center=True,
  pad=0, normalized=True)`, i.e. torchaudio.functional.spectrogram: `torch.stft(center=True,
  pad_mode="reflect", window=torch.hann_window(16384) (periodic), normalized=False, onesided=True)`, the
  complex result divided by sqrt(sum(window ** 2)) ("window" normalisation, what normalized=True maps to),
  then |.| ** 2. torchaudio itself has no build for torch 2.13 here.
- audiocraft ChromaExtractor.forward: zero-pad to n_fft if shorter, einsum with
  librosa.filters.chroma(sr, n_fft, tuning=0, n_chroma=12), F.normalize(p=inf, dim=chroma, eps=1e-6),
  argmax -> one-hot.
- resampling: julius.resample_frac (audiocraft) and torchaudio.functional.resample(rolloff=0.945,
  lowpass_filter_width=24) (transformers), transcribed with torch conv1d as the originals do it.
transformers' own MusicgenMelodyFeatureExtractor is also run, end to end, with the torchaudio pieces it
calls (Spectrogram, functional.resample) replaced by those transcriptions.
"""
from __future__ import annotations

import math
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicgen_jax import chroma as C

SR = 32000
N_FFT = 16384


# ---------------------------------------------------------------------------------------------- references


def ref_spectrogram(wav: torch.Tensor, n_fft: int = N_FFT, hop: int = N_FFT // 4) -> torch.Tensor:
    """torchaudio.functional.spectrogram(pad=0, hann periodic, normalized=True ("window"), power=2)."""
    import torch

    window = torch.hann_window(n_fft, dtype=wav.dtype)
    shape = wav.shape
    spec = torch.stft(wav.reshape(-1, shape[-1]), n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = spec.reshape(shape[:-1] + spec.shape[-2:])
    spec = spec / window.pow(2.0).sum().sqrt()
    return spec.abs().pow(2.0)


def ref_chroma(wav, sr: int = SR, n_fft: int = N_FFT):
    """audiocraft ChromaExtractor(sample_rate=sr, n_chroma=12, radix2_exp=14, argmax=True) on [B, N] float32.

    Returns (one-hot [B, T, 12], normalised chroma [B, T, 12]) as numpy.
    """
    import librosa
    import torch

    wav = torch.as_tensor(np.asarray(wav, np.float32))
    fbanks = torch.from_numpy(librosa.filters.chroma(sr=sr, n_fft=n_fft, tuning=0, n_chroma=12))
    t = wav.shape[-1]
    if t < n_fft:
        pad = n_fft - t
        wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2), "constant", 0)
    spec = ref_spectrogram(wav, n_fft, n_fft // 4)
    raw = torch.einsum("cf,...ft->...ct", fbanks, spec)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
    idx = norm.argmax(-1, keepdim=True)
    onehot = torch.zeros_like(norm).scatter_(-1, idx, 1)
    return onehot.numpy(), norm.numpy()


def ref_julius(x: torch.Tensor, old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945,
               dtype=None) -> torch.Tensor:
    """julius.resample_frac, transcribed (its kernel is float32; `dtype` here, float64 by default)."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    g = math.gcd(old_sr, new_sr)
    old, new = old_sr // g, new_sr // g
    sr = min(new, old) * rolloff
    width = math.ceil(zeros * old / sr)
    idx = torch.arange(-width, width + old, dtype=dtype)
    kernels = []
    for i in range(new):
        t = ((-i / new + idx / old) * sr).clamp(-zeros, zeros) * math.pi
        k = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * torch.cos(t / zeros / 2) ** 2
        kernels.append(k / k.sum())
    kernel = torch.stack(kernels)[:, None]
    shape, length = x.shape, x.shape[-1]
    y = torch.nn.functional.pad(x.reshape(-1, length)[:, None].to(dtype), (width, width + old), mode="replicate")
    y = torch.nn.functional.conv1d(y, kernel, stride=old).transpose(1, 2).reshape(*shape[:-1], -1)
    return y[..., : (new * length) // old]


def ref_torchaudio_resample(x: torch.Tensor, orig: int, new: int, lowpass_filter_width: int = 6,
                            rolloff: float = 0.99) -> torch.Tensor:
    """torchaudio.functional.resample (sinc_interp_hann), transcribed; kernel in x's dtype."""
    import torch

    g = math.gcd(int(orig), int(new))
    orig, new = int(orig) // g, int(new) // g
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=x.dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=x.dtype)[:, None, None] / new + idx
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t) * window * (base / orig)
    shape, length = x.shape, x.shape[-1]
    y = torch.nn.functional.pad(x.reshape(-1, length), (width, width + orig))
    y = torch.nn.functional.conv1d(y[:, None], kernel, stride=orig).transpose(1, 2).reshape(*shape[:-1], -1)
    return y[..., : math.ceil(new * length / orig)]


# ---------------------------------------------------------------------------------------------- signals


def tone(freq, seconds, sr=SR, amp=1.0, phase=0.0):
    t = np.arange(int(round(seconds * sr))) / sr
    return amp * np.cos(2 * np.pi * freq * t + phase)


def note(name: str, octave: int = 4) -> float:
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    return 440.0 * 2 ** ((names.index(name) - 9) / 12 + (octave - 4))


def bip_bip(bip_duration=0.125, duration=0.5, sample_rate=SR):
    """transformers' test signal: 440 Hz, on for the second half of every 2 * bip_duration."""
    timesteps = np.arange(int(duration * sample_rate)) / sample_rate
    wav = np.cos(2 * math.pi * 440 * timesteps)
    return wav * ((timesteps % (2 * bip_duration)) / (2 * bip_duration) >= 0.5)


def signals(seconds: float, sr: int = SR, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    c_major = tone(note("C"), seconds, sr) + 0.6 * tone(note("E"), seconds, sr) + 0.4 * tone(note("G"), seconds, sr)
    a_minor = 0.5 * tone(note("A", 3), seconds, sr) + tone(note("C"), seconds, sr) + 0.7 * tone(note("E"), seconds, sr)
    melody = np.concatenate([tone(note(k), seconds / 4, sr, 0.5) for k in ("D", "F#", "A", "B")])[:n]
    melody = np.pad(melody, (0, n - len(melody)))
    tail = tone(note("G#", 5), seconds, sr, 0.3)
    tail[n // 2:] = 0
    return {
        "a440": tone(440.0, seconds, sr),
        "c_major": c_major,
        "a_minor": a_minor,
        "melody": melody,
        "tone_then_silence": tail,
        "silence": np.zeros(n),
        "noise": 0.1 * rng.standard_normal(n),
        "tone_in_noise": tone(note("F"), seconds, sr, 0.2) + 0.05 * rng.standard_normal(n),
    }


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parity
def test_filterbank_is_librosas_with_audiocrafts_arguments():
    import librosa
    from transformers.audio_utils import chroma_filter_bank

    fb = C.chroma_filterbank(SR, N_FFT)
    assert fb.shape == (12, N_FFT // 2 + 1) and fb.dtype == np.float32 and not fb.flags.writeable
    assert C.chroma_filterbank(SR, N_FFT) is fb  # built once
    np.testing.assert_array_equal(fb, librosa.filters.chroma(sr=SR, n_fft=N_FFT, tuning=0, n_chroma=12))
    np.testing.assert_array_equal(fb, librosa.filters.chroma(sr=SR, n_fft=N_FFT, n_chroma=12, tuning=0.0, ctroct=5.0,
                                                             octwidth=2, norm=2, base_c=True))
    # transformers' port, cast to float32 as its extractor does
    np.testing.assert_array_equal(fb, chroma_filter_bank(sampling_rate=SR, num_frequency_bins=N_FFT, tuning=0,
                                                         num_chroma=12).astype(np.float32))
    freqs = np.fft.rfftfreq(N_FFT, 1 / SR)
    assert fb[:, np.argmin(abs(freqs - 440))].argmax() == 9  # A, with bin 0 = C
    assert fb[:, np.argmin(abs(freqs - note("C")))].argmax() == 0


def test_frame_counts():
    assert C.chroma_length(30.0) == 235 == 1 + 960000 // 4096
    assert C.chroma_frames(960000) == 235
    assert C.chroma_frames(1) == C.chroma_frames(N_FFT) == 5  # padded to n_fft first
    assert C.chroma_frames(N_FFT + 4095) == 5 and C.chroma_frames(N_FFT + 4096) == 6
    assert C.extract_chroma(np.zeros((1, 960000)), SR).shape == (1, 235, 12)


@pytest.mark.parity
@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.37])
def test_matches_reference_recipe(seconds):
    sig = signals(seconds, seed=int(seconds * 100))
    names = list(sig)
    batch = np.stack([sig[k] for k in names]).astype(np.float32)
    want, want_norm = ref_chroma(batch)
    got = C.extract_chroma(batch, SR)
    frames = 1 + max(len(batch[0]), N_FFT) // 4096
    assert got.dtype == np.float32 and got.shape == want.shape == (len(names), frames, 12)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(got[i], want[i], err_msg=f"{name}, {seconds} s")
    np.testing.assert_allclose(C.extract_chroma(batch, SR, argmax=False), want_norm, atol=2e-6, rtol=1e-5)
    # the signals mean what they should
    arg = got.argmax(-1)
    assert (arg[names.index("a440")] == 9).all() and (arg[names.index("c_major")] == 0).all()
    assert (arg[names.index("silence")] == 0).all() and got[names.index("silence")].sum() == got.shape[1]
    if seconds >= 2:  # the silent half gives bin 0 once the window has left the tone
        tail = arg[names.index("tone_then_silence")]
        assert tail[0] == 8 and tail[-1] == 0


@pytest.mark.parity
@pytest.mark.parametrize("length", [1, 2, 999, 8192, 8193, 16383, 16384, 16385, 20481])
def test_short_and_odd_lengths(length):
    rng = np.random.default_rng(length)
    x = np.stack([tone(note("D"), length / SR)[:length], 0.1 * rng.standard_normal(length)]).astype(np.float32)
    np.testing.assert_array_equal(C.extract_chroma(x, SR), ref_chroma(x)[0])


@pytest.mark.parity
@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000])
def test_other_sample_rates_resampled_like_audiocraft(rate):
    import torch

    sig = signals(1.0, rate, seed=rate)
    batch = np.stack(list(sig.values())).astype(np.float32)
    resampled = ref_julius(torch.from_numpy(batch), rate, SR).float()
    want, _ = ref_chroma(resampled.numpy())
    got = C.extract_chroma(batch, rate)
    np.testing.assert_array_equal(got, want)
    assert (got[0].argmax(-1) == 9).all()  # 440 Hz is still A


@pytest.mark.parity
def test_resampling_matches_julius_and_torchaudio_transcriptions(monkeypatch):
    import torch

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4001))
    for rate in (44100, 48000, 22050, 11025, 8000, 24000, 96000):
        got = C.resample_melody(x, rate, SR)
        want = ref_julius(torch.from_numpy(x), rate, SR).numpy()
        assert got.shape == want.shape == (2, 3, (4001 * SR) // rate)
        np.testing.assert_allclose(got, want, atol=1e-12)
        got = C.resample_melody(x, rate, SR, method="transformers")
        want = ref_torchaudio_resample(torch.from_numpy(x), rate, SR, 24, 0.945).numpy()
        assert got.shape == want.shape == (2, 3, -(-4001 * SR // rate))
        np.testing.assert_allclose(got, want, atol=1e-12)
    # the per-block kernel path (used when a rate pair has too many phases to tabulate) is the same filter
    from musicgen_jax import audio

    monkeypatch.setattr(audio, "_KERNEL_TABLE_MAX", 0)
    np.testing.assert_allclose(C.resample_melody(x, 44100, SR), ref_julius(torch.from_numpy(x), 44100, SR).numpy(),
                               atol=1e-12)
    monkeypatch.undo()
    # rates without a small common divisor stay cheap (julius would build a 32000 x 44172 kernel)
    t0 = time.perf_counter()
    y = C.resample_melody(tone(440.0, 0.5, 44101), 44101, SR)
    assert time.perf_counter() - t0 < 5 and y.shape == ((22050 * SR) // 44101,)
    assert C.resample_melody(x, SR, SR) is not None and np.array_equal(C.resample_melody(x, SR, SR), x)


@pytest.mark.parity
def test_against_real_julius_if_installed():
    import torch

    julius = pytest.importorskip("julius")
    x = np.random.default_rng(2).standard_normal((2, 9000)).astype(np.float32)
    for rate in (44100, 48000):
        want = julius.resample_frac(torch.from_numpy(x), rate, SR).numpy()
        np.testing.assert_allclose(C.resample_melody(x, rate, SR), want, atol=1e-3)  # julius' kernel is float32


def test_transformers_integration_expectations():
    """transformers' test_integration: 0.5 s and 1 s of 'bip bip' at 440 Hz, padded to the longest."""
    expected = np.zeros([2, 8, 12], np.float32)
    expected[0, :6, 9] = 1
    expected[0, 6:, 0] = 1  # the zero padding after 0.5 s
    expected[1, :, 9] = 1
    got = C.extract_chroma([bip_bip(duration=0.5), bip_bip(duration=1.0)], SR)
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def hf_extractor():
    """transformers' MusicgenMelodyFeatureExtractor with torchaudio's pieces replaced by the transcriptions."""
    import torch
    import transformers.models.musicgen_melody.feature_extraction_musicgen_melody as module

    class Spectrogram(torch.nn.Module):
        def __init__(self, n_fft, win_length, hop_length, power, center, pad, normalized):
            super().__init__()
            assert (win_length, power, center, pad, normalized) == (n_fft, 2, True, 0, True)
            self.n_fft, self.hop_length = n_fft, hop_length

        def forward(self, wav):
            return ref_spectrogram(wav, self.n_fft, self.hop_length)

    fake = types.SimpleNamespace(transforms=types.SimpleNamespace(Spectrogram=Spectrogram),
                                 functional=types.SimpleNamespace(resample=ref_torchaudio_resample))
    had = hasattr(module, "torchaudio")
    saved = getattr(module, "torchaudio", None)
    module.torchaudio = fake
    try:
        yield module.MusicgenMelodyFeatureExtractor()
    finally:
        if had:
            module.torchaudio = saved
        else:
            del module.torchaudio


@pytest.mark.parity
def test_against_transformers_feature_extractor(hf_extractor):
    import torch

    fe = hf_extractor
    inputs = [bip_bip(duration=0.5), bip_bip(duration=1.0)]
    hf = fe(inputs, sampling_rate=SR, return_tensors="np")["input_features"]
    assert hf.shape == (2, 8, 12) and hf[0, :6, 9].all() and hf[0, 6:, 0].all() and hf[1, :, 9].all()
    np.testing.assert_array_equal(C.extract_chroma(inputs, SR), hf)

    # a batch of melodies of different lengths, some stereo [C, N]
    sig = signals(1.2, seed=7)
    items = [sig["c_major"][:30000], sig["melody"], sig["noise"][:20000], sig["a_minor"][:5000]]
    hf = fe(items, sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(C.extract_chroma(items, SR), hf)
    stereo = np.stack([np.stack([sig["c_major"], sig["tone_in_noise"]]), np.stack([sig["melody"], sig["a440"]])])
    hf = fe(stereo.astype(np.float32), sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(C.extract_chroma(stereo, SR), hf)
    np.testing.assert_array_equal(C.extract_chroma(stereo, SR), C.extract_chroma(stereo.mean(1), SR))

    # other rates: transformers resamples with torchaudio (a torch tensor is needed for that)
    x = np.stack([signals(1.0, 44100, seed=3)[k] for k in ("a_minor", "melody", "tone_in_noise")]).astype(np.float32)
    hf = fe(torch.from_numpy(x), sampling_rate=44100, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(C.extract_chroma(x, 44100, resample_method="transformers"), hf)

    # longer than 30 s: transformers cuts the audio to 30 s first, audiocraft cuts the chroma to 235 afterwards
    rng = np.random.default_rng(5)
    long = (tone(note("E"), 30.5, amp=0.3) + 0.2 * rng.standard_normal(int(30.5 * SR))).astype(np.float32)
    hf = fe([long], sampling_rate=SR, return_tensors="np")["input_features"]
    assert hf.shape == (1, 235, 12)
    np.testing.assert_array_equal(C.extract_chroma(long[None], SR, max_seconds=30), hf)
    ours = C.fit_chroma_length(C.extract_chroma(long[None], SR), 235)
    np.testing.assert_array_equal(ours, C.fit_chroma_length(ref_chroma(long[None])[0], 235))
    np.testing.assert_array_equal(ours[:, :234], hf[:, :234])  # only the last frame may see different audio


def ref_fit(chroma: np.ndarray, frames: int) -> np.ndarray:
    """audiocraft ChromaStemConditioner._get_wav_embedding's match_len_on_eval, on torch."""
    import torch

    x = torch.from_numpy(chroma)
    t = x.shape[1]
    if t > frames:
        x = x[:, :frames]
    elif t < frames:
        x = x.repeat(1, int(math.ceil(frames / t)), 1)[:, :frames]
    return x.numpy()


@pytest.mark.parity
@pytest.mark.parametrize("t", [1, 5, 7, 117, 234, 235, 236, 500])
def test_fit_chroma_length(t):
    rng = np.random.default_rng(t)
    x = rng.random((3, t, 12)).astype(np.float32)
    want = ref_fit(x, 235)
    got = C.fit_chroma_length(x, 235)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(C.fit_chroma_length(x[0], 235), want[0])
    got_jax = jax.jit(C.fit_chroma_length, static_argnums=1)(jnp.asarray(x), 235)
    assert isinstance(got_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(got_jax), want)


@pytest.mark.parity
def test_null_melody_is_bin_zero():
    import torch

    null = C.null_chroma(2, 235)
    assert null.shape == (2, 235, 12) and null.dtype == np.float32
    assert (null[..., 0] == 1).all() and null.sum() == 2 * 235
    # audiocraft's null wav: a single zero sample, padded to n_fft -> 5 silent frames -> bin 0, tiled to 235
    audiocraft_null = C.fit_chroma_length(C.extract_chroma(np.zeros((2, 1)), SR), 235)
    np.testing.assert_array_equal(audiocraft_null, null)
    np.testing.assert_array_equal(C.fit_chroma_length(ref_chroma(np.zeros((2, 1)))[0], 235), null)
    # transformers: zeros with bin 0 set, tiled to chroma_length
    hf = torch.zeros((2, 1, 12))
    hf[:, :, 0] = 1
    np.testing.assert_array_equal(ref_fit(hf.numpy(), 235), null)
    # a None melody in a batch is the null wav, zero-padded to the longest like the others
    got = C.extract_chroma([tone(440.0, 1.0), None], SR)
    assert (got[0].argmax(-1) == 9).all()
    np.testing.assert_array_equal(got[1], C.null_chroma(1, got.shape[1])[0])


@pytest.mark.parity
def test_melody_window_loops_like_audiocraft():
    import torch

    wav = np.arange(2 * 10).reshape(1, 2, 10).astype(np.float32)
    positions = torch.arange(7, 7 + 25)
    want = torch.from_numpy(wav)[..., positions % 10].numpy()
    np.testing.assert_array_equal(C.melody_window(wav, 7, 25), want)
    np.testing.assert_array_equal(C.melody_window(wav, 3, 4, wav_length=5), wav[..., [3, 4, 0, 1]])


def test_bad_inputs():
    good = np.zeros((1, 1000), np.float32)
    cases = [
        (lambda: C.extract_chroma(np.zeros((1, 0)), SR), "empty"),
        (lambda: C.extract_chroma(np.zeros((0, 100)), SR), "empty"),
        (lambda: C.extract_chroma(np.zeros((2, 0, 100)), SR), "empty"),
        (lambda: C.extract_chroma([], SR), "empty"),
        (lambda: C.extract_chroma([np.zeros(10), np.zeros(0)], SR), "empty"),
        (lambda: C.extract_chroma(np.full((1, 100), np.nan), SR), "NaN"),
        (lambda: C.extract_chroma(np.array([[0.0, np.inf, 0.0]]), SR), "NaN or infinite"),
        (lambda: C.extract_chroma(np.zeros(1000), SR), "rank 1"),
        (lambda: C.extract_chroma(np.zeros((1, 1, 1, 10)), SR), "rank 4"),
        (lambda: C.extract_chroma([np.zeros((1, 1, 10))], SR), "rank 3"),
        (lambda: C.extract_chroma(np.zeros((1, 10), np.int16), SR), "integer"),
        (lambda: C.extract_chroma(np.array([["a", "b"]]), SR), "dtype"),
        (lambda: C.extract_chroma(np.zeros((1, 10), np.complex64), SR), "dtype"),
        (lambda: C.extract_chroma(good, 0), "sample_rate"),
        (lambda: C.extract_chroma(good, -16000), "sample_rate"),
        (lambda: C.extract_chroma(good, 1_000_001), "sample_rate"),
        (lambda: C.extract_chroma(good, 1e9), "sample_rate"),
        (lambda: C.extract_chroma(good, float("nan")), "sample_rate"),
        (lambda: C.extract_chroma(good, 44100.5), "whole number"),
        (lambda: C.extract_chroma(good, "44100"), "sample_rate"),
        (lambda: C.extract_chroma(good, True), "sample_rate"),
        (lambda: C.extract_chroma(good, SR, resample_method="sox"), "resample_method"),
        (lambda: C.extract_chroma(good, SR, n_fft=0), "n_fft"),
        (lambda: C.extract_chroma(good, SR, max_seconds=0), "max_seconds"),
        (lambda: C.resample_melody(np.zeros(0), 44100, SR), "empty"),
        (lambda: C.fit_chroma_length(np.zeros((1, 0, 12)), 235), "empty"),
        (lambda: C.fit_chroma_length(np.zeros(12), 235), "chroma must be"),
        (lambda: C.fit_chroma_length(np.full((1, 3, 12), np.nan), 235), "NaN"),
        (lambda: C.fit_chroma_length(np.zeros((1, 3, 12)), 0), "frames"),
        (lambda: C.null_chroma(0, 235), "batch"),
        (lambda: C.melody_window(np.zeros(10), -1, 5), "start"),
    ]
    for fn, words in cases:
        with pytest.raises(ValueError, match=words):
            fn()
    # accepted: a float rate that is a whole number, 1-D and 2-D list items, float16
    assert C.extract_chroma(good, 32000.0).shape == (1, 5, 12)
    assert C.extract_chroma([np.zeros(100), np.zeros((2, 50))], SR).shape == (2, 5, 12)
    assert C.extract_chroma(good.astype(np.float16), SR).shape == (1, 5, 12)
