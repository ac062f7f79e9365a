"""Ahead-of-time report of a training recipe's train step on a target that is not present.

    report = report_train("configs/train/medium.yaml", "v5p", 32, overrides=["mesh.fsdp=-1"])
    print(format_train(report))

The step compiled is the trainer's own (`train.trainer.make_train_step`, the recipe's mesh, sharding rules,
accumulation, remat, LoRA base as a non-donated argument), lowered on abstract arguments
(`trainer.abstract_state`, `abstract_t5`, `abstract_base`: ShapeDtypeStructs carrying the shardings) for
`num_devices` abstract devices of the target (`aot.targets`). No weights, tokenizer or dataset are read:
the batch shapes follow from the recipe (`data.segment_seconds` x the codec's frame rate).

What the report holds (every figure an estimate from a compiled program, per device unless named):
  * memory: XLA's peak (`peak_memory_in_bytes`; else arguments + outputs + temporaries - aliased) against
    the target's HBM, and the state's share (trained params, optimizer moments, EMA, frozen T5 / LoRA base);
  * FLOPs: model FLOPs per step (analytic, train.metrics: matmuls only, forward x 3; LoRA: forward x 2 +
    the attention backward, as no weight gradient of the frozen base is computed), and XLA's own counts:
    `xla_*_once` as XLA's cost analysis gives them (a while/scan body, e.g. the layers under nn.scan or the
    accumulation loop, counted ONCE), and `xla_*` with every loop body multiplied by its trip count (XLA's
    generic HLO cost model run on each loop body of the compiled module, plus the flops and bytes of cuBLAS
    GEMM custom calls from their shapes, which that model does not know: `aot.hlo.loop_aware_cost`; on TPU
    the bytes are scaled by TPU/generic of the whole module, for the tiling TPU's count includes);
  * est. step time = max(FLOPs per device / peak, bytes per device / HBM bandwidth): a lower bound (no
    collectives, perfect overlap), and MFU bound = model FLOPs / (est. step time x peak x devices).
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

from musicgen_jax.aot import hlo
from musicgen_jax.aot.targets import Target, get_target, prepare_jax, target_devices

ESTIMATE_NOTE = ("estimates from a compiled program (XLA's memory and cost analysis, published peak FLOP/s and "
                 "HBM bandwidth); step time is a lower bound: no collectives, perfect overlap")


# ------------------------------------------------------------------------------------------ recipe


def _load(recipe: Any, overrides: Sequence[str]):
    """(TrainConfig, a name for it): a path to a recipe YAML, or a loaded TrainConfig (+ overrides)."""
    from musicgen_jax.train import config as C

    if isinstance(recipe, C.TrainConfig):
        if not overrides:
            return recipe, "config"
        raw = C.to_dict(recipe)
        for o in overrides:
            C._apply_override(raw, o)
        return C.from_dict(raw), "config"
    return C.load_config(recipe, overrides), str(recipe) if recipe else "defaults"


def _frames(cfg, model) -> int:
    """LM frames of one training segment (the recipe's crop; the model's window when it has none)."""
    seconds = cfg.data.segment_seconds or model.config.max_duration
    return int(round(seconds * model.config.frame_rate))


def _tree_bytes(abstract: Any) -> int:
    """Bytes per device of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(abstract):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def _count(abstract: Any) -> int:
    import jax

    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract)))


# ------------------------------------------------------------------------------------------ flops


def _model_flops(model, batch: int, steps: int, text_tokens: int) -> tuple[float, str]:
    """Analytic model FLOPs of one update (train.metrics) and how they were counted."""
    from musicgen_jax.train import metrics as M

    lm, t5 = model.config.lm, model.config.t5
    if model.lora is None:
        return M.train_step_flops(lm, batch, steps, text_tokens, t5), \
            "matmuls, forward x 3 (backward = 2 x forward), frozen T5 forward once; remat recompute not counted"
    prefix = lm.chroma_frames + text_tokens if lm.is_melody else 0
    forward = M.lm_forward_flops(lm, steps, text_tokens, prefix)
    n = steps + prefix
    attention = lm.num_layers * 4 * n * n * lm.dim  # scores + values, activation x activation
    if lm.cross_attention and text_tokens:
        attention += lm.num_layers * 4 * steps * text_tokens * lm.dim
    flops = batch * (2 * forward + attention) + batch * M.t5_forward_flops(t5, text_tokens)
    return float(flops), ("matmuls, LoRA: forward x 2 (input gradients; no weight gradients of the frozen base) "
                          "+ the attention backward, adapters not counted; remat recompute not counted")


# ------------------------------------------------------------------------------------------ report


def report_train(recipe: Any, target: Target | str, num_devices: int, *, overrides: Sequence[str] = (),
                 compiler_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile the recipe's train step for `num_devices` devices of `target` and report it (module doc).

    recipe: a configs/train/*.yaml path or a TrainConfig; overrides: `section.key=value` as the train CLI
    takes them (the mesh spans all `num_devices`: mesh.num_devices is not used); compiler_options: added to the recipe's (GPU targets get xla_gpu_enable_triton_gemm=False:
    without a GPU XLA cannot autotune Triton GEMMs)."""
    prepare_jax()
    import jax
    import jax.numpy as jnp

    from musicgen_jax import sharding as S
    from musicgen_jax.train import trainer as T
    from musicgen_jax.train.data import batch_shapes
    from musicgen_jax.train.model import abstract_model

    cfg, name = _load(recipe, tuple(overrides))
    target = get_target(target) if isinstance(target, str) else target
    devices = target_devices(target, num_devices)
    mesh = S.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    rows_split = S.batch_divisor(mesh)
    if cfg.data.batch_size % rows_split or (cfg.data.batch_size // cfg.optim.accum_steps) % rows_split:
        raise ValueError(f"{name}: batch_size {cfg.data.batch_size} (micro-batches of "
                         f"{cfg.data.batch_size // cfg.optim.accum_steps}) must be a multiple of data x fsdp = "
                         f"{rows_split} on {num_devices} devices; change data.batch_size or the mesh")
    model = abstract_model(cfg.model, cfg.lora)
    lm = model.config.lm
    frames = _frames(cfg, model)
    shapes = batch_shapes(cfg.data.batch_size, lm.num_codebooks, frames, cfg.data.max_text_tokens,
                          lm.chroma_frames if lm.is_melody else None)

    shardings = T.state_shardings(model, cfg.optim, cfg.steps, mesh, cfg.model.seed)
    state = T.abstract_state(shardings, model, cfg.optim, cfg.steps, cfg.model.seed)
    t5, t5_shardings = T.abstract_t5(model, mesh)
    base = T.abstract_base(model, mesh, cfg.model.seed)
    options = dict(cfg.compiler_options or {})
    if target.platform == "cuda":
        options.setdefault("xla_gpu_enable_triton_gemm", False)
    options.update(compiler_options or {})
    step = T.make_train_step(model, cfg.optim, cfg.steps, mesh, shardings, shapes, t5_shardings, options or None,
                             base_shardings=T.base_shardings(model, mesh, cfg.model.seed))
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=S.batch_sharding(mesh, len(v)))
             for k, v in shapes.items()}
    args = (state, batch, t5) if base is None else (state, batch, t5, base)

    start = time.perf_counter()
    lowered = step.lower(*args)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s

    mem = compiled.memory_analysis()
    parts = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "temp", "alias")}
    peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    memory_source = "peak_memory_in_bytes"
    if peak <= 0:
        peak = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
        memory_source = "argument + output + temp - alias"

    steps = frames + 1  # the delay pattern's valid steps (T + 1): what the LM runs on
    model_flops, flops_note = _model_flops(model, cfg.data.batch_size, steps, cfg.data.max_text_tokens)
    xla = hlo.loop_aware_cost(hlo.parse_hlo(compiled.as_text()))
    backend = hlo.native_cost(compiled) if target.platform == "tpu" else None  # TPU's own count
    xla_flops_once = backend["flops"] if backend and backend["flops"] > 0 else xla["flops_once"]
    bytes_once = backend["bytes_accessed"] if backend and backend["bytes_accessed"] > 0 else xla["bytes_accessed_once"]
    xla_bytes = xla["bytes_accessed"]
    if xla["bytes_accessed_once"] > 0:  # TPU: its own count (tiles, padding) scaled by the loop factor; GPU: 1
        xla_bytes *= bytes_once / xla["bytes_accessed_once"]
    flops_per_device = max(xla["flops"], model_flops / num_devices)
    compute_s = flops_per_device / target.peak_flops
    memory_s = xla_bytes / target.hbm_bandwidth
    step_s = max(compute_s, memory_s)
    mfu = model_flops / (step_s * target.peak_flops * num_devices) if step_s > 0 else None

    trainable, frozen = _count(state.params), _count(base) if base is not None else 0
    return {
        "kind": "train",
        "recipe": name,
        "overrides": list(overrides),
        "target": target.name,
        "target_description": target.description,
        "platform": target.platform,
        "num_devices": num_devices,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "model": model.config.name,
        "lora": model.lora is not None,
        "dtype": cfg.model.dtype,
        "remat": cfg.model.remat,
        "trainable_params": trainable,
        "frozen_lm_params": frozen,
        "global_batch": cfg.data.batch_size,
        "accum_steps": cfg.optim.accum_steps,
        "rows_per_device_per_micro_batch": cfg.data.batch_size // cfg.optim.accum_steps // rows_split,
        "frames": frames,
        "lm_steps": steps + (lm.chroma_frames + cfg.data.max_text_tokens if lm.is_melody else 0),
        "tokens_per_step": cfg.data.batch_size * steps,
        "peak_bytes_per_device": peak,
        "memory_source": memory_source,
        "hbm_bytes": int(target.hbm_bytes),
        "fits": peak <= target.hbm_bytes,
        "memory_parts": parts,
        "params_bytes_per_device": _tree_bytes(state.params),
        "optimizer_bytes_per_device": _tree_bytes(state.opt_state),
        "ema_bytes_per_device": _tree_bytes(state.ema) if state.ema is not None else 0,
        "frozen_bytes_per_device": _tree_bytes(t5) + (_tree_bytes(base) if base is not None else 0),
        "model_flops_per_step": model_flops,
        "model_flops_note": flops_note,
        "xla_flops_per_device_once": float(xla_flops_once),
        "xla_bytes_per_device_once": float(bytes_once),
        "xla_flops_per_device": float(xla["flops"]),
        "xla_bytes_per_device": float(xla_bytes),
        "xla_loop_trip_counts": xla["loops"],
        "collective_bytes_per_device": float(xla["collective_bytes"]),
        "xla_note": ("*_once: XLA's cost analysis, each while/scan body counted once; without _once: loop bodies "
                     "x trip counts (generic HLO cost model + cuBLAS GEMMs; TPU bytes scaled to TPU's count)"),
        "est_compute_seconds": compute_s,
        "est_memory_seconds": memory_s,
        "est_step_seconds": step_s,
        "est_bound": "compute" if compute_s >= memory_s else "memory",
        "est_tokens_per_second": cfg.data.batch_size * steps / step_s if step_s > 0 else None,
        "mfu_bound": mfu,
        "lower_seconds": lower_s,
        "compile_seconds": compile_s,
        "compiler_options": options,
        "note": ESTIMATE_NOTE,
    }


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def format_train(report: dict[str, Any]) -> str:
    """A report as text (every figure labelled an estimate)."""
    r = report
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
    fits = "fits" if r["fits"] else "DOES NOT FIT"
    lines = [
        f"train step: {r['recipe']}{' ' + ' '.join(r['overrides']) if r['overrides'] else ''} on "
        f"{r['num_devices']} x {r['target']} ({r['target_description']})",
        f"  model {r['model']}{' (LoRA)' if r['lora'] else ''}, {r['dtype']}, remat {r['remat']}: "
        f"{r['trainable_params'] / 1e6:.1f}M trained" + (f", {r['frozen_lm_params'] / 1e6:.0f}M frozen"
                                                         if r['frozen_lm_params'] else ""),
        f"  mesh {mesh}; global batch {r['global_batch']} ({r['accum_steps']} micro-batch(es), "
        f"{r['rows_per_device_per_micro_batch']} rows per device each), {r['frames']} frames "
        f"({r['lm_steps']} LM steps), {r['tokens_per_step']} tokens per step",
        f"  memory per device: peak {_gb(r['peak_bytes_per_device'])} of {_gb(r['hbm_bytes'])}: {fits} "
        f"({r['memory_source']}); params {_gb(r['params_bytes_per_device'])}, optimizer "
        f"{_gb(r['optimizer_bytes_per_device'])}, EMA {_gb(r['ema_bytes_per_device'])}, frozen "
        f"{_gb(r['frozen_bytes_per_device'])}",
        f"  model FLOPs per step {r['model_flops_per_step']:.3g} ({r['model_flops_note']})",
        f"  XLA per device: {r['xla_flops_per_device']:.3g} FLOPs, {_gb(r['xla_bytes_per_device'])} accessed "
        f"(loop bodies x trip counts {r['xla_loop_trip_counts']}); XLA's own count, scan bodies once: "
        f"{r['xla_flops_per_device_once']:.3g} FLOPs, {_gb(r['xla_bytes_per_device_once'])}; collectives' "
        f"results {_gb(r['collective_bytes_per_device'])} (not in the step time)",
        f"  est. step time >= {r['est_step_seconds'] * 1e3:.1f} ms ({r['est_bound']}-bound: compute "
        f"{r['est_compute_seconds'] * 1e3:.1f} ms, HBM {r['est_memory_seconds'] * 1e3:.1f} ms), MFU bound "
        + (f"{r['mfu_bound']:.0%}" if r['mfu_bound'] is not None else "n/a")
        + f"; compiled in {r['compile_seconds']:.0f} s",
        f"  ({r['note']})",
    ]
    return "\n".join(lines)
