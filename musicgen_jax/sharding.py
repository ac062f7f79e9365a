"""Device mesh, the logical-axis rules, placement and sharded initialisation (t5x / MaxText style).

Used by inference and training alike. Parameters name their dimensions with logical axes
(modules/layers.py), and so do KV caches, conditions and activations (modules/lm.py); one table maps
them to the mesh axes `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded) and `tensor` (Megatron-style model parallelism):

    params:       embed -> fsdp    mlp, heads, vocab -> tensor
    rows:         batch, activation_batch, cache_batch -> (data, fsdp)
    heads:        activation_heads, cache_heads -> tensor
    everything else replicated (layers, codebooks, lengths, head dims, ...)

A dimension that its mesh axes do not divide evenly (e.g. the 2049-row embedding tables over
`tensor`) stays replicated rather than failing. Initialisation runs under `jax.jit` with the
parameter shardings as `out_shardings`, so no device ever holds an unsharded copy.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or axes, or None = replicated). Every logical name used by the modules
# must appear here: `check_rules` refuses an unknown one instead of silently replicating it.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    # activations and decode state (MaxText's names)
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", None),
    ("cache_batch", BATCH_AXES),
    ("cache_heads", "tensor"),
    ("cache_sequence", None),
    ("cache_kv", None),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
    ("codebooks", None),
    ("relpos_buckets", None),
    ("conv_kernel", None),
    ("conv_in", None),
    ("conv_out", None),
    ("lstm_gates", None),
    ("lora_rank", None),  # LoRA adapters' rank dimension (modules/lora.py)
)


def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int | None = None) -> tuple[int, ...]:
    """Resolve one -1 entry to the remaining devices; check the product."""
    n = jax.device_count() if num_devices is None else num_devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"{n} devices cannot be split into fsdp x tensor x data with {known} fixed")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {n} available")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

    `tensor` varies fastest, then `fsdp`: the axes with the most traffic stay within a host.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    try:  # topology-aware on TPU/GPU; a plain reshape elsewhere
        arr = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def parse_mesh(spec: str, devices: Sequence[Any] | None = None) -> Mesh:
    """'tensor=2' or 'data=2,fsdp=1,tensor=4' -> make_mesh(...); `data` defaults to the rest of the devices."""
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, _, value = part.strip().partition("=")
        try:
            size = int(value)
        except ValueError:
            size = None
        if name not in MESH_AXES or size is None:
            raise ValueError(f"mesh {spec!r}: expected comma-separated AXIS=SIZE with AXIS in "
                             f"{', '.join(MESH_AXES)} (e.g. data=2,tensor=2)")
        sizes[name] = size
    return make_mesh(devices=devices, **sizes)


def check_rules(logical_specs: Any, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> None:
    """Raise if a parameter uses a logical axis name the rules do not mention."""
    known = {name for name, _ in rules}
    names = set()
    for spec in jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P)):
        names.update(a for a in spec if a is not None)
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"logical axes without a sharding rule: {', '.join(unknown)}; add them to LOGICAL_RULES")


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (those dimensions stay replicated)."""
    out = []
    for i, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if shape[i] % size == 0 else None)
    return P(*out)


def logical_to_sharding(logical: P, shape: Sequence[int], mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> NamedSharding:
    """One array: logical PartitionSpec + shape -> NamedSharding on `mesh`."""
    spec = nn.logical_to_mesh_axes(tuple(logical), rules) if len(logical) else P()
    return NamedSharding(mesh, _fit(spec, shape, mesh))


def _is_spec(x) -> bool:
    return isinstance(x, P)


def tree_shardings(logical: Any, tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """NamedShardings for the arrays of `tree` from a matching tree of logical PartitionSpecs (e.g.
    `LMCache.logical_axes()`); None entries stay None on both sides."""
    check_rules(logical, rules)
    return jax.tree.map(lambda spec, x: logical_to_sharding(spec, x.shape, mesh, rules), logical, tree,
                        is_leaf=_is_spec)


def constrain(tree: Any, logical: Any, mesh: Mesh | None) -> Any:
    """Inside jit: constrain every array of `tree` to the sharding its logical axes give (no-op
    without a mesh). `logical` is a PartitionSpec for a single array, or a matching tree of them."""
    if mesh is None:
        return tree
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, tree_shardings(logical, tree, mesh))


def place(tree: Any, logical: Any, mesh: Mesh | None) -> Any:
    """Outside jit: put the arrays of `tree` on the shardings their logical axes give (no-op without
    a mesh). Single-process meshes."""
    if mesh is None:
        return tree
    return jax.tree.map(jax.device_put, tree, tree_shardings(logical, tree, mesh))


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """Shardings (NamedSharding tree, unboxed structure) for a boxed abstract variable tree
    (the `jax.eval_shape` of a Flax init whose params carry `nn.with_logical_partitioning`)."""
    logical = nn.get_partition_spec(boxed_abstract)
    check_rules(logical, rules)
    shapes = nn.meta.unbox(boxed_abstract)
    return jax.tree.map(lambda spec, s: logical_to_sharding(spec, s.shape, mesh, rules), logical, shapes,
                        is_leaf=lambda x: isinstance(x, P))


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, *args,
                 rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> tuple[Any, Any]:
    """Run `init_fn(*args)` (returning boxed variables) directly into sharded arrays.

    Returns (unboxed variables, their shardings). Nothing is ever materialised unsharded.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = param_shardings(abstract, mesh, rules)
    fn = jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)
    return fn(*args), shardings


def place_params(params: Any, init_fn: Callable[[], Any], mesh: Mesh,
                 rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> tuple[Any, Any]:
    """Put existing params (identical on every process) onto the shardings their logical axes give.

    init_fn: a no-argument Flax init returning boxed variables ({'params': ...}); only its shapes and
    axis names are used (`jax.eval_shape`). Returns (placed params, their shardings).
    """
    shardings = param_shardings(jax.eval_shape(init_fn), mesh, rules)["params"]
    return shard_like(params, shardings), shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_like(tree: Any, shardings: Any) -> Any:
    """Put host arrays (identical on every process) onto their shardings."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree, shardings)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch -> global arrays sharded over (data, fsdp).

    Each process passes its own contiguous slice (process i holds rows [i * b, (i + 1) * b) of the
    global batch); on one process this is the whole batch.
    """
    out = {}
    for name, x in local.items():
        x = np.asarray(x)
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return out


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the devices along data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def describe(shardings: Any) -> dict[str, str]:
    """{param path: spec} for logging and tests."""
    flat = {}
    for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = str(s.spec)
    return flat
