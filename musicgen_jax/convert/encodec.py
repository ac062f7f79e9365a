"""EnCodec checkpoints -> (EncodecConfig, params).

Layouts:
  * transformers: `config.json` + weights of an `EncodecModel` (keys `encoder.layers.N...`), or the
    `audio_encoder.*` part of a MusicGen checkpoint;
  * audiocraft: `compression_state_dict.bin`, either a trained codec (`xp.cfg` YAML + `best_state`,
    keys `encoder.model.N.conv.conv...`) or an exported pointer `{'pretrained': 'facebook/encodec_32khz'}`
    resolved through the hub as a transformers checkpoint.
Both weight-norm key styles are folded (see common.fold_weight_norm).
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np
import yaml

from musicgen_jax import hub
from musicgen_jax.config import EncodecConfig
from musicgen_jax.convert.common import (CheckpointError, StateDict, abstract_params, check_finite, finish,
                                         fold_weight_norm, load_torch_pickle, load_transformers_weights, naming,
                                         read_json, sub_state, tensors_to_numpy, transformers_weights_file)

_BUFFERS = (".inited", ".cluster_size", ".embed_avg")


# --------------------------------------------------------------------------- configs

def encodec_config_from_hf(cfg: Mapping[str, Any]) -> EncodecConfig:
    """An EnCodec transformers config.json dict -> EncodecConfig (refusing what we do not run)."""
    unsupported = []
    if cfg.get("norm_type", "weight_norm") != "weight_norm":
        unsupported.append(f"norm_type={cfg['norm_type']!r} (time-group-norm)")
    if cfg.get("normalize", False):
        unsupported.append("normalize=True (input renormalisation)")
    if cfg.get("chunk_length_s") is not None:
        unsupported.append(f"chunk_length_s={cfg['chunk_length_s']} (chunked overlap-add)")
    if unsupported:
        raise ValueError("unsupported EnCodec configuration (e.g. facebook/encodec_48khz): "
                         + ", ".join(unsupported) + "; the 24 kHz and 32 kHz codecs are supported")
    sr = int(cfg.get("sampling_rate", 24000))
    ratios = tuple(cfg.get("upsampling_ratios", (8, 5, 4, 2)))
    card = int(cfg.get("codebook_size", 1024))
    bandwidths = cfg.get("target_bandwidths", [1.5, 3.0, 6.0, 12.0, 24.0])
    frame_rate = math.ceil(sr / math.prod(ratios))
    num_codebooks = int(1000 * bandwidths[-1] // (frame_rate * math.ceil(math.log2(card))))
    return EncodecConfig(
        sample_rate=sr,
        channels=int(cfg.get("audio_channels", 1)),
        num_filters=int(cfg.get("num_filters", 32)),
        ratios=ratios,
        dimension=int(cfg.get("hidden_size", 128)),
        num_residual_layers=int(cfg.get("num_residual_layers", 1)),
        kernel_size=int(cfg.get("kernel_size", 7)),
        last_kernel_size=int(cfg.get("last_kernel_size", 7)),
        residual_kernel_size=int(cfg.get("residual_kernel_size", 3)),
        dilation_base=int(cfg.get("dilation_growth_rate", 2)),
        compress=int(cfg.get("compress", 2)),
        lstm_layers=int(cfg.get("num_lstm_layers", 2)),
        causal=bool(cfg.get("use_causal_conv", True)),
        pad_mode="constant" if cfg.get("pad_mode", "reflect") in ("constant", "zeros") else cfg["pad_mode"],
        true_skip=not cfg.get("use_conv_shortcut", True),
        trim_right_ratio=float(cfg.get("trim_right_ratio", 1.0)),
        codebook_size=card,
        num_codebooks=num_codebooks,
    )


def encodec_config_from_audiocraft(xp_cfg: Mapping[str, Any]) -> EncodecConfig:
    """audiocraft's experiment config (parsed `xp.cfg` YAML) of a trained codec -> EncodecConfig."""
    if xp_cfg.get("compression_model", "encodec") != "encodec":
        raise ValueError(f"unsupported compression model {xp_cfg.get('compression_model')!r}; only EnCodec")
    enc = xp_cfg.get("encodec", {})
    seanet = dict(xp_cfg.get("seanet", {}))
    rvq = xp_cfg.get("rvq", {})
    if enc.get("renormalize", False):
        raise ValueError("unsupported EnCodec configuration: renormalize=True")
    if enc.get("quantizer", "rvq") != "rvq" or enc.get("autoencoder", "seanet") != "seanet":
        raise ValueError("unsupported EnCodec configuration: only the SEANet autoencoder with RVQ")
    if seanet.get("norm", "weight_norm") not in ("weight_norm", "none"):
        raise ValueError(f"unsupported EnCodec configuration: norm={seanet['norm']!r}")
    if seanet.get("activation", "ELU") != "ELU" or seanet.get("activation_params", {"alpha": 1.0}).get("alpha", 1.0) != 1.0:
        raise ValueError("unsupported EnCodec configuration: activation other than ELU(alpha=1)")
    for side in ("encoder", "decoder"):
        overrides = {k: v for k, v in (seanet.get(side) or {}).items()
                     if k not in ("trim_right_ratio", "final_activation", "final_activation_params")}
        if overrides or (side == "decoder" and (seanet.get("decoder") or {}).get("final_activation")):
            raise ValueError(f"unsupported EnCodec configuration: seanet.{side} overrides {overrides}")
    causal = bool(enc.get("causal", seanet.get("causal", False)))
    return EncodecConfig(
        sample_rate=int(enc.get("sample_rate", xp_cfg.get("sample_rate", 32000))),
        channels=int(enc.get("channels", xp_cfg.get("channels", 1))),
        num_filters=int(seanet.get("n_filters", 32)),
        ratios=tuple(seanet.get("ratios", (8, 5, 4, 2))),
        dimension=int(seanet.get("dimension", 128)),
        num_residual_layers=int(seanet.get("n_residual_layers", 1)),
        kernel_size=int(seanet.get("kernel_size", 7)),
        last_kernel_size=int(seanet.get("last_kernel_size", 7)),
        residual_kernel_size=int(seanet.get("residual_kernel_size", 3)),
        dilation_base=int(seanet.get("dilation_base", 2)),
        compress=int(seanet.get("compress", 2)),
        lstm_layers=int(seanet.get("lstm", 2)),
        causal=causal,
        pad_mode="constant" if seanet.get("pad_mode", "constant") in ("constant", "zeros") else seanet["pad_mode"],
        true_skip=bool(seanet.get("true_skip", True)),
        trim_right_ratio=float((seanet.get("decoder") or {}).get("trim_right_ratio", 1.0)),
        codebook_size=int(rvq.get("bins", 1024)),
        num_codebooks=int(rvq.get("n_q", 8)),
    )


# --------------------------------------------------------------------------- weights

class _Names:
    """Key spelling of one layout."""

    def __init__(self, audiocraft: bool):
        self.audiocraft = audiocraft
        self.seq = "model" if audiocraft else "layers"

    def conv(self, prefix: str) -> str:
        return f"{prefix}.conv.conv" if self.audiocraft else f"{prefix}.conv"

    def convtr(self, prefix: str) -> str:
        return f"{prefix}.convtr.convtr" if self.audiocraft else f"{prefix}.conv"

    def codebook(self, q: int) -> str:
        return f"quantizer.vq.layers.{q}._codebook.embed" if self.audiocraft else f"quantizer.layers.{q}.codebook.embed"


def _conv(sd: StateDict, key: str) -> dict:
    w = sd.take(key + ".weight")  # torch [out, in, k]
    return {"kernel": None if w is None else w.transpose(2, 1, 0), "bias": sd.take(key + ".bias")}


def _convtr(sd: StateDict, key: str) -> dict:
    w = sd.take(key + ".weight")  # torch [in, out, k]
    return {"kernel": None if w is None else w.transpose(2, 0, 1), "bias": sd.take(key + ".bias")}


def _lstm(sd: StateDict, key: str, layers: int) -> dict:
    out = {}
    for l in range(layers):
        w_ih, w_hh = sd.take(f"{key}.lstm.weight_ih_l{l}"), sd.take(f"{key}.lstm.weight_hh_l{l}")
        b_ih, b_hh = sd.take(f"{key}.lstm.bias_ih_l{l}"), sd.take(f"{key}.lstm.bias_hh_l{l}")
        out[f"layer_{l}_w_in"] = None if w_ih is None else w_ih.T
        out[f"layer_{l}_w_rec"] = None if w_hh is None else w_hh.T
        out[f"layer_{l}_bias"] = None if b_ih is None or b_hh is None else b_ih + b_hh
    return out


def _resblock(sd: StateDict, names: _Names, key: str, cfg: EncodecConfig) -> dict:
    block = {"conv1": _conv(sd, names.conv(f"{key}.block.1")), "conv2": _conv(sd, names.conv(f"{key}.block.3"))}
    if not cfg.true_skip:
        block["shortcut"] = _conv(sd, names.conv(f"{key}.shortcut"))
    return block


def _encoder(sd: StateDict, names: _Names, cfg: EncodecConfig) -> dict:
    seq = f"encoder.{names.seq}"
    out = {"conv_in": _conv(sd, names.conv(f"{seq}.0"))}
    stage = cfg.num_residual_layers + 2  # residual blocks, ELU, down conv
    for i in range(len(cfg.ratios)):
        start = 1 + i * stage
        for j in range(cfg.num_residual_layers):
            out[f"block_{i}_{j}"] = _resblock(sd, names, f"{seq}.{start + j}", cfg)
        out[f"down_{i}"] = _conv(sd, names.conv(f"{seq}.{start + cfg.num_residual_layers + 1}"))
    idx = 1 + len(cfg.ratios) * stage
    if cfg.lstm_layers:
        out["lstm"] = _lstm(sd, f"{seq}.{idx}", cfg.lstm_layers)
        idx += 1
    out["conv_out"] = _conv(sd, names.conv(f"{seq}.{idx + 1}"))  # after the ELU
    return out


def _decoder(sd: StateDict, names: _Names, cfg: EncodecConfig) -> dict:
    seq = f"decoder.{names.seq}"
    out = {"conv_in": _conv(sd, names.conv(f"{seq}.0"))}
    idx = 1
    if cfg.lstm_layers:
        out["lstm"] = _lstm(sd, f"{seq}.1", cfg.lstm_layers)
        idx = 2
    for i in range(len(cfg.ratios)):
        out[f"up_{i}"] = _convtr(sd, names.convtr(f"{seq}.{idx + 1}"))  # after the ELU
        for j in range(cfg.num_residual_layers):
            out[f"block_{i}_{j}"] = _resblock(sd, names, f"{seq}.{idx + 2 + j}", cfg)
        idx += cfg.num_residual_layers + 2
    out["conv_out"] = _conv(sd, names.conv(f"{seq}.{idx + 1}"))
    return out


def _flatten(tree: dict, prefix: tuple = ()) -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def encodec_abstract_params(cfg: EncodecConfig):
    import jax
    import jax.numpy as jnp

    from musicgen_jax.modules.encodec import Encodec

    model = Encodec(cfg)
    wav = jnp.zeros((1, cfg.hop_length * 2, cfg.channels), jnp.float32)
    return abstract_params(lambda: model.init(jax.random.PRNGKey(0), wav))


def encodec_params_from_state_dict(state: Mapping[str, np.ndarray], cfg: EncodecConfig, *,
                                   audiocraft: bool = False) -> dict:
    """A codec state dict (prefix already stripped) -> our param tree, checked against the model."""
    names = _Names(audiocraft)
    sd = StateDict(fold_weight_norm(state), ignore=_BUFFERS)
    books = [sd.take(names.codebook(q)) for q in range(cfg.num_codebooks)]
    tree = {
        "encoder": _encoder(sd, names, cfg),
        "decoder": _decoder(sd, names, cfg),
        "quantizer": {"codebooks": None if any(b is None for b in books) else np.stack(books)},
    }
    layout = "audiocraft EnCodec" if audiocraft else "transformers EnCodec"
    return finish(encodec_abstract_params(cfg), _flatten(tree), sd, layout)


# --------------------------------------------------------------------------- files

def load_encodec_transformers(directory: str, prefix: str = "") -> tuple[EncodecConfig, dict]:
    """A transformers EncodecModel directory (or a MusicGen one with prefix 'audio_encoder.')."""
    config_path = os.path.join(directory, "config.json")
    hf_cfg = read_json(config_path)
    with naming(config_path):
        if prefix:
            hf_cfg = hf_cfg[prefix.rstrip(".")]
        cfg = encodec_config_from_hf(hf_cfg)
    state = load_transformers_weights(directory)
    if prefix:
        state = sub_state(state, prefix)
    with naming(transformers_weights_file(directory)):
        return cfg, encodec_params_from_state_dict(state, cfg)


def load_encodec_audiocraft(path: str) -> tuple[EncodecConfig, dict]:
    """audiocraft's `compression_state_dict.bin`: a trained codec, or a pointer to a pretrained one."""
    pkg = load_torch_pickle(path)
    if not isinstance(pkg, Mapping):
        raise CheckpointError(f"{path}: expected a dict, got {type(pkg).__name__}")
    if "pretrained" in pkg:
        name = pkg["pretrained"]
        if not isinstance(name, str) or name.startswith("//"):
            raise CheckpointError(f"{path}: unsupported pretrained pointer {name!r}")
        return load_encodec(name)
    if "best_state" not in pkg or "xp.cfg" not in pkg:
        raise CheckpointError(f"{path}: neither a trained codec (best_state + xp.cfg) nor a pretrained pointer; "
                              f"keys: {sorted(pkg)}")
    with naming(path):
        xp_cfg = pkg["xp.cfg"]
        xp_cfg = yaml.safe_load(xp_cfg) if isinstance(xp_cfg, str) else xp_cfg
        cfg = encodec_config_from_audiocraft(xp_cfg)
        state = tensors_to_numpy(pkg["best_state"])
        if "model" in state and isinstance(state["model"], Mapping):  # an unexported solver checkpoint
            state = state["model"]
        check_finite(state, path)
        return cfg, encodec_params_from_state_dict(state, cfg, audiocraft=True)


def load_encodec(name_or_path: str) -> tuple[EncodecConfig, dict]:
    """Any supported EnCodec checkpoint: directory, audiocraft file, or hub name."""
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isfile(path):
        return load_encodec_audiocraft(path)
    directory, layout = hub.resolve_encodec(name_or_path)  # fetches one layout's files only
    if layout == hub.AUDIOCRAFT:
        return load_encodec_audiocraft(os.path.join(directory, "compression_state_dict.bin"))
    model_type = read_json(os.path.join(directory, "config.json")).get("model_type")
    if model_type in ("musicgen", "musicgen_melody"):
        return load_encodec_transformers(directory, prefix="audio_encoder.")
    return load_encodec_transformers(directory)
