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
    generic HLO cost model run on each loop body of the compiled module, plus cuBLAS GEMM custom calls,
    which that model counts as 0 FLOPs; on TPU the bytes are scaled by TPU/generic of the whole module, for
    the tiling TPU's count includes);
  * est. step time = max(FLOPs per device / peak, bytes per device / HBM bandwidth): a lower bound (no
    collectives, perfect overlap), and MFU bound = model FLOPs / (est. step time x peak x devices).
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Sequence

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


# ------------------------------------------------------------------------------------------ XLA costs
# A private helper (aot/hlo.py may grow a shared one): XLA's cost analysis counts a while body once,
# so each loop body of the compiled module is costed as its own module and multiplied by its trip count.

_HEAD = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_WHILE = re.compile(r"while\(.*?\), condition=%?([\w.\-]+), body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_DEF = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?)\s")
_GEMM = re.compile(r'custom_call_target="__cublas\$(?:lt\$)?matmul"')
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_METADATA = re.compile(r"metadata=\{[^{}]*\}")


def _split(text: str) -> tuple[dict[str, str], list[str], str]:
    comps, order, entry, name, lines = {}, [], "", None, []
    for line in text.splitlines():
        if name is None:
            m = _HEAD.match(line)
            if m:
                name, lines = m.group(2), [line]
                entry = name if m.group(1) else entry
            continue
        lines.append(line)
        if line.startswith("}"):
            comps[name] = "\n".join(lines)
            order.append(name)
            name = None
    return comps, order, entry


def _defs(comp: str) -> dict[str, str]:
    """{instruction name: its line} of one computation."""
    out = {}
    for line in comp.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if m:
            out[m.group(1)] = line
    return out


def _constant(line: str | None) -> int | None:
    """The value of an integer scalar constant instruction's line, else None."""
    m = re.search(r"= [su](?:32|64)\[\]\S* constant\((\d+)\)", line or "")
    return int(m.group(1)) if m else None


def _trip_count(line: str, condition: str, body: str) -> int:
    """A while loop's trip count: XLA's known_trip_count (GPU); else (TPU) the bound its condition compares
    the induction variable with, over the step the body adds to it (TPU's 'wide' loops add 2), from 0."""
    m = _TRIP.search(line)
    if m:
        return int(m.group(1))
    cond = _defs(condition)
    compare = next((l for l in cond.values() if " compare(" in l and "direction=LT" in l), None)
    if compare is None:
        return 1
    names = re.findall(r"%([\w.\-]+)", compare.split(" compare(", 1)[1].split(")", 1)[0])
    bound = next((c for c in (_constant(cond.get(n)) for n in names) if c is not None), None)
    index = next((re.search(r"index=(\d+)", cond[n]).group(1) for n in names
                  if n in cond and "get-tuple-element(" in cond[n]), None)
    if bound is None:
        return 1
    step = 1
    defs = _defs(body)
    root = next((l for l in defs.values() if l.lstrip().startswith("ROOT ") and " tuple(" in l), None)
    if root is not None and index is not None:
        operands = re.findall(r"%([\w.\-]+)", root.split(" tuple(", 1)[1])
        update = defs.get(operands[int(index)]) if int(index) < len(operands) else None
        if update is not None and " add(" in update:
            added = re.findall(r"%([\w.\-]+)", update.split(" add(", 1)[1].split(")", 1)[0])
            step = next((c for c in (_constant(defs.get(n)) for n in added) if c), 1)
    return max(1, -(-bound // step))


def _gemm_flops(comp: str) -> float:
    """FLOPs of the cuBLAS GEMM custom calls of one computation: 2 x output elements x contracted size."""
    shapes = {m.group(1): m.group(2) for m in map(_DEF.match, comp.splitlines()) if m}
    flops = 0.0
    for line in comp.splitlines():
        if not _GEMM.search(line):
            continue
        m = _DEF.match(line)
        out = _ARRAY.search(m.group(2)) if m else None
        operands = re.search(r"custom-call\(%?([\w.\-]+)", line)
        contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
        lhs = _ARRAY.search(shapes.get(operands.group(1), "")) if operands else None
        if not (out and lhs and contracting):
            continue
        out_n = math.prod(int(d) for d in out.group(2).split(",") if d)
        lhs_dims = [int(d) for d in lhs.group(2).split(",") if d]
        k = math.prod(lhs_dims[int(i.strip('" '))] for i in contracting.group(1).split(",") if i.strip('" '))
        flops += 2.0 * out_n * k
    return flops


_COLLECTIVE = re.compile(r"= [^=]*?\b(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
                         r"(?:-start)?\(")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}


def _top_level(shape: str) -> list[str]:
    """'(a, (b, c), d)' -> ['a', '(b, c)', 'd']; an array shape -> [it]."""
    if not shape.startswith("("):
        return [shape]
    parts, depth, cur = [], 0, ""
    for ch in shape[1:-1]:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + ([cur.strip()] if cur.strip() else [])


def _collective_bytes(comp: str) -> float:
    """Bytes of the collectives' results in one computation (of an async -start: its result part)."""
    total = 0.0
    for line in comp.splitlines():
        found = _COLLECTIVE.search(line)
        m = _DEF.match(line) if found else None
        if not m:
            continue
        shape = m.group(2)
        if "-start(" in found.group(0) and found.group(1) in ("all-gather", "collective-permute", "all-to-all"):
            parts = _top_level(shape)
            shape = parts[1] if len(parts) > 1 else shape  # (operands, results, ...)
        total += sum(_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
                     for t, dims in _ARRAY.findall(shape))
    return total


def _loop_aware_cost(hlo_text: str) -> dict[str, float]:
    """{flops, bytes accessed, loops, ...once} of a compiled (per-device) HLO module, every while body
    counted trip-count times: XLA's generic HLO cost model on each body as an entry computation."""
    import jaxlib._hlo as hlo
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    cpu = xla_bridge.get_backend("cpu")
    comps, order, entry = _split(_METADATA.sub("metadata={}", hlo_text))
    loops = {name: [(m.group(2), _trip_count(line, comps.get(m.group(1), ""), comps.get(m.group(2), "")))
                    for line in text.splitlines() if (m := _WHILE.search(line))]
             for name, text in comps.items()}
    costs: dict[str, dict[str, float]] = {}

    def cost(name: str) -> dict[str, float]:
        if name not in costs:
            parts = ["HloModule aot_cost"]
            for c in order:
                text = comps[c][len("ENTRY "):] if comps[c].startswith("ENTRY ") else comps[c]
                parts.append("ENTRY " + text if c == name else text)
            module = hlo.hlo_module_from_text("\n\n".join(parts))
            costs[name] = dict(_jax.hlo_module_cost_analysis(cpu, module))
        return costs[name]

    callees = {name: set(re.findall(r"(?:calls|to_apply|body|condition|true_computation|false_computation)="
                                    r"%?([\w.\-]+)", text)) |
               {c.strip().lstrip("%") for g in re.findall(r"branch_computations=\{([^}]*)\}", text)
                for c in g.split(",")}
               for name, text in comps.items()}

    def reachable(own) -> Any:
        memo: dict[str, float] = {}

        def total(name: str) -> float:  # `own` of `name` and of what it calls, loop bodies x trip counts
            if name not in memo:
                memo[name] = 0.0
                trips = dict(loops.get(name, []))
                memo[name] = own(comps[name]) + sum(trips.get(c, 1) * total(c)
                                                    for c in callees.get(name, ()) if c in comps)
            return memo[name]

        return total

    gemms, collectives = reachable(_gemm_flops), reachable(_collective_bytes)

    def full(name: str, key: str) -> float:
        value = cost(name).get(key, 0.0)
        for body, trips in loops.get(name, []):
            value += trips * full(body, key) - cost(body).get(key, 0.0)
        return value

    gemm_once = sum(_gemm_flops(comps[c]) for c in order)
    return {"flops": full(entry, "flops") + gemms(entry), "bytes accessed": full(entry, "bytes accessed"),
            "flops_once": cost(entry).get("flops", 0.0) + gemm_once,
            "bytes_once": cost(entry).get("bytes accessed", 0.0), "collective_bytes": collectives(entry),
            "loops": sorted(n for ls in loops.values() for _, n in ls)}


def _backend_cost(compiled) -> dict[str, float] | None:
    try:
        costs = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends raise instead of returning None)
        return None
    if isinstance(costs, (list, tuple)):
        costs = costs[0] if costs else None
    return dict(costs) if costs else None


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
    xla = _loop_aware_cost(compiled.runtime_executable().hlo_modules()[0].to_string())
    backend = _backend_cost(compiled)
    xla_flops_once = backend.get("flops", xla["flops_once"]) if backend else xla["flops_once"]
    bytes_once = backend.get("bytes accessed", xla["bytes_once"]) if backend else xla["bytes_once"]
    xla_bytes = xla["bytes accessed"]
    if backend and xla["bytes_once"] > 0:  # TPU: its own count (tiles, padding) scaled by the loop factor
        xla_bytes *= bytes_once / xla["bytes_once"]
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
