"""Helpers shared by the T5 and tokenizer tests: reference T5 checkpoints and a tiny sentencepiece model."""
from __future__ import annotations

import os
import random

import numpy as np

TINY_T5 = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20)
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)


def reference_t5(seed: int = 0, **overrides):
    """A transformers T5EncoderModel (eval mode) with T5's own random init, made less uniform:
    layer-norm scales away from 1 and a relative bias large enough to change the attention."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(**{**TINY_T5, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
    return model


def reference_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def padded_batch(vocab_size: int, lengths: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids (no pad/eos in the body, eos last) right-padded with 0: ids, mask [B, max(lengths)]."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), np.int32)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, : n - 1] = rng.integers(3, vocab_size, n - 1)
        ids[b, n - 1] = 1
        mask[b, :n] = 1
    return ids, mask


def reference_hidden(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)))
    return out.last_hidden_state.numpy()


_WORDS = ("the a music song piano guitar drums bass loud soft happy sad lofi hip hop jazz rock "
          "electronic ambient beat melody rhythm with and of in slow fast upbeat mellow chill dance "
          "orchestra violin synth vocal heavy light dark bright warm cold Piano Jazz Rock").split()
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sta", "pho", "gri", "ven", "dal", "tor", "bu", "xe", "qui")


def english_corpus(num_lines: int = 3000, seed: int = 0) -> list[str]:
    """Generated English-like lines (real words plus made-up ones, digits, punctuation)."""
    rng = random.Random(seed)
    words = list(_WORDS) + ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
                            for _ in range(300)]
    tails = ("", " 120 bpm", " 90s", " (remix)", ", 4/4 time")
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            + rng.choice((".", ",", "!", "?", "")) + rng.choice(tails) for _ in range(num_lines)]


def train_spiece(directory: str, vocab_size: int = 160) -> str:
    """Train a tiny unigram sentencepiece model with T5's special ids into directory/spiece.model."""
    import sentencepiece as spm

    os.makedirs(directory, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english_corpus()), model_prefix=os.path.join(directory, "spiece"),
        vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, minloglevel=2)
    return os.path.join(directory, "spiece.model")


def put_in_hub_cache(cache_dir: str, repo_id: str, files: dict[str, str], revision: str = "1" * 40) -> str:
    """Copy files ({name in repo: local path}) into a Hugging Face cache layout; -> the snapshot dir."""
    import shutil

    repo_dir = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", revision)
    os.makedirs(snapshot, exist_ok=True)
    for name, source in files.items():
        shutil.copy(source, os.path.join(snapshot, name))
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot
