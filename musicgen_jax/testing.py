"""Utilities for tests, benchmarks, notebooks and CI: random-weight reference MusicGen checkpoints in
both on-disk layouts, a tiny tokenizer, and Hugging Face hub-cache layouts (nothing here downloads
anything). torch and transformers are imported lazily, only by the functions that build or save
reference models, so this module imports without them.

    python -m musicgen_jax.testing write-checkpoint DIR [--layout transformers|audiocraft] [--kind mono|stereo|melody]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys

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


def put_in_hub_cache(cache_dir: str, repo_id: str, files: dict[str, str] | str, revision: str = "1" * 40) -> str:
    """Lay files out as a Hugging Face hub cache entry for `repo_id`; returns the snapshot directory.

    files: {name in repo: local path}, or a directory whose whole content is copied.
    """
    repo_dir = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", revision)
    if isinstance(files, (str, os.PathLike)):
        shutil.copytree(files, snapshot, dirs_exist_ok=True)
    else:
        os.makedirs(snapshot, exist_ok=True)
        for name, source in files.items():
            shutil.copy(source, os.path.join(snapshot, name))
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot


# ------------------------------------------------------------------ sizes of reference models
ENCODEC_32KHZ = dict(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                     hidden_size=128, codebook_size=2048, target_bandwidths=[2.2], use_causal_conv=False,
                     use_conv_shortcut=False, pad_mode="reflect", normalize=False, chunk_length_s=None)
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
# transformers T5Config kwargs of a tiny text encoder: 24 wide (!= the LM's 32, so a text projection exists)
TINY_T5 = dict(vocab_size=300, d_model=24, d_kv=8, d_ff=32, num_layers=2, num_heads=3)
# transformers EncodecConfig kwargs of a tiny 32 kHz codec: hop 8 (4000 frames/s), 4 codebooks of 32 codes
# (80 kbit/s = 4 codebooks x 5 bits x 4000 frames/s)
TINY_ENCODEC = dict(sampling_rate=32000, audio_channels=1, num_filters=4, upsampling_ratios=[4, 2], hidden_size=8,
                    codebook_size=32, target_bandwidths=[80.0], use_causal_conv=False, use_conv_shortcut=False,
                    pad_mode="reflect", normalize=False, chunk_length_s=None)

KINDS = ("mono", "stereo", "melody", "stereo-melody")
LAYOUTS = ("transformers", "audiocraft")
AUDIOCRAFT_VERSION = "1.3.0"


# ------------------------------------------------------------------ reference models (torch)
def reference_musicgen(kind: str = "mono", *, dim: int = 32, layers: int = 2, heads: int = 4,
                       ffn: int | None = None, card: int = 32, text: dict | None = None, codec: dict | None = None,
                       chroma_length: int = 235, widen: bool = True, seed: int = 0,
                       attention: str | None = "eager"):
    """A random-weight transformers MusicGen: MusicgenForConditionalGeneration (kind "mono": 4 codebooks,
    "stereo": 8 codebooks over 2 channels) or MusicgenMelodyForConditionalGeneration ("melody",
    "stereo-melody").

    dim / layers / heads / ffn (default 4 * dim) / card: the decoder; text: T5Config kwargs (default
    TINY_T5; T5_BASE for the real shape); codec: EncodecConfig kwargs (default TINY_ENCODEC with `card`
    codes; ENCODEC_32KHZ for the real one); chroma_length: melody frames (235 = 30 s).
    widen: re-draw the LM weights at scales where the text matters (`widen_lm_`). The codec's codebooks
    are drawn from a normal distribution (transformers initialises them to zeros). Same seed, same
    weights. attention: the attention implementation (None: transformers' default, e.g. sdpa for speed).
    Returns the model in eval mode.
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _quiet_transformers()
    torch.manual_seed(seed)
    decoder = _decoder_kwargs(kind, dim, layers, heads, ffn or 4 * dim, card)
    text = TINY_T5 if text is None else text
    codec = {**TINY_ENCODEC, "codebook_size": card} if codec is None else codec
    model = _new_musicgen(kind, decoder, text, codec, chroma_length)
    if attention is not None:
        model.set_attn_implementation(attention)
    if widen:
        widen_lm_(model, seed)
    _normal_codebooks_(model.audio_encoder)
    return model.eval()


def lm_reference_kwargs(lm) -> dict:
    """reference_musicgen's decoder arguments for an `LMConfig` (e.g. `config.preset("small").lm`)."""
    stereo = len(set(lm.delays)) < lm.num_codebooks
    kind = "-".join(["stereo"] * stereo + ["melody"] * lm.is_melody) or "mono"
    return dict(kind=kind, dim=lm.dim, layers=lm.num_layers, heads=lm.num_heads, ffn=lm.ffn_dim,
                card=lm.codebook_size, chroma_length=lm.chroma_frames)


def reference_encodec(codec: dict | None = None, seed: int = 0):
    """A random transformers EncodecModel (eval mode) whose codebooks are spread over its latents, so that
    encoding gives diverse codes (zeros, or unit-scale random codebooks, map every frame to one code).
    codec: EncodecConfig kwargs (default TINY_ENCODEC)."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    codec = TINY_ENCODEC if codec is None else codec
    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**codec)).eval()
    with torch.no_grad():
        latents = model.encoder(torch.randn(1, codec.get("audio_channels", 1), 4000) * 0.3)[0].T  # [T, D]
        mean, std = latents.mean(0), latents.std(0)
        for q, layer in enumerate(model.quantizer.layers):
            noise = torch.randn_like(layer.codebook.embed) * std
            layer.codebook.embed.copy_(mean + noise if q == 0 else noise * 0.5)
    return model


def random_codec(codec: dict | None = None, seed: int = 0, **kwargs):
    """A random CompressionModel built in JAX (no torch): codebooks spread over its latents like
    `reference_encodec`'s. codec: transformers EncodecConfig kwargs (default TINY_ENCODEC); kwargs go to
    CompressionModel (audio_channels, chunk_seconds)."""
    import flax.linen as nn
    import jax
    import numpy as np

    from musicgen_jax.codec import CompressionModel
    from musicgen_jax.convert.encodec import encodec_config_from_hf
    from musicgen_jax.modules.encodec import Encodec

    cfg = encodec_config_from_hf(TINY_ENCODEC if codec is None else codec)
    module = Encodec(cfg)
    rng = np.random.default_rng(seed)
    wav = np.zeros((1, 4 * cfg.hop_length, cfg.channels), np.float32)
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(seed), wav))["params"]

    def draw(path, leaf):  # numpy draws at init scale: no compiled init (slow on a busy CPU)
        name = path[-1].key
        if name == "bias" or name.endswith("_bias"):
            return np.zeros(leaf.shape, np.float32)
        if name.endswith(("_w_in", "_w_rec")):  # LSTM
            bound = 1 / math.sqrt(leaf.shape[0])
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        return (rng.standard_normal(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    wav = (rng.standard_normal((1, 4000, cfg.channels)) * 0.3).astype(np.float32)
    latents = np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x, method=lambda m, x: m.encoder(x)))(
        params, wav))[0]  # [T, D]
    mean, std = latents.mean(0), latents.std(0)
    noise = rng.standard_normal((cfg.num_codebooks, cfg.codebook_size, cfg.dimension)) * std
    noise[1:] *= 0.5
    noise[0] += mean
    params = {**params, "quantizer": {"codebooks": noise.astype(np.float32)}}
    return CompressionModel(cfg, params, **kwargs)


def widen_lm_(model, seed: int = 0) -> None:
    """Re-draw a transformers MusicGen's LM weights (all but the text and audio encoders) where every
    part matters (the default std 0.02 makes the text nearly irrelevant): linears std 1/sqrt(fan_in),
    embeddings std 1, layer norms around (1, 0), biases std 0.1. In place; its own generator."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
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


def _quiet_transformers() -> None:
    """pad/bos ids equal to vocab_size are MusicGen's normal setup: silence transformers' warnings (and
    its progress bars when saving)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _decoder_kwargs(kind: str, dim: int, layers: int, heads: int, ffn: int, card: int) -> dict:
    stereo = kind.startswith("stereo")
    return dict(vocab_size=card, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1, pad_token_id=card,
                bos_token_id=card, dropout=0.0)


def _new_musicgen(kind: str, decoder: dict, text: dict, codec: dict, chroma_length: int):
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, T5Config)

    text, codec = T5Config(**text), EncodecConfig(**codec)
    if kind.endswith("melody"):
        return MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(
            text_encoder=text, audio_encoder=codec, decoder=MusicgenMelodyDecoderConfig(**decoder),
            num_chroma=12, chroma_length=chroma_length))
    return MusicgenForConditionalGeneration(MusicgenConfig(
        text_encoder=text, audio_encoder=codec, decoder=MusicgenDecoderConfig(**decoder)))


def _normal_codebooks_(encodec) -> None:
    """Unit-normal codebooks (transformers initialises them to zeros), from torch's global generator."""
    import torch

    with torch.no_grad():
        for layer in encodec.quantizer.layers:
            layer.codebook.embed.normal_()


def _is_melody(model) -> bool:
    return model.config.model_type == "musicgen_melody"


# ------------------------------------------------------------------ audiocraft layout (an independent oracle)
def audiocraft_lm_state(model, *, mha_names: bool = False) -> dict:
    """A transformers MusicGen's LM as audiocraft's LMModel state dict (torch tensors), written from
    audiocraft's names: q|k|v packed into `in_proj_weight` (under `.mha.` with mha_names), emb / linears /
    out_norm, per layer norm1 / norm_cross / norm2 / linear1 / linear2, the text projection under
    condition_provider.conditioners.description, and for melody models the chroma projection and the
    chroma extractor's buffers under self_wav."""
    import torch

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    melody = _is_melody(model)
    dec, cfg = "decoder.model.decoder.", model.config.decoder
    out = {}
    for q in range(cfg.num_codebooks):
        out[f"emb.{q}.weight"] = sd[f"{dec}embed_tokens.{q}.weight"]
        out[f"linears.{q}.weight"] = sd[f"decoder.lm_heads.{q}.weight"]
    mha = ".mha" if mha_names else ""
    blocks = [("self_attn", "self_attn", "self_attn_layer_norm", "norm1")]
    if not melody:
        blocks.append(("encoder_attn", "cross_attention", "encoder_attn_layer_norm", "norm_cross"))
    for layer in range(cfg.num_hidden_layers):
        src, dst = f"{dec}layers.{layer}.", f"transformer.layers.{layer}."
        for hf, ac, hf_norm, ac_norm in blocks:
            out[f"{dst}{ac}{mha}.in_proj_weight"] = torch.cat([sd[f"{src}{hf}.{p}_proj.weight"] for p in "qkv"], 0)
            out[f"{dst}{ac}{mha}.out_proj.weight"] = sd[f"{src}{hf}.out_proj.weight"]
            for w in ("weight", "bias"):
                out[f"{dst}{ac_norm}.{w}"] = sd[f"{src}{hf_norm}.{w}"]
        out[f"{dst}linear1.weight"] = sd[f"{src}fc1.weight"]
        out[f"{dst}linear2.weight"] = sd[f"{src}fc2.weight"]
        for w in ("weight", "bias"):
            out[f"{dst}norm2.{w}"] = sd[f"{src}final_layer_norm.{w}"]
    conditioners = "condition_provider.conditioners."
    for w in ("weight", "bias"):
        out[f"out_norm.{w}"] = sd[f"{dec}layer_norm.{w}"]
        out[f"{conditioners}description.output_proj.{w}"] = sd[f"enc_to_dec_proj.{w}"]
        if melody:
            out[f"{conditioners}self_wav.output_proj.{w}"] = sd[f"audio_enc_to_dec_proj.{w}"]
    if melody:  # audiocraft's chroma extractor keeps its filter bank and window in the state dict
        out[f"{conditioners}self_wav.chroma.fbanks"] = torch.zeros(12, 8193)
        out[f"{conditioners}self_wav.chroma.spec.window"] = torch.zeros(16384)
    return out


def audiocraft_xp_cfg(*, dim: int, num_heads: int, num_layers: int, ffn_dim: int, num_codebooks: int, card: int,
                      delays, channels: int = 1, melody: bool = False, sample_rate: int = 32000,
                      segment_duration: float = 30.0, t5_name: str = "t5-base") -> str:
    """A YAML string shaped like audiocraft's exported xp.cfg: the parts a loader reads, plus some noise."""
    import yaml

    cfg = {
        "sample_rate": sample_rate,
        "channels": channels,
        "dataset": {"segment_duration": segment_duration, "batch_size": 192},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": [int(d) for d in delays], "flatten_first": 0, "empty_initial": 0},
            "unroll": {"flattening": [0, 1, 2, 3], "delays": [0, 0, 0, 0]},
        },
        "transformer_lm": {
            "dim": dim, "num_heads": num_heads, "num_layers": num_layers, "hidden_scale": ffn_dim // dim,
            "n_q": num_codebooks, "card": card, "dropout": 0.0, "activation": "gelu", "norm_first": True,
            "bias_ff": False, "bias_attn": False, "bias_proj": False, "past_context": None,
            "causal": True, "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False, "checkpointing": "none",
            "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True,
            "norm": "layer_norm", "cross_attention": False, "qk_layer_norm": False,
            "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.2 if melody else 0.3, "inference_coef": 3.0},
        "conditioners": {"description": {"model": "t5", "t5": {"name": t5_name, "finetune": False,
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


def model_xp_cfg(model, *, segment_duration: float = 30.0, t5_name: str = "t5-base") -> str:
    """audiocraft_xp_cfg for a transformers MusicGen, read from its config (stereo: delays 0, 0, 1, 1, ...)."""
    dec = model.config.decoder
    channels = int(getattr(dec, "audio_channels", 1))
    return audiocraft_xp_cfg(
        dim=dec.hidden_size, num_heads=dec.num_attention_heads, num_layers=dec.num_hidden_layers,
        ffn_dim=dec.ffn_dim, num_codebooks=dec.num_codebooks, card=dec.vocab_size,
        delays=[q // channels for q in range(dec.num_codebooks)], channels=channels, melody=_is_melody(model),
        sample_rate=model.config.audio_encoder.sampling_rate, segment_duration=segment_duration, t5_name=t5_name)


def save_audiocraft_lm(path, model, *, segment_duration: float = 30.0, t5_name: str = "t5-base",
                       mha_names: bool = False, xp_cfg: str | None = None) -> str:
    """audiocraft's exported LM file (`state_dict.bin`): {'best_state', 'xp.cfg', 'version', 'exported'}.
    xp_cfg replaces the config read from the model (model_xp_cfg)."""
    import torch

    if xp_cfg is None:
        xp_cfg = model_xp_cfg(model, segment_duration=segment_duration, t5_name=t5_name)
    pkg = {"best_state": audiocraft_lm_state(model, mha_names=mha_names), "xp.cfg": xp_cfg,
           "version": AUDIOCRAFT_VERSION, "exported": True}
    torch.save(pkg, path)
    return str(path)


def save_compression_pointer(path, codec_name: str) -> str:
    """audiocraft's `compression_state_dict.bin` of the official models: a pointer to a pretrained EnCodec."""
    import torch

    torch.save({"pretrained": codec_name, "exported": True, "version": AUDIOCRAFT_VERSION}, path)
    return str(path)


# ------------------------------------------------------------------ checkpoints on disk
def save_reference_musicgen(directory, *, layout: str = "transformers", segment_duration: float = 30.0,
                            t5_name: str | None = None, codec_name: str | None = None,
                            spiece_vocab: int | None = None, **reference_kwargs):
    """Build `reference_musicgen(**reference_kwargs)` and save it in one of the official layouts, with a
    trained tiny sentencepiece model (spiece_vocab pieces: default min(160, the T5 vocabulary)).

    layout "transformers": `save_pretrained` + spiece.model in `directory`.
    layout "audiocraft": `state_dict.bin` (LM in audiocraft's names; xp.cfg with
    dataset.segment_duration = segment_duration and the T5 named t5_name) and
    `compression_state_dict.bin` (a pointer to codec_name), plus the companions those names refer to:
    the T5 encoder (transformers layout, with spiece.model) in `directory/t5` and the EnCodec
    (transformers layout) in `directory/encodec`. t5_name / codec_name default to the absolute paths of
    those folders; pass hub names to resolve them elsewhere (e.g. a hub cache made with
    `put_in_hub_cache` from the companions). For melody models in the audiocraft layout the chroma
    frames follow segment_duration (235 for 30 s): pass a matching chroma_length. Returns the torch model.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "transformers" and (t5_name or codec_name):
        raise ValueError("t5_name and codec_name name the companions of the audiocraft layout only")
    model = reference_musicgen(**reference_kwargs)
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    vocab = spiece_vocab or min(160, model.config.text_encoder.vocab_size)
    if layout == "transformers":
        model.save_pretrained(directory)
        train_spiece(directory, vocab)
        return model
    t5_dir, codec_dir = os.path.join(directory, "t5"), os.path.join(directory, "encodec")
    model.text_encoder.save_pretrained(t5_dir)
    train_spiece(t5_dir, vocab)
    model.audio_encoder.save_pretrained(codec_dir)
    save_audiocraft_lm(os.path.join(directory, "state_dict.bin"), model, segment_duration=segment_duration,
                       t5_name=t5_name or t5_dir)
    save_compression_pointer(os.path.join(directory, "compression_state_dict.bin"), codec_name or codec_dir)
    return model


# ------------------------------------------------------------------ command line
def main(argv=None) -> int:
    """`write-checkpoint DIR`: a tiny random checkpoint (needs torch and transformers), e.g. for CI."""
    parser = argparse.ArgumentParser(prog="python -m musicgen_jax.testing",
                                     description="Random-weight reference checkpoints for tests and CI.")
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-checkpoint", help="write a tiny random MusicGen checkpoint into DIR")
    write.add_argument("directory", metavar="DIR")
    write.add_argument("--layout", choices=LAYOUTS, default="transformers")
    write.add_argument("--kind", choices=KINDS, default="mono")
    write.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_reference_musicgen(args.directory, layout=args.layout, kind=args.kind, seed=args.seed)
    print(f"wrote a tiny random {args.kind} MusicGen ({args.layout} layout) to {os.path.abspath(args.directory)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
