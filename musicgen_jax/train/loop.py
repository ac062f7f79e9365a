"""The training loop: set-up (mesh, model, state or checkpoint, data), steps, logs, checkpoints.

    trainer = Trainer(load_config("configs/train/small.yaml", overrides))
    history = trainer.run()          # [{'step': 1, 'loss': ..., 'ce/0': ..., ...}, ...]

Resume is automatic: when `checkpoint.dir` holds a usable checkpoint, the state, the data iterator
and the step counter continue from it, and the losses that follow are those of an uninterrupted run
(the rows of `log.jsonl` after the restored step are dropped: they are run again). SIGTERM saves a
checkpoint at the next step boundary and returns. A step whose loss or gradient norm is not finite
stops the run (TrainingDiverged) before any state from it is saved: the metrics of every step are
checked before each checkpoint.

LoRA runs (`lora.rank` > 0) train adapters on a frozen base (`model.init_from`): their checkpoints hold
the adapters, optimizer state and EMA only, plus a reference to the base (its name and per-tensor
checksums), checked on resume so that adapters are never continued on another base.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any

import jax

from musicgen_jax import sharding as S
from musicgen_jax.config import seconds_for_frames
from musicgen_jax.train import distributed
from musicgen_jax.train import metrics as M
from musicgen_jax.train import trainer as T
from musicgen_jax.train.checkpoint import Checkpointer, PreemptionGuard, checksums
from musicgen_jax.train.config import TrainConfig, to_dict
from musicgen_jax.train.data import TrainData
from musicgen_jax.train.model import TrainModel, build_model

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A step's loss or gradient norm is NaN or infinite; the run stopped without saving that state."""


class Trainer:
    """Owns a run's mesh, model, state, data iterator and checkpointer (see module doc)."""

    def __init__(self, cfg: TrainConfig, *, model: TrainModel | None = None, mesh=None):
        distributed.initialize(cfg.distributed)
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else _mesh(cfg)
        if cfg.data.batch_size % S.batch_divisor(self.mesh):
            raise ValueError(f"batch_size {cfg.data.batch_size} must be a multiple of data x fsdp = "
                             f"{S.batch_divisor(self.mesh)}")
        self.model = model if model is not None else build_model(cfg.model, cfg.lora)
        if self.model.lora is not None and self.model.pretrained is None:
            log.warning("LoRA on a randomly initialised base (no model.init_from): the adapters adapt "
                        "random weights; set model.init_from to fine-tune a pretrained MusicGen")
        self.data = TrainData(cfg.data.train, tokenizer=self.model.tokenizer, lm=self.model.config.lm,
                              global_batch=cfg.data.batch_size, max_text_tokens=cfg.data.max_text_tokens,
                              crop_seconds=cfg.data.segment_seconds, seed=cfg.data.seed,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              prefetch=cfg.data.prefetch)
        # the training segment is the model's generation window (audiocraft's max_duration); export records it
        window = seconds_for_frames(self.data.frames, self.data.info.frame_rate)
        self.model = dataclasses.replace(self.model, config=dataclasses.replace(self.model.config, max_duration=window))
        self.checkpointer = None
        if cfg.checkpoint.dir:
            self.checkpointer = Checkpointer(cfg.checkpoint.dir, keep=cfg.checkpoint.keep,
                                             every=cfg.checkpoint.every, async_save=cfg.checkpoint.async_save)
        self._saved_step = self._step = None
        # LoRA: the frozen LM weights, placed before a restore checks the adapters were trained on them
        self.base, base_shardings = T.place_base(self.model, self.mesh, cfg.model.seed, cfg.compiler_options)
        self._base_ref: dict[str, Any] | None = None
        self.state, self.shardings = self._restore_or_init()
        self.t5_params, t5_shardings = T.place_t5(self.model, self.mesh)
        self.step_fn = T.make_train_step(self.model, cfg.optim, cfg.steps, self.mesh, self.shardings,
                                         self.data.batch_shapes(), t5_shardings, cfg.compiler_options,
                                         base_shardings=base_shardings)
        self._frozen = (self.t5_params,) if self.base is None else (self.t5_params, self.base)

    # ------------------------------------------------------------------ state

    def _restore_or_init(self):
        cfg = self.cfg
        if self.checkpointer is not None and self.checkpointer.steps():
            shardings = T.state_shardings(self.model, cfg.optim, cfg.steps, self.mesh, cfg.model.seed)
            target = T.abstract_state(shardings, self.model, cfg.optim, cfg.steps, cfg.model.seed)
            restored = self.checkpointer.restore_latest(target)
            if restored is not None:
                state, meta = restored
                self._check_base(meta)
                self.data.set_state(meta["data"])
                log.info("resumed from step %d of %s", meta["step"], self.checkpointer.directory)
                self._saved_step = meta["step"]
                return state, shardings
            log.warning("no usable checkpoint in %s: starting from scratch", self.checkpointer.directory)
        return T.create_state(self.model, cfg.optim, cfg.steps, self.mesh, cfg.model.seed, cfg.compiler_options)

    def _base_reference(self) -> dict[str, Any] | None:
        """What a LoRA checkpoint records of its base: the name and one checksum per tensor."""
        if self.base is None:
            return None
        if self._base_ref is None:
            source = self.cfg.model.init_from or f"random init of model.preset {self.cfg.model.preset} " \
                                                   f"(seed {self.cfg.model.seed})"
            self._base_ref = {"source": source, "dtype": self.cfg.lora.base_dtype, "checksums": checksums(self.base)}
        return self._base_ref

    def _check_base(self, meta: dict[str, Any]) -> None:
        """A LoRA checkpoint's adapters continue only on the base they were trained on."""
        mine, theirs = self._base_reference(), meta.get("lora_base")
        if mine is None or theirs is None:
            return
        if theirs.get("checksums") != mine["checksums"]:
            raise ValueError(
                f"the LoRA checkpoint in {self.checkpointer.directory} was trained on base {theirs.get('source')!r} "
                f"({theirs.get('dtype')}), which differs from this run's base {mine['source']!r} ({mine['dtype']}): "
                "resume with the same model.init_from and lora.base_dtype, or use a new checkpoint.dir")

    @property
    def step(self) -> int:
        """Host-side copy of state.step (reading the device value each step would stall the pipeline)."""
        if self._step is None:
            self._step = int(self.state.step)
        return self._step

    def save(self, *, force: bool = False) -> bool:
        """Checkpoint the current step if it is due (or `force`) and not saved yet."""
        step = self.step
        if self.checkpointer is None or step == self._saved_step:
            return False
        meta = {"data": self.data.get_state(), "config": to_dict(self.cfg), "time": time.time(),
                "max_duration": self.model.config.max_duration}
        if self.base is not None:
            meta["lora_base"] = self._base_reference()
        saved = self.checkpointer.save(step, self.state, meta, force=force)
        if saved:
            self._saved_step = step
        return saved

    # ------------------------------------------------------------------ loop

    def run(self, stop_at: int | None = None) -> list[dict[str, float]]:
        """Train until `cfg.steps`, `stop_at`, `cfg.stop_after` more steps, or a SIGTERM.
        Returns the metrics of every step run; raises TrainingDiverged (see module doc)."""
        cfg = self.cfg
        limits = [cfg.steps, stop_at, None if cfg.stop_after is None else self.step + cfg.stop_after]
        last = min(x for x in limits if x is not None)
        reporter = _Reporter(self, last)
        try:
            with PreemptionGuard() as guard:
                while self.step < last:
                    batch = S.global_batch(next(self.data), self.mesh)
                    self.state, step_metrics = self.step_fn(self.state, batch, *self._frozen)
                    self._step = step = self.step + 1
                    self._check(reporter.add(step, step_metrics, timed=step % cfg.log.every == 0 or step == last))
                    stop = guard.should_stop(step)
                    if stop or step == last or (self.checkpointer is not None and self.checkpointer.due(step)):
                        self._check(reporter.flush())  # every step before a checkpoint is checked
                        self.save(force=stop or step == last)
                    if stop:
                        break
        finally:
            if self.checkpointer is not None:
                self.checkpointer.wait()  # saves of earlier (good) steps complete, whatever happened
            reporter.close()
        return reporter.history

    def _check(self, rows: list[dict[str, float]]) -> None:
        """TrainingDiverged at the first row whose loss or gradient norm is not finite."""
        for row in rows:
            bad = {k: row[k] for k in ("loss", "grad_norm") if k in row and not math.isfinite(row[k])}
            if bad:
                shown = ", ".join(f"{k} {v}" for k, v in bad.items())
                saved = (f"the last checkpoint is step {self._saved_step} in {self.checkpointer.directory}"
                         if self._saved_step is not None else "no checkpoint was saved")
                raise TrainingDiverged(
                    f"training diverged at step {int(row['step'])}: {shown} (not finite). Stopped without "
                    f"saving this state; {saved}. Lower optim.lr, raise optim.warmup_steps or keep "
                    f"optim.grad_clip on, then resume.")

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()


class _Reporter:
    """Collects step metrics on device and reports them once per log interval (one device sync):
    history rows, TensorBoard / JSON lines, the progress bar, tokens/s and MFU."""

    def __init__(self, trainer: Trainer, last: int):
        cfg = trainer.cfg
        b, _, t = trainer.data.batch_shapes()["codes"]
        lm, t5 = trainer.model.config.lm, trainer.model.config.t5
        self.flops = M.train_step_flops(lm, b, t + 1, cfg.data.max_text_tokens, t5)  # per update
        self.tokens = b * (t + 1)  # LM sequence steps per update
        self.peak = M.peak_flops(override_tflops=cfg.log.peak_tflops)
        events = cfg.log.tensorboard or (os.path.join(cfg.checkpoint.dir, "tensorboard") if cfg.checkpoint.dir
                                         else None)
        self.sink = M.MetricSink(events, cfg.log.jsonl, resumed_step=trainer.step)
        self.bar = _progress(cfg.log.progress, trainer.step, last)
        self.history: list[dict[str, float]] = []
        self.pending: list[Any] = []
        self.tick = time.perf_counter()

    def add(self, step: int, metrics: Any, *, timed: bool) -> list[dict[str, float]]:
        """Queue step `step`'s device metrics; when `timed`, report the queue with its speed. Returns
        the rows reported (none until a report)."""
        self.pending.append((step, metrics))
        return self.flush(timed=True) if timed else []

    def flush(self, *, timed: bool = False) -> list[dict[str, float]]:
        """Report the queued steps (one device sync) -> their rows."""
        if not self.pending:
            return []
        now = time.perf_counter()
        seconds = (now - self.tick) / len(self.pending) if timed else None
        self.tick = now
        steps, metrics = zip(*self.pending)
        rows = [dict(M.scalars(m), step=s) for s, m in zip(steps, jax.device_get(list(metrics)))]
        self.pending = []
        if seconds:
            rows[-1].update(self._speed(seconds))
        for row in rows:
            self.sink.write(row["step"], {k: v for k, v in row.items() if k != "step"})
        self.sink.flush()
        self._show(rows)
        self.history += rows
        return rows

    def _speed(self, seconds: float) -> dict[str, float]:
        speed = {"step_seconds": seconds, "tokens_per_second": self.tokens / seconds}
        value = M.mfu(self.flops, seconds, jax.device_count(), self.peak)
        if value is not None:
            speed["mfu"] = value
        return speed

    def _show(self, rows: list[dict[str, float]]) -> None:
        if self.bar is None:
            return
        self.bar.update(len(rows))
        last = rows[-1]
        shown = {"loss": f"{last['loss']:.3f}"}
        if "tokens_per_second" in last:
            shown["tok/s"] = f"{last['tokens_per_second']:.0f}"
        if "mfu" in last:
            shown["mfu"] = f"{last['mfu']:.1%}"
        self.bar.set_postfix(shown)

    def close(self) -> None:
        self.sink.close()
        if self.bar is not None:
            self.bar.close()


def _mesh(cfg: TrainConfig):
    devices = None
    if cfg.mesh.num_devices is not None:
        if jax.process_count() > 1:
            raise ValueError("mesh.num_devices is for single-process runs")
        devices = jax.devices()[: cfg.mesh.num_devices]
    return S.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)


def _progress(enabled: bool, start: int, total: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="training", dynamic_ncols=True)


def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Run (or resume) a training run; export at the end when `checkpoint.export_dir` is set."""
    trainer = Trainer(cfg)
    try:
        history = trainer.run()
        if cfg.checkpoint.export_dir and trainer.step >= cfg.steps:
            from musicgen_jax.train.export import export_state

            export_state(cfg.checkpoint.export_dir, trainer.model, trainer.state, base=cfg.checkpoint.export_base,
                         adapter_only=cfg.checkpoint.export_adapter_only)
    finally:
        trainer.close()
    return history
