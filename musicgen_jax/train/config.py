"""Training configuration: frozen dataclasses filled from a YAML file plus `section.key=value` overrides.

    cfg = load_config("configs/train/tiny.yaml", ["optim.lr=3e-4", "mesh.fsdp=2"])

Every key of the YAML must name a field (typos are errors, not silently ignored). Values given on the
command line are parsed as YAML and converted to the field's type (so `optim.lr=3e-4` is a float,
although YAML 1.1 would read it as a string). Numeric settings are checked when a section is made
(finite, in range: "optim.lr must be a finite number > 0, got nan"). Local paths are made absolute
against the working directory when a config is built from YAML or a dict, so that the config stored
in a checkpoint still finds them from elsewhere; URLs (gs://...) and hub names stay as they are.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import yaml


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a numeric field (None: unbounded on that side; `also`: values allowed
    outside the range, such as -1 for "the rest of the devices")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple[int, ...] = ()

    def holds(self, v: float) -> bool:
        if v in self.also:
            return True
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def describe(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            text = f"in {low}, {high}"
        elif low:
            text = (">= " if low[0] == "[" else "> ") + low[1:]
        else:
            text = ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return text + "".join(f" or {a}" for a in self.also)


def _num(default, **bounds):
    """A numeric field checked against Bounds(**bounds) when its section is made."""
    return field(default=default, metadata={"bounds": Bounds(**bounds)})


def _path(default=None, *, hub: bool = False):
    """A path field, made absolute when the config is built (`hub`: may also be a hub name; resolved
    only when it exists locally)."""
    return field(default=default, metadata={"path": "hub" if hub else "local"})


def resolve_path(path: str) -> str:
    """A local path made absolute against the working directory (`~` expanded); URLs unchanged."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_number(value: Any, bounds: Bounds, hint: Any, key: str) -> None:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None and args:
        return  # optional and unset
    integer = (args[0] if args else hint) is int
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok or not bounds.holds(value):
        raise ValueError(f"{key} must be {kind} {bounds.describe()}, got {value!r}")


class _Checked:
    """Checks the fields declared with `_num` when a section is made; KEY names the section."""

    KEY: ClassVar[str] = ""

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if "bounds" in f.metadata:
                key = f"{self.KEY}.{f.name}" if self.KEY else f.name
                _check_number(getattr(self, f.name), f.metadata["bounds"], hints[f.name], key)


@dataclass(frozen=True)
class ModelSection(_Checked):
    """What is trained. `init_from` (a MusicGen checkpoint: hub name or directory, either layout)
    fine-tunes; otherwise a `preset` is initialised from scratch with a pretrained T5."""

    KEY: ClassVar[str] = "model"

    preset: str = "tiny"  # musicgen-small | medium | large | melody | stereo-* | tiny | tiny-melody
    lm_overrides: dict[str, Any] | None = None  # LMConfig fields changed from the preset (dim, num_layers...)
    init_from: str | None = _path(hub=True)
    t5: str = _path("t5-base", hub=True)  # text encoder for scratch runs; "random" (tests) draws a random one
    tokenizer: str | None = _path(hub=True)  # spiece.model (or a dir); default: from init_from / t5
    dtype: str = "float32"  # compute dtype; "bfloat16" on accelerators (params stay float32)
    remat: bool = False  # rematerialise each layer in the backward pass
    seed: int = 0


@dataclass(frozen=True)
class LoraSection(_Checked):
    """Low-rank adapters (modules/lora.py) instead of full fine-tuning: rank 0 (the default) trains every LM
    weight; rank >= 1 freezes the LM (and T5) and trains adapters on `targets` only. The optimizer, EMA and
    checkpoints then hold the adapters alone; the base is `model.init_from`, kept in `base_dtype`."""

    KEY: ClassVar[str] = "lora"
    rank: int = _num(0, ge=0)
    alpha: float | None = _num(None, gt=0)  # scale = alpha / rank; None: alpha = rank (scale 1)
    dropout: float = _num(0.0, ge=0, lt=1)  # on the adapters' input, training only
    # self_attn, cross_attn, attention (both; self only for melody models), ffn, all, or single projections
    # (self_attn.query, ..., cross_attn.out, fc1, fc2)
    targets: tuple[str, ...] = ("attention",)
    base_dtype: str = "float32"  # the frozen LM weights: float32 or bfloat16 (half the memory)
    rslora: bool = False  # scale = alpha / sqrt(rank) (rank-stabilised LoRA)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.targets, (list, str)):
            object.__setattr__(self, "targets", tuple([self.targets] if isinstance(self.targets, str)
                                                      else self.targets))
        if self.base_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"lora.base_dtype must be float32 or bfloat16, got {self.base_dtype!r}")
        if self.enabled:
            from musicgen_jax.modules.lora import resolve_targets

            try:
                resolve_targets(self.targets)
            except ValueError as e:
                raise ValueError(f"lora.targets: {e}") from None

    @property
    def enabled(self) -> bool:
        return self.rank > 0


@dataclass(frozen=True)
class DataSection(_Checked):
    KEY: ClassVar[str] = "data"
    train: str = _path("")  # directory written by `musicgen-jax prepare` (holds index.json)
    batch_size: int = _num(192, ge=1)  # global batch (all processes, all micro-batches)
    segment_seconds: float | None = _num(None, gt=0)  # random crop of the stored segments; None: whole segment
    max_text_tokens: int = _num(64, ge=1)  # captions are padded / cut to this many T5 tokens (static shapes)
    seed: int = 0  # shuffling and cropping
    prefetch: int = _num(2, ge=0)  # batches prepared ahead by grain's threads (0: none)


@dataclass(frozen=True)
class OptimSection(_Checked):
    KEY: ClassVar[str] = "optim"
    optimizer: str = "adamw"  # adamw | dadapt_adamw (D-Adaptation, the paper's choice for 300M)
    lr: float = _num(1e-4, gt=0)
    warmup_steps: int = _num(4000, ge=0)
    lr_min_ratio: float = _num(0.0, ge=0, le=1)  # cosine decays to lr * lr_min_ratio at `train.steps`
    b1: float = _num(0.9, ge=0, lt=1)
    b2: float = _num(0.95, ge=0, lt=1)
    eps: float = _num(1e-8, gt=0)
    weight_decay: float = _num(0.1, ge=0)
    grad_clip: float = _num(1.0, ge=0)  # global-norm clipping (0: off)
    accum_steps: int = _num(1, ge=1)  # micro-batches per update (scan inside the step)
    ema_decay: float = _num(0.99, ge=0, le=1)  # 0: no EMA
    ema_every: int = _num(1, ge=1)  # EMA update period in steps (audiocraft: 10)
    cond_dropout: float = _num(0.3, ge=0, lt=1)  # classifier-free guidance: all conditions -> null (0.2 for melody)


@dataclass(frozen=True)
class MeshSection(_Checked):
    """Device mesh sizes; one of them may be -1 (the rest of the devices)."""

    KEY: ClassVar[str] = "mesh"
    data: int = _num(-1, ge=1, also=(-1,))
    fsdp: int = _num(1, ge=1, also=(-1,))
    tensor: int = _num(1, ge=1, also=(-1,))
    num_devices: int | None = _num(None, ge=1)  # use only the first N devices (single process); None: all


@dataclass(frozen=True)
class CheckpointSection(_Checked):
    KEY: ClassVar[str] = "checkpoint"
    dir: str | None = _path()  # None: no checkpoints
    every: int = _num(1000, ge=1)
    keep: int = _num(3, ge=1)
    async_save: bool = True
    export_dir: str | None = _path()  # transformers-layout export at the end of training
    export_base: str | None = _path(hub=True)  # checkpoint whose text encoder / codec the export reuses
    export_adapter_only: bool = False  # LoRA runs: export the PEFT adapter folder, not merged weights


@dataclass(frozen=True)
class LogSection(_Checked):
    KEY: ClassVar[str] = "log"
    every: int = _num(10, ge=1)
    tensorboard: str | None = _path()  # event dir; default <checkpoint.dir>/tensorboard
    jsonl: str | None = _path()  # also append every step's metrics to this file (process 0)
    progress: bool = True  # tqdm bar
    peak_tflops: float | None = _num(None, gt=0)  # per device, for MFU; default from the device kind


@dataclass(frozen=True)
class DistributedSection(_Checked):
    """jax.distributed.initialize arguments; leave all None on a single host (or on TPU/SLURM, where
    `enabled: true` lets JAX discover them)."""

    KEY: ClassVar[str] = "distributed"
    enabled: bool = False
    coordinator: str | None = None  # host:port of process 0
    num_processes: int | None = _num(None, ge=1)
    process_id: int | None = _num(None, ge=0)
    cpu_collectives: str | None = None  # "gloo" for multi-process CPU runs


@dataclass(frozen=True)
class TrainConfig(_Checked):
    steps: int = _num(1000, ge=1)  # total updates (the learning-rate schedule spans them)
    stop_after: int | None = _num(None, ge=1)  # end this invocation after N more steps (time-limited jobs)
    # XLA options for the compiled init and train step, e.g. {xla_backend_optimization_level: 0} to
    # halve CPU compile times in tests; None: XLA's defaults
    compiler_options: dict[str, Any] | None = None
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def __post_init__(self):
        super().__post_init__()
        o = self.optim
        if self.data.batch_size % o.accum_steps:
            raise ValueError(f"data.batch_size {self.data.batch_size} must be a multiple of optim.accum_steps "
                             f"{o.accum_steps}")
        if o.optimizer not in ("adamw", "dadapt_adamw"):
            raise ValueError(f"optim.optimizer must be adamw or dadapt_adamw, got {o.optimizer!r}")
        if self.model.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be float32 or bfloat16, got {self.model.dtype!r}")
        if self.checkpoint.export_adapter_only and not self.lora.enabled:
            raise ValueError("checkpoint.export_adapter_only is for LoRA runs (lora.rank >= 1)")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A YAML value -> the field's type (int, float, bool, str, dict, tuple of str, optional thereof)."""
    args = [] if typing.get_origin(hint) is tuple else [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if value is None:
        if args or hint is Any:
            return None
        raise ValueError(f"{where} may not be null")
    origin = typing.get_origin(base) or base
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if not isinstance(value, (str, int)) or str(value).lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return str(value).lower() in ("true", "1", "yes")
        if origin is tuple:  # a list of strings (YAML list, or one string)
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise ValueError
            return tuple(items)
        if isinstance(value, (bool, dict, list)) and origin is not dict:
            raise ValueError
        if base in (int, float):
            out = base(value)
            if base is int and isinstance(value, float) and value != out:
                raise ValueError
            return out
        if base is str:
            return str(value)
        if origin is dict and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        name = "a mapping" if origin is dict else "a list of names" if origin is tuple else \
            getattr(base, "__name__", str(base))
        raise ValueError(f"{where}: cannot read {value!r} as {name}") from None
    return value


def _build(cls, raw: dict[str, Any], where: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) in {where or 'config'}: {', '.join(map(str, unknown))}; "
                         f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in raw.items():
        hint, kind = hints[name], fields[name].metadata.get("path")
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, {} if value is None else value, path)
            continue
        value = _coerce(value, hint, path)
        if kind and value and (kind == "local" or os.path.exists(os.path.expanduser(value))):
            value = resolve_path(value)
        kwargs[name] = value
    return cls(**kwargs)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"override {override!r}: the value is not valid YAML ({_yaml_problem(e)})") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong, and where when yaml says (lines from 1)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _read_yaml(path: str) -> dict[str, Any]:
    """A recipe file -> its top-level mapping, or an error naming the file (and the line)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"training config not found: {path}") from None
    except OSError as e:
        raise ValueError(f"cannot read training config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"training config {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"training config {path} is not valid YAML: {_yaml_problem(e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"training config {path}: the top level must be a mapping of settings "
                         f"(steps: ..., optim: {{lr: ...}}, ...), got a {type(raw).__name__}")
    return raw


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file (or nothing: the defaults) + overrides -> TrainConfig; ValueError naming the file and
    the key for a bad setting."""
    raw = _read_yaml(path) if path else {}
    for override in overrides:
        _apply_override(raw, override)
    try:
        return _build(TrainConfig, raw, "")
    except ValueError as e:
        if not path:
            raise
        raise ValueError(f"training config {path}{' + overrides' if overrides else ''}: {e}") from None


def from_dict(raw: dict[str, Any]) -> TrainConfig:
    """The inverse of `to_dict` (e.g. the config stored in a checkpoint)."""
    return _build(TrainConfig, dict(raw), "")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def replace(cfg: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """cfg with some fields changed: replace(cfg, steps=10, optim={"lr": 1e-3})."""
    raw = to_dict(cfg)
    for name, value in sections.items():
        if isinstance(value, dict):
            raw[name].update(value)
        else:
            raw[name] = value
    return _build(TrainConfig, raw, "")
