"""Reading PyTorch checkpoints (safetensors, torch pickles) into numpy, and building param trees.

A converter walks our parameter tree and `take`s tensors from a `StateDict`; `finish` then raises one
`CheckpointError` listing every missing, unexpected or mis-shaped key, or returns the filled tree.
torch is imported only when a pickle has to be read, and only with `weights_only=True`.

Files are checked as they are read, and every problem names the file: an empty, truncated or corrupt
weights file, a config that is not a JSON object or lacks a key, a tensor holding NaN or inf.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import zipfile
from typing import Any, Callable, Iterable, Iterator, Mapping

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


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in `path` (a config file), or ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid JSON: it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(data).__name__}")
    return data


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Errors while interpreting the contents of `path` name it: a missing key (KeyError), a value of the
    wrong type or a checkpoint that does not fit become ValueError / CheckpointError "<path>: ..."."""
    try:
        yield
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e}") from e
    except (TypeError, ValueError, AttributeError) as e:
        if path in str(e):
            raise
        kind = CheckpointError if isinstance(e, CheckpointError) else ValueError
        raise kind(f"{path}: {e}") from e


def non_finite_tensor(tree: Mapping[str, Any], sep: str = ".") -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first floating tensor of `tree` (nested mappings of arrays,
    names joined with `sep`) that holds NaN or inf; None when all are finite."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            found = non_finite_tensor(value, sep)
            if found is not None:
                return (f"{key}{sep}{found[0]}",) + found[1:]
            continue
        value = np.asarray(value)
        if value.dtype.kind not in "biu":  # floats, complex, and bfloat16 (ml_dtypes: kind "V")
            finite = np.isfinite(value)
            if not finite.all():
                return str(key), int(value.size - finite.sum()), int(value.size)
    return None


def check_finite(state: Mapping[str, Any], path: str) -> None:
    """CheckpointError naming the first tensor of `state` (numpy, nested dicts allowed) that holds NaN or
    inf: such weights load fine and then generate nothing but token 0."""
    found = non_finite_tensor(state)
    if found is not None:
        name, bad, size = found
        raise CheckpointError(f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) of {size}; "
                              "the checkpoint is corrupt")


def _check_not_empty(path: str) -> int:
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again")
    return size


def _safetensors_dtypes(path: str) -> set[str]:
    """The tensor dtypes of a safetensors file, after checking that its header and size agree."""
    size = _check_not_empty(path)
    truncated = f"{path} is truncated or not a safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{truncated}: {size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(f"{truncated}: its header claims {header_len} bytes, the file holds {size}")
        try:
            header = json.loads(f.read(header_len))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
            dtypes = {str(v["dtype"]) for k, v in header.items() if k != "__metadata__"}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise CheckpointError(f"{truncated}: its header is not valid") from None
    data = size - 8 - header_len
    if max(ends, default=0) > data:
        raise CheckpointError(f"{truncated}: its tensors need {max(ends, default=0)} bytes of data, the file "
                              f"holds {data} ({max(ends, default=0) - data} missing)")
    return dtypes


def load_torch_pickle(path: str) -> Any:
    """torch.load with weights_only=True (no arbitrary code), tensors left as torch tensors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    _check_not_empty(path)
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if zipped and not zipfile.is_zipfile(path):  # torch's format since 1.6: the archive's end is missing
        raise CheckpointError(f"{path} is truncated: the torch checkpoint's zip archive is incomplete")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError with a long story; keep ours short
        raise CheckpointError(f"cannot read torch checkpoint {path} (corrupt, truncated or not a torch "
                              f"checkpoint): {e}") from e


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
        dtypes = _safetensors_dtypes(path)
        try:
            if dtypes & {"BF16", "F8_E4M3", "F8_E5M2"}:  # not numpy dtypes: go through torch
                from safetensors.torch import load_file as load_torch

                state = tensors_to_numpy(load_torch(path))
            else:
                from safetensors.numpy import load_file

                state = dict(load_file(path))
        except ImportError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path} (corrupt?): {e}") from e
    else:
        state = tensors_to_numpy(load_torch_pickle(path))
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    check_finite(state, path)
    return state


# (index, single file) per format, safetensors first: some repos hold a torch index beside safetensors
_WEIGHT_FORMATS = (("model.safetensors.index.json", "model.safetensors"),
                   ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def has_transformers_weights(directory: str) -> bool:
    """Whether a directory holds transformers weights (a single file or a sharded index)."""
    return any(os.path.isfile(os.path.join(directory, n)) for pair in _WEIGHT_FORMATS for n in pair)


def load_transformers_weights(directory: str) -> dict[str, np.ndarray]:
    """Weights of a transformers checkpoint directory, sharded or not, safetensors preferred."""
    path = transformers_weights_file(directory)
    if path.endswith(".index.json"):
        with naming(path):
            files = sorted(set(read_json(path)["weight_map"].values()))
        state = {}
        for name in files:
            state.update(load_state_dict_file(os.path.join(directory, name)))
        return state
    return load_state_dict_file(path)


def transformers_weights_file(directory: str) -> str:
    """The weights file (or shard index) `load_transformers_weights` reads from a directory."""
    for pair in _WEIGHT_FORMATS:
        for name in pair:
            if os.path.isfile(os.path.join(directory, name)):
                return os.path.join(directory, name)
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
