"""Checkpoint layouts as key tables: one declarative table drives both reading and writing.

An `Entry` ties one checkpoint tensor (a key template) to one parameter of ours, or to several packed
along the tensor's first axis (audiocraft's fused q|k|v `in_proj_weight`):

    Entry("decoder.model.decoder.layers.{layers}.fc1.weight", "layers/fc1/kernel", (("mlp",), ("embed",)))

* params are paths into our parameter tree ("a/b/c"), whose axes carry logical names (the module's own
  `nn.with_logical_partitioning` names; an unnamed axis is called "in");
* axes of the parameter that the groups do not mention are *stacked* axes (`layers`, `codebooks`): the
  entry stands for one tensor per index along them, and the key template names that index
  (`{layers}`, `{codebooks}`);
* groups give the tensor's axes in torch order, each a group of our axis names flattened together
  (q_proj [H*D, dim] = (("heads", "kv"), ("embed",))).

Writing takes the selected slice, transposes it into torch order and merges each group; reading is
the exact inverse (split the groups, transpose back, store at the selected index). An entry whose
parameters the model does not have (cross-attention in a melody model, chroma projection in a text
model) does not apply to that model; a parameter no entry covers is a table error.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from flax import traverse_util

from musicgen_jax.convert.common import CheckpointError

Groups = tuple[tuple[str, ...], ...]
Path = tuple[str, ...]
UNNAMED = "in"  # the name given to an axis without a logical name


@dataclass(frozen=True)
class Omission:
    """A layout stores no tensor for an entry when `applies(config)`: the parameter is then the
    identity (a square weight) or zero (a bias). `what` names it in errors."""

    what: str
    applies: Callable[[Any], bool]


@dataclass(frozen=True)
class Entry:
    """One row of a table: a checkpoint tensor and the parameter(s) it holds."""

    key: str  # template; {layers} / {codebooks}: the index along that stacked axis
    params: str | tuple[str, ...]  # "a/b/c" path(s); several = packed along the tensor's first axis
    groups: Groups  # torch axis order, as groups of our logical axis names
    omitted: Omission | None = None

    def __post_init__(self):
        if isinstance(self.params, str):
            object.__setattr__(self, "params", (self.params,))

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(tuple(p.split("/")) for p in self.params)


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: its table plus the keys it holds that are not ours to read."""

    name: str  # for errors: "transformers MusicGen LM"
    entries: tuple[Entry, ...]
    skip: tuple[str, ...] = ()  # key prefixes of other models or buffers, dropped before reading
    ignore: tuple[str, ...] = ()  # key suffixes that may be present and unread (buffers)
    aliases: tuple[tuple[str, str], ...] = ()  # (old, new) substrings replaced in keys before reading

    def with_key_prefixes(self, renames: Mapping[str, str]) -> "Layout":
        """The same table with key prefixes renamed (a bare decoder's keys lack the model's prefix)."""
        def rename(key: str) -> str:
            for old, new in renames.items():
                if key.startswith(old):
                    return new + key[len(old):]
            return key

        return replace(self, entries=tuple(replace(e, key=rename(e.key)) for e in self.entries))


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    dtype: Any
    names: tuple[str, ...]  # logical axis names, UNNAMED for None


def param_specs(abstract: Any, axes: Mapping[Path, tuple[str | None, ...]]) -> dict[Path, ParamSpec]:
    """{path: ParamSpec} from an (unboxed) abstract param tree and {path: logical axis names}."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        names = tuple(n or UNNAMED for n in axes[path])
        if len(names) != len(leaf.shape) or len(set(names)) != len(names):
            raise ValueError(f"parameter {'/'.join(path)}: axis names {names} do not fit shape {leaf.shape}")
        out[path] = ParamSpec(tuple(leaf.shape), leaf.dtype, names)
    return out


# ---------------------------------------------------------------------------------------------------
# one tensor <-> one parameter slice


def _flat_groups(groups: Groups) -> list[str]:
    return [n for g in groups for n in g]


def _rest(names: tuple[str, ...], select: Mapping[str, int]) -> list[str]:
    return [n for n in names if n not in select]


def to_torch_layout(value: np.ndarray, names: tuple[str | None, ...], select: Mapping[str, int],
                    groups: Groups) -> np.ndarray:
    """Take `select` along named axes, then order (and merge) the rest as `groups` says (float32)."""
    names = tuple(n or UNNAMED for n in names)
    if len(set(names)) != len(names):
        raise ValueError(f"ambiguous axis names {names}")
    value = np.asarray(value)[tuple(select.get(n, slice(None)) for n in names)]
    rest, order = _rest(names, select), _flat_groups(groups)
    if sorted(order) != sorted(rest):
        raise ValueError(f"axes {rest} cannot be laid out as {groups}")
    value = np.transpose(value, [rest.index(n) for n in order])
    sizes, i = [], 0
    for group in groups:
        sizes.append(int(np.prod(value.shape[i:i + len(group)], dtype=np.int64)))
        i += len(group)
    return np.ascontiguousarray(value.reshape(sizes), np.float32)


def from_torch_layout(tensor: np.ndarray, spec: ParamSpec, select: Mapping[str, int], groups: Groups) -> np.ndarray:
    """Inverse of `to_torch_layout`: a torch tensor -> the parameter slice at `select`, in our axis order."""
    rest, order = _rest(spec.names, select), _flat_groups(groups)
    size = dict(zip(spec.names, spec.shape))
    value = np.asarray(tensor).reshape([size[n] for n in order])  # [group axes split, torch order]
    return np.transpose(value, [order.index(n) for n in rest])


def torch_shape(spec: ParamSpec, groups: Groups) -> tuple[int, ...]:
    size = dict(zip(spec.names, spec.shape))
    return tuple(int(np.prod([size[n] for n in g], dtype=np.int64)) for g in groups)


# ---------------------------------------------------------------------------------------------------
# a table over a model


def _stacked(entry: Entry, specs: Mapping[Path, ParamSpec]) -> list[tuple[str, int]]:
    """(axis name, size) of the stacked axes an entry iterates over (the same for all its params)."""
    found = None
    for path in entry.paths:
        spec = specs[path]
        axes = [(n, s) for n, s in zip(spec.names, spec.shape) if n not in _flat_groups(entry.groups)]
        if found is not None and axes != found:
            raise ValueError(f"packed entry {entry.key}: parameters differ in stacked axes")
        found = axes
    return found or []


def expand(entry: Entry, specs: Mapping[Path, ParamSpec]) -> Iterator[tuple[str, dict[str, int]]]:
    """(checkpoint key, selection along stacked axes) for every tensor an entry stands for."""
    stacked = _stacked(entry, specs)
    for index in itertools.product(*(range(s) for _, s in stacked)):
        select = {n: i for (n, _), i in zip(stacked, index)}
        yield entry.key.format(**select), select


def entries_for(layout: Layout, specs: Mapping[Path, ParamSpec]) -> list[Entry]:
    """The entries that apply to a model (all their params exist); checks that they cover each param once."""
    applied, covered = [], {}
    for entry in layout.entries:
        present = [p in specs for p in entry.paths]
        if not any(present):
            continue
        if not all(present):
            raise ValueError(f"{layout.name} entry {entry.key}: the model has only some of {entry.params}")
        for path in entry.paths:
            if path in covered:
                raise ValueError(f"{layout.name}: {'/'.join(path)} is named by {covered[path]} and {entry.key}")
            covered[path] = entry.key
        applied.append(entry)
    uncovered = sorted("/".join(p) for p in specs if p not in covered)
    if uncovered:
        raise ValueError(f"{layout.name} has no entry for parameters: {', '.join(uncovered)}")
    return applied


def write(layout: Layout, params: Mapping[Path, np.ndarray], specs: Mapping[Path, ParamSpec],
          context: Any = None) -> dict[str, np.ndarray]:
    """Flat params {path: array} -> {checkpoint key: float32 tensor}. Refuses a model for which the layout
    omits a tensor (`Omission.applies(context)`): the parameter could not be stored."""
    entries = entries_for(layout, specs)
    omitted = sorted({e.omitted.what for e in entries if e.omitted and e.omitted.applies(context)})
    if omitted:
        raise ValueError(f"{layout.name} has no {', '.join(omitted)}: this model cannot be written in that layout")
    if set(params) != set(specs):
        wrong = sorted("/".join(p) for p in set(params) ^ set(specs))
        raise ValueError(f"params do not have the model's structure: {', '.join(wrong)}")
    out = {}
    for entry in entries:
        for key, select in expand(entry, specs):
            parts = [to_torch_layout(params[p], specs[p].names, select, entry.groups) for p in entry.paths]
            out[key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return out


def _packed_shape(entry: Entry, specs: Mapping[Path, ParamSpec]) -> tuple[tuple[int, ...], list[int]]:
    """The tensor's shape and the sizes of its packed parts along the first axis."""
    shapes = [torch_shape(specs[p], entry.groups) for p in entry.paths]
    if any(s[1:] != shapes[0][1:] for s in shapes):
        raise ValueError(f"packed entry {entry.key}: parts {shapes} differ beyond the first axis")
    return (sum(s[0] for s in shapes), *shapes[0][1:]), [s[0] for s in shapes]


def _absent_value(shape: tuple[int, ...], what: str) -> np.ndarray:
    if len(shape) == 2 and shape[0] == shape[1]:
        return np.eye(shape[0], dtype=np.float32)
    if len(shape) == 1:
        return np.zeros(shape, np.float32)
    raise ValueError(f"{what} is omitted but {shape} is neither a square weight nor a bias")


def _place(entry: Entry, tensor: np.ndarray, select: Mapping[str, int], sizes: list[int],
           specs: Mapping[Path, ParamSpec], out: dict[Path, np.ndarray]) -> None:
    parts = np.split(tensor, np.cumsum(sizes)[:-1], axis=0) if len(sizes) > 1 else [tensor]
    for path, part in zip(entry.paths, parts):
        spec = specs[path]
        index = tuple(select.get(n, slice(None)) for n in spec.names)
        out[path][index] = from_torch_layout(part, spec, select, entry.groups)


def _normalise(layout: Layout, state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        if layout.skip and key.startswith(layout.skip):
            continue
        for old, new in layout.aliases:
            key = key.replace(old, new)
        out[key] = value
    return out


def read(layout: Layout, state: Mapping[str, Any], specs: Mapping[Path, ParamSpec],
         context: Any = None) -> dict[Path, np.ndarray]:
    """{checkpoint key: tensor} -> flat params {path: array}, the exact inverse of `write`.

    Raises one CheckpointError naming every missing, unexpected and mis-shaped checkpoint key. A key the
    layout omits for this model (`Omission.applies(context)`) reads as the identity / zero when absent.
    """
    state = _normalise(layout, state)
    out = {path: np.zeros(s.shape, s.dtype) for path, s in specs.items()}
    used, missing, bad = set(), [], []
    for entry in entries_for(layout, specs):
        shape, sizes = _packed_shape(entry, specs)
        optional = entry.omitted is not None and entry.omitted.applies(context)
        for key, select in expand(entry, specs):
            if key in state:
                used.add(key)
                tensor = np.asarray(state[key])
                if tuple(tensor.shape) != shape:
                    bad.append(f"{key}: checkpoint {tuple(tensor.shape)}, expected {shape}")
                    continue
            elif optional:
                tensor = _absent_value(shape, entry.omitted.what)
            else:
                missing.append(key)
                continue
            _place(entry, tensor, select, sizes, specs, out)
    unexpected = sorted(k for k in state if k not in used and not (layout.ignore and k.endswith(layout.ignore)))
    problems = [f"{label} ({len(keys)}): {sep.join(keys)}" for label, keys, sep in (
        ("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "), ("wrong shapes", bad, "; "))
        if keys]
    if problems:
        raise CheckpointError(f"{layout.name} checkpoint does not match the model:\n  " + "\n  ".join(problems))
    return out
