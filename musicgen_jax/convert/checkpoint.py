"""One loader for MusicGen checkpoints in either layout: everything a model needs, as host arrays.

    ckpt = load_checkpoint("facebook/musicgen-small")     # hub name, preset name or local directory
    ckpt.config            MusicGenConfig; config.max_duration is the training window
    ckpt.lm_params         LM params, layers stacked (the training layout; numpy)
    ckpt.t5_params, ckpt.codec_params, ckpt.tokenizer
    ckpt.generation        GenerationParams: the checkpoint's generation defaults

Used by `MusicGen.from_pretrained` (inference) and by training's `build_model` (fine-tuning), so both
read a checkpoint the same way.

transformers layout: config.json (+ generation_config.json) + weights; T5, EnCodec and the LM are all
in the one checkpoint. The training window is config.json's "segment_duration" when present (our
`export` writes it), else 30 s (every official model).
audiocraft layout: state_dict.bin (LM + xp.cfg) + compression_state_dict.bin (a trained codec, or a
pointer to a transformers EnCodec); the T5 named in xp.cfg is read from the hub or a local folder. The
window is xp.cfg's `dataset.segment_duration`, as audiocraft's `max_duration`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from musicgen_jax import hub
from musicgen_jax.config import GenerationParams, MusicGenConfig, official_repo
from musicgen_jax.tokenizer import T5Tokenizer

DEFAULT_WINDOW = 30.0  # seconds: the training segment of every official MusicGen


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    config: MusicGenConfig
    lm_params: Any
    t5_params: Any
    codec_params: Any
    tokenizer: T5Tokenizer
    generation: GenerationParams
    directory: str
    layout: str  # "transformers" or "audiocraft"


def load_checkpoint(name_or_path: str, adapters: str | None = None) -> Checkpoint:
    """A MusicGen checkpoint (hub name, preset name such as 'small', or local directory) in either layout.

    adapters: a LoRA adapter folder (PEFT's format: `musicgen-jax export --adapter-only`, or one trained
    with transformers + peft) for this base, merged into the LM weights in memory (convert/adapters.py)."""
    directory, layout = hub.resolve_musicgen(official_repo(name_or_path))
    load = _load_audiocraft if layout == hub.AUDIOCRAFT else _load_transformers
    ckpt = load(directory)
    if adapters is not None:
        from musicgen_jax.convert.adapters import apply_adapters

        ckpt = dataclasses.replace(ckpt, lm_params=apply_adapters(ckpt.lm_params, ckpt.config.lm, adapters))
    return ckpt


def default_generation(max_duration: float, **changes) -> GenerationParams:
    """audiocraft's defaults; a window of 18 s or less (fine-tunes on short clips) gets a stride of half
    the window, since the stride must be shorter than the window."""
    params = GenerationParams()
    if params.extend_stride >= max_duration:
        params = dataclasses.replace(params, extend_stride=max_duration / 2)
    return params.with_changes(**changes)


# --------------------------------------------------------------------------------------------------- layouts


def _load_transformers(directory: str) -> Checkpoint:
    from musicgen_jax.convert.common import (load_transformers_weights, naming, read_json, sub_state,
                                             transformers_weights_file)
    from musicgen_jax.convert.encodec import encodec_config_from_hf, encodec_params_from_state_dict
    from musicgen_jax.convert.lm import lm_config_from_hf, lm_params_from_transformers
    from musicgen_jax.convert.t5 import t5_config_from_hf, t5_params_from_state_dict

    config_path = os.path.join(directory, "config.json")
    raw = read_json(config_path)
    if raw.get("model_type") not in ("musicgen", "musicgen_melody"):
        raise ValueError(f"{directory} is not a MusicGen checkpoint ({config_path}: model_type "
                         f"{raw.get('model_type')!r})")
    with naming(config_path):  # a missing or ill-typed entry names the file
        lm_config = lm_config_from_hf(raw)
        config = MusicGenConfig(name=_name(directory), lm=lm_config, t5=t5_config_from_hf(raw["text_encoder"]),
                                encodec=encodec_config_from_hf(raw["audio_encoder"]),
                                audio_channels=int(raw.get("decoder", {}).get("audio_channels", 1)),
                                max_duration=_window(raw.get("segment_duration"), config_path))
    state = load_transformers_weights(directory)
    with naming(transformers_weights_file(directory)):  # missing or mis-shaped tensors name the file
        lm_params = lm_params_from_transformers(state, lm_config)
        t5_params = t5_params_from_state_dict(state, config.t5, prefix="text_encoder.")
        codec_params = encodec_params_from_state_dict(sub_state(state, "audio_encoder."), config.encodec)
    return Checkpoint(
        config=config,
        lm_params=lm_params,
        t5_params=t5_params,
        codec_params=codec_params,
        tokenizer=T5Tokenizer.from_pretrained(directory),
        generation=default_generation(config.max_duration, **_hf_generation_changes(directory)),
        directory=directory, layout=hub.TRANSFORMERS)


def _load_audiocraft(directory: str) -> Checkpoint:
    from musicgen_jax.convert.encodec import load_encodec_audiocraft
    from musicgen_jax.convert.lm import audiocraft_t5_name, load_audiocraft_lm
    from musicgen_jax.convert.t5 import load_t5

    lm_config, lm_params, xp_cfg = load_audiocraft_lm(os.path.join(directory, "state_dict.bin"))
    codec_config, codec_params = load_encodec_audiocraft(os.path.join(directory, "compression_state_dict.bin"))
    t5_name = audiocraft_t5_name(xp_cfg)
    t5_config, t5_params = load_t5(t5_name)
    channels = 2 if lm_config.num_codebooks == 2 * codec_config.num_codebooks else 1
    window = _window((xp_cfg.get("dataset") or {}).get("segment_duration"), f"{directory}/state_dict.bin xp.cfg")
    config = MusicGenConfig(name=_name(directory), lm=lm_config, t5=t5_config, encodec=codec_config,
                            audio_channels=channels, max_duration=window, t5_name=t5_name)
    guidance = xp_cfg.get("classifier_free_guidance") or {}
    changes = {} if guidance.get("inference_coef") is None else {"cfg_coef": float(guidance["inference_coef"])}
    return Checkpoint(config=config, lm_params=lm_params, t5_params=t5_params, codec_params=codec_params,
                      tokenizer=T5Tokenizer.from_pretrained(t5_name),
                      generation=default_generation(window, **changes), directory=directory, layout=hub.AUDIOCRAFT)


def _hf_generation_changes(directory: str) -> dict[str, Any]:
    """generation_config.json -> set_generation_params changes (guidance_scale, do_sample, top_k, ...)."""
    from musicgen_jax.convert.common import naming, read_json

    path = os.path.join(directory, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    g = read_json(path)
    names = {"guidance_scale": ("cfg_coef", float), "do_sample": ("use_sampling", bool), "top_k": ("top_k", int),
             "temperature": ("temperature", float)}
    with naming(path):
        changes = {ours: cast(g[theirs]) for theirs, (ours, cast) in names.items() if g.get(theirs) is not None}
        if g.get("top_p") is not None and float(g["top_p"]) < 1.0:
            changes["top_p"] = float(g["top_p"])
    return changes


def _window(value, where: str) -> float:
    """A training segment in seconds (absent: the official models' 30 s), or a clear error."""
    if value is None:
        return DEFAULT_WINDOW
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{where}: segment_duration must be a positive number of seconds, got {value!r}")
    return seconds


def _name(directory: str) -> str:
    return os.path.basename(os.path.normpath(directory))
