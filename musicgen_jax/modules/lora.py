"""LoRA: low-rank adapters on the LM's linear projections (Hu et al. 2021, as PEFT implements them).

A targeted projection y = x W becomes

    y = x W + scale * dropout(x) A B          A [*in, r], B [r, *out];  scale = alpha / r (alpha / sqrt(r): rsLoRA)

with W frozen. A is drawn uniformly in +-1/sqrt(fan_in) (PEFT's kaiming_uniform(a=sqrt(5))) and B is zero,
so a fresh adapter leaves the model exactly as it was. The adapters live in the LM's own parameter tree
next to the kernel they adapt (`.../self_attn/query/{kernel, lora_a, lora_b}`), with the kernel's
logical axes plus `lora_rank` (replicated), so they are sharded and stacked over layers like the kernel.

Targets are named by our module paths inside a decoder layer:

    self_attn.query  self_attn.key  self_attn.value  self_attn.out     (query/key/value: [embed, heads, kv])
    cross_attn.query cross_attn.key cross_attn.value cross_attn.out    (out: [heads, kv, embed])
    fc1  fc2                                                           (feed-forward)

with the groups `self_attn`, `cross_attn`, `attention` (both; self only for melody models, which have no
cross-attention), `ffn` and `all`.

Dropout on the adapter's input runs only when the module is applied with a "dropout" rng (training);
inference never passes one. `merge_adapters` folds adapters into the kernels (W + scale * A B) for
inference and export; `split_adapters` / `combine` separate and join the two kinds of leaves.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ATTENTION_PROJECTIONS = ("query", "key", "value", "out")
TARGETS = (*(f"self_attn.{p}" for p in ATTENTION_PROJECTIONS), *(f"cross_attn.{p}" for p in ATTENTION_PROJECTIONS),
           "fc1", "fc2")
GROUPS = {
    "self_attn": TARGETS[0:4],
    "cross_attn": TARGETS[4:8],
    "attention": TARGETS[0:8],
    "ffn": ("fc1", "fc2"),
    "all": TARGETS,
}
ADAPTER_LEAVES = ("lora_a", "lora_b")
RANK_AXIS = "lora_rank"  # logical name of the rank dimension (replicated: see sharding.LOGICAL_RULES)


def resolve_targets(names: Sequence[str], cross_attention: bool = True) -> tuple[str, ...]:
    """Target and group names -> the sorted tuple of targets (in TARGETS order) of an LM.

    The `attention` and `all` groups take the cross-attention projections only where the LM has them;
    naming a cross-attention target for an LM without cross-attention (melody) is an error."""
    if isinstance(names, str):
        names = [names]
    chosen = set()
    for name in names:
        if name in GROUPS:
            group = GROUPS[name]
            if name in ("attention", "all") and not cross_attention:
                group = tuple(t for t in group if not t.startswith("cross_attn."))
            chosen.update(group)
        elif name in TARGETS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown LoRA target {name!r}; targets: {', '.join(TARGETS)}; groups: "
                             f"{', '.join(GROUPS)}")
    if not cross_attention and any(t.startswith("cross_attn.") for t in chosen):
        raise ValueError("this LM has no cross-attention (a melody model: text and chroma are prepended), so "
                         "LoRA cannot target cross_attn; use self_attn and/or ffn")
    if not chosen:
        raise ValueError("LoRA needs at least one target")
    return tuple(t for t in TARGETS if t in chosen)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (scale = alpha / r, or alpha / sqrt(r) with `rslora`), dropout on the adapter input
    (training only), targets: names from TARGETS (see `resolve_targets` for groups)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = GROUPS["attention"]
    rslora: bool = False

    def __post_init__(self):
        if isinstance(self.targets, (list, str)):
            object.__setattr__(self, "targets", tuple([self.targets] if isinstance(self.targets, str)
                                                      else self.targets))
        if not isinstance(self.rank, (int, np.integer)) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be some of {', '.join(TARGETS)} (groups are resolved with "
                             f"resolve_targets), got {list(self.targets)}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def for_target(self, name: str) -> "LoraConfig | None":
        """This config when `name` is a target, else None (the argument the modules take)."""
        return self if name in self.targets else None


# ------------------------------------------------------------------------------------------ the branch


def _uniform_fan_in(num_in_axes: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the product of the first `num_in_axes` dims
    (torch's kaiming_uniform_(a=sqrt(5)), PEFT's default for lora_A)."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(math.prod(shape[:num_in_axes]))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def lora_branch(module: nn.Module, x: Array, axis: tuple[int, ...], features: tuple[int, ...],
                kernel_axes: tuple[str, ...], lora: LoraConfig, dtype: Any) -> Array:
    """The adapter term of a Dense: scale * dropout(x) A B, declared as `lora_a` / `lora_b` params of
    `module` (call from its compact __call__). x: the Dense input (compute dtype); axis: its contracted
    axes (non-negative); features and kernel_axes as the Dense's. Output laid out as the Dense's."""
    in_shape = tuple(x.shape[a] for a in axis)
    n_in = len(axis)
    a = module.param("lora_a", nn.with_logical_partitioning(_uniform_fan_in(n_in), (*kernel_axes[:n_in], RANK_AXIS)),
                     (*in_shape, lora.rank), jnp.float32)
    b = module.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (RANK_AXIS, *kernel_axes[n_in:])),
                     (lora.rank, *features), jnp.float32)
    if lora.dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - lora.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - lora.dropout), 0.0).astype(x.dtype)
    h = jax.lax.dot_general(x, a.astype(dtype), ((axis, tuple(range(n_in))), ((), ())))  # [..., r]
    y = jax.lax.dot_general(h, b.astype(dtype), (((h.ndim - 1,), (0,)), ((), ())))  # [..., *features]
    return (y * jnp.asarray(lora.scale, dtype)).astype(dtype)


# ------------------------------------------------------------------------------------------ trees


def _flat(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    from flax import traverse_util

    return traverse_util.flatten_dict(dict(tree))


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    from flax import traverse_util

    return traverse_util.unflatten_dict(dict(flat))


def is_adapter(path: Sequence[Any]) -> bool:
    """Whether a parameter path (keys or jax path entries) ends in an adapter leaf."""
    last = path[-1]
    return str(getattr(last, "key", last)) in ADAPTER_LEAVES


def split_adapters(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """LM params with adapters -> (base params, adapter params), both nested dicts (boxed leaves kept)."""
    flat = _flat(params)
    base = {k: v for k, v in flat.items() if not is_adapter(k)}
    adapters = {k: v for k, v in flat.items() if is_adapter(k)}
    return _unflat(base), _unflat(adapters)


def combine(base: Mapping[str, Any], adapters: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `split_adapters`: one tree the LoRA-enabled LM applies."""
    flat = _flat(base)
    for path, value in _flat(adapters).items():
        if path in flat:
            raise ValueError(f"{'/'.join(path)} is in both the base and the adapters")
        flat[path] = value
    return _unflat(flat)


def adapter_delta(a: np.ndarray, b: np.ndarray, kernel_shape: Sequence[int]) -> np.ndarray:
    """A [*lead, *in, r] @ B [*lead, r, *out] -> [*lead, *in, *out] float32 (lead: stacked layers, if any)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    n_lead = a.ndim + b.ndim - 2 - len(kernel_shape)
    if n_lead < 0 or a.shape[:n_lead] != b.shape[:n_lead] or a.shape[-1] != b.shape[n_lead]:
        raise ValueError(f"adapter shapes {a.shape} x {b.shape} do not fit a kernel {tuple(kernel_shape)}")
    lead = a.shape[:n_lead]
    a2 = a.reshape(*lead, -1, a.shape[-1])
    b2 = b.reshape(*lead, b.shape[n_lead], -1)
    return np.matmul(a2, b2).reshape(tuple(kernel_shape))


def merge_adapters(params: Mapping[str, Any], adapters: Mapping[str, Any], lora: LoraConfig) -> dict[str, Any]:
    """Base params (no adapter leaves) + adapters -> params with each adapted kernel replaced by
    W + scale * A B (float32 arithmetic, the kernel's dtype kept). Host arrays (numpy) out; either layout
    (stacked layers or one module per layer), as long as both trees share it."""
    flat = {k: v for k, v in _flat(params).items()}
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, value in _flat(adapters).items():
        if not is_adapter(path):
            raise ValueError(f"{'/'.join(path)} is not an adapter parameter")
        groups.setdefault(path[:-1], {})[path[-1]] = value
    for owner, pair in groups.items():
        kernel_path = (*owner, "kernel")
        if kernel_path not in flat:
            raise ValueError(f"adapter {'/'.join(owner)} has no kernel {'/'.join(kernel_path)} in the base params")
        if set(pair) != set(ADAPTER_LEAVES):
            raise ValueError(f"adapter {'/'.join(owner)} needs both lora_a and lora_b, has {sorted(pair)}")
        kernel = np.asarray(flat[kernel_path])
        merged = kernel.astype(np.float32) + lora.scale * adapter_delta(pair["lora_a"], pair["lora_b"], kernel.shape)
        flat[kernel_path] = merged.astype(kernel.dtype)
    return _unflat(flat)
