"""The user-facing audio codec: jitted encode/decode with input checks and stereo interleaving.

Stereo models run the mono codec on each channel and interleave the streams per codebook
([1L, 1R, 2L, 2R, ...]), as audiocraft's InterleaveStereoCompressionModel does.
"""
from __future__ import annotations

import json
import os
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax.config import EncodecConfig
from musicgen_jax.modules.encodec import Encodec


class CompressionModel:
    """EnCodec with params bound. encode: wav [B, C, N] -> codes [B, K*C', T]; decode the reverse."""

    def __init__(self, config: EncodecConfig, params, audio_channels: int | None = None):
        self.config = config
        self.params = jax.tree.map(jnp.asarray, params)
        self.audio_channels = audio_channels or config.channels
        if self.audio_channels not in (config.channels, 2 * config.channels):
            raise ValueError(f"a {config.channels}-channel codec cannot serve {self.audio_channels} channels")
        self._module = Encodec(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str, audio_channels: int | None = None) -> "CompressionModel":
        """An EnCodec checkpoint, or the codec inside a MusicGen checkpoint (either layout)."""
        from musicgen_jax import hub
        from musicgen_jax.convert.encodec import load_encodec

        config, params = load_encodec(name_or_path)
        if audio_channels is None and not os.path.isfile(os.path.expanduser(str(name_or_path))):
            hf_config = os.path.join(hub.resolve_encodec(name_or_path)[0], "config.json")
            if os.path.isfile(hf_config):
                with open(hf_config) as f:
                    audio_channels = json.load(f).get("decoder", {}).get("audio_channels")
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
    @cached_property
    def _encode_fn(self):
        def encode(params, wav):  # wav [B, C, N] -> codes [B, K*G, T]
            b, c, n = wav.shape
            g = self._groups
            x = wav.reshape(b * g, c // g, n).transpose(0, 2, 1)  # [B*G, N, Cc]
            codes = self._module.apply({"params": params}, x, method=Encodec.encode)  # [B*G, K, T]
            k, t = codes.shape[1:]
            codes = codes.reshape(b, g, k, t).transpose(0, 2, 1, 3)  # [B, K, G, T]
            return codes.reshape(b, k * g, t)

        return jax.jit(encode)

    @cached_property
    def _decode_fn(self):
        def decode(params, codes):  # codes [B, K*G, T] -> wav [B, C, T*hop]
            b, kg, t = codes.shape
            g = self._groups
            codes = codes.reshape(b, kg // g, g, t).transpose(0, 2, 1, 3).reshape(b * g, kg // g, t)
            wav = self._module.apply({"params": params}, codes, method=Encodec.decode)  # [B*G, N, Cc]
            n, cc = wav.shape[1:]
            return wav.transpose(0, 2, 1).reshape(b, g * cc, n)

        return jax.jit(decode)

    # ------------------------------------------------------------------ API
    def encode(self, wav) -> jax.Array:
        """wav [B, C, N] float at `sample_rate` -> codes [B, K, ceil(N / hop)] int32."""
        wav = self._check_wav(wav)
        return self._encode_fn(self.params, wav)

    def decode(self, codes) -> jax.Array:
        """codes [B, K, T] -> wav [B, C, T * hop] float32."""
        codes = self._check_codes(codes)
        return self._decode_fn(self.params, codes)

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
        codes = jnp.asarray(codes, jnp.int32)
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.cardinality:
            raise ValueError(f"codes out of range [0, {self.cardinality}): min {lo}, max {hi}")
        return codes
