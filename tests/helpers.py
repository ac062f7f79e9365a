"""Small utilities shared by tests (no fixtures with state here)."""
from __future__ import annotations

import os
import shutil

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


def write_hub_cache(cache_dir: str, repo_id: str, source_dir: str, revision: str = "0" * 40) -> str:
    """Lay `source_dir` out as a Hugging Face hub cache entry for `repo_id`; returns the snapshot dir."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", revision)
    shutil.copytree(source_dir, snapshot, dirs_exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot
