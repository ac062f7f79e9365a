"""The user-facing audio codec: jitted encode/decode with input checks and stereo interleaving.

Stereo models run the mono codec on each channel and interleave the streams per codebook
([1L, 1R, 2L, 2R, ...]), as audiocraft's InterleaveStereoCompressionModel does.

Long inputs (an hour of audio needs tens of GB of activations at once) are processed in windows, with
the results of one pass: only the audio-rate convolutions (where the memory goes) run window by window,
each window keeping `chunk_seconds` and seeing as much context on each side as those convolutions
reach (`modules.encodec.conv_reach_frames`: a few frames), and the LSTMs and frame-rate convolutions
run over the whole sequence (50 frames/s: an hour of it is [180000, 1024] floats). Windowing results at
the LSTM would not be exact: MusicGen's EnCodec 32 kHz has no segments of its own (segment None) and its
LSTMs carry state across the whole input.
"""
from __future__ import annotations

import math
import os
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax.config import EncodecConfig
from musicgen_jax.modules.encodec import Encodec, conv_reach_frames

CHUNK_SECONDS = 30.0  # audio-rate convolutions see at most this much (+ context) at once


def _windows(total: int, chunk: int, context: int) -> list[tuple[int, int, int]]:
    """(start, keep_lo, keep_hi) frames of equal windows of `chunk + 2 * context` frames covering `total`:
    window j starts `context` before its kept frames [keep_lo, keep_hi), shifted to stay inside."""
    width = chunk + 2 * context
    return [(min(max(0, lo - context), total - width), lo, min(lo + chunk, total))
            for lo in range(0, total, chunk)]


class CompressionModel:
    """EnCodec with params bound. encode: wav [B, C, N] -> codes [B, K*C', T]; decode the reverse."""

    def __init__(self, config: EncodecConfig, params, audio_channels: int | None = None, *,
                 chunk_seconds: float | None = CHUNK_SECONDS):
        self.config = config
        self.params = jax.tree.map(jnp.asarray, params)
        self.audio_channels = audio_channels or config.channels
        if self.audio_channels not in (config.channels, 2 * config.channels):
            raise ValueError(f"a {config.channels}-channel codec cannot serve {self.audio_channels} channels")
        self._module = Encodec(config)
        if chunk_seconds is not None and not (math.isfinite(chunk_seconds) and chunk_seconds > 0):
            raise ValueError(f"chunk_seconds must be a positive number of seconds or None, got {chunk_seconds!r}")
        # windows in frames; None: always one pass (memory grows with the input's length)
        self.chunk_frames = None if chunk_seconds is None else max(1, round(chunk_seconds * config.frame_rate))
        self.encode_context, self.decode_context = conv_reach_frames(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str, audio_channels: int | None = None) -> "CompressionModel":
        """An EnCodec checkpoint, or the codec inside a MusicGen checkpoint (either layout)."""
        from musicgen_jax import hub
        from musicgen_jax.convert.common import naming, read_json
        from musicgen_jax.convert.encodec import load_encodec

        config, params = load_encodec(name_or_path)
        if audio_channels is None and not os.path.isfile(os.path.expanduser(str(name_or_path))):
            hf_config = os.path.join(hub.resolve_encodec(name_or_path)[0], "config.json")
            if os.path.isfile(hf_config):
                with naming(hf_config):
                    audio_channels = read_json(hf_config).get("decoder", {}).get("audio_channels")
        return cls(config, params, audio_channels)

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def channels(self) -> int:
        return self.audio_channels

    @property
    def cardinality(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        """Token streams per item: codec codebooks x channel groups (8 for stereo MusicGen)."""
        return self.config.num_codebooks * self._groups

    @property
    def _groups(self) -> int:
        return self.audio_channels // self.config.channels

    # ------------------------------------------------------------------ jitted cores
    # Channel groups (stereo = two mono streams) ride on the batch axis: [B, C, N] <-> [B*G, N, C/G].
    def _wav_in(self, wav):
        b, c, n = wav.shape
        return wav.reshape(b * self._groups, c // self._groups, n).transpose(0, 2, 1)

    def _wav_out(self, wav):
        bg, n, cc = wav.shape
        return wav.transpose(0, 2, 1).reshape(bg // self._groups, self._groups * cc, n)

    def _codes_in(self, codes):  # [B, K*G, T] (interleaved per codebook) -> [B*G, K, T]
        b, kg, t = codes.shape
        g = self._groups
        return codes.reshape(b, kg // g, g, t).transpose(0, 2, 1, 3).reshape(b * g, kg // g, t)

    def _codes_out(self, codes):
        bg, k, t = codes.shape
        g = self._groups
        return codes.reshape(bg // g, g, k, t).transpose(0, 2, 1, 3).reshape(bg // g, k * g, t)

    @cached_property
    def _encode_fn(self):  # wav [B, C, N] -> codes [B, K*G, T]
        return jax.jit(lambda params, wav: self._codes_out(self._module.apply(
            {"params": params}, self._wav_in(wav), method=Encodec.encode)))

    @cached_property
    def _decode_fn(self):  # codes [B, K*G, T] -> wav [B, C, T*hop]
        return jax.jit(lambda params, codes: self._wav_out(self._module.apply(
            {"params": params}, self._codes_in(codes), method=Encodec.decode)))

    @cached_property
    def _encode_convs_fn(self):  # wav [B, C, N] -> [B*G, T, D']
        return jax.jit(lambda params, wav: self._module.apply(
            {"params": params}, self._wav_in(wav), method=Encodec.encode_convs))

    @cached_property
    def _encode_rest_fn(self):  # [B*G, T, D'] -> latents [B*G, T, D]
        return jax.jit(lambda params, h: self._module.apply({"params": params}, h, method=Encodec.encode_rest))

    @cached_property
    def _quantize_fn(self):  # latents [B*G, T, D] -> codes [B, K*G, T]
        return jax.jit(lambda params, z: self._codes_out(self._module.apply(
            {"params": params}, z, method=Encodec.quantize)))

    @cached_property
    def _decode_start_fn(self):  # codes [B, K*G, T] -> [B*G, T, D']
        return jax.jit(lambda params, codes: self._module.apply(
            {"params": params}, self._codes_in(codes), method=Encodec.decode_start))

    @cached_property
    def _decode_convs_fn(self):  # [B*G, T, D'] -> wav [B, C, T*hop]
        return jax.jit(lambda params, h: self._wav_out(self._module.apply(
            {"params": params}, h, method=Encodec.decode_convs)))

    # ------------------------------------------------------------------ API
    def encode(self, wav) -> jax.Array:
        """wav [B, C, N] float at `sample_rate` -> codes [B, K, ceil(N / hop)] int32.

        Inputs longer than a window are encoded window by window (see the module's docstring)."""
        wav = self._check_wav(wav)
        n, hop = wav.shape[-1], self.hop_length
        frames = -(-n // hop)
        if not self._windowed(frames, self.encode_context):
            return self._encode_fn(self.params, wav)
        width = self.chunk_frames + 2 * self.encode_context
        samples = n - (frames - width) * hop  # every window this long: the last one ends at the input's end
        h = jnp.concatenate([self._encode_convs_fn(self.params, wav[..., start * hop: start * hop + samples])
                             [:, lo - start: hi - start]
                             for start, lo, hi in _windows(frames, self.chunk_frames, self.encode_context)], axis=1)
        z = self._encode_rest_fn(self.params, h)
        return jnp.concatenate([self._quantize_fn(self.params, z[:, start: start + self.chunk_frames])
                                [..., lo - start: hi - start]
                                for start, lo, hi in _windows(frames, self.chunk_frames, 0)], axis=-1)

    def decode(self, codes) -> jax.Array:
        """codes [B, K, T] -> wav [B, C, T * hop] float32.

        Long code arrays are decoded window by window (see the module's docstring)."""
        codes = self._check_codes(codes)
        frames, hop = codes.shape[-1], self.hop_length
        if not self._windowed(frames, self.decode_context):
            return self._decode_fn(self.params, codes)
        width = self.chunk_frames + 2 * self.decode_context
        h = self._decode_start_fn(self.params, codes)
        return jnp.concatenate([self._decode_convs_fn(self.params, h[:, start: start + width])
                                [..., (lo - start) * hop: (hi - start) * hop]
                                for start, lo, hi in _windows(frames, self.chunk_frames, self.decode_context)],
                               axis=-1)

    def _windowed(self, frames: int, context: int) -> bool:
        return self.chunk_frames is not None and frames > self.chunk_frames + 2 * context

    def _check_wav(self, wav) -> jax.Array:
        if not hasattr(wav, "shape") or not hasattr(wav, "dtype"):
            raise TypeError(f"wav must be an array [B, C, N], got {type(wav).__name__}")
        if wav.ndim != 3:
            raise ValueError(f"wav must have shape [batch, channels, samples], got shape {tuple(wav.shape)}")
        b, c, n = wav.shape
        if c != self.audio_channels:
            raise ValueError(f"wav has {c} channel(s) but this codec takes {self.audio_channels}")
        if b == 0 or n == 0:
            raise ValueError(f"wav is empty (shape {tuple(wav.shape)})")
        if not np.issubdtype(np.dtype(wav.dtype), np.floating):
            raise ValueError(f"wav must be floating point in [-1, 1], got dtype {wav.dtype}")
        wav = jnp.asarray(wav, jnp.float32)
        if not bool(jnp.isfinite(wav).all()):
            raise ValueError("wav contains NaN or infinite values")
        return wav

    def _check_codes(self, codes) -> jax.Array:
        if not hasattr(codes, "shape") or not hasattr(codes, "dtype"):
            raise TypeError(f"codes must be an integer array [B, K, T], got {type(codes).__name__}")
        if codes.ndim != 3:
            raise ValueError(f"codes must have shape [batch, codebooks, frames], got shape {tuple(codes.shape)}")
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks but this codec uses {self.num_codebooks}")
        if codes.shape[0] == 0 or codes.shape[2] == 0:
            raise ValueError(f"codes are empty (shape {tuple(codes.shape)})")
        if not np.issubdtype(np.dtype(codes.dtype), np.integer):
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        # range first, in the array's own dtype: an int32 cast would wrap int64 codes >= 2**31 into range
        xp = jnp if isinstance(codes, jax.Array) else np
        lo, hi = int(xp.min(codes)), int(xp.max(codes))
        if lo < 0 or hi >= self.cardinality:
            raise ValueError(f"codes out of range [0, {self.cardinality}): min {lo}, max {hi}")
        return jnp.asarray(codes, jnp.int32)
