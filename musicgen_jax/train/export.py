"""Export a trained LM as a transformers-layout MusicGen directory (`MusicGen.from_pretrained` loads it,
and so does transformers' `MusicgenForConditionalGeneration`).

    export_transformers(out_dir, config, lm_params, t5_params, base="facebook/musicgen-small")

The LM tensors are written by `convert.lm.lm_state_dict` from the same key table that reads
transformers checkpoints; the text encoder, the codec, the tokenizer files and the rest of config.json
come from a `base` checkpoint in the transformers layout that shares them (every official MusicGen uses
t5-base and encodec_32khz; a fine-tuning run's own starting checkpoint is the natural base). The base's text encoder must be the one
the run trained with: this is checked.

config.json also records the training window as a top-level "segment_duration" (seconds,
`MusicGenConfig.max_duration`). Weights that are not finite (a diverged run) are refused.

A LoRA run exports either its adapters merged into the base (W + scale * A B, the float32 base weights
of `model.init_from`) as above, or (`adapter_only`) the adapters alone as a PEFT adapter folder
(convert/adapters.py) that transformers + peft load onto the base, as does
`MusicGen.from_pretrained(base, adapters=folder)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from musicgen_jax.config import LMConfig, MusicGenConfig
from musicgen_jax.convert.lm import lm_state_dict

_COPIED_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "preprocessor_config.json")


def _decoder_config(base: dict[str, Any], c: LMConfig, channels: int) -> dict[str, Any]:
    dec = dict(base)
    dec.update(hidden_size=c.dim, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
               ffn_dim=c.ffn_dim, num_codebooks=c.num_codebooks, vocab_size=c.codebook_size,
               audio_channels=channels, pad_token_id=c.codebook_size, bos_token_id=c.codebook_size)
    return dec


def _check_base(raw: dict[str, Any], config: MusicGenConfig, base_dir: str) -> None:
    codec = raw.get("audio_encoder", {})
    problems = []
    if raw.get("model_type") != ("musicgen_melody" if config.lm.is_melody else "musicgen"):
        problems.append(f"model_type {raw.get('model_type')!r}")
    if codec.get("codebook_size") != config.lm.codebook_size:
        problems.append(f"codec codebook size {codec.get('codebook_size')} (LM: {config.lm.codebook_size})")
    if raw.get("text_encoder", {}).get("d_model") != config.lm.condition_dim:
        problems.append(f"text encoder width {raw.get('text_encoder', {}).get('d_model')} "
                        f"(LM: {config.lm.condition_dim})")
    if problems:
        raise ValueError(f"export base {base_dir} does not fit this model: " + "; ".join(problems))


def _check_text_encoder(state: dict[str, np.ndarray], config: MusicGenConfig, t5_params: Any, base_dir: str) -> None:
    from musicgen_jax.convert.t5 import t5_params_from_state_dict

    base_t5 = t5_params_from_state_dict(state, config.t5, prefix="text_encoder.")
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), base_t5, t5_params)
    if not all(jax.tree.leaves(same)):
        raise ValueError(f"the text encoder of export base {base_dir} is not the one this model was trained with")


def check_finite(params: Any) -> None:
    """ValueError naming the first tensor of `params` that holds NaN or infinite values."""
    from musicgen_jax.convert.common import non_finite_tensor

    found = non_finite_tensor(params, "/")
    if found is not None:
        name, bad, size = found
        raise ValueError(f"refusing to export non-finite weights: {name} holds {bad} NaN or infinite value(s) "
                         f"of {size} (the run diverged: export an earlier checkpoint)")


def export_transformers(out_dir: str, config: MusicGenConfig, lm_params: Any, t5_params: Any, base: str) -> str:
    """Write config.json + model.safetensors (+ tokenizer files) to `out_dir`; returns it."""
    from safetensors.numpy import save_file

    check_finite(lm_params)

    from musicgen_jax import hub
    from musicgen_jax.convert.common import load_transformers_weights

    base_dir, layout = hub.resolve_musicgen(base)
    if layout != hub.TRANSFORMERS:
        raise ValueError(f"export base {base} is an audiocraft checkpoint; give one in the transformers layout "
                         "(its text encoder and codec are copied), e.g. facebook/musicgen-small")
    with open(os.path.join(base_dir, "config.json")) as f:
        raw = json.load(f)
    _check_base(raw, config, base_dir)
    state = {k: v for k, v in load_transformers_weights(base_dir).items()
             if k.startswith(("text_encoder.", "audio_encoder."))}
    _check_text_encoder(state, config, t5_params, base_dir)
    state.update(lm_state_dict(lm_params, config.lm))
    raw["decoder"] = _decoder_config(raw.get("decoder", {}), config.lm, config.audio_channels)
    raw["segment_duration"] = float(config.max_duration)  # the training window, read back by the loader
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    for name in _COPIED_FILES:
        if os.path.isfile(os.path.join(base_dir, name)):
            shutil.copy(os.path.join(base_dir, name), os.path.join(out_dir, name))
    return out_dir


def export_state(out_dir: str, model, state, *, base: str | None = None, use_ema: bool = True,
                 adapter_only: bool = False) -> str:
    """A TrainState (EMA weights when present and `use_ema`) -> transformers directory; for a LoRA run
    the adapters merged into its base, or (`adapter_only`) a PEFT adapter folder."""
    lora = getattr(model, "lora", None)
    if adapter_only and lora is None:
        raise ValueError("--adapter-only exports the adapters of a LoRA run; this run trained all LM weights")
    if lora is not None and model.pretrained is None:
        raise ValueError("this LoRA run adapted a randomly initialised LM (no model.init_from): there is no "
                         "base model to merge its adapters into or to name in an adapter folder")
    base = base or model.source
    if base is None and not adapter_only:
        raise ValueError("export needs a base checkpoint in the transformers layout (checkpoint.export_base), "
                         "e.g. facebook/musicgen-small: its text encoder and codec are reused")
    params = state.ema if use_ema and state.ema is not None else state.params
    if jax.process_count() > 1:  # every process takes part in gathering the shards
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        params = jax.tree.map(np.asarray, jax.device_get(params))
        if adapter_only:
            from musicgen_jax.convert.adapters import save_peft_adapters

            save_peft_adapters(out_dir, lora, params, model.config.lm, base=model.base_name or model.source)
        else:
            if lora is not None:
                from musicgen_jax.modules.lora import merge_adapters

                params = merge_adapters(model.pretrained, params, lora)
            export_transformers(out_dir, model.config, params, model.t5_params, base)
    return out_dir


def export_checkpoint(checkpoint_dir: str, out_dir: str, *, base: str | None = None, use_ema: bool = True,
                      adapter_only: bool = False) -> str:
    """The newest usable checkpoint of a run -> transformers directory, or (a LoRA run, `adapter_only`)
    a PEFT adapter folder (the run's config is read from the checkpoint; the state is restored onto this
    host's devices)."""
    from musicgen_jax import sharding as S
    from musicgen_jax.train import trainer as T
    from musicgen_jax.train.checkpoint import Checkpointer
    from musicgen_jax.train.config import from_dict
    from musicgen_jax.train.model import build_model

    ckpt = Checkpointer(checkpoint_dir, read_only=True)
    meta = ckpt.latest_meta()
    if meta is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    cfg = from_dict(meta["config"])
    if adapter_only and not cfg.lora.enabled:
        raise ValueError(f"{checkpoint_dir} is a full fine-tuning run (no lora section): --adapter-only is for "
                         "LoRA runs; export it without the flag")
    model = build_model(cfg.model, cfg.lora)
    mesh = S.make_mesh(-1, 1, 1)
    shardings = T.state_shardings(model, cfg.optim, cfg.steps, mesh, cfg.model.seed)
    restored = ckpt.restore_latest(T.abstract_state(shardings, model, cfg.optim, cfg.steps, cfg.model.seed))
    if restored is None:
        raise ValueError(f"no usable checkpoint in {checkpoint_dir}")
    state, meta = restored
    if meta.get("max_duration"):  # the run's training segment: the exported model's window
        model = dataclasses.replace(model, config=dataclasses.replace(model.config, max_duration=meta["max_duration"]))
    return export_state(out_dir, model, state, base=base or cfg.checkpoint.export_base, use_ema=use_ema,
                        adapter_only=adapter_only)
