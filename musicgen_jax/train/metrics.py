"""Throughput accounting (model FLOPs, MFU) and the metric sink (TensorBoard, JSON lines).

Model FLOPs per training step count matmuls only, forward x 3 (backward = 2 x forward), as in the
PaLM / MaxText convention; the frozen T5 forward is counted once (it has no backward pass).
For an LM of width d, L layers, feed-forward f, K codebooks of cardinality V, S sequence steps, a text
memory of M tokens and a prefix of P steps (melody), per sequence:
    self-attention projections  L * 2 * (S + P) * 4 d^2
    attention scores + values   L * 2 * 2 * (S + P)^2 * d         (full square: what the kernel computes)
    cross-attention             L * 2 * (2 S d^2 + 2 M d^2 + 2 S M d)      (cross-attention models)
    feed-forward                L * 2 * (S + P) * 2 d f
    output heads                2 * S * K * d * V
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from musicgen_jax.config import LMConfig, T5Config
from musicgen_jax.files import atomic_write

# dense bf16 peak FLOP/s per device, by substrings of jax's device_kind (lower case)
PEAK_FLOPS = (
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l4", 121e12), ("a10", 125e12),
    ("tpu v6", 918e12), ("tpu v5p", 459e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v5", 459e12), ("tpu v4", 275e12), ("tpu v3", 123e12),
)


def lm_forward_flops(c: LMConfig, steps: int, text_tokens: int = 0, prefix: int = 0) -> float:
    """Matmul FLOPs of one forward pass over one sequence (see module doc)."""
    d, f, n = c.dim, c.ffn_dim, steps + prefix
    per_layer = 2 * n * 4 * d * d + 4 * n * n * d + 2 * n * 2 * d * f
    if c.cross_attention and text_tokens:
        per_layer += 2 * (2 * steps * d * d + 2 * text_tokens * d * d + 2 * steps * text_tokens * d)
    return c.num_layers * per_layer + 2 * steps * c.num_codebooks * d * c.codebook_size


def t5_forward_flops(c: T5Config, tokens: int) -> float:
    hd = c.num_heads * c.d_kv
    per_layer = 2 * tokens * 4 * c.d_model * hd + 4 * tokens * tokens * hd + 2 * tokens * 2 * c.d_model * c.d_ff
    return c.num_layers * per_layer


def train_step_flops(c: LMConfig, batch: int, steps: int, text_tokens: int, t5: T5Config | None = None) -> float:
    """Model FLOPs of one update over `batch` sequences of `steps` LM steps."""
    prefix = 0
    if c.is_melody:
        prefix = c.chroma_frames + text_tokens
    flops = 3 * batch * lm_forward_flops(c, steps, text_tokens, prefix)
    if t5 is not None:
        flops += batch * t5_forward_flops(t5, text_tokens)
    return float(flops)


def peak_flops(device: Any = None, override_tflops: float | None = None) -> float | None:
    """Per-device peak (FLOP/s) from the override or the device kind; None when unknown (CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    kind = (device or jax.devices()[0]).device_kind.lower()
    for key, value in PEAK_FLOPS:
        if key in kind:
            return value
    return None


def mfu(step_flops: float, seconds: float, num_devices: int, peak: float | None) -> float | None:
    if not peak or seconds <= 0:
        return None
    return step_flops / seconds / (num_devices * peak)


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device metrics of one step -> flat floats ('ce/0', 'ppl/0', ...)."""
    out = {}
    for name, value in metrics.items():
        arr = np.asarray(value)
        if arr.ndim == 0:
            out[name] = float(arr)
        else:
            out.update({f"{name}/{i}": float(v) for i, v in enumerate(arr.reshape(-1))})
    return out


def truncate_jsonl(path: str, last_step: int) -> int:
    """Drop the rows of a metrics JSON-lines file after `last_step` (a resumed run writes them again)
    and torn lines (a writer killed mid-line); the file is replaced atomically. -> rows dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    kept = [line for line in lines if (step := _row_step(line)) is not None and step <= last_step]
    if len(kept) == len(lines) and (not lines or lines[-1].endswith(b"\n")):
        return 0
    def write(tmp):
        with open(tmp, "wb") as f:
            f.writelines(line if line.endswith(b"\n") else line + b"\n" for line in kept)

    atomic_write(path, write)
    return len(lines) - len(kept)


def _row_step(line: bytes) -> int | None:
    """The step of one JSON-lines row; None for a line that is not a complete row."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


class MetricSink:
    """Process 0 writes every step's scalars to TensorBoard event files (events.py, no extra
    dependency) and/or a JSON-lines file (its rows after `resumed_step` dropped first)."""

    def __init__(self, tensorboard: str | None, jsonl: str | None = None, resumed_step: int = 0):
        self.writer = self.jsonl = None
        if jax.process_index() != 0:
            return
        if tensorboard:
            from musicgen_jax.train.events import EventWriter

            self.writer = EventWriter(tensorboard)
        if jsonl:
            os.makedirs(os.path.dirname(os.path.abspath(jsonl)), exist_ok=True)
            truncate_jsonl(jsonl, resumed_step)
            self.jsonl = open(jsonl, "a")

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is not None:
            self.writer.scalars(step, dict(values))
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **values}) + "\n")

    def flush(self) -> None:
        for f in (self.writer, self.jsonl):
            if f is not None:
                f.flush()

    def close(self) -> None:
        for f in (self.writer, self.jsonl):
            if f is not None:
                f.close()
