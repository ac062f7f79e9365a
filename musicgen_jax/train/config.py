"""Training configuration: frozen dataclasses filled from a YAML file plus `section.key=value` overrides.

    cfg = load_config("configs/train/tiny.yaml", ["optim.lr=3e-4", "mesh.fsdp=2"])

Every key of the YAML must name a field (typos are errors, not silently ignored). Values given on the
command line are parsed as YAML and converted to the field's type (so `optim.lr=3e-4` is a float,
although YAML 1.1 would read it as a string).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml


@dataclass(frozen=True)
class ModelSection:
    """What is trained. `init_from` (a MusicGen checkpoint: hub name or directory, either layout)
    fine-tunes; otherwise a `preset` is initialised from scratch with a pretrained T5."""

    preset: str = "tiny"  # musicgen-small | medium | large | melody | stereo-* | tiny | tiny-melody
    lm_overrides: dict[str, Any] | None = None  # LMConfig fields changed from the preset (dim, num_layers...)
    init_from: str | None = None
    t5: str = "t5-base"  # text encoder for scratch runs; "random" (tests) draws a random one
    tokenizer: str | None = None  # spiece.model (or a dir); default: from init_from / t5
    dtype: str = "float32"  # compute dtype; "bfloat16" on accelerators (params stay float32)
    remat: bool = False  # rematerialise each layer in the backward pass
    seed: int = 0


@dataclass(frozen=True)
class DataSection:
    train: str = ""  # directory written by `musicgen-jax prepare` (holds index.json)
    batch_size: int = 192  # global batch (all processes, all micro-batches)
    segment_seconds: float | None = None  # random crop of the stored segments; None: whole segment
    max_text_tokens: int = 64  # captions are padded / cut to this many T5 tokens (static shapes)
    seed: int = 0  # shuffling and cropping
    prefetch: int = 2  # batches prepared ahead by grain's threads (0: none)


@dataclass(frozen=True)
class OptimSection:
    optimizer: str = "adamw"  # adamw | dadapt_adamw (D-Adaptation, the paper's choice for 300M)
    lr: float = 1e-4
    warmup_steps: int = 4000
    lr_min_ratio: float = 0.0  # cosine decays to lr * lr_min_ratio at `train.steps`
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clipping (0: off)
    accum_steps: int = 1  # micro-batches per update (scan inside the step)
    ema_decay: float = 0.99  # 0: no EMA
    ema_every: int = 1  # EMA update period in steps (audiocraft: 10)
    cond_dropout: float = 0.3  # classifier-free guidance: all conditions -> null (0.2 for melody)


@dataclass(frozen=True)
class MeshSection:
    """Device mesh sizes; one of them may be -1 (the rest of the devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    num_devices: int | None = None  # use only the first N devices (single process); None: all


@dataclass(frozen=True)
class CheckpointSection:
    dir: str | None = None  # None: no checkpoints
    every: int = 1000
    keep: int = 3
    async_save: bool = True
    export_dir: str | None = None  # transformers-layout export at the end of training
    export_base: str | None = None  # checkpoint whose text encoder / codec the export reuses


@dataclass(frozen=True)
class LogSection:
    every: int = 10
    tensorboard: str | None = None  # event dir; default <checkpoint.dir>/tensorboard
    jsonl: str | None = None  # also append every step's metrics to this file (process 0)
    progress: bool = True  # tqdm bar
    peak_tflops: float | None = None  # per device, for MFU; default from the device kind


@dataclass(frozen=True)
class DistributedSection:
    """jax.distributed.initialize arguments; leave all None on a single host (or on TPU/SLURM, where
    `enabled: true` lets JAX discover them)."""

    enabled: bool = False
    coordinator: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    cpu_collectives: str | None = None  # "gloo" for multi-process CPU runs


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # total updates (the learning-rate schedule spans them)
    stop_after: int | None = None  # end this invocation after N more steps (time-limited jobs); resume later
    # XLA options for the compiled init and train step, e.g. {xla_backend_optimization_level: 0} to
    # halve CPU compile times in tests; None: XLA's defaults
    compiler_options: dict[str, Any] | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def __post_init__(self):
        o = self.optim
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if o.accum_steps < 1 or self.data.batch_size % o.accum_steps:
            raise ValueError(f"batch_size {self.data.batch_size} must be a multiple of accum_steps {o.accum_steps}")
        if not 0 <= o.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {o.cond_dropout}")
        if o.optimizer not in ("adamw", "dadapt_adamw"):
            raise ValueError(f"unknown optimizer {o.optimizer!r} (adamw or dadapt_adamw)")
        if self.model.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be float32 or bfloat16, got {self.model.dtype!r}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A YAML value -> the field's type (int, float, bool, str, optional thereof)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if value is None:
        if args or hint is Any:
            return None
        raise ValueError(f"{where} may not be null")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if base in (int, float):
            out = base(value)
            if base is int and isinstance(value, float) and value != out:
                raise ValueError
            return out
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: cannot read {value!r} as {base.__name__}") from None
    return value


def _build(cls, raw: dict[str, Any], where: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = _hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ValueError(f"unknown key(s) in {where or 'config'}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(hints))}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, path)
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file (or nothing: the defaults) + overrides -> TrainConfig."""
    raw: dict[str, Any] = {}
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    for override in overrides:
        _apply_override(raw, override)
    return _build(TrainConfig, raw, "")


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
