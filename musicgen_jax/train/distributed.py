"""Multi-host start-up: `jax.distributed.initialize` from the config (before any other JAX call).

On CPU, several processes need a collectives implementation (`gloo`); on TPU pods and SLURM/GPU
clusters `enabled: true` alone lets JAX discover the coordinator and ranks.
"""
from __future__ import annotations

import jax

from musicgen_jax.train.config import DistributedSection

_initialized = False


def initialize(section: DistributedSection) -> None:
    """Idempotent; a no-op unless `section.enabled`."""
    global _initialized
    if not section.enabled or _initialized:
        return
    if section.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", section.cpu_collectives)
    kwargs = {}
    if section.coordinator:
        kwargs["coordinator_address"] = section.coordinator
    if section.num_processes is not None:
        kwargs["num_processes"] = section.num_processes
    if section.process_id is not None:
        kwargs["process_id"] = section.process_id
    jax.distributed.initialize(**kwargs)
    _initialized = True


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
