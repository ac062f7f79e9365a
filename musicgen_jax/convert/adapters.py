"""LoRA adapters on disk: the PEFT adapter folder that transformers + `peft` load onto a MusicGen.

    save_peft_adapters(out_dir, lora, adapter_params, lm_config, base="facebook/musicgen-small")
    adapters = load_adapters(directory, lm_config)      # -> Adapters(lora, params, base)
    lm_params = apply_adapters(lm_params, lm_config, directory)   # merged in memory

A PEFT folder holds `adapter_config.json` (peft_type LORA, r, lora_alpha, lora_dropout, target_modules,
use_rslora, base_model_name_or_path, ...) and `adapter_model.safetensors` (or `adapter_model.bin`) with
one pair of tensors per adapted module of the wrapped model, e.g.

    base_model.model.decoder.model.decoder.layers.3.self_attn.q_proj.lora_A.weight   [r, in]
    base_model.model.decoder.model.decoder.layers.3.self_attn.q_proj.lora_B.weight   [out, r]

(`base_model.model.` is PEFT's wrapper; then the module path inside `MusicgenForConditionalGeneration` or
`MusicgenMelodyForConditionalGeneration`; a bare `MusicgenForCausalLM` has `model.decoder.layers...`).
PEFT computes y = W x + (alpha / r) * B A dropout(x), the same map as modules/lora.py. Our targets map
to transformers' modules as self_attn.{query,key,value,out} -> self_attn.{q,k,v,out}_proj,
cross_attn.* -> encoder_attn.*, fc1 / fc2 -> fc1 / fc2.

The tensors are read and written through one key table per target set (convert/layout.py), as the LM's
own weights are. Folders written by PEFT itself load as well, with `use_rslora` and `layers_to_transform`
(the other layers then have no adapter); per-module ranks (`rank_pattern` / `alpha_pattern`), DoRA, LoRA
biases and `modules_to_save` are refused with a message naming the setting.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from musicgen_jax.config import LMConfig
from musicgen_jax.convert import layout as L
from musicgen_jax.convert.common import CheckpointError, load_state_dict_file, naming, read_json
from musicgen_jax.modules.lora import RANK_AXIS, TARGETS, LoraConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_FILES = (CONFIG_FILE, *WEIGHTS_FILES)

# our target -> (transformers module inside a decoder layer, lora_A groups (torch order), lora_B groups)
_R = (RANK_AXIS,)
PEFT_MODULES: dict[str, tuple[str, L.Groups, L.Groups]] = {
    **{f"self_attn.{ours}": (f"self_attn.{theirs}", (_R, ("embed",)), (("heads", "kv"), _R))
       for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))},
    "self_attn.out": ("self_attn.out_proj", (_R, ("heads", "kv")), (("embed",), _R)),
    **{f"cross_attn.{ours}": (f"encoder_attn.{theirs}", (_R, ("embed",)), (("heads", "kv"), _R))
       for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))},
    "cross_attn.out": ("encoder_attn.out_proj", (_R, ("heads", "kv")), (("embed",), _R)),
    "fc1": ("fc1", (_R, ("embed",)), (("mlp",), _R)),
    "fc2": ("fc2", (_R, ("mlp",)), (("embed",), _R)),
}
assert set(PEFT_MODULES) == set(TARGETS)
_BY_MODULE = {module: target for target, (module, _, _) in PEFT_MODULES.items()}

PEFT_PREFIX = "base_model.model."
DECODER = "decoder.model.decoder."  # inside MusicgenForConditionalGeneration (and the melody model)
BARE_DECODER = "model.decoder."  # inside a bare MusicgenForCausalLM
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<decoder>decoder\.model\.decoder\.|model\.decoder\.)layers\."
                  r"(?P<layer>\d+)\.(?P<module>(?:self_attn|encoder_attn)\.(?:q|k|v|out)_proj|fc1|fc2)\."
                  r"lora_(?P<which>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


@dataclasses.dataclass(frozen=True)
class Adapters:
    """LoRA adapters read from disk: their config, params (numpy, layers stacked as in training, the
    structure of `split_adapters`' second tree) and the base model the folder names (or None)."""

    lora: LoraConfig
    params: dict[str, Any]
    base: str | None = None


def _target_path(target: str) -> tuple[str, ...]:
    return ("layers", *target.split("."))


def adapter_specs(config: LMConfig, lora: LoraConfig) -> dict[tuple[str, ...], L.ParamSpec]:
    """{adapter param path: shape, dtype, logical axes} of the scanned LM with `lora` (nothing allocated)."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    from musicgen_jax.modules.lm import init_lm
    from musicgen_jax.modules.lora import is_adapter

    variables = jax.eval_shape(lambda: init_lm(config, jax.random.PRNGKey(0), lora=lora))
    specs = nn.get_partition_spec(variables)["params"]
    axes = traverse_util.flatten_dict(specs, is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = traverse_util.flatten_dict(nn.meta.unbox(variables)["params"])
    keep = {k: v for k, v in shapes.items() if is_adapter(k)}
    return L.param_specs(traverse_util.unflatten_dict(keep), {k: tuple(axes[k]) for k in keep})


def peft_layout(targets: tuple[str, ...], decoder_prefix: str = DECODER) -> L.Layout:
    """The key table of a PEFT adapter file over `targets`."""
    entries = []
    for target in targets:
        module, a_groups, b_groups = PEFT_MODULES[target]
        key = f"{PEFT_PREFIX}{decoder_prefix}layers.{{layers}}.{module}"
        path = "/".join(_target_path(target))
        entries.append(L.Entry(f"{key}.lora_A.weight", f"{path}/lora_a", a_groups))
        entries.append(L.Entry(f"{key}.lora_B.weight", f"{path}/lora_b", b_groups))
    return L.Layout("PEFT LoRA adapter", tuple(entries))


def _check_structure(params: Mapping[str, Any], specs: Mapping[tuple[str, ...], L.ParamSpec]) -> dict:
    from flax import traverse_util

    flat = traverse_util.flatten_dict(dict(params))
    wrong = sorted("/".join(p) for p in set(flat) ^ set(specs))
    if wrong:
        raise ValueError(f"adapter params do not match the LoRA targets: {', '.join(wrong)}")
    for path, spec in specs.items():
        if tuple(np.shape(flat[path])) != spec.shape:
            raise ValueError(f"adapter {'/'.join(path)} has shape {np.shape(flat[path])}, expected {spec.shape}")
    return flat


def peft_state_dict(params: Mapping[str, Any], config: LMConfig, lora: LoraConfig) -> dict[str, np.ndarray]:
    """Adapter params (scanned layout) -> {PEFT key: float32 tensor in torch orientation}."""
    import jax

    specs = adapter_specs(config, lora)
    flat = _check_structure(jax.tree.map(np.asarray, jax.device_get(dict(params))), specs)
    return L.write(peft_layout(lora.targets), flat, specs)


def peft_config(lora: LoraConfig, base: str | None) -> dict[str, Any]:
    """adapter_config.json of a LoRA over `lora.targets` of a MusicGen decoder."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "revision": None,
        "r": int(lora.rank),
        "lora_alpha": float(lora.alpha),
        "lora_dropout": float(lora.dropout),
        "use_rslora": bool(lora.rslora),
        "target_modules": sorted(PEFT_MODULES[t][0] for t in lora.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
    }


def save_peft_adapters(out_dir: str, lora: LoraConfig, params: Mapping[str, Any], config: LMConfig,
                       base: str | None = None) -> str:
    """Write adapter_config.json + adapter_model.safetensors to `out_dir` (PEFT's folder); returns it."""
    from safetensors.numpy import save_file

    from musicgen_jax.files import atomic_write

    state = peft_state_dict(params, config, lora)
    for key, value in state.items():
        if not np.isfinite(value).all():
            raise ValueError(f"refusing to export non-finite adapter weights: {key} (the run diverged: "
                             "export an earlier checkpoint)")
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    atomic_write(os.path.join(out_dir, WEIGHTS_FILES[0]),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(peft_config(lora, base), indent=2) + "\n"

    def write_config(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(os.path.join(out_dir, CONFIG_FILE), write_config)  # last: a folder with a config is complete
    return out_dir


# ------------------------------------------------------------------------------------------ reading


def _refuse(cfg: Mapping[str, Any], path: str) -> None:
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (only LORA adapters are supported)")
    for key, what in (("rank_pattern", "per-module ranks"), ("alpha_pattern", "per-module alphas")):
        if cfg.get(key):
            problems.append(f"{key} {cfg[key]} ({what} are not supported)")
    if cfg.get("use_dora"):
        problems.append("use_dora true (DoRA is not supported)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        problems.append("trained biases (bias / lora_bias; MusicGen's projections have none)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} (fully trained modules are not supported)")
    if cfg.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out true (for GPT-2 style Conv1D layers, not MusicGen)")
    if problems:
        raise CheckpointError(f"{path}: unsupported adapter settings: " + "; ".join(problems))


def _adapter_dir(name_or_path: str) -> str:
    """A local folder (or hub repo) holding a PEFT adapter; a clear error for anything else."""
    from musicgen_jax import hub

    local = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, CONFIG_FILE)):
            if os.path.isfile(os.path.join(local, "_CHECKPOINT_METADATA")) or any(
                    d.isdigit() and os.path.isdir(os.path.join(local, d, "state")) for d in os.listdir(local)):
                raise ValueError(f"{local} is a training checkpoint, not an adapter folder: export its adapters "
                                 f"with `musicgen-jax export {local} OUT_DIR --adapter-only` and load OUT_DIR")
            raise FileNotFoundError(f"{local} is not a PEFT adapter folder: it has no {CONFIG_FILE}")
        return local
    if os.path.exists(local):
        raise ValueError(f"{name_or_path!r} is a file; pass the folder holding {CONFIG_FILE} and the adapter weights")
    return hub.resolve(name_or_path, allow_patterns=list(ADAPTER_FILES),
                       complete=lambda d: os.path.isfile(os.path.join(d, CONFIG_FILE)))


def _weights_file(directory: str) -> str:
    for name in WEIGHTS_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"{directory} has {CONFIG_FILE} but no adapter weights ({' or '.join(WEIGHTS_FILES)})")


def _group_keys(state: Mapping[str, np.ndarray], path: str) -> tuple[str, set[str], set[int]]:
    """(decoder prefix, targets, layers) present in a PEFT state dict; unknown keys are an error."""
    prefixes, targets, layers, unknown = set(), set(), set(), []
    for key in state:
        m = _KEY.match(key)
        if m is None:
            unknown.append(key)
            continue
        prefixes.add(m["decoder"])
        targets.add(_BY_MODULE[m["module"]])
        layers.add(int(m["layer"]))
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise CheckpointError(f"{path}: tensors that are not LoRA weights of the MusicGen decoder's attention or "
                              f"feed-forward projections: {shown}")
    if not targets:
        raise CheckpointError(f"{path} holds no LoRA weights")
    if len(prefixes) > 1:
        raise CheckpointError(f"{path} mixes adapters of a whole MusicGen and of a bare decoder")
    return prefixes.pop(), targets, layers


def load_adapters(name_or_path: str, config: LMConfig) -> Adapters:
    """A PEFT LoRA folder (ours or PEFT's own; local or a hub repo) -> Adapters for an LM `config`."""
    directory = _adapter_dir(name_or_path)
    config_path = os.path.join(directory, CONFIG_FILE)
    raw = read_json(config_path)
    _refuse(raw, config_path)
    try:
        rank, alpha = int(raw["r"]), float(raw["lora_alpha"])
        dropout = float(raw.get("lora_dropout") or 0.0)
    except KeyError as e:
        raise ValueError(f"{config_path}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: r / lora_alpha / lora_dropout must be numbers ({e})") from None
    weights = _weights_file(directory)
    state = {k: np.asarray(v, np.float32) for k, v in load_state_dict_file(weights).items()}
    prefix, found, layers = _group_keys(state, weights)
    targets = tuple(t for t in TARGETS if t in found)
    if not config.cross_attention and any(t.startswith("cross_attn.") for t in targets):
        raise CheckpointError(f"{weights} adapts cross-attention (encoder_attn), which this LM does not have")
    partial = raw.get("layers_to_transform") is not None
    if max(layers) >= config.num_layers or (not partial and layers != set(range(config.num_layers))):
        raise CheckpointError(f"{weights} has adapters for layers {min(layers)}..{max(layers)}, the LM has "
                              f"{config.num_layers} layers: an adapter of another model size?")
    try:
        lora = LoraConfig(rank=rank, alpha=alpha, dropout=dropout, targets=targets, rslora=bool(raw.get("use_rslora")))
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    if partial:  # only some layers adapted: the others get zero adapters
        state = _fill_missing_layers(state, prefix, targets, config, lora)
    specs = adapter_specs(config, lora)
    from flax import traverse_util

    with naming(weights):
        flat = L.read(peft_layout(targets, prefix), _with_prefix(state), specs)
    return Adapters(lora=lora, params=traverse_util.unflatten_dict(flat), base=raw.get("base_model_name_or_path"))


def _with_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys with PEFT's wrapper prefix (some tools save them without it)."""
    return {k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k: v for k, v in state.items()}


def _fill_missing_layers(state: dict[str, np.ndarray], prefix: str, targets: tuple[str, ...], config: LMConfig,
                         lora: LoraConfig) -> dict[str, np.ndarray]:
    """Zero adapters (no change) for the layers a `layers_to_transform` adapter leaves out."""
    state = _with_prefix(state)
    shapes = {}
    for key, value in state.items():
        m = _KEY.match(key)
        shapes[(m["module"], m["which"])] = value.shape
    for target in targets:
        module = PEFT_MODULES[target][0]
        for which in "AB":
            for layer in range(config.num_layers):
                key = f"{PEFT_PREFIX}{prefix}layers.{layer}.{module}.lora_{which}.weight"
                if key not in state:
                    state[key] = np.zeros(shapes[(module, which)], np.float32)
    return state


def apply_adapters(lm_params: Any, config: LMConfig, name_or_path: str) -> Any:
    """LM params (scanned layout, as `load_checkpoint` gives them) with the adapters of a PEFT folder
    merged in (W + scale * A B): the model the adapters were trained to make, nothing written to disk."""
    from musicgen_jax.modules.lora import merge_adapters

    adapters = load_adapters(name_or_path, config)
    return merge_adapters(lm_params, adapters.params, adapters.lora)
