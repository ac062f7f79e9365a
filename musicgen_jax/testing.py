"""Utilities for tests and benchmarks: random-weight reference checkpoints on disk, a tiny tokenizer,
and Hugging Face hub-cache layouts (nothing here downloads anything). torch/transformers are
imported lazily, only by the functions that build reference models."""
from __future__ import annotations

import os
import random
import shutil

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


ENCODEC_32KHZ = dict(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                     hidden_size=128, codebook_size=2048, target_bandwidths=[2.2], use_causal_conv=False,
                     use_conv_shortcut=False, pad_mode="reflect", normalize=False, chunk_length_s=None)
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)


def save_random_musicgen(directory: str, preset_name: str = "musicgen-small", seed: int = 0):
    """A random-weight transformers MusicGen with a preset's real shapes (T5-base, EnCodec 32 kHz and
    the preset's decoder), saved with a tiny spiece.model so that MusicGen.from_pretrained loads it.
    Returns the torch model (eval mode, eager attention)."""
    import torch
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)
    from transformers.utils import logging as hf_logging

    from musicgen_jax.config import preset

    lm = preset(preset_name).lm
    if lm.is_melody:
        raise ValueError("save_random_musicgen builds text-conditioned models only")
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    channels = 2 if len(set(lm.delays)) < lm.num_codebooks else 1
    decoder = MusicgenDecoderConfig(vocab_size=lm.codebook_size, hidden_size=lm.dim, num_hidden_layers=lm.num_layers,
                                    num_attention_heads=lm.num_heads, ffn_dim=lm.ffn_dim,
                                    num_codebooks=lm.num_codebooks, audio_channels=channels,
                                    pad_token_id=lm.codebook_size, bos_token_id=lm.codebook_size, dropout=0.0)
    config = MusicgenConfig(text_encoder=T5Config(**T5_BASE), audio_encoder=EncodecConfig(**ENCODEC_32KHZ),
                            decoder=decoder)
    model = MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    model.save_pretrained(directory)
    train_spiece(directory)
    return model
