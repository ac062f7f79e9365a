"""Reading PyTorch checkpoints (safetensors, torch pickles) into numpy, and building param trees.

A converter walks our parameter tree and `take`s tensors from a `StateDict`; `finish` then raises one
`CheckpointError` listing every missing, unexpected or mis-shaped key, or returns the filled tree.
torch is imported only when a pickle has to be read, and only with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: missing, unexpected or mis-shaped tensors."""


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def load_torch_pickle(path: str) -> Any:
    """torch.load with weights_only=True (no arbitrary code), tensors left as torch tensors."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError with a long story; keep ours short
        raise CheckpointError(f"cannot read torch checkpoint {path}: {e}") from e


def tensors_to_numpy(obj: Any) -> Any:
    """Recursively turn torch tensors inside dicts/lists into numpy arrays."""
    if isinstance(obj, Mapping):
        return {k: tensors_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tensors_to_numpy(v) for v in obj)
    if hasattr(obj, "detach") and hasattr(obj, "dtype"):
        return _torch_to_numpy(obj)
    return obj


def load_state_dict_file(path: str) -> dict[str, np.ndarray]:
    """One weights file -> {name: np.ndarray}: .safetensors, or a torch pickle (.bin/.pt/.pth)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception:  # bf16 tensors are not numpy-loadable: go through torch
            from safetensors.torch import load_file as load_torch

            return tensors_to_numpy(load_torch(path))
    return tensors_to_numpy(load_torch_pickle(path))


# (index, single file) per format, safetensors first: some repos hold a torch index beside safetensors
_WEIGHT_FORMATS = (("model.safetensors.index.json", "model.safetensors"),
                   ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def has_transformers_weights(directory: str) -> bool:
    """Whether a directory holds transformers weights (a single file or a sharded index)."""
    return any(os.path.isfile(os.path.join(directory, n)) for pair in _WEIGHT_FORMATS for n in pair)


def load_transformers_weights(directory: str) -> dict[str, np.ndarray]:
    """Weights of a transformers checkpoint directory, sharded or not, safetensors preferred."""
    for index_name, single_name in _WEIGHT_FORMATS:
        index = os.path.join(directory, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for name in files:
                state.update(load_state_dict_file(os.path.join(directory, name)))
            return state
        if os.path.isfile(os.path.join(directory, single_name)):
            return load_state_dict_file(os.path.join(directory, single_name))
    raise FileNotFoundError(
        f"no weights in {directory}: expected model.safetensors, pytorch_model.bin or a sharded index"
    )


def fold_weight_norm(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace weight-norm pairs by the plain weight w = g * v / ||v|| (norm over all axes but 0).

    Understands both key styles: `X.weight_g`/`X.weight_v` and
    `X.parametrizations.weight.original0`/`original1`.
    """
    styles = ((".weight_g", ".weight_v"),
              (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
    out = dict(state)
    for g_suffix, v_suffix in styles:
        for key in [k for k in state if k.endswith(g_suffix)]:
            base = key[: -len(g_suffix)]
            v_key = base + v_suffix
            if v_key not in state:
                continue  # reported as missing by the converter
            g, v = state[key].astype(np.float64), state[v_key].astype(np.float64)
            norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
            out[base + ".weight"] = (g * v / norm).astype(np.float32)
            del out[key], out[v_key]
    return out


class StateDict:
    """A flat {name: array} being consumed by a converter; remembers what was taken or missing."""

    def __init__(self, tensors: Mapping[str, np.ndarray], ignore: Iterable[str] = ()):
        self.tensors = dict(tensors)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.ignore = tuple(ignore)  # suffixes of keys that may be present and unused (buffers)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> np.ndarray | None:
        if key not in self.tensors:
            self.missing.append(key)
            return None
        self.used.add(key)
        return np.asarray(self.tensors[key])

    def unexpected(self) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.used and not k.endswith(self.ignore))


def finish(abstract: Any, flat: Mapping[tuple[str, ...], np.ndarray | None], state: StateDict,
           what: str) -> Any:
    """Check `flat` (our param path -> array) against the abstract tree and the state dict.

    abstract: a pytree of ShapeDtypeStruct (from jax.eval_shape of the model's init), unboxed.
    Raises CheckpointError listing all problems at once; returns the nested param tree (numpy).
    """
    expected = traverse_util.flatten_dict(abstract)
    problems = []
    missing = list(state.missing)
    uncovered = [k for k in expected if k not in flat]
    mis_shaped = []
    for path, arr in flat.items():
        if arr is None:
            continue
        if path not in expected:
            raise AssertionError(f"converter produced unknown parameter {'/'.join(path)}")
        want = tuple(expected[path].shape)
        if tuple(arr.shape) != want:
            mis_shaped.append(f"{'/'.join(path)}: checkpoint {tuple(arr.shape)}, model {want}")
    unexpected = state.unexpected()
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if uncovered:
        problems.append(f"parameters with no source ({len(uncovered)}): "
                        + ", ".join("/".join(p) for p in uncovered))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shapes ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
    if problems:
        raise CheckpointError(f"{what} checkpoint does not match the model:\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(
        {k: np.asarray(v, dtype=expected[k].dtype) for k, v in flat.items()})


def abstract_params(init_fn: Callable[[], Any]) -> Any:
    """Shapes of a module's params without allocating them: eval_shape of init, boxes removed."""
    import flax.linen as nn

    shapes = jax.eval_shape(init_fn)
    return nn.meta.unbox(shapes)["params"]


def linear(weight: np.ndarray | None) -> np.ndarray | None:
    """torch Linear weight [out, in] -> Flax kernel [in, out]."""
    return None if weight is None else weight.T


def sub_state(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Keys under `prefix` with the prefix stripped."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
