"""The LM tests' reference models (musicgen_jax.testing's builder at the LM tests' sizes) and helpers.

Imports without torch: the models are built, and saved, by functions that import it."""
from __future__ import annotations

import numpy as np

from musicgen_jax.config import LMConfig
from musicgen_jax import testing

TEXT_DIM = 24  # tiny text encoder width: != dim, so transformers keeps its enc_to_dec_proj
LM_TEXT = dict(vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=3)
LM_CODEC = dict(num_filters=4, upsampling_ratios=[2, 2], hidden_size=8, codebook_size=32, num_lstm_layers=1,
                target_bandwidths=[1.5])


def make_hf_model(kind: str = "mono", *, dim: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                  card: int = 32, chroma_length: int = 6, seed: int = 0):
    """testing.reference_musicgen (widened, eager, eval) with the LM tests' text encoder and codec."""
    return testing.reference_musicgen(kind, dim=dim, layers=layers, heads=heads, ffn=ffn, card=card, text=LM_TEXT,
                                      codec=LM_CODEC, chroma_length=chroma_length, seed=seed)


def hf_state_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def to_audiocraft_state(model, *, melody: bool = False, mha_names: bool = False) -> dict:
    """testing.audiocraft_lm_state (melody is read from the model; the argument must agree)."""
    if melody != (model.config.model_type == "musicgen_melody"):
        raise ValueError(f"melody={melody} but the model is a {model.config.model_type}")
    return testing.audiocraft_lm_state(model, mha_names=mha_names)


def audiocraft_xp_cfg(config: LMConfig, *, melody: bool = False) -> str:
    """testing.audiocraft_xp_cfg with the sizes of an LMConfig (a preset's, say)."""
    channels = 2 if len(set(config.delays)) < config.num_codebooks else 1
    return testing.audiocraft_xp_cfg(dim=config.dim, num_heads=config.num_heads, num_layers=config.num_layers,
                                     ffn_dim=config.ffn_dim, num_codebooks=config.num_codebooks,
                                     card=config.codebook_size, delays=config.delays, channels=channels,
                                     melody=melody)


def save_audiocraft(path, model, config: LMConfig, *, melody: bool = False, mha_names: bool = False) -> str:
    """`model` as audiocraft's state_dict.bin, its xp.cfg written from `config`."""
    return testing.save_audiocraft_lm(path, model, mha_names=mha_names,
                                      xp_cfg=audiocraft_xp_cfg(config, melody=melody))


def delayed_codes(rng: np.random.Generator, batch: int, frames: int, delays, card: int) -> np.ndarray:
    """Random codes [B, K, T] laid out by the delay pattern: [B, K, T + max(delays) + 1]."""
    from musicgen_jax.patterns import delay_pattern

    codes = rng.integers(0, card, size=(batch, len(delays), frames))
    return np.array(delay_pattern(frames, delays).build(codes, card), dtype=np.int64)
