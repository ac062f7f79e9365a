"""Shared building blocks. Every parameter carries logical axis names (t5x style).

Logical axes used across the package (mapped to mesh axes in `sharding.py`):
  embed, mlp, heads, kv, vocab, codebooks, conv_kernel, conv_in, conv_out, lstm_gates.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from musicgen_jax.modules.lora import lora_branch

Array = jax.Array
Dtype = Any

def default_kernel_init(num_in_axes: int = 1, num_out_axes: int = 1):
    """LeCun-normal over a kernel whose first `num_in_axes` dims are contracted (fan-in = their
    product) and whose last `num_out_axes` dims are outputs, e.g. [embed, heads, kv] or [heads, kv, embed]."""
    return nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(num_in_axes)),
        out_axis=tuple(range(num_in_axes, num_in_axes + num_out_axes)))


def param_with_axes(module: nn.Module, name: str, init, shape, axes: Sequence[str], dtype=jnp.float32):
    """Declare a parameter whose sharding is described by logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, dtype)


class Dense(nn.Module):
    """DenseGeneral with logical axis names on the kernel (and bias).

    features: output feature shape; axis: input axes contracted (default the last).
    kernel_axes: names for kernel dims = contracted input dims + output feature dims.
    lora: a `modules.lora.LoraConfig` to add a low-rank adapter (params lora_a, lora_b), or None.
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, ...]
    axis: int | tuple[int, ...] = -1
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    kernel_init: Any = None  # default: LeCun normal with the fan-in of all contracted axes
    lora: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axis = tuple(a % x.ndim for a in axis)
        in_shape = tuple(x.shape[a] for a in axis)
        init = self.kernel_init or default_kernel_init(len(axis), len(features))
        kernel = param_with_axes(self, "kernel", init, in_shape + features, self.kernel_axes)
        x = x.astype(self.dtype)
        contract = tuple(range(len(axis)))
        y = jax.lax.dot_general(x, kernel.astype(self.dtype), ((axis, contract), ((), ())))
        if self.lora is not None:
            y = y + lora_branch(self, x, axis, features, self.kernel_axes, self.lora, self.dtype)
        if self.use_bias:
            bias_axes = self.kernel_axes[len(axis):]
            bias = param_with_axes(self, "bias", nn.initializers.zeros, features, bias_axes)
            y = y + bias.astype(self.dtype)
        return y


class LayerNorm(nn.Module):
    """LayerNorm with scale and bias, computed in float32 whatever the input dtype."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        scale = param_with_axes(self, "scale", nn.initializers.ones, (dim,), ("embed",))
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (dim,), ("embed",))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(x.dtype)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, computed in float32."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        scale = param_with_axes(self, "scale", nn.initializers.ones, (dim,), ("embed",))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps) * scale
        return y.astype(x.dtype)


def sinusoidal_embedding(positions: Array, dim: int, max_period: float = 10000.0) -> Array:
    """MusicGen positions: phase = pos / max_period^(i / (half - 1)); [cos, sin] (cosine first).

    positions: [..., T] (any int or float) -> [..., T, dim] float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    phase = positions.astype(jnp.float32)[..., None] * freqs  # [..., T, half]
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


def gelu_exact(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)
