"""Small utilities shared by tests (no fixtures with state here)."""
from __future__ import annotations

import numpy as np


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    noise = np.sum((reference - estimate) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference ** 2) / noise))


def legacy_weight_norm_names(state: dict) -> dict:
    """parametrizations.weight.original0/1 -> weight_g/weight_v (the official MusicGen repos' style)."""
    out = {}
    for key, value in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        out[key] = value
    return out


def no_grad(fn):
    """`torch.no_grad()` as a decorator that imports torch only when the function runs: collecting a
    test module (the quick loop, -m "not parity") then never imports torch."""
    import functools

    @functools.wraps(fn)
    def without_grad(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_grad
