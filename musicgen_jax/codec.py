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

Streaming (`CompressionModel.stream_decoder`, `StreamDecoder`): codes that arrive a chunk at a time are
decoded to the audio `decode` gives for all of them, the LSTM carrying its state from chunk to chunk.
"""
from __future__ import annotations

import math
import os
from functools import cached_property, partial

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

    @cached_property
    def _stream_start_fn(self):  # codes [B, K*G, W], offset, length, carry -> ([B*G, block, D'], carry)
        def run(params, codes, offset, length, carry, block):
            h = self._module.apply({"params": params}, self._codes_in(codes), method=Encodec.decode_conv_in)
            h = jnp.pad(h, ((0, 0), (0, block), (0, 0)))  # [B*G, W + block, D']: a block fits from any offset
            h = jax.lax.dynamic_slice_in_dim(h, offset, block, axis=1)  # [B*G, block, D']
            return self._module.apply({"params": params}, h, carry, length, method=Encodec.decode_lstm)

        return jax.jit(run, static_argnames="block")

    # ------------------------------------------------------------------ API
    def stream_decoder(self, block_frames: int | None = None) -> "StreamDecoder":
        """A decoder for codes that arrive a piece at a time (see StreamDecoder). block_frames: frames per
        compiled call (default and at most the window of long inputs, `chunk_seconds`; 1 s without one)."""
        cap = self.chunk_frames or max(1, round(self.frame_rate))
        if block_frames is not None and not (isinstance(block_frames, int) and block_frames >= 1):
            raise ValueError(f"block_frames must be a positive integer, got {block_frames!r}")
        return StreamDecoder(self, min(block_frames or cap, cap))

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


class StreamDecoder:
    """Codes pushed a piece at a time -> the audio `CompressionModel.decode` gives for all of them, as
    soon as it is final.

        decoder = codec.stream_decoder(block_frames)
        for codes in pieces:                  # [B, K, n] each, in order
            audio = decoder.push(codes)      # [B, C, m * hop]: the frames whose audio is now final
        audio = decoder.finish()              # the rest (the end of the sequence is known now)

    The decoder runs in three stages, each on windows of fixed shapes (one compiled program per stage,
    whatever the pieces):
      * codebook sum and first conv (frame rate): blocks of `block` frames, each window holding
        `kernel_size - 1` frames of codes on either side (or the sequence's start / end);
      * LSTM: each block continues from the carry of the one before (`Encodec.decode_lstm`), as one pass;
      * the audio-rate convolutions: `block` frames with `conv_reach_frames` of context on either side, as
        `decode`'s own windows.
    A frame's audio is therefore final (kernel_size - 1) + reach frames after it (7 frames, 140 ms, for
    EnCodec 32 kHz) or at `finish`. Results equal one pass up to float rounding (the same operations on
    windows of other shapes).
    """

    def __init__(self, codec: CompressionModel, block_frames: int):
        self.codec, self.block = codec, block_frames
        self.code_context = codec.config.kernel_size - 1  # the first conv's reach, in frames, either side
        self.context = codec.decode_context  # the audio-rate convolutions' reach (conv_reach_frames)
        self.codes: np.ndarray | None = None  # [B, K, n] int32: every frame pushed so far
        self.frames_done = 0  # frames through the LSTM
        self.frames_out = 0  # frames whose audio has been returned
        self._carry = None
        self._h = None  # [B*G, m, D']: LSTM outputs of frames [_h_start, frames_done)
        self._h_start = 0

    def push(self, codes) -> np.ndarray:
        """Append codes [B, K, n] (n >= 1); -> float32 audio [B, C, m * hop] of the m frames now final."""
        codes = np.asarray(self.codec._check_codes(codes))
        if self.codes is None:
            self.codes = codes
        elif codes.shape[:2] != self.codes.shape[:2]:
            raise ValueError(f"codes [{codes.shape[0]}, {codes.shape[1]}, ...] do not continue the stream's "
                             f"[{self.codes.shape[0]}, {self.codes.shape[1]}, ...]")
        else:
            self.codes = np.concatenate([self.codes, codes], axis=-1)
        return self._advance(final=False)

    def finish(self) -> np.ndarray:
        """The end of the sequence: -> the audio of every frame not returned yet."""
        if self.codes is None:
            raise ValueError("nothing to decode: push codes before finish()")
        return self._advance(final=True)

    def _advance(self, final: bool) -> np.ndarray:
        codec, block, hop = self.codec, self.block, self.codec.hop_length
        total = self.codes.shape[-1]
        batch_groups = self.codes.shape[0] * codec._groups
        if self._carry is None:
            dim = codec.config.num_filters * 2 ** len(codec.config.ratios)
            zeros = jnp.zeros((batch_groups, dim), jnp.float32)
            self._carry = ((zeros, zeros),) * codec.config.lstm_layers
            self._h = np.zeros((batch_groups, 0, dim), np.float32)

        limit = total if final else total - self.code_context  # frames whose first conv output is final
        while self.frames_done < limit:
            start = self.frames_done
            length = min(block, limit - start)
            lo, window = _window(self.codes, start - self.code_context, block + 2 * self.code_context, total,
                                 final, axis=2)
            h, self._carry = codec._stream_start_fn(codec.params, jnp.asarray(window), jnp.int32(start - lo),
                                                    jnp.int32(length), self._carry, block=block)
            self._h = np.concatenate([self._h, np.asarray(h)[:, :length]], axis=1)
            self.frames_done += length

        ready = total if final else self.frames_done - self.context  # frames whose audio is final
        width = block + 2 * self.context
        pieces = []
        while self.frames_out < ready:
            a = self.frames_out
            b = min(a + block, ready)
            lo, window = _window(self._h, b + self.context - width - self._h_start, width,
                                 self.frames_done - self._h_start, final, axis=1)
            lo += self._h_start
            wav = np.asarray(codec._decode_convs_fn(codec.params, jnp.asarray(window)))  # [B, C, W * hop]
            pieces.append(wav[..., (a - lo) * hop: (b - lo) * hop])
            self.frames_out = b
        keep = max(self._h_start, self.frames_out - width)  # the earliest frame a later window reads
        self._h, self._h_start = self._h[:, keep - self._h_start:], keep
        if not pieces:
            return np.zeros((self.codes.shape[0], codec.channels, 0), np.float32)
        return np.concatenate(pieces, axis=-1)


def _window(x: np.ndarray, lo: int, width: int, available: int, final: bool, axis: int) -> tuple[int, np.ndarray]:
    """`width` steps of x along `axis` from `lo` (clipped at 0) -> (start, window). Past the `available`
    steps the window is zero-padded, except at the end of the sequence (`final`): a window that would
    reach past it ends there instead (its padding is then the convolution's own, as in one pass), and
    holds fewer steps only when the whole sequence is shorter than `width`."""
    lo = max(0, lo)
    if final and lo + width > available:
        lo = max(0, available - width)
        return lo, np.take(x, range(lo, available), axis=axis)
    window = np.take(x, range(lo, min(lo + width, available)), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, width - window.shape[axis])
    return lo, np.pad(window, pad)
