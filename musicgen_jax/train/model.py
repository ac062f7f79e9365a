"""What a training run needs from the model side: configs, modules, the frozen text encoder and its
tokenizer, and (when fine-tuning) the pretrained LM weights as host arrays.

Scratch runs take a preset (`musicgen-small`, ..., or `tiny` for tests), optionally resized through
`lm_overrides`, with a pretrained T5 (`t5-base`) or a random one (tests). Fine-tuning reads a MusicGen
checkpoint in either layout through `convert.checkpoint.load_checkpoint` (the loader inference uses
too) as host numpy arrays, so that no accelerator ever holds an unsharded copy.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musicgen_jax import config as mconfig
from musicgen_jax.config import MusicGenConfig
from musicgen_jax.modules.lm import MusicGenLM, init_lm
from musicgen_jax.modules.lora import LoraConfig, resolve_targets, split_adapters
from musicgen_jax.modules.t5 import T5Encoder
from musicgen_jax.tokenizer import T5Tokenizer
from musicgen_jax.train.config import LoraSection, ModelSection

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class TrainModel:
    """config: the whole model; lm: the trained module (compute dtype, remat); t5 + t5_params: frozen
    text encoder (float32); pretrained: LM params (numpy) to start from, or None for random init;
    source: the checkpoint fine-tuned from (export reuses its text encoder and codec);
    lora: adapters trained instead of the LM weights (modules/lora.py), which then stay frozen in
    `base_dtype`: `pretrained`, or the random init of `seed` when there is none (tests)."""

    config: MusicGenConfig
    lm: MusicGenLM
    t5: T5Encoder
    t5_params: Any
    tokenizer: T5Tokenizer
    pretrained: Any | None = None
    source: str | None = None
    lora: LoraConfig | None = None
    base_dtype: Any = jnp.float32
    base_name: str | None = None  # `model.init_from` as given (a hub name stays one): adapter folders name it

    def init_variables(self, rng: jax.Array) -> Any:
        """Boxed (logically partitioned) random LM variables (with adapters under LoRA)."""
        return init_lm(self.config.lm, rng, dtype=self.lm.dtype, remat=self.lm.remat, lora=self.lora)

    def trainable(self, params: Any) -> Any:
        """The part of a (boxed or plain) LM param tree that is trained: all of it, or the adapters."""
        return params if self.lora is None else split_adapters(params)[1]

    def frozen_base(self, params: Any) -> Any:
        """The frozen LM weights of a LoRA run's param tree (None without LoRA)."""
        return None if self.lora is None else split_adapters(params)[0]


def preset_config(name: str, lm_overrides: dict[str, Any] | None = None) -> MusicGenConfig:
    """'tiny', 'tiny-melody', 'tiny-stereo' or any MusicGen preset name; LM fields may be overridden."""
    if name.startswith("tiny"):
        cfg = mconfig.tiny(melody="melody" in name, stereo="stereo" in name)
    else:
        cfg = mconfig.preset(name)
    if lm_overrides:
        overrides = dict(lm_overrides)
        if "dim" in overrides and "ffn_dim" not in overrides:
            overrides["ffn_dim"] = 4 * overrides["dim"]
        cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, **overrides))
    return cfg


def _load_pretrained(name: str):
    """A MusicGen checkpoint -> (config, LM params, T5 params, tokenizer, its local directory), host arrays
    in the training (scanned) layout."""
    from musicgen_jax.convert.checkpoint import load_checkpoint

    ckpt = load_checkpoint(name)
    return ckpt.config, ckpt.lm_params, ckpt.t5_params, ckpt.tokenizer, ckpt.directory


def random_t5_params(t5_cfg, seed: int) -> Any:
    """A random text encoder drawn on the host with numpy (tests: no XLA compilation needed).
    Shapes come from the module itself; weights ~ N(0, 1/fan_in), norms 1."""
    from musicgen_jax.convert.t5 import t5_abstract_params

    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        fan_in = leaf.shape[0] if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, t5_abstract_params(t5_cfg))


def _text_encoder(section: ModelSection, cfg: MusicGenConfig):
    """(T5Config, params numpy, tokenizer) for a scratch run."""
    if section.t5 == "random":
        if not section.tokenizer:
            raise ValueError("model.t5=random needs model.tokenizer (a spiece.model or a directory holding one)")
        return cfg.t5, random_t5_params(cfg.t5, section.seed + 1), T5Tokenizer.from_pretrained(section.tokenizer)
    from musicgen_jax.convert.t5 import load_t5

    t5_cfg, params = load_t5(section.t5)
    tokenizer = T5Tokenizer.from_pretrained(section.tokenizer or section.t5)
    return t5_cfg, params, tokenizer


def _check_tokenizer(tokenizer: T5Tokenizer, cfg: MusicGenConfig) -> None:
    pieces = tokenizer.sp.get_piece_size()
    if pieces > cfg.t5.vocab_size:
        raise ValueError(f"the tokenizer has {pieces} pieces but the text encoder only {cfg.t5.vocab_size} rows")
    if cfg.t5.d_model != cfg.lm.condition_dim:
        raise ValueError(f"text encoder width {cfg.t5.d_model} != LM condition_dim {cfg.lm.condition_dim}")


def lora_config(section: LoraSection | None, cfg: MusicGenConfig) -> LoraConfig | None:
    """The recipe's `lora` section for this LM (targets resolved), or None for full fine-tuning."""
    if section is None or not section.enabled:
        return None
    try:
        targets = resolve_targets(section.targets, cfg.lm.cross_attention)
    except ValueError as e:
        raise ValueError(f"lora.targets: {e}") from None
    return LoraConfig(rank=section.rank, alpha=float(section.alpha or section.rank), dropout=section.dropout,
                      targets=targets, rslora=section.rslora)


def build_model(section: ModelSection, lora: LoraSection | None = None) -> TrainModel:
    """The modules and weights a run starts from (see module doc); `lora`: the recipe's lora section."""
    lm_overrides = section.lm_overrides
    if section.init_from:
        if lm_overrides:
            raise ValueError("model.lm_overrides cannot resize a pretrained checkpoint (model.init_from)")
        cfg, lm_params, t5_params, tokenizer, source = _load_pretrained(section.init_from)
    else:
        cfg = preset_config(section.preset, lm_overrides)
        t5_cfg, t5_params, tokenizer = _text_encoder(section, cfg)
        cfg = dataclasses.replace(cfg, t5=t5_cfg)
        lm_params, source = None, None
    _check_tokenizer(tokenizer, cfg)
    return _train_model(section, lora, cfg, t5_params=t5_params, tokenizer=tokenizer, pretrained=lm_params,
                        source=source)


def _train_model(section: ModelSection, lora: LoraSection | None, cfg: MusicGenConfig, **weights) -> TrainModel:
    adapters = lora_config(lora, cfg)
    return TrainModel(config=cfg, lm=MusicGenLM(cfg.lm, dtype=_DTYPES[section.dtype], remat=section.remat,
                                                lora=adapters),
                      t5=T5Encoder(cfg.t5), lora=adapters, base_name=section.init_from,
                      base_dtype=_DTYPES[lora.base_dtype] if adapters is not None else jnp.float32, **weights)


def _abstract_t5_config(section: ModelSection, cfg: MusicGenConfig):
    """The text encoder's config of a scratch run, read without its weights."""
    if section.t5 == "random":
        return cfg.t5
    if section.t5.split("/")[-1] == "t5-base":  # every MusicGen's encoder (the T5Config defaults)
        return mconfig.T5Config()
    from musicgen_jax.convert.t5 import _read_config, _resolve, t5_config_from_hf

    return t5_config_from_hf(_read_config(_resolve(section.t5)))


def abstract_model(section: ModelSection, lora: LoraSection | None = None) -> TrainModel:
    """The modules of the run `build_model` would build, without any weights, tokenizer or data (no
    t5_params, no pretrained): what ahead-of-time compiles need. A fine-tuning run (`init_from`) naming an
    official model takes that preset's config; any other checkpoint is loaded for its config."""
    if section.init_from:
        name = section.init_from
        official = not os.path.exists(os.path.expanduser(name)) and (name.startswith("facebook/") or "/" not in name)
        try:
            cfg = mconfig.preset(section.init_from) if official else None
        except ValueError:
            cfg = None
        if cfg is None:
            cfg = _load_pretrained(section.init_from)[0]
    else:
        cfg = preset_config(section.preset, section.lm_overrides)
        cfg = dataclasses.replace(cfg, t5=_abstract_t5_config(section, cfg))
    return _train_model(section, lora, cfg, t5_params=None, tokenizer=None)
