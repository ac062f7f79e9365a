"""transformers T5 checkpoints (T5EncoderModel, T5ForConditionalGeneration, a MusicGen text encoder)
-> our T5Encoder parameter tree.

transformers layout (prefix omitted):
  shared.weight | encoder.embed_tokens.weight                  [vocab, d_model] (tied; either one)
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v}.weight       [H*D, d_model]
  encoder.block.{i}.layer.0.SelfAttention.o.weight             [d_model, H*D]
  encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight   [buckets, H] (block 0 only)
  encoder.block.{i}.layer.0.layer_norm.weight                  [d_model]
  encoder.block.{i}.layer.1.DenseReluDense.{wi | wi_0, wi_1}.weight      [d_ff, d_model]
  encoder.block.{i}.layer.1.DenseReluDense.wo.weight           [d_model, d_ff]
  encoder.block.{i}.layer.1.layer_norm.weight, encoder.final_layer_norm.weight
Decoder and LM-head keys of a full T5 are skipped.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from musicgen_jax import hub
from musicgen_jax.config import T5Config
from musicgen_jax.convert.common import (CheckpointError, StateDict, abstract_params, finish, linear,
                                         load_transformers_weights, naming, read_json,
                                         transformers_weights_file)
from musicgen_jax.modules.t5 import T5Encoder, init_t5

_SKIPPED_PREFIXES = ("decoder.", "lm_head.")
_FEED_FORWARD = ("relu", "gated-gelu")


def t5_config_from_hf(cfg: Mapping[str, Any]) -> T5Config:
    """A transformers T5 config.json dict -> T5Config. A MusicGen config's `text_encoder` works too."""
    if "text_encoder" in cfg:
        cfg = cfg["text_encoder"]
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in _FEED_FORWARD:
        raise ValueError(f"unsupported T5 feed_forward_proj {proj!r}; supported: {', '.join(_FEED_FORWARD)}")
    defaults = T5Config()
    return T5Config(
        vocab_size=cfg["vocab_size"],
        d_model=cfg["d_model"],
        d_kv=cfg["d_kv"],
        d_ff=cfg["d_ff"],
        num_layers=cfg["num_layers"],
        num_heads=cfg["num_heads"],
        relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
        layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
        feed_forward=proj,
        pad_id=_int_or(cfg.get("pad_token_id"), defaults.pad_id),
        eos_id=_int_or(cfg.get("eos_token_id"), defaults.eos_id),
    )


def _int_or(value, default: int) -> int:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return default if value is None else int(value)


def t5_abstract_params(config: T5Config) -> Any:
    """Shapes/dtypes of T5Encoder params (no allocation)."""
    return abstract_params(lambda: init_t5(T5Encoder(config), jax.random.PRNGKey(0)))


class _Reader:
    """Takes tensors by transformers name, checking each against the shape the config implies.

    Mis-shaped tensors are recorded under their checkpoint name and returned as None, so that the
    final error names the key a user can look for in the file.
    """

    def __init__(self, sd: StateDict, prefix: str):
        self.sd, self.prefix = sd, prefix
        self.bad: list[str] = []

    def __call__(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        key = self.prefix + key
        w = self.sd.take(key)
        if w is not None and tuple(w.shape) != tuple(shape):
            self.bad.append(f"{key}: checkpoint {tuple(w.shape)}, expected {tuple(shape)}")
            return None
        return w

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.sd


def _attention(take: _Reader, p: str, c: T5Config) -> dict[tuple[str, ...], np.ndarray | None]:
    inner = c.num_heads * c.d_kv
    flat = {}
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
        w = take(f"{p}SelfAttention.{theirs}.weight", (inner, c.d_model))
        flat[(ours, "kernel")] = None if w is None else w.T.reshape(c.d_model, c.num_heads, c.d_kv)
    w = take(f"{p}SelfAttention.o.weight", (c.d_model, inner))
    flat[("out", "kernel")] = None if w is None else w.T.reshape(c.num_heads, c.d_kv, c.d_model)
    return flat


def _mlp(take: _Reader, p: str, c: T5Config) -> dict[tuple[str, ...], np.ndarray | None]:
    wi = ("wi_0", "wi_1") if c.feed_forward == "gated-gelu" else ("wi",)
    flat = {(n, "kernel"): linear(take(f"{p}DenseReluDense.{n}.weight", (c.d_ff, c.d_model))) for n in wi}
    flat[("wo", "kernel")] = linear(take(f"{p}DenseReluDense.wo.weight", (c.d_model, c.d_ff)))
    return flat


def _layer(take: _Reader, i: int, c: T5Config) -> dict[tuple[str, ...], np.ndarray | None]:
    p = f"encoder.block.{i}.layer."
    flat = {("pre_attention_layer_norm", "scale"): take(f"{p}0.layer_norm.weight", (c.d_model,)),
            ("pre_mlp_layer_norm", "scale"): take(f"{p}1.layer_norm.weight", (c.d_model,))}
    flat.update({("attention",) + k: v for k, v in _attention(take, f"{p}0.", c).items()})
    flat.update({("mlp",) + k: v for k, v in _mlp(take, f"{p}1.", c).items()})
    return {(f"layers_{i}",) + k: v for k, v in flat.items()}


def _embedding(take: _Reader, c: T5Config) -> np.ndarray | None:
    """The token table: `shared.weight` or the tied `encoder.embed_tokens.weight` (either suffices)."""
    shape, tied = (c.vocab_size, c.d_model), "encoder.embed_tokens.weight"
    if "shared.weight" in take:
        if tied in take:
            take(tied, shape)  # the same tied tensor: consumed so it is not reported as unexpected
        return take("shared.weight", shape)
    return take(tied, shape)


def _finish(flat: dict, sd: StateDict, take: _Reader, config: T5Config) -> dict:
    """`finish`, with the mis-shaped checkpoint keys added to the one error it raises."""
    shapes = f"wrong shapes ({len(take.bad)}): {'; '.join(take.bad)}"
    try:
        params = finish(t5_abstract_params(config), flat, sd, "T5")
    except CheckpointError as e:
        if not take.bad:
            raise
        raise CheckpointError(f"{e}\n  {shapes}") from None
    if take.bad:
        raise CheckpointError(f"T5 checkpoint does not match the model:\n  {shapes}")
    return params


def t5_params_from_state_dict(state: Mapping[str, np.ndarray], config: T5Config, prefix: str = "") -> dict:
    """transformers T5 state dict -> T5Encoder params (numpy tree).

    Only keys starting with `prefix` are read (e.g. "text_encoder." in a MusicGen checkpoint; the
    rest are ignored); decoder and lm_head keys under it are skipped. Raises one CheckpointError
    naming every missing, unexpected and mis-shaped key.
    """
    skipped = tuple(prefix + s for s in _SKIPPED_PREFIXES)
    sd = StateDict({k: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(skipped)})
    take = _Reader(sd, prefix)
    c = config
    rel = take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               (c.relative_attention_num_buckets, c.num_heads))
    flat = {("token_embedder", "embedding"): _embedding(take, c),
            ("relpos_bias", "rel_embedding"): None if rel is None else rel.T,  # -> [H, buckets]
            ("encoder_norm", "scale"): take("encoder.final_layer_norm.weight", (c.d_model,))}
    for i in range(c.num_layers):
        flat.update(_layer(take, i, c))
    return _finish(flat, sd, take, c)


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {directory}: not a transformers T5 checkpoint")
    return read_json(path)


def _resolve(name_or_path: str) -> str:
    """Local dir of a checkpoint; from the hub only config, tokenizer and one weights format
    (safetensors, else torch pickles): see `hub.resolve_t5`."""
    return hub.resolve_t5(name_or_path)


def load_t5(name_or_path: str) -> tuple[T5Config, dict]:
    """(config, params) of a transformers T5 checkpoint: a local dir or a hub name such as "t5-base".

    A MusicGen transformers directory works too: its `text_encoder` config and weights are used.
    """
    directory = _resolve(name_or_path)
    raw = _read_config(directory)
    prefix = "text_encoder." if "text_encoder" in raw else ""
    with naming(os.path.join(directory, "config.json")):
        config = t5_config_from_hf(raw)
    state = load_transformers_weights(directory)
    with naming(transformers_weights_file(directory)):
        params = t5_params_from_state_dict(state, config, prefix=prefix)
    return config, params
