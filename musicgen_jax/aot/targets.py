"""Hardware targets for ahead-of-time compiles: devices of a GPU or TPU that is not present.

    target = get_target("h100")                # or "h200", "a100", "v4", "v5e", "v5p", "v6e"
    devices = target_devices(target, 8)       # 8 abstract devices to build a Mesh on and compile for

GPU targets are XLA GpuTargetConfig text protos (`gpu_targets/*.txtpb`, shipped with the package; any
other file can be given by path); TPU targets are libtpu topologies. Neither needs the hardware: only
the `[aot]` extra (libtpu, jax-cuda12-plugin and jax-cuda12-pjrt without NVIDIA libraries).

The published figures below (HBM size and bandwidth, dense bf16 peak) turn a compiled program's cost
into estimates; every number derived from them is an estimate, not a measurement.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

GPU_TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")


@dataclass(frozen=True)
class Target:
    """One accelerator kind, per device (a TPU chip, a GPU)."""

    name: str
    platform: str  # "cuda" | "tpu"
    hbm_bytes: float  # memory per device
    hbm_bandwidth: float  # bytes / s per device
    peak_flops: float  # dense bf16 FLOP/s per device
    launch_seconds: float = 0.0  # cost per kernel launch (GPU); TPUs run one program per step
    topology_prefix: str = ""  # TPU: libtpu's generation name ("v5e"); GPU: the config file
    description: str = ""


# Published figures (vendor datasheets): per device, dense bf16.
TARGETS: dict[str, Target] = {
    "h100": Target("h100", "cuda", 80e9, 3.35e12, 989e12, 3e-6, "h100.txtpb", "NVIDIA H100 SXM 80 GB"),
    "h200": Target("h200", "cuda", 141e9, 4.8e12, 989e12, 3e-6, "h200.txtpb", "NVIDIA H200 SXM 141 GB"),
    "a100": Target("a100", "cuda", 80e9, 2.039e12, 312e12, 3e-6, "a100.txtpb", "NVIDIA A100 SXM 80 GB"),
    "v4": Target("v4", "tpu", 32 * 2 ** 30, 1.2e12, 275e12, 0.0, "v4", "TPU v4 chip (megacore)"),
    "v5e": Target("v5e", "tpu", 16 * 2 ** 30, 819e9, 197e12, 0.0, "v5e", "TPU v5e chip"),
    "v5p": Target("v5p", "tpu", 95 * 2 ** 30, 2.765e12, 459e12, 0.0, "v5p", "TPU v5p chip (megacore)"),
    "v6e": Target("v6e", "tpu", 32 * 2 ** 30, 1.64e12, 918e12, 0.0, "v6e", "TPU v6e (Trillium) chip"),
}


def get_target(name: str) -> Target:
    """A target by name (case-insensitive), or a clear error listing the known ones."""
    key = name.lower()
    if key not in TARGETS:
        raise ValueError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
    return TARGETS[key]


def _tpu_grid(target: Target, num_devices: int) -> str:
    """The libtpu topology name for `num_devices` chips of a TPU generation ("v5e:2x2", "v5p:2x4x4")."""
    three_d = target.name in ("v4", "v5p")  # 3-D torus generations
    dims = [1, 1, 1] if three_d else [1, 1]
    n, axis = num_devices, 0
    if n & (n - 1):
        raise ValueError(f"{target.name}: {num_devices} chips is not a power of two")
    while n > 1:  # grow the axes in turn: 2 -> 2x1, 4 -> 2x2, 8 -> 2x2x2 (3-D) or 4x2
        dims[axis % len(dims)] *= 2
        n //= 2
        axis += 1
    return f"{target.topology_prefix}:{'x'.join(map(str, sorted(dims)))}"


def target_devices(target: Target | str, num_devices: int = 1) -> list[Any]:
    """`num_devices` abstract devices of `target` (compile-only: they cannot run anything).

    Needs JAX_PLATFORMS unset or "cpu" for GPU targets on a machine without CUDA (see `prepare_jax`).
    """
    from jax.experimental import topologies

    target = get_target(target) if isinstance(target, str) else target
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if target.platform == "cuda":
        path = target.topology_prefix
        if not os.path.isabs(path):
            path = os.path.join(GPU_TARGET_DIR, path)
        with open(path, encoding="utf-8") as f:
            config = f.read()
        topology = topologies.get_topology_desc(platform="cuda", target_config=config,
                                                topology=f"1x1x{num_devices}")
        return list(topology.devices)
    topology = topologies.get_topology_desc(topology_name=_tpu_grid(target, num_devices), platform="tpu",
                                            chips_per_host_bounds=(1, 1, 1))
    devices = list(topology.devices)
    if len(devices) != num_devices:  # v4 / v5p list each chip's two cores: keep one device per chip
        devices = [d for d in devices if getattr(d, "core_on_chip", 0) == 0]
    if len(devices) != num_devices:
        raise ValueError(f"{target.name}: asked for {num_devices} devices, the topology has {len(devices)}")
    return devices


def prepare_jax() -> None:
    """Call before jax initialises its backends: on a machine without CUDA the CUDA plugin's version
    check would fail; compiling for a CUDA target needs only the CPU client plus the plugin's compiler.

    Works after `import jax` too (musicgen_jax imports it) as long as no backend has started: the
    platforms are then set through jax.config. Also lets libtpu load while another process holds its
    lock file (ALLOW_MULTIPLE_LIBTPU_LOAD): these compiles never touch a TPU."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import sys

    if "jax" in sys.modules:
        import jax
        from jax._src import xla_bridge

        if not jax.config.jax_platforms and not xla_bridge.backends_are_initialized():
            jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
