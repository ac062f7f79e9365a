"""Checkpoints: orbax CheckpointManager (async, keep-N) with integrity checks and preemption handling.

A checkpoint step holds two items:
  state  the TrainState (params, optimizer, EMA, step, RNG), saved sharded from every process
  meta   JSON: step, the data iterator state, the run's config, and one checksum per state leaf

Restoring goes newest first onto an abstract, sharded target (no unsharded copy). A step that fails
to read (missing or truncated files: a partial copy) or whose data does not match its checksums
(silent corruption) is reported and skipped; the previous step is used instead, and the bad step is
moved aside to `<dir>/corrupt/<step>-<time>` (kept for inspection, no longer a step, so that the run
can save that step number again). Unfinished saves (orbax's temporary directories, left by a crash
mid-save) are never listed as steps and are removed when the manager starts. A relative directory is
taken from the working directory (orbax needs absolute paths).

Checksums are the wrap-around sums of each leaf's bits as uint32: exact integer arithmetic, so they
do not depend on the sharding or the reduction order, and any flipped bit changes them.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from musicgen_jax.train import distributed
from musicgen_jax.train.config import resolve_path

log = logging.getLogger(__name__)


class CheckpointCorrupt(ValueError):
    """A checkpoint step whose data does not match its recorded checksums."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """Sum of the leaf's bit patterns, uint32 with wrap-around."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    u = jax.lax.bitcast_convert_type(x, unsigned)  # 64-bit leaves become pairs of uint32
    return jnp.sum(u.astype(jnp.uint32), dtype=jnp.uint32)


@jax.jit
def _checksums(state: Any) -> list[jax.Array]:
    return [_leaf_checksum(x) for x in jax.tree.leaves(state)]


def checksums(state: Any) -> list[int]:
    """One uint32 checksum per leaf of `state` (see module doc)."""
    return [int(c) for c in jax.device_get(_checksums(state))]


class Checkpointer:
    """Save / restore TrainState + metadata under `directory` (local path or gs://...)."""

    def __init__(self, directory: str, *, keep: int = 3, every: int = 1000, async_save: bool = True,
                 read_only: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                               enable_async_checkpointing=async_save and not read_only,
                                               cleanup_tmp_directories=not read_only, create=not read_only,
                                               read_only=read_only)
        directory = resolve_path(directory)
        self.directory, self.every, self.read_only = directory, every, read_only
        self.manager = ocp.CheckpointManager(directory, item_names=("state", "meta"), options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def due(self, step: int) -> bool:
        """Whether `step` is one the schedule saves (a multiple of `every`)."""
        return step % self.every == 0

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        """Save if `step` is due or `force`; returns whether a save started."""
        if not force and not self.due(step):
            return False
        meta = dict(meta, step=int(step), checksums=checksums(state))
        return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 meta=ocp.args.JsonSave(meta)), force=True)

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], dict(restored["meta"])
        if meta.get("step") != step:
            raise CheckpointCorrupt(f"metadata says step {meta.get('step')}, directory says {step}")
        expected = meta.get("checksums")
        if expected is None or checksums(state) != list(expected):
            raise CheckpointCorrupt("state data does not match the recorded checksums")
        return state, meta

    def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest readable, intact checkpoint restored onto `target` (ShapeDtypeStructs with
        shardings), as (state, meta); None when there is none. Bad steps newer than the one restored
        are logged, skipped and moved aside (unless read-only); when no step restores, CheckpointCorrupt."""
        self.manager.reload()
        bad, errors, restored = [], [], None
        for step in reversed(self.steps()):
            try:
                restored = self._restore_step(step, target)
                break
            except Exception as e:  # orbax/tensorstore raise many types for unreadable data
                log.warning("checkpoint step %d in %s is unusable (%s: %s); trying the previous one",
                            step, self.directory, type(e).__name__, (str(e).splitlines() or [""])[0][:300])
                bad.append(step)
                errors.append(f"step {step}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        if bad and restored is None:
            # Nothing restores: more likely a run whose model or settings changed than every step
            # corrupt. Refuse rather than move all of its progress aside and start over.
            raise CheckpointCorrupt(
                f"no checkpoint step in {self.directory} can be restored onto this run ({errors[0]}); if "
                "the model or its settings changed, use a new checkpoint.dir; if the steps are damaged, "
                "move them out of the folder to start from scratch")
        if not self.read_only:
            self._set_aside(bad)
        return restored

    def _set_aside(self, steps: list[int]) -> None:
        """Move unusable steps to <dir>/corrupt/<step>-<time> (process 0; the others wait for it)."""
        if steps and jax.process_index() == 0:
            aside = epath.Path(self.directory) / "corrupt"
            aside.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                target, n = aside / f"{step}-{stamp}", 1
                while target.exists():
                    target, n = aside / f"{step}-{stamp}-{n}", n + 1
                (epath.Path(self.directory) / str(step)).rename(target)
                log.warning("moved unusable checkpoint step %d to %s (kept for inspection; delete it when "
                            "not needed)", step, target)
        distributed.barrier("musicgen_jax:checkpoint-set-aside")
        if steps:
            self.manager.reload()

    def latest_meta(self) -> dict[str, Any] | None:
        """The metadata of the newest step that has readable metadata (no state is read)."""
        for step in reversed(self.steps()):
            try:
                return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            except Exception as e:
                log.warning("metadata of checkpoint step %d is unreadable (%s)", step, e)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionGuard:
    """Turns SIGTERM (a preemption notice) into a flag the training loop polls.

    Multi-process runs ask JAX's coordination service instead, so that every process stops at the
    same step (`jax.experimental.multihost_utils.reached_preemption_sync_point`).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "PreemptionGuard":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # no preemption service (e.g. not started by jax.distributed)
                return False
        return self.requested

