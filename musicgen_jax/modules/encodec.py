"""EnCodec: SEANet encoder/decoder and the residual vector quantizer, channels-last ([B, T, C]).

Weight norm is folded at load time, so convolutions hold plain kernels [k, in, out]. Padding follows
the reference exactly (non-causal: right gets total // 2, left the rest, plus extra right padding so
the last window is complete; transposed convolutions trim the same amounts).

Encoder and decoder run in two parts, for long inputs (codec.py): the convolutions at the audio rate,
which see a bounded neighbourhood (`conv_reach_frames`) and so can run window by window, and the LSTMs
with the frame-rate convolutions, which run over the whole sequence.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from musicgen_jax.config import EncodecConfig
from musicgen_jax.modules.layers import param_with_axes

Array = jax.Array

_conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def pad1d(x: Array, left: int, right: int, mode: str) -> Array:
    """Pad the time axis of x [B, T, C]; reflect on inputs shorter than the pad zero-extends first."""
    if mode == "constant":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    length = x.shape[1]
    extra = max(0, max(left, right) - length + 1)  # reflect needs length > pad
    if extra:
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    x = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return x[:, : x.shape[1] - extra]


def extra_padding(length: int, kernel: int, stride: int, padding_total: int) -> int:
    """Right padding so that the last window of a strided conv is complete."""
    n_frames = (length - kernel + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel - padding_total)
    return ideal - length


class Conv1d(nn.Module):
    """SEANet conv with the reference's causal / non-causal padding. x [B, T, Cin] -> [B, T', Cout]."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    causal: bool = False
    pad_mode: str = "reflect"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = param_with_axes(self, "kernel", _conv_init, (self.kernel_size, x.shape[-1], self.features),
                                 ("conv_kernel", "conv_in", "conv_out"))
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (self.features,), ("conv_out",))
        effective = (self.kernel_size - 1) * self.dilation + 1
        total = effective - self.stride
        extra = extra_padding(x.shape[1], effective, self.stride, total)
        if self.causal:
            left, right = total, extra
        else:
            right = total // 2
            left, right = total - right, right + extra
        x = pad1d(x, left, right, self.pad_mode)
        y = jax.lax.conv_general_dilated(x, kernel, (self.stride,), "VALID", rhs_dilation=(self.dilation,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias


class ConvTranspose1d(nn.Module):
    """Transposed conv, trimmed like the reference. kernel [k, in, out]: out[t*s + j] += x[t] @ k[j].

    With k a multiple of s (always so in SEANet, k = 2s) it runs as an ordinary conv producing s
    phases per input step, which avoids the s-fold zero-dilated input of the textbook form.
    """

    features: int
    kernel_size: int
    stride: int = 1
    causal: bool = False
    trim_right_ratio: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s = self.kernel_size, self.stride
        kernel = param_with_axes(self, "kernel", _conv_init, (k, x.shape[-1], self.features),
                                 ("conv_kernel", "conv_in", "conv_out"))
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (self.features,), ("conv_out",))
        y = self._phase_conv(x, kernel) if k % s == 0 else self._dilated_conv(x, kernel)
        y = y + bias  # [B, (T-1)*s + k, Cout]
        total = k - s
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        left = total - right
        return y[:, left: y.shape[1] - right]

    def _phase_conv(self, x: Array, kernel: Array) -> Array:
        k, s = self.kernel_size, self.stride
        taps = k // s
        batch, length, cin = x.shape
        # Output step m*s + r gets sum_j x[m - j] @ kernel[j*s + r]: a conv of `taps` taps, s*Cout outputs.
        w = kernel.reshape(taps, s, cin, self.features)  # [taps, s, Cin, Cout]
        w = jnp.flip(w, 0).transpose(0, 2, 1, 3).reshape(taps, cin, s * self.features)  # [taps, Cin, s*Cout]
        xp = jnp.pad(x, ((0, 0), (taps - 1, taps - 1), (0, 0)))
        y = jax.lax.conv_general_dilated(xp, w, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        return y.reshape(batch, (length + taps - 1) * s, self.features)  # [B, (T+taps-1)*s, Cout]

    def _dilated_conv(self, x: Array, kernel: Array) -> Array:
        k = self.kernel_size
        return jax.lax.conv_general_dilated(x, jnp.flip(kernel, 0), (1,), [(k - 1, k - 1)],
                                            lhs_dilation=(self.stride,),
                                            dimension_numbers=("NWC", "WIO", "NWC"))


class LSTM(nn.Module):
    """Stacked LSTM (torch gate order i, f, g, o) with the skip connection around it. x [B, T, C].

    Returns (y [B, T, C], carry): carry holds each layer's (h, c) [B, C] after the first `length` steps
    (default: all T; later steps leave it as it is), and given back as `carry` it continues the sequence
    (streaming decode, codec.py). Default start: zeros."""

    num_layers: int

    @nn.compact
    def __call__(self, x: Array, carry=None, length: Array | None = None):
        dim = x.shape[-1]
        if carry is None:
            zeros = jnp.zeros((x.shape[0], dim), x.dtype)
            carry = ((zeros, zeros),) * self.num_layers
        h, out = x, []
        for layer in range(self.num_layers):
            h, last = self._layer(h, dim, f"layer_{layer}", carry[layer], length)
            out.append(last)
        return h + x, tuple(out)

    def _layer(self, x: Array, dim: int, name: str, carry, length):
        init = nn.initializers.uniform(scale=2 / math.sqrt(dim))
        w_in = param_with_axes(self, f"{name}_w_in", init, (dim, 4 * dim), ("embed", "lstm_gates"))
        w_rec = param_with_axes(self, f"{name}_w_rec", init, (dim, 4 * dim), ("embed", "lstm_gates"))
        bias = param_with_axes(self, f"{name}_bias", nn.initializers.zeros, (4 * dim,), ("lstm_gates",))
        gates_in = jnp.einsum("btc,cg->tbg", x, w_in) + bias  # [T, B, 4C]: input part, all steps at once

        def step(state, inputs):
            (h, c), (g_in, t) = state, inputs
            g = g_in + h @ w_rec
            i, f, gg, o = jnp.split(g, 4, axis=-1)
            c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
            if length is not None:  # steps past `length` keep the carry
                h_new, c_new = jnp.where(t < length, h_new, h), jnp.where(t < length, c_new, c)
            return (h_new, c_new), h_new

        last, hs = jax.lax.scan(step, carry, (gates_in, jnp.arange(x.shape[1])))
        return hs.transpose(1, 0, 2), last  # [B, T, C]


class ResidualBlock(nn.Module):
    """ELU -> conv k (dim -> dim/compress, dilated) -> ELU -> conv 1 (back), plus the skip."""

    cfg: EncodecConfig
    dim: int
    dilation: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.cfg
        conv = dict(causal=c.causal, pad_mode=c.pad_mode)
        h = Conv1d(self.dim // c.compress, c.residual_kernel_size, dilation=self.dilation, name="conv1",
                   **conv)(jax.nn.elu(x))
        h = Conv1d(self.dim, 1, name="conv2", **conv)(jax.nn.elu(h))
        skip = x if c.true_skip else Conv1d(self.dim, 1, name="shortcut", **conv)(x)
        return skip + h


def conv_reach_frames(cfg: EncodecConfig) -> tuple[int, int]:
    """(encoder, decoder) reach of the audio-rate convolutions, in frames: how far (either way) an output
    of `SEANetEncoder(part="convs")` / input of `SEANetDecoder(part="convs")` depends on its neighbours.
    Windows with this much context on each side give the one-pass results at their centre."""
    reach, unit = cfg.kernel_size - 1, 1  # encoder, in samples; unit: samples per step at this depth
    for ratio in reversed(cfg.ratios):
        reach += sum((cfg.residual_kernel_size - 1) * cfg.dilation_base ** j * unit
                     for j in range(cfg.num_residual_layers))
        reach += (2 * ratio - 1) * unit
        unit *= ratio
    encoder = math.ceil(reach / cfg.hop_length) + 1
    reach, unit = 0.0, 1.0  # decoder, in frames; unit: frames per step at this depth
    for ratio in cfg.ratios:
        reach += 2 * unit  # a transposed conv of kernel 2 * stride: two input steps per output
        unit /= ratio
        reach += sum((cfg.residual_kernel_size - 1) * cfg.dilation_base ** j * unit
                     for j in range(cfg.num_residual_layers))
    reach += (cfg.last_kernel_size - 1) * unit
    return encoder, math.ceil(reach) + 1


class SEANetEncoder(nn.Module):
    """wav [B, N, C] -> latents [B, T, D]; strides are the ratios reversed.

    part "convs": wav -> the audio-rate convolutions' output [B, T, D']; part "rest": that -> latents."""

    cfg: EncodecConfig

    @nn.compact
    def __call__(self, x: Array, part: str = "all") -> Array:
        c = self.cfg
        conv = dict(causal=c.causal, pad_mode=c.pad_mode)
        if part in ("all", "convs"):
            x = Conv1d(c.num_filters, c.kernel_size, name="conv_in", **conv)(x)
            dim = c.num_filters
            for i, ratio in enumerate(reversed(c.ratios)):
                for j in range(c.num_residual_layers):
                    x = ResidualBlock(c, dim, c.dilation_base ** j, name=f"block_{i}_{j}")(x)
                x = Conv1d(2 * dim, 2 * ratio, stride=ratio, name=f"down_{i}", **conv)(jax.nn.elu(x))
                dim *= 2
            if part == "convs":
                return x
        if c.lstm_layers:
            x = LSTM(c.lstm_layers, name="lstm")(x)[0]
        return Conv1d(c.dimension, c.last_kernel_size, name="conv_out", **conv)(jax.nn.elu(x))


class SEANetDecoder(nn.Module):
    """latents [B, T, D] -> wav [B, T * hop, C]; no final activation.

    part "start": latents -> the frame-rate part's output [B, T, D']; part "convs": that -> wav. For
    streaming, "start" splits further: part "conv_in" (latents -> the first conv's output) and part "lstm"
    (that -> (the start's output, LSTM carry), from `carry`, see LSTM)."""

    cfg: EncodecConfig

    @nn.compact
    def __call__(self, x: Array, part: str = "all", carry=None, length: Array | None = None):
        c = self.cfg
        conv = dict(causal=c.causal, pad_mode=c.pad_mode)
        dim = c.num_filters * 2 ** len(c.ratios)
        if part in ("all", "start", "conv_in"):
            x = Conv1d(dim, c.kernel_size, name="conv_in", **conv)(x)
            if part == "conv_in":
                return x
        if part in ("all", "start", "lstm"):
            if c.lstm_layers:
                x, carry = LSTM(c.lstm_layers, name="lstm")(x, carry, length)
            if part == "lstm":
                return x, carry
            if part == "start":
                return x
        for i, ratio in enumerate(c.ratios):
            x = ConvTranspose1d(dim // 2, 2 * ratio, stride=ratio, causal=c.causal,
                                trim_right_ratio=c.trim_right_ratio, name=f"up_{i}")(jax.nn.elu(x))
            dim //= 2
            for j in range(c.num_residual_layers):
                x = ResidualBlock(c, dim, c.dilation_base ** j, name=f"block_{i}_{j}")(x)
        return Conv1d(c.channels, c.last_kernel_size, name="conv_out", **conv)(jax.nn.elu(x))


class ResidualVQ(nn.Module):
    """Residual vector quantizer: K codebooks [K, card, D], nearest codeword on the residual."""

    cfg: EncodecConfig

    def setup(self):
        c = self.cfg
        self.codebooks = param_with_axes(self, "codebooks", nn.initializers.normal(1.0),
                                         (c.num_codebooks, c.codebook_size, c.dimension),
                                         ("codebooks", "vocab", "embed"))

    def encode(self, z: Array, num_codebooks: int | None = None) -> Array:
        """z [B, T, D] -> codes [B, K, T] int32."""
        codes = []
        residual = z
        for q in range(num_codebooks or self.cfg.num_codebooks):
            book = self.codebooks[q]  # [card, D]
            dist = (jnp.sum(residual ** 2, -1, keepdims=True) - 2 * residual @ book.T
                    + jnp.sum(book ** 2, -1))  # [B, T, card]
            idx = jnp.argmin(dist, axis=-1).astype(jnp.int32)
            residual = residual - book[idx]
            codes.append(idx)
        return jnp.stack(codes, axis=1)

    def decode(self, codes: Array) -> Array:
        """codes [B, K, T] -> latents [B, T, D]: the sum of the chosen codewords."""
        books = self.codebooks[: codes.shape[1]]  # [K, card, D]
        picked = jax.vmap(lambda book, idx: book[idx], in_axes=(0, 1), out_axes=1)(books, codes)
        return picked.sum(axis=1)  # [B, T, D]

    def __call__(self, z: Array) -> Array:
        return self.decode(self.encode(z))


class Encodec(nn.Module):
    """The codec on one mono/multichannel stream, channels-last. Stereo interleaving lives in codec.py."""

    cfg: EncodecConfig

    def setup(self):
        self.encoder = SEANetEncoder(self.cfg)
        self.decoder = SEANetDecoder(self.cfg)
        self.quantizer = ResidualVQ(self.cfg)

    def encode(self, wav: Array, num_codebooks: int | None = None) -> Array:
        """wav [B, N, C] -> codes [B, K, ceil(N / hop)]."""
        return self.quantizer.encode(self.encoder(wav), num_codebooks)

    def decode(self, codes: Array) -> Array:
        """codes [B, K, T] -> wav [B, T * hop, C]."""
        return self.decoder(self.quantizer.decode(codes))

    # the two parts of each, for windowed processing of long inputs (see conv_reach_frames)
    def encode_convs(self, wav: Array) -> Array:
        """wav [B, N, C] -> [B, ceil(N / hop), D']: the audio-rate part of `encode`."""
        return self.encoder(wav, part="convs")

    def encode_rest(self, h: Array) -> Array:
        """`encode_convs`'s output -> latents [B, T, D] (`quantize` them for codes)."""
        return self.encoder(h, part="rest")

    def quantize(self, z: Array, num_codebooks: int | None = None) -> Array:
        """latents [B, T, D] -> codes [B, K, T] (frame by frame)."""
        return self.quantizer.encode(z, num_codebooks)

    def decode_start(self, codes: Array) -> Array:
        """codes [B, K, T] -> [B, T, D']: the frame-rate part of `decode`."""
        return self.decoder(self.quantizer.decode(codes), part="start")

    def decode_convs(self, h: Array) -> Array:
        """`decode_start`'s output -> wav [B, T * hop, C]."""
        return self.decoder(h, part="convs")

    # `decode_start` in two, for streaming: the first conv (a few frames of context) and the LSTM (state)
    def decode_conv_in(self, codes: Array) -> Array:
        """codes [B, K, T] -> [B, T, D']: the decoder's first convolution."""
        return self.decoder(self.quantizer.decode(codes), part="conv_in")

    def decode_lstm(self, h: Array, carry=None, length: Array | None = None):
        """`decode_conv_in`'s output -> (`decode_start`'s output, LSTM carry after `length` frames)."""
        return self.decoder(h, part="lstm", carry=carry, length=length)

    def __call__(self, wav: Array) -> Array:
        return self.decode(self.encode(wav))
