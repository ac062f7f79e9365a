"""Helpers shared by the T5 and tokenizer tests: reference T5 checkpoints and a tiny sentencepiece model."""
from __future__ import annotations

import numpy as np

from musicgen_jax.testing import T5_BASE, english_corpus, put_in_hub_cache, train_spiece  # noqa: F401 (re-exported)

TINY_T5 = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20)


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
