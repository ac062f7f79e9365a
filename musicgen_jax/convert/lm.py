"""MusicGen LM checkpoints -> our `MusicGenLM` parameter tree (layers stacked on a leading axis).

Two on-disk layouts are read.

transformers (`MusicgenForConditionalGeneration` / `MusicgenMelodyForConditionalGeneration`,
config.json + model.safetensors); `text_encoder.*` and `audio_encoder.*` keys belong to other models:
  decoder.model.decoder.embed_tokens.{q}.weight                       [card + 1, dim]
  decoder.model.decoder.layers.{l}.self_attn.{q,k,v,out}_proj.weight  [dim, dim]
  decoder.model.decoder.layers.{l}.self_attn_layer_norm.{weight,bias}
  decoder.model.decoder.layers.{l}.encoder_attn.{q,k,v,out}_proj.weight     (not in melody models)
  decoder.model.decoder.layers.{l}.encoder_attn_layer_norm.{weight,bias}
  decoder.model.decoder.layers.{l}.fc1.weight [ffn, dim], fc2.weight [dim, ffn]
  decoder.model.decoder.layers.{l}.final_layer_norm.{weight,bias}
  decoder.model.decoder.layer_norm.{weight,bias}
  decoder.lm_heads.{q}.weight                                         [card, dim]
  enc_to_dec_proj.{weight,bias}        [dim, text_dim]  (absent when text_dim == dim: identity)
  audio_enc_to_dec_proj.{weight,bias}  [dim, chroma]    (melody; absent when chroma == dim)
A bare `MusicgenForCausalLM` (keys `model.decoder.*`, `lm_heads.*`) is read too.

audiocraft (`state_dict.bin` = {'best_state': {...}, 'xp.cfg': YAML, 'version', 'exported'}):
  emb.{q}.weight
  transformer.layers.{l}.self_attn.in_proj_weight   [3 * dim, dim] = q | k | v  (".mha." tolerated)
  transformer.layers.{l}.self_attn.out_proj.weight
  transformer.layers.{l}.cross_attention.{in_proj_weight, out_proj.weight}
  transformer.layers.{l}.{norm1, norm_cross, norm2}.{weight,bias}, linear1.weight, linear2.weight
  out_norm.{weight,bias}, linears.{q}.weight
  condition_provider.conditioners.description.output_proj.{weight,bias}
  condition_provider.conditioners.self_wav.output_proj.{weight,bias}   (melody; the chroma
      extractor's buffers `...self_wav.chroma.*` are skipped)
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from musicgen_jax.config import LMConfig
from musicgen_jax.convert.common import (CheckpointError, StateDict, finish, load_torch_pickle,
                                         load_transformers_weights, tensors_to_numpy)

# ---------------------------------------------------------------------------------------------------
# configs

_T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
            "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
            "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096}


def _chroma_frames(sample_rate: float, duration: float, radix2_exp: int = 14) -> int:
    """Frames of a centred STFT with hop 2**radix2_exp / 4 over `duration` seconds (235 for 30 s)."""
    return 1 + int(sample_rate * duration) // (2 ** radix2_exp // 4)


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
    pattern = cfg.get("codebooks_pattern") or {}
    modeling = pattern.get("modeling", "delay")
    if modeling == "delay":
        dcfg = pattern.get("delay") or {}
        delays = tuple(int(d) for d in (dcfg.get("delays") or range(n_q)))
        if dcfg.get("flatten_first", 0) or dcfg.get("empty_initial", 0):
            bad.append("codebooks_pattern.delay.flatten_first/empty_initial")
    elif modeling == "parallel":
        delays = (0,) * n_q
    else:
        bad.append(f"codebooks_pattern.modeling={modeling!r} (delay or parallel)")
        delays = tuple(range(n_q))
    if bad:
        raise CheckpointError("audiocraft LM config uses features this port does not implement: " + "; ".join(bad))

    conditioners = cfg.get("conditioners") or {}
    prepend, cross = list(fuser.get("prepend") or []), list(fuser.get("cross") or [])
    desc = conditioners.get("description") or {}
    t5_name = (desc.get("t5") or {}).get("name", "t5-base")
    melody = "self_wav" in prepend
    chroma_bins, chroma_frames = 0, 235
    if melody:
        chroma_cfg = (conditioners.get("self_wav") or {}).get("chroma_stem") or {}
        chroma_bins = int(chroma_cfg.get("n_chroma", 12))
        sr = chroma_cfg.get("sample_rate", cfg.get("sample_rate", 32000))
        duration = (cfg.get("dataset") or {}).get("segment_duration", 30)
        chroma_frames = _chroma_frames(float(sr), float(duration), int(chroma_cfg.get("radix2_exp", 14)))
    cross_attention = bool(cross) or bool(tl.get("cross_attention", False))
    if cross and cross != ["description"] or (prepend and sorted(prepend) not in (["self_wav"], ["description", "self_wav"])):
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
    )


# ---------------------------------------------------------------------------------------------------
# parameters


class _Reader:
    """Takes tensors from a StateDict, checking their (torch-layout) shapes."""

    def __init__(self, state: StateDict):
        self.state = state
        self.bad_shapes: list[str] = []

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        arr = self.state.take(key)
        if arr is None:
            return None
        if tuple(arr.shape) != tuple(shape):
            self.bad_shapes.append(f"{key}: checkpoint {tuple(arr.shape)}, expected {tuple(shape)}")
            return None
        return arr


# A layout maps our canonical torch-style names to arrays (torch [out, in] orientation):
#   ("emb", q) ("head", q) ("out_norm", "weight"|"bias") ("text_proj", "weight"|"bias")
#   ("chroma_proj", ...) ("layer", l, part) with part in sa_q, sa_k, sa_v, sa_o, sa_norm_w, sa_norm_b,
#   ca_q, ca_k, ca_v, ca_o, ca_norm_w, ca_norm_b, fc1, fc2, ffn_norm_w, ffn_norm_b.
Fetch = Callable[..., "np.ndarray | None"]


def _assemble(config: LMConfig, fetch: Fetch) -> dict[tuple[str, ...], np.ndarray | None]:
    c = config
    h, d = c.num_heads, c.head_dim

    def stack(items):
        items = list(items)
        return None if any(x is None for x in items) else np.stack(items)

    def t(x):
        return None if x is None else x.T

    flat: dict[tuple[str, ...], np.ndarray | None] = {
        ("embeddings",): stack(fetch("emb", q) for q in range(c.num_codebooks)),
        ("heads",): None if (hs := stack(t(fetch("head", q)) for q in range(c.num_codebooks))) is None
        else hs.transpose(1, 0, 2),  # [dim, K, card]
        ("out_norm", "scale"): fetch("out_norm", "weight"),
        ("out_norm", "bias"): fetch("out_norm", "bias"),
        ("text_proj", "kernel"): t(fetch("text_proj", "weight")),
        ("text_proj", "bias"): fetch("text_proj", "bias"),
    }
    if c.is_melody:
        flat[("chroma_proj", "kernel")] = t(fetch("chroma_proj", "weight"))
        flat[("chroma_proj", "bias")] = fetch("chroma_proj", "bias")

    def layers(part, convert=lambda x: x):
        return stack(None if (x := fetch("layer", l, part)) is None else convert(x) for l in range(c.num_layers))

    def in_heads(w):  # torch [H*D, dim] -> [dim, H, D]
        return w.T.reshape(c.dim, h, d)

    def out_heads(w):  # torch [dim, H*D] -> [H, D, dim]
        return w.T.reshape(h, d, c.dim)

    blocks = [("self_attn", "sa")] + ([("cross_attn", "ca")] if c.cross_attention else [])
    for name, p in blocks:
        flat[("layers", name, "query", "kernel")] = layers(f"{p}_q", in_heads)
        flat[("layers", name, "key", "kernel")] = layers(f"{p}_k", in_heads)
        flat[("layers", name, "value", "kernel")] = layers(f"{p}_v", in_heads)
        flat[("layers", name, "out", "kernel")] = layers(f"{p}_o", out_heads)
        flat[("layers", f"{name}_norm", "scale")] = layers(f"{p}_norm_w")
        flat[("layers", f"{name}_norm", "bias")] = layers(f"{p}_norm_b")
    flat[("layers", "fc1", "kernel")] = layers("fc1", np.transpose)
    flat[("layers", "fc2", "kernel")] = layers("fc2", np.transpose)
    flat[("layers", "ffn_norm", "scale")] = layers("ffn_norm_w")
    flat[("layers", "ffn_norm", "bias")] = layers("ffn_norm_b")
    return flat


def _with_top_level(config: LMConfig, reader: _Reader, templates: Mapping[str, str], fetch_rest):
    """A `fetch` for `_assemble`: embeddings, heads and the output norm read by key templates ({} = the
    codebook, or weight/bias), which are all that differs between layouts for them; the rest by fetch_rest."""
    c = config
    shapes = {"emb": (c.codebook_size + 1, c.dim), "head": (c.codebook_size, c.dim), "out_norm": (c.dim,)}

    def fetch(kind, *idx):
        if kind in shapes:
            return reader.get(templates[kind].format(idx[0]), shapes[kind])
        return fetch_rest(kind, *idx)

    return fetch


def _finish(config: LMConfig, flat, state: StateDict, reader: _Reader, what: str) -> Any:
    from musicgen_jax.modules.lm import abstract_lm_params

    abstract = abstract_lm_params(config)
    try:
        params = finish(abstract, flat, state, what)
    except CheckpointError as e:
        if not reader.bad_shapes:
            raise
        raise CheckpointError(f"{e}\n  wrong shapes ({len(reader.bad_shapes)}): "
                              + "; ".join(reader.bad_shapes)) from None
    if reader.bad_shapes:
        raise CheckpointError(f"{what} checkpoint does not match the model:\n  wrong shapes "
                              f"({len(reader.bad_shapes)}): " + "; ".join(reader.bad_shapes))
    return params


def lm_params_from_transformers(state: Mapping[str, np.ndarray], config: LMConfig) -> Any:
    """transformers state dict (whole MusicGen or bare decoder) -> LM params (numpy tree)."""
    c = config
    if any(k.startswith("decoder.model.decoder.") for k in state):
        dec, heads = "decoder.model.decoder.", "decoder.lm_heads."
    else:
        dec, heads = "model.decoder.", "lm_heads."
    state = {k: v for k, v in state.items() if not k.startswith(("text_encoder.", "audio_encoder."))}
    sd = StateDict(state, ignore=("embed_positions.weights",))
    r = _Reader(sd)
    dim, ffn = c.dim, c.ffn_dim

    def proj(prefix: str, in_dim: int) -> dict[str, np.ndarray | None]:
        # transformers omits the projection when the widths already agree: it is the identity then
        if f"{prefix}.weight" not in state and in_dim == dim:
            return {"weight": np.eye(dim, dtype=np.float32), "bias": np.zeros(dim, np.float32)}
        return {"weight": r.get(f"{prefix}.weight", (dim, in_dim)), "bias": r.get(f"{prefix}.bias", (dim,))}

    text_proj = proj("enc_to_dec_proj", c.condition_dim)
    chroma_proj = proj("audio_enc_to_dec_proj", c.chroma_bins) if c.is_melody else {}
    layer_keys = {
        "sa_q": ("self_attn.q_proj.weight", (dim, dim)), "sa_k": ("self_attn.k_proj.weight", (dim, dim)),
        "sa_v": ("self_attn.v_proj.weight", (dim, dim)), "sa_o": ("self_attn.out_proj.weight", (dim, dim)),
        "sa_norm_w": ("self_attn_layer_norm.weight", (dim,)), "sa_norm_b": ("self_attn_layer_norm.bias", (dim,)),
        "ca_q": ("encoder_attn.q_proj.weight", (dim, dim)), "ca_k": ("encoder_attn.k_proj.weight", (dim, dim)),
        "ca_v": ("encoder_attn.v_proj.weight", (dim, dim)), "ca_o": ("encoder_attn.out_proj.weight", (dim, dim)),
        "ca_norm_w": ("encoder_attn_layer_norm.weight", (dim,)),
        "ca_norm_b": ("encoder_attn_layer_norm.bias", (dim,)),
        "fc1": ("fc1.weight", (ffn, dim)), "fc2": ("fc2.weight", (dim, ffn)),
        "ffn_norm_w": ("final_layer_norm.weight", (dim,)), "ffn_norm_b": ("final_layer_norm.bias", (dim,)),
    }

    def fetch(kind, *idx):
        if kind == "text_proj":
            return text_proj[idx[0]]
        if kind == "chroma_proj":
            return chroma_proj[idx[0]]
        layer, part = idx
        key, shape = layer_keys[part]
        return r.get(f"{dec}layers.{layer}.{key}", shape)

    templates = {"emb": f"{dec}embed_tokens.{{}}.weight", "head": f"{heads}{{}}.weight",
                 "out_norm": f"{dec}layer_norm.{{}}"}
    flat = _assemble(c, _with_top_level(c, r, templates, fetch))
    return _finish(c, flat, sd, r, "transformers MusicGen LM")


_CHROMA_BUFFERS = "condition_provider.conditioners.self_wav.chroma."


def lm_params_from_audiocraft(state: Mapping[str, np.ndarray], config: LMConfig) -> Any:
    """audiocraft `best_state` dict -> LM params (numpy tree)."""
    c = config
    state = {k.replace(".mha.", "."): v for k, v in state.items() if not k.startswith(_CHROMA_BUFFERS)}
    sd = StateDict(state)
    r = _Reader(sd)
    dim, ffn = c.dim, c.ffn_dim
    packed: dict[tuple[int, str], np.ndarray | None] = {}

    def qkv(layer: int, block: str, which: int) -> np.ndarray | None:
        if (layer, block) not in packed:
            packed[(layer, block)] = r.get(f"transformer.layers.{layer}.{block}.in_proj_weight", (3 * dim, dim))
        w = packed[(layer, block)]
        return None if w is None else w[which * dim:(which + 1) * dim]

    simple = {
        "sa_o": ("self_attn.out_proj.weight", (dim, dim)), "ca_o": ("cross_attention.out_proj.weight", (dim, dim)),
        "sa_norm_w": ("norm1.weight", (dim,)), "sa_norm_b": ("norm1.bias", (dim,)),
        "ca_norm_w": ("norm_cross.weight", (dim,)), "ca_norm_b": ("norm_cross.bias", (dim,)),
        "fc1": ("linear1.weight", (ffn, dim)), "fc2": ("linear2.weight", (dim, ffn)),
        "ffn_norm_w": ("norm2.weight", (dim,)), "ffn_norm_b": ("norm2.bias", (dim,)),
    }
    conds = "condition_provider.conditioners."

    def fetch(kind, *idx):
        if kind == "text_proj":
            shape = (dim, c.condition_dim) if idx[0] == "weight" else (dim,)
            return r.get(f"{conds}description.output_proj.{idx[0]}", shape)
        if kind == "chroma_proj":
            shape = (dim, c.chroma_bins) if idx[0] == "weight" else (dim,)
            return r.get(f"{conds}self_wav.output_proj.{idx[0]}", shape)
        layer, part = idx
        if part[3:] in ("q", "k", "v"):
            block = "self_attn" if part.startswith("sa") else "cross_attention"
            return qkv(layer, block, "qkv".index(part[3]))
        key, shape = simple[part]
        return r.get(f"transformer.layers.{layer}.{key}", shape)

    templates = {"emb": "emb.{}.weight", "head": "linears.{}.weight", "out_norm": "out_norm.{}"}
    flat = _assemble(c, _with_top_level(c, r, templates, fetch))
    return _finish(c, flat, sd, r, "audiocraft MusicGen LM")


# ---------------------------------------------------------------------------------------------------
# files


def load_transformers_lm(directory: str, config: LMConfig | None = None) -> tuple[LMConfig, Any]:
    """A transformers MusicGen directory (config.json + weights) -> (LMConfig, params)."""
    if config is None:
        with open(os.path.join(directory, "config.json")) as f:
            config = lm_config_from_hf(json.load(f))
    return config, lm_params_from_transformers(load_transformers_weights(directory), config)


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
    cfg = parse_xp_cfg(pkg["xp.cfg"])
    state = tensors_to_numpy(dict(pkg["best_state"]))
    if config is None:
        config = lm_config_from_audiocraft(cfg)
        w = state.get("condition_provider.conditioners.description.output_proj.weight")
        if w is not None and w.ndim == 2 and w.shape[1] != config.condition_dim:
            import dataclasses

            config = dataclasses.replace(config, condition_dim=int(w.shape[1]))
    return config, lm_params_from_audiocraft(state, config), cfg
