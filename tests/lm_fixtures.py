"""Reference MusicGen models (transformers, random weights) and layout converters for the LM tests."""
from __future__ import annotations

import math

import numpy as np
import torch
import yaml

from musicgen_jax.config import LMConfig

TEXT_DIM = 24  # tiny text encoder width: != dim, so transformers keeps its enc_to_dec_proj


def _text_and_audio_configs():
    from transformers import EncodecConfig, T5Config

    t5 = T5Config(vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=3)
    enc = EncodecConfig(num_filters=4, upsampling_ratios=[2, 2], hidden_size=8, codebook_size=32,
                        num_lstm_layers=1, target_bandwidths=[1.5])
    return t5, enc


def make_hf_model(kind: str = "mono", *, dim: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                  card: int = 32, chroma_length: int = 6, seed: int = 0):
    """A transformers MusicGen (kind: mono | stereo | melody) with eager attention and wide weights."""
    from transformers import (MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # pad/bos ids equal to vocab_size are MusicGen's normal setup
    torch.manual_seed(seed)
    t5, enc = _text_and_audio_configs()
    stereo = kind == "stereo"
    dec_kwargs = dict(vocab_size=card, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                      ffn_dim=ffn, num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
                      pad_token_id=card, bos_token_id=card, dropout=0.0)
    if kind == "melody":
        cfg = MusicgenMelodyConfig(text_encoder=t5, audio_encoder=enc,
                                   decoder=MusicgenMelodyDecoderConfig(**dec_kwargs),
                                   num_chroma=12, chroma_length=chroma_length)
        model = MusicgenMelodyForConditionalGeneration(cfg)
    else:
        cfg = MusicgenConfig(text_encoder=t5, audio_encoder=enc, decoder=MusicgenDecoderConfig(**dec_kwargs))
        model = MusicgenForConditionalGeneration(cfg)
    model.set_attn_implementation("eager")
    widen_(model, seed)
    return model.eval()


@torch.no_grad()
def widen_(model, seed: int = 0) -> None:
    """Re-draw LM weights at scales where every part matters (REFERENCE.md: the default std 0.02 makes
    the text nearly irrelevant): linears std 1/sqrt(fan_in), embeddings std 1, norms around (1, 0)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if name.startswith(("text_encoder.", "audio_encoder.")):
            continue
        if "layer_norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def hf_state_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def to_audiocraft_state(model, *, melody: bool = False, mha_names: bool = False) -> dict[str, torch.Tensor]:
    """Rename / pack a transformers MusicGen state dict into audiocraft's LMModel names."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dec = "decoder.model.decoder."
    cfg = model.config.decoder
    out: dict[str, torch.Tensor] = {}
    for q in range(cfg.num_codebooks):
        out[f"emb.{q}.weight"] = sd[f"{dec}embed_tokens.{q}.weight"]
        out[f"linears.{q}.weight"] = sd[f"decoder.lm_heads.{q}.weight"]
    mha = ".mha" if mha_names else ""
    for l in range(cfg.num_hidden_layers):
        src, dst = f"{dec}layers.{l}.", f"transformer.layers.{l}."
        blocks = [("self_attn", "self_attn", "self_attn_layer_norm", "norm1")]
        if not melody:
            blocks.append(("encoder_attn", "cross_attention", "encoder_attn_layer_norm", "norm_cross"))
        for hf, ac, hf_norm, ac_norm in blocks:
            out[f"{dst}{ac}{mha}.in_proj_weight"] = torch.cat(
                [sd[f"{src}{hf}.{p}_proj.weight"] for p in ("q", "k", "v")], dim=0)
            out[f"{dst}{ac}{mha}.out_proj.weight"] = sd[f"{src}{hf}.out_proj.weight"]
            for w in ("weight", "bias"):
                out[f"{dst}{ac_norm}.{w}"] = sd[f"{src}{hf_norm}.{w}"]
        out[f"{dst}linear1.weight"] = sd[f"{src}fc1.weight"]
        out[f"{dst}linear2.weight"] = sd[f"{src}fc2.weight"]
        for w in ("weight", "bias"):
            out[f"{dst}norm2.{w}"] = sd[f"{src}final_layer_norm.{w}"]
    for w in ("weight", "bias"):
        out[f"out_norm.{w}"] = sd[f"{dec}layer_norm.{w}"]
        out[f"condition_provider.conditioners.description.output_proj.{w}"] = sd[f"enc_to_dec_proj.{w}"]
        if melody:
            out[f"condition_provider.conditioners.self_wav.output_proj.{w}"] = sd[f"audio_enc_to_dec_proj.{w}"]
    if melody:  # buffers of audiocraft's chroma extractor live in the state dict too
        out["condition_provider.conditioners.self_wav.chroma.fbanks"] = torch.zeros(12, 8193)
        out["condition_provider.conditioners.self_wav.chroma.spec.window"] = torch.zeros(16384)
    return out


def audiocraft_xp_cfg(config: LMConfig, *, melody: bool = False) -> str:
    """A YAML string shaped like audiocraft's exported xp.cfg (only the parts a loader reads + noise)."""
    cfg = {
        "sample_rate": 32000,
        "channels": 2 if len(set(config.delays)) < config.num_codebooks else 1,
        "dataset": {"segment_duration": 30, "batch_size": 192},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(config.delays), "flatten_first": 0, "empty_initial": 0},
            "unroll": {"flattening": [0, 1, 2, 3], "delays": [0, 0, 0, 0]},
        },
        "transformer_lm": {
            "dim": config.dim, "num_heads": config.num_heads, "num_layers": config.num_layers,
            "hidden_scale": config.ffn_dim // config.dim, "n_q": config.num_codebooks,
            "card": config.codebook_size, "dropout": 0.0, "activation": "gelu", "norm_first": True,
            "bias_ff": False, "bias_attn": False, "bias_proj": False, "past_context": None,
            "causal": True, "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False, "checkpointing": "none",
            "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True,
            "norm": "layer_norm", "cross_attention": False, "qk_layer_norm": False,
            "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.2 if melody else 0.3, "inference_coef": 3.0},
        "conditioners": {"description": {"model": "t5", "t5": {"name": "t5-base", "finetune": False,
                                                                "word_dropout": 0.3, "normalize_text": False}}},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
                  "prepend": [], "cross": ["description"], "input_interpolate": []},
    }
    if melody:
        cfg["conditioners"]["self_wav"] = {"model": "chroma_stem", "chroma_stem": {
            "sample_rate": "${sample_rate}", "n_chroma": 12, "radix2_exp": 14, "argmax": True,
            "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}}
        cfg["fuser"]["prepend"] = ["self_wav", "description"]
        cfg["fuser"]["cross"] = []
    return yaml.safe_dump(cfg, sort_keys=False)


def save_audiocraft(path, model, config: LMConfig, *, melody: bool = False, mha_names: bool = False) -> str:
    pkg = {"best_state": to_audiocraft_state(model, melody=melody, mha_names=mha_names),
           "xp.cfg": audiocraft_xp_cfg(config, melody=melody), "version": "1.3.0", "exported": True}
    torch.save(pkg, path)
    return str(path)


def delayed_codes(rng: np.random.Generator, batch: int, frames: int, delays, card: int) -> np.ndarray:
    """Random codes [B, K, T] laid out by the delay pattern: [B, K, T + max(delays) + 1]."""
    from musicgen_jax.patterns import delay_pattern

    codes = rng.integers(0, card, size=(batch, len(delays), frames))
    return np.array(delay_pattern(frames, delays).build(codes, card), dtype=np.int64)
