"""MusicGen LM checkpoints <-> our `MusicGenLM` parameter tree (scanned layout: layers stacked on axis 0).

Each on-disk layout is ONE key table (`TRANSFORMERS`, `AUDIOCRAFT`, see convert/layout.py) that
drives both reading (`lm_params_from_*`) and writing (`lm_state_dict`). A row names the checkpoint
key (with `{layers}` / `{codebooks}` for the index along our stacked axes), our parameter(s), and the
tensor's torch axis order as groups of our logical axis names, which come from the module itself, so
nothing here hard-codes our kernel layouts.

transformers (`MusicgenForConditionalGeneration` / `MusicgenMelodyForConditionalGeneration`,
config.json + model.safetensors; `text_encoder.*` and `audio_encoder.*` belong to other models). It
omits `enc_to_dec_proj` when the text width equals the LM width (and `audio_enc_to_dec_proj` when the
chroma bins do): such a checkpoint reads as the identity, and such an LM cannot be written. A bare
`MusicgenForCausalLM` (keys `model.decoder.*`, `lm_heads.*`) is read with the same table.

audiocraft (`state_dict.bin` = {'best_state': {...}, 'xp.cfg': YAML, 'version', 'exported'}): attention
in-projections are packed, `in_proj_weight` [3 * dim, dim] = q | k | v (a `.mha.` level is tolerated);
the melody chroma extractor's buffers `condition_provider.conditioners.self_wav.chroma.*` are skipped.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Mapping

import numpy as np

from musicgen_jax.chroma import chroma_length
from musicgen_jax.config import LMConfig
from musicgen_jax.convert import layout as L
from musicgen_jax.convert.common import (CheckpointError, check_finite, load_torch_pickle,
                                         load_transformers_weights, naming, read_json, tensors_to_numpy,
                                         transformers_weights_file)

# ---------------------------------------------------------------------------------------------------
# configs

_T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
            "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
            "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096}


def lm_config_from_hf(cfg: Mapping[str, Any]) -> LMConfig:
    """transformers config.json dict (musicgen, musicgen_melody, or a bare decoder config) -> LMConfig."""
    model_type = cfg.get("model_type", "")
    dec = cfg.get("decoder", cfg)
    if dec.get("activation_function", "gelu") != "gelu":
        raise ValueError(f"unsupported activation {dec['activation_function']!r} (MusicGen uses exact gelu)")
    if dec.get("scale_embedding", False):
        raise ValueError("scale_embedding=True is not supported (MusicGen does not scale embeddings)")
    k = dec["num_codebooks"]
    channels = dec.get("audio_channels", 1)
    if k % channels:
        raise ValueError(f"{k} codebooks cannot be split over {channels} audio channels")
    melody = model_type == "musicgen_melody" or dec.get("model_type") == "musicgen_melody_decoder"
    text_dim = cfg.get("text_encoder", {}).get("d_model", cfg.get("text_encoder", {}).get("hidden_size"))
    dim = dec["hidden_size"]
    return LMConfig(
        dim=dim,
        num_layers=dec["num_hidden_layers"],
        num_heads=dec["num_attention_heads"],
        ffn_dim=dec["ffn_dim"],
        num_codebooks=k,
        codebook_size=dec["vocab_size"],
        cross_attention=not melody,
        condition_dim=text_dim or 768,
        chroma_bins=cfg.get("num_chroma", 12) if melody else 0,
        chroma_frames=cfg.get("chroma_length", 235) if melody else 235,
        delays=tuple(q // channels for q in range(k)),
    )


_INTERP = re.compile(r"^\$\{([^}]+)\}$")


def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    """Resolve whole-value OmegaConf interpolations `${a.b}` (absolute paths only)."""
    if isinstance(node, Mapping):
        return {k: _resolve(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root) for v in node]
    if isinstance(node, str):
        m = _INTERP.match(node.strip())
        if m:
            cur: Any = root
            for part in m.group(1).split("."):
                if not isinstance(cur, Mapping) or part not in cur:
                    return node
                cur = cur[part]
            return _resolve(cur, root)
    return node


def parse_xp_cfg(xp_cfg: str | Mapping[str, Any]) -> dict[str, Any]:
    """audiocraft's `xp.cfg` (a YAML string, or already a dict) -> dict with interpolations resolved."""
    if isinstance(xp_cfg, str):
        import yaml

        xp_cfg = yaml.safe_load(xp_cfg)
    if not isinstance(xp_cfg, Mapping):
        raise CheckpointError("audiocraft xp.cfg is not a mapping")
    return _resolve(dict(xp_cfg), xp_cfg)


def audiocraft_t5_name(xp_cfg: str | Mapping[str, Any]) -> str:
    """The T5 an audiocraft model was trained with: `t5.name` of the conditioner whose `model` is t5
    (the description conditioner first), "t5-base" when none says."""
    if isinstance(xp_cfg, str):
        xp_cfg = parse_xp_cfg(xp_cfg)
    conditioners = xp_cfg.get("conditioners") or {}
    order = ["description"] + [name for name in conditioners if name != "description"]
    for name in order:
        cond = conditioners.get(name)
        if isinstance(cond, Mapping) and cond.get("model") == "t5":
            return str((cond.get("t5") or {}).get("name", "t5-base"))
    return "t5-base"


# audiocraft's other codebook patterns and the options of theirs that patterns.get_pattern takes
_PATTERN_OPTIONS = {"unroll": ("flattening", "delays"), "coarse_first": ("delays",), "music_lm": ("group_by",)}


def lm_config_from_audiocraft(cfg: str | Mapping[str, Any]) -> LMConfig:
    """audiocraft training config (xp.cfg) -> LMConfig; refuses features this port does not have."""
    cfg = parse_xp_cfg(cfg)
    tl = cfg.get("transformer_lm")
    if not isinstance(tl, Mapping):
        raise CheckpointError("xp.cfg has no transformer_lm section")
    unsupported = {
        "norm_first": (True, tl.get("norm_first", False)),
        "bias_ff": (False, tl.get("bias_ff", True)),
        "bias_attn": (False, tl.get("bias_attn", True)),
        "bias_proj": (False, tl.get("bias_proj", True)),
        "layer_scale": (None, tl.get("layer_scale")),
        "positional_embedding": ("sin", tl.get("positional_embedding", "sin")),
        "positional_scale": (1.0, float(tl.get("positional_scale", 1.0))),
        "max_period": (10000.0, float(tl.get("max_period", 10000))),
        "qk_layer_norm": (False, tl.get("qk_layer_norm", False)),
        "qk_layer_norm_cross": (False, tl.get("qk_layer_norm_cross", False)),
        "kv_repeat": (1, tl.get("kv_repeat", 1)),
        "activation": ("gelu", tl.get("activation", "gelu")),
        "norm": ("layer_norm", tl.get("norm", "layer_norm")),
        "past_context": (None, tl.get("past_context")),
        "causal": (True, tl.get("causal", True)),
    }
    bad = [f"transformer_lm.{k}={got!r} (need {want!r})" for k, (want, got) in unsupported.items() if got != want]
    fuser = cfg.get("fuser") or {}
    if fuser.get("cross_attention_pos_emb", False):
        bad.append("fuser.cross_attention_pos_emb=true")
    for op in ("sum", "input_interpolate"):
        if fuser.get(op):
            bad.append(f"fuser.{op}={fuser[op]}")
    n_q = int(tl["n_q"])
    pattern_cfg = cfg.get("codebooks_pattern") or {}
    modeling = pattern_cfg.get("modeling", "delay")
    options = dict(pattern_cfg.get(modeling) or {})
    delays, pattern, pattern_options = tuple(range(n_q)), "delay", {}
    if modeling == "delay":
        delays = tuple(int(d) for d in (options.get("delays") or range(n_q)))
        if options.get("flatten_first", 0) or options.get("empty_initial", 0):
            bad.append("codebooks_pattern.delay.flatten_first/empty_initial")
    elif modeling == "parallel":
        delays = (0,) * n_q  # the delay pattern with no delays
    elif modeling in _PATTERN_OPTIONS:
        pattern = modeling
        pattern_options = {k: options[k] for k in _PATTERN_OPTIONS[modeling] if options.get(k) is not None}
    else:
        bad.append(f"codebooks_pattern.modeling={modeling!r} (one of delay, parallel, {', '.join(_PATTERN_OPTIONS)})")
    if bad:
        raise CheckpointError("audiocraft LM config uses features this port does not implement: " + "; ".join(bad))

    conditioners = cfg.get("conditioners") or {}
    prepend, cross = list(fuser.get("prepend") or []), list(fuser.get("cross") or [])
    t5_name = audiocraft_t5_name(cfg)
    melody = "self_wav" in prepend
    chroma_bins, chroma_frames = 0, 235
    if melody:
        chroma_cfg = (conditioners.get("self_wav") or {}).get("chroma_stem") or {}
        chroma_bins = int(chroma_cfg.get("n_chroma", 12))
        sr = chroma_cfg.get("sample_rate", cfg.get("sample_rate", 32000))
        duration = (cfg.get("dataset") or {}).get("segment_duration", 30)
        chroma_frames = chroma_length(float(duration), sr, n_fft=2 ** int(chroma_cfg.get("radix2_exp", 14)))
    cross_attention = bool(cross) or bool(tl.get("cross_attention", False))
    prepend_ok = not prepend or sorted(prepend) in (["self_wav"], ["description", "self_wav"])
    if cross and cross != ["description"] or not prepend_ok:
        raise CheckpointError(f"unsupported conditioning layout: prepend={prepend}, cross={cross}")
    dim = int(tl["dim"])
    return LMConfig(
        dim=dim,
        num_layers=int(tl["num_layers"]),
        num_heads=int(tl["num_heads"]),
        ffn_dim=int(float(tl.get("hidden_scale", 4)) * dim),
        num_codebooks=n_q,
        codebook_size=int(tl["card"]),
        cross_attention=cross_attention,
        condition_dim=_T5_DIMS.get(t5_name, 768),
        chroma_bins=chroma_bins,
        chroma_frames=chroma_frames,
        delays=delays,
        pattern=pattern,
        pattern_options=pattern_options,
    )


# ---------------------------------------------------------------------------------------------------
# key tables: torch axis order of each tensor, as groups of our logical axis names

_VOCAB = (("vocab",), ("embed",))  # embeddings [card + 1, dim], heads [card, dim]
_VEC = (("embed",),)  # norms, biases [dim]
_PROJ = (("embed",), (L.UNNAMED,))  # text / chroma projection [dim, in]
_IN_HEADS = (("heads", "kv"), ("embed",))  # q / k / v [H*D, dim]
_OUT_HEADS = (("embed",), ("heads", "kv"))  # out [dim, H*D]
_FC1 = (("mlp",), ("embed",))  # [ffn, dim]
_FC2 = (("embed",), ("mlp",))  # [dim, ffn]

_TEXT_SQUARE = L.Omission("text projection (the text width equals the LM width)",
                          lambda c: c.condition_dim == c.dim)
_CHROMA_SQUARE = L.Omission("chroma projection (the chroma bins equal the LM width)",
                            lambda c: c.chroma_bins == c.dim)


def _qkv(block: str) -> tuple[str, str, str]:
    return tuple(f"layers/{block}/{p}/kernel" for p in ("query", "key", "value"))


_D = "decoder.model.decoder."
_HL = _D + "layers.{layers}."
TRANSFORMERS = L.Layout("transformers MusicGen LM", (
    L.Entry(_D + "embed_tokens.{codebooks}.weight", "embeddings", _VOCAB),
    L.Entry("decoder.lm_heads.{codebooks}.weight", "heads", _VOCAB),
    L.Entry(_D + "layer_norm.weight", "out_norm/scale", _VEC),
    L.Entry(_D + "layer_norm.bias", "out_norm/bias", _VEC),
    L.Entry("enc_to_dec_proj.weight", "text_proj/kernel", _PROJ, _TEXT_SQUARE),
    L.Entry("enc_to_dec_proj.bias", "text_proj/bias", _VEC, _TEXT_SQUARE),
    L.Entry("audio_enc_to_dec_proj.weight", "chroma_proj/kernel", _PROJ, _CHROMA_SQUARE),
    L.Entry("audio_enc_to_dec_proj.bias", "chroma_proj/bias", _VEC, _CHROMA_SQUARE),
    L.Entry(_HL + "self_attn.q_proj.weight", "layers/self_attn/query/kernel", _IN_HEADS),
    L.Entry(_HL + "self_attn.k_proj.weight", "layers/self_attn/key/kernel", _IN_HEADS),
    L.Entry(_HL + "self_attn.v_proj.weight", "layers/self_attn/value/kernel", _IN_HEADS),
    L.Entry(_HL + "self_attn.out_proj.weight", "layers/self_attn/out/kernel", _OUT_HEADS),
    L.Entry(_HL + "self_attn_layer_norm.weight", "layers/self_attn_norm/scale", _VEC),
    L.Entry(_HL + "self_attn_layer_norm.bias", "layers/self_attn_norm/bias", _VEC),
    L.Entry(_HL + "encoder_attn.q_proj.weight", "layers/cross_attn/query/kernel", _IN_HEADS),
    L.Entry(_HL + "encoder_attn.k_proj.weight", "layers/cross_attn/key/kernel", _IN_HEADS),
    L.Entry(_HL + "encoder_attn.v_proj.weight", "layers/cross_attn/value/kernel", _IN_HEADS),
    L.Entry(_HL + "encoder_attn.out_proj.weight", "layers/cross_attn/out/kernel", _OUT_HEADS),
    L.Entry(_HL + "encoder_attn_layer_norm.weight", "layers/cross_attn_norm/scale", _VEC),
    L.Entry(_HL + "encoder_attn_layer_norm.bias", "layers/cross_attn_norm/bias", _VEC),
    L.Entry(_HL + "fc1.weight", "layers/fc1/kernel", _FC1),
    L.Entry(_HL + "fc2.weight", "layers/fc2/kernel", _FC2),
    L.Entry(_HL + "final_layer_norm.weight", "layers/ffn_norm/scale", _VEC),
    L.Entry(_HL + "final_layer_norm.bias", "layers/ffn_norm/bias", _VEC),
), skip=("text_encoder.", "audio_encoder."), ignore=("embed_positions.weights",))

# a bare MusicgenForCausalLM: the same tensors without the outer model's "decoder." prefix
TRANSFORMERS_DECODER = TRANSFORMERS.with_key_prefixes(
    {"decoder.model.decoder.": "model.decoder.", "decoder.lm_heads.": "lm_heads."})

_C = "condition_provider.conditioners."
_AL = "transformer.layers.{layers}."
AUDIOCRAFT = L.Layout("audiocraft MusicGen LM", (
    L.Entry("emb.{codebooks}.weight", "embeddings", _VOCAB),
    L.Entry("linears.{codebooks}.weight", "heads", _VOCAB),
    L.Entry("out_norm.weight", "out_norm/scale", _VEC),
    L.Entry("out_norm.bias", "out_norm/bias", _VEC),
    L.Entry(_C + "description.output_proj.weight", "text_proj/kernel", _PROJ),
    L.Entry(_C + "description.output_proj.bias", "text_proj/bias", _VEC),
    L.Entry(_C + "self_wav.output_proj.weight", "chroma_proj/kernel", _PROJ),
    L.Entry(_C + "self_wav.output_proj.bias", "chroma_proj/bias", _VEC),
    L.Entry(_AL + "self_attn.in_proj_weight", _qkv("self_attn"), _IN_HEADS),  # q | k | v
    L.Entry(_AL + "self_attn.out_proj.weight", "layers/self_attn/out/kernel", _OUT_HEADS),
    L.Entry(_AL + "norm1.weight", "layers/self_attn_norm/scale", _VEC),
    L.Entry(_AL + "norm1.bias", "layers/self_attn_norm/bias", _VEC),
    L.Entry(_AL + "cross_attention.in_proj_weight", _qkv("cross_attn"), _IN_HEADS),  # q | k | v
    L.Entry(_AL + "cross_attention.out_proj.weight", "layers/cross_attn/out/kernel", _OUT_HEADS),
    L.Entry(_AL + "norm_cross.weight", "layers/cross_attn_norm/scale", _VEC),
    L.Entry(_AL + "norm_cross.bias", "layers/cross_attn_norm/bias", _VEC),
    L.Entry(_AL + "linear1.weight", "layers/fc1/kernel", _FC1),
    L.Entry(_AL + "linear2.weight", "layers/fc2/kernel", _FC2),
    L.Entry(_AL + "norm2.weight", "layers/ffn_norm/scale", _VEC),
    L.Entry(_AL + "norm2.bias", "layers/ffn_norm/bias", _VEC),
), skip=(_C + "self_wav.chroma.",), aliases=((".mha.", "."),))

LAYOUTS = {"transformers": TRANSFORMERS, "audiocraft": AUDIOCRAFT}


# ---------------------------------------------------------------------------------------------------
# parameters


@functools.lru_cache(maxsize=16)
def lm_param_specs(config: LMConfig) -> dict[tuple[str, ...], L.ParamSpec]:
    """{param path: shape, dtype, logical axis names} of the scanned LM, from the module (nothing allocated)."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    from musicgen_jax.modules.lm import init_lm

    variables = jax.eval_shape(lambda: init_lm(config, jax.random.PRNGKey(0)))
    specs = nn.get_partition_spec(variables)["params"]
    axes = traverse_util.flatten_dict(specs, is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
    return L.param_specs(nn.meta.unbox(variables)["params"], {k: tuple(v) for k, v in axes.items()})


def _read(layout: L.Layout, state: Mapping[str, np.ndarray], config: LMConfig) -> Any:
    from flax import traverse_util

    return traverse_util.unflatten_dict(L.read(layout, state, lm_param_specs(config), config))


def lm_params_from_transformers(state: Mapping[str, np.ndarray], config: LMConfig) -> Any:
    """transformers state dict (whole MusicGen or bare decoder) -> LM params (numpy tree)."""
    whole = any(k.startswith("decoder.model.decoder.") for k in state)
    return _read(TRANSFORMERS if whole else TRANSFORMERS_DECODER, state, config)


def lm_params_from_audiocraft(state: Mapping[str, np.ndarray], config: LMConfig) -> Any:
    """audiocraft `best_state` dict -> LM params (numpy tree)."""
    return _read(AUDIOCRAFT, state, config)


def lm_state_dict(params: Any, config: LMConfig, layout: str = "transformers") -> dict[str, np.ndarray]:
    """Our (scanned) LM params -> LM tensors of a checkpoint layout ("transformers": the keys of a
    `MusicgenForConditionalGeneration`'s decoder and projections; "audiocraft": of a `best_state`),
    float32 in torch orientation. Inverse of `lm_params_from_*`."""
    import jax
    from flax import traverse_util

    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r} (one of {sorted(LAYOUTS)})")
    k = config.num_codebooks
    if layout == "transformers" and (config.pattern != "delay" or config.delays not in (
            tuple(range(k)), tuple(q // 2 for q in range(k)))):
        raise ValueError("transformers' MusicGen only knows the delay pattern with delays q (mono) or q // 2 "
                         f"(stereo); this LM uses {config.pattern!r} with delays {config.delays} (keep its "
                         "training checkpoint, or train with the standard delays to export)")
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, jax.device_get(params)))
    return L.write(LAYOUTS[layout], flat, lm_param_specs(config), config)


# ---------------------------------------------------------------------------------------------------
# files


def load_transformers_lm(directory: str, config: LMConfig | None = None) -> tuple[LMConfig, Any]:
    """A transformers MusicGen directory (config.json + weights) -> (LMConfig, params)."""
    if config is None:
        config_path = os.path.join(directory, "config.json")
        raw = read_json(config_path)
        with naming(config_path):
            config = lm_config_from_hf(raw)
    state = load_transformers_weights(directory)
    with naming(transformers_weights_file(directory)):
        return config, lm_params_from_transformers(state, config)


def load_audiocraft_lm(path: str, config: LMConfig | None = None) -> tuple[LMConfig, Any, dict[str, Any]]:
    """audiocraft `state_dict.bin` (file, or a directory holding one) -> (LMConfig, params, xp.cfg dict).

    The text width (condition_dim) is taken from the checkpoint's projection when the T5 name in the
    config is unknown to us.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "state_dict.bin")
    pkg = load_torch_pickle(path)
    if not isinstance(pkg, Mapping) or "best_state" not in pkg or "xp.cfg" not in pkg:
        raise CheckpointError(f"{path} is not an audiocraft LM checkpoint (needs 'best_state' and 'xp.cfg')")
    with naming(path):
        cfg = parse_xp_cfg(pkg["xp.cfg"])
        state = tensors_to_numpy(dict(pkg["best_state"]))
        check_finite(state, path)
        if config is None:
            config = lm_config_from_audiocraft(cfg)
            w = state.get("condition_provider.conditioners.description.output_proj.weight")
            if w is not None and w.ndim == 2 and w.shape[1] != config.condition_dim:
                import dataclasses

                config = dataclasses.replace(config, condition_dim=int(w.shape[1]))
        return config, lm_params_from_audiocraft(state, config), cfg
