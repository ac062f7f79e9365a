"""Ahead-of-time decode cost report: the decode loop of a model compiled for a GPU or TPU that is not here.

    report = report_decode("musicgen-small", "h100", batch=1, seconds=30.0)
    print(format_report(report))          # musicgen_jax.aot.report

What is compiled (nothing runs; no weights are read: every input is a ShapeDtypeStruct with its sharding):
the decode loop users run, `generate.decode_steps` jitted as `generate` jits it (lm and settings static,
state donated), with the inputs `MusicGen.from_pretrained(dtype=...)` gives it: unrolled layers
(scan_layers=False), matmul weights held in the compute dtype (`modules.lm.inference_params`; norms and
embeddings float32), caches in the compute dtype, conditions of a 16-token text bucket
([conditional; null] rows with classifier-free guidance; melody models: the chroma + text prefix), and a
buffer for `seconds` of audio bucketed as the sampler buckets it.

Length-aware attention: the sampler runs a window as pieces whose steps read only the cache positions
below a bound (`generate.kv_pieces`, 512-position segments on GPU/TPU), each piece its own program. The
report compiles the whole-buffer program and the first bound's; a step's bytes and flops are linear in
the positions read, so every piece's figures follow from those two, and the per-step figures are the
step-weighted average over the pieces (`length_aware=False`: the whole buffer every step).

Per-step figures come from ONE ITERATION OF THAT LOOP (its body and condition in the optimized HLO,
aot/hlo.py), not from a decode step compiled on its own: alone, a step is a different program (on TPU
XLA hoists the weights' cast to bf16 out of the loop, so a lone step would read float32 weights and
write bf16 copies every time). Kernels: the loop body's top-level instructions that launch work. Flops
and bytes: each of them analysed by XLA's cost model on its own, bytes counted where they reach device
memory (TPU: operands and results in HBM, padded to their tiles; the VMEM / SMEM staging XLA's whole-program
TPU count includes is on chip). Peak memory: the loop program's memory analysis.

Every figure is an estimate from a compiled program and published device figures (targets.py), not a
measurement: est. ms/step = max(bytes / HBM bandwidth, flops / peak) + kernels x launch cost (GPU).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

from musicgen_jax.aot.targets import Target, get_target, prepare_jax, target_devices

ESTIMATES_FROM = "compiled program, no hardware"
ESTIMATE_NOTE = ("every figure is an estimate from a program compiled for the target without it (XLA's memory "
                 "and cost analysis, published HBM bandwidth / peak FLOP/s / launch cost), not a measurement")
TEXT_TOKENS = 16  # the sampler's text bucket (sampler.Conditioner.bucket_text)
# Without a GPU XLA cannot autotune: Triton GEMMs untuned (autotune level 0) are the nearest to what a GPU
# compiles by default (Triton or cuBLAS per GEMM, autotuned); when that fails to tile a GEMM, cuBLAS only.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": True, "xla_gpu_autotune_level": 0}
GPU_FALLBACK_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
COST_SOURCE = {
    True: "XLA's cost model (CPU client) on each kernel of one loop iteration (body + condition) of the compiled "
          "loop, cuBLAS GEMMs from their shapes",
    False: "XLA's cost model (CPU client) on each op of one loop iteration (body + condition) of the compiled "
           "loop, counting only operands / results in HBM (memory space 0; VMEM / SMEM staging is on chip), "
           "padded to their layout's tiles",
}


@dataclasses.dataclass(frozen=True)
class _Model:
    name: str
    lm: Any  # LMConfig
    frame_rate: float
    max_duration: float


def _resolve_model(model) -> _Model:
    from musicgen_jax.config import LMConfig, MusicGenConfig, preset

    if isinstance(model, str):
        model = preset(model)
    if isinstance(model, MusicGenConfig):
        return _Model(model.name, model.lm, float(model.frame_rate), float(model.max_duration))
    if isinstance(model, LMConfig):  # a bare LM (tests): the official 50 Hz codec and 30 s window
        name = f"lm(dim={model.dim}, layers={model.num_layers}, heads={model.num_heads})"
        return _Model(name, model, 50.0, 30.0)
    raise TypeError(f"model must be a preset name, a MusicGenConfig or an LMConfig, got {type(model).__name__}")


def _dtype(name):
    import jax.numpy as jnp

    if not isinstance(name, str):
        return jnp.dtype(name)
    try:
        return jnp.dtype({"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16"}
                         .get(name, name))
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r}: use bfloat16 or float32") from e


def _steps(model: _Model, seconds: float) -> dict[str, int]:
    """The shapes the sampler uses for `seconds` of audio in one window (sampler.Sampler._window)."""
    from musicgen_jax.patterns import first_generated_step
    from musicgen_jax.sampler import Sampler, bucket

    frames = int(seconds * model.frame_rate)
    window = int(model.max_duration * model.frame_rate)
    if frames < 1:
        raise ValueError(f"seconds must give at least one frame, got {seconds}")
    if frames > window:
        raise ValueError(f"seconds ({seconds:g}) is longer than the model's window ({model.max_duration:g} s): "
                         "the report covers one window")
    pattern = model.lm.codebook_pattern(frames)
    steps = pattern.num_steps
    buffer = bucket(steps, Sampler.bucket_frames, model.lm.codebook_pattern(window).num_steps)
    start = first_generated_step(pattern, 0)
    return {"frames": frames, "sequence_steps": steps, "buffer_steps": buffer, "start": start,
            "loop_steps": steps - 1 - start}


def _make_mesh(devices, mesh_spec: str | None):
    import numpy as np
    from jax.sharding import Mesh

    from musicgen_jax import sharding

    if len(devices) == 1 and not mesh_spec:
        return Mesh(np.asarray(devices).reshape(1, 1, 1), sharding.MESH_AXES)
    return sharding.parse_mesh(mesh_spec or f"tensor={len(devices)}", devices=devices)


def _with_shardings(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _tree_bytes(tree) -> int:
    import jax

    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _memory(compiled) -> dict[str, Any]:
    stats = compiled.memory_analysis()
    parts = {k: int(getattr(stats, f"{k}_size_in_bytes", 0) or 0)
             for k in ("argument", "output", "alias", "temp", "generated_code")}
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    source = "peak_memory_in_bytes"
    if peak <= 0:
        peak = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
        source = "argument + output + temp - alias"
    return {"peak": peak, "source": source, "parts": parts}


def _out_of_memory(message: str) -> float | None:
    """Bytes the compiler said it needed, from its out-of-memory error (TPU: "the total memory required
    for HLO temporaries (28.92G) exceeds available HBM (15.75G)"), or None for another error."""
    import re

    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
        return None
    m = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)", message)
    if not m:
        return None
    scale = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[m.group(2)]
    return float(m.group(1)) * scale


def _step_weight_bytes(params, dtype, lm, hoisted: bool, rows: int) -> int:
    """Weight bytes one decode step reads at the dtype the loop holds them in: every parameter the step
    uses once (the cross-attention key/value kernels and text / chroma projections only make the
    conditions), the embedding tables only for the rows gathered (rows x codebooks)."""
    import jax

    from musicgen_jax.modules.lm import is_matmul_weight

    total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[0] in ("text_proj", "chroma_proj"):
            continue
        if "cross_attn" in keys and any(k in ("key", "value") for k in keys):
            continue
        if keys == ["embeddings"]:
            total += rows * lm.num_codebooks * lm.dim * x.dtype.itemsize
            continue
        itemsize = min(dtype.itemsize, x.dtype.itemsize) if hoisted and is_matmul_weight(path) else x.dtype.itemsize
        total += math.prod(x.shape) * itemsize
    return total


def _hoisted_casts(module, loop, params, dtype) -> bool:
    """Whether the compiled loop carries compute-dtype copies of the weights (XLA moved their cast out of
    the loop) rather than the float32 params: compare the loop state's arrays with the cast weights' shapes."""
    import jax

    from musicgen_jax.aot import hlo
    from musicgen_jax.modules.lm import is_matmul_weight

    inst = module.instruction(loop.computation, loop.name)
    carried = hlo.array_shapes(inst.shape) if inst is not None else []
    name = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(jax.numpy.dtype(dtype).name)
    shapes = {tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
              if is_matmul_weight(p) and len(x.shape) >= 2}
    low = sum(1 for d, dims in carried if d == name and dims in shapes)
    full = sum(1 for d, dims in carried if d == "f32" and dims in shapes)
    return name != "f32" and low > full


def _pieces(prefix: int, shape: dict[str, int], cache_len: int, platform: str | None) -> list[tuple[int, int | None]]:
    """(steps, kv_length) of the decode calls the sampler makes for one window (generate.kv_pieces with
    the target's segment; None: the whole buffer)."""
    from musicgen_jax.generate import KV_SEGMENT, kv_pieces

    start, end = shape["start"], shape["start"] + shape["loop_steps"]
    segment = KV_SEGMENT.get({"cuda": "gpu"}.get(platform, platform)) if platform else None
    pieces, step = [], start
    for piece_end, kv in kv_pieces(start, end, prefix, cache_len, segment):
        pieces.append((piece_end - step, kv))
        step = piece_end
    return pieces or [(0, None)]


def report_decode(model, target: Target | str, *, batch: int = 1, seconds: float = 30.0,
                  dtype: str = "bfloat16", num_devices: int = 1, guidance: bool = True,
                  mesh: str | None = None, text_tokens: int = TEXT_TOKENS,
                  compiler_options: dict[str, Any] | None = None, hlo_path: str | None = None,
                  param_dtype: str | None = None, length_aware: bool = True) -> dict[str, Any]:
    """Compile the decode loop of `model` for `num_devices` devices of `target` and report it (module doc).

    model: a preset name ("musicgen-small", "facebook/musicgen-melody", ...), a MusicGenConfig, or an
    LMConfig (a bare LM: 50 Hz frames, 30 s window). dtype: the compute dtype (MusicGen.from_pretrained's
    `dtype`, which also holds the matmul weights in it). guidance: classifier-free guidance (rows doubled).
    mesh: a sharding.parse_mesh spec over the devices ("tensor=4", "data=2,tensor=2"); default: one
    device, or tensor parallel over all of them. compiler_options: extra XLA options for both compiles.
    hlo_path: write the compiled loop's optimized HLO text there (to see what each kernel is).
    param_dtype: None, as MusicGen.from_pretrained holds the params (matmul weights in `dtype`); another
    dtype is a what-if: the weights the model casts before use (Dense kernels, output heads) held in it
    (float32: as before bf16 weights were held in bf16), norms and embeddings float32.
    length_aware: per-step figures over the sampler's length-aware pieces (module doc); False: the whole
    cache buffer every step.
    """
    prepare_jax()
    import jax
    import jax.numpy as jnp
    import flax.linen as nn

    from musicgen_jax import sharding
    from musicgen_jax.aot import hlo
    from musicgen_jax.config import Guidance, SamplingParams
    from musicgen_jax.generate import BUFFER_AXES, DecodeSettings, DecodeState, decode_steps, prefill
    from musicgen_jax.modules.lm import MusicGenLM, dummy_inputs, inference_params

    target = get_target(target) if isinstance(target, str) else target
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if not (isinstance(num_devices, int) and num_devices >= 1):
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
    spec = _resolve_model(model)
    compute = _dtype(dtype)
    c = spec.lm
    shape = _steps(spec, seconds)
    rows = 2 * batch if guidance else batch

    devices = target_devices(target, num_devices)
    mesh_ = _make_mesh(devices, mesh)
    lm = MusicGenLM(c, dtype=compute, scan_layers=False, mesh=mesh_ if num_devices > 1 or mesh else None)

    # params as MusicGen.from_pretrained holds them: unrolled layers, placed by their logical axes
    boxed = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), **dummy_inputs(c)))
    params = _with_shardings(nn.meta.unbox(boxed)["params"], sharding.param_shardings(boxed, mesh_)["params"])
    held = compute if param_dtype is None else _dtype(param_dtype)
    params = inference_params(params, held)

    # conditions as the sampler's Conditioner makes them (T5 output of a 16-token bucket, CFG rows)
    text = jax.ShapeDtypeStruct((rows, text_tokens, c.condition_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((rows, text_tokens), jnp.int32)
    if c.is_melody:
        chroma = jax.ShapeDtypeStruct((rows, c.chroma_frames, c.chroma_bins), jnp.float32)
        conditions = jax.eval_shape(lambda p, t, m, ch: lm.apply(
            {"params": p}, text=t, text_mask=m, chroma=ch, method=MusicGenLM.encode_conditions),
            params, text, mask, chroma)
    else:
        exists = jax.ShapeDtypeStruct((rows, text_tokens), jnp.bool_)
        conditions = jax.eval_shape(lambda p, t, m, e: lm.apply(
            {"params": p}, text=t, text_mask=m, text_exists=e, method=MusicGenLM.encode_conditions),
            params, text, mask, exists)
    conditions = _with_shardings(conditions, sharding.tree_shardings(conditions.logical_axes(), conditions, mesh_))

    settings = DecodeSettings(sampling=SamplingParams(), guidance=Guidance(coef=3.0 if guidance else 1.0),
                              prefill_length=1, progress_every=0)
    buffer = jax.ShapeDtypeStruct((batch, c.num_codebooks, shape["buffer_steps"]), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    state = jax.eval_shape(functools.partial(prefill, lm, settings=settings, cache_dtype=compute),
                           params, conditions, buffer, jnp.int32(shape["start"]), key)
    state_axes = DecodeState(jax.sharding.PartitionSpec(), BUFFER_AXES, state.cache.logical_axes(),
                             jax.sharding.PartitionSpec(*([None] * len(state.key.shape))))
    state = _with_shardings(state, sharding.tree_shardings(state_axes, state, mesh_))
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=jax.sharding.NamedSharding(mesh_, jax.sharding.PartitionSpec()))

    options = dict(GPU_COMPILER_OPTIONS) if target.platform == "cuda" else {}
    options.update(compiler_options or {})

    def compile_loop(loop_lm, opts):
        fn = jax.jit(decode_steps, static_argnames=("lm", "settings"), donate_argnames=("state",),
                     compiler_options=opts or None)
        t0 = time.perf_counter()
        lowered = fn.lower(loop_lm, params, conditions, state, scalar, settings, scalar)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        return compiled, t1 - t0, time.perf_counter() - t1

    # sizes that need no compile: weights, KV cache (full, and live on average), cross-attention K/V
    weight_bytes = _tree_bytes(params)
    kv_full = _tree_bytes((state.cache.k, state.cache.v)) if not isinstance(state.cache, tuple) else \
        _tree_bytes([(x.k, x.v) for x in state.cache])
    cache_len = jax.tree.leaves(state.cache)[0].shape[-2]
    prefix = cache_len - shape["buffer_steps"]
    # live positions while decoding: prefix + step + 1, for step in [start, last)
    first, last = prefix + shape["start"] + 1, prefix + shape["start"] + shape["loop_steps"]
    kv_live = kv_full * (first + last) / 2 / cache_len
    cross_kv = _tree_bytes(conditions.cross_kv) if conditions.cross_kv is not None else 0
    total_steps = shape["loop_steps"] + 1  # + the prefill call (one step: nothing to prefill without a prompt)
    report = {
        "kind": "decode",
        "estimates_from": ESTIMATES_FROM,
        "target": target.name,
        "target_description": target.description,
        "platform": target.platform,
        "model": spec.name,
        "batch": batch,
        "rows": rows,
        "guidance": guidance,
        "seconds": float(seconds),
        "dtype": compute.name,
        "param_dtype": held.name,
        "num_devices": num_devices,
        "mesh": {k: int(v) for k, v in mesh_.shape.items()},
        "frames": shape["frames"],
        "steps": total_steps,
        "buffer_steps": shape["buffer_steps"],
        "cache_length": cache_len,
        "text_tokens": text_tokens,
        "hbm_bytes": int(target.hbm_bytes),
        "weight_bytes": weight_bytes,
        "kv_cache_bytes": kv_full,
        "kv_live_bytes_avg": kv_live,
        "cross_kv_bytes": cross_kv,
        "hbm_bandwidth": target.hbm_bandwidth,
        "peak_flops": target.peak_flops,
        "launch_seconds": target.launch_seconds,
        "compiler_options": options,
        "note": ESTIMATE_NOTE,
    }

    # the whole loop, as users run it
    try:
        try:
            loop_compiled, lower_s, compile_s = compile_loop(lm, options)
        except Exception as e:  # noqa: BLE001 - untuned Triton may fail to tile a GEMM: cuBLAS then
            if target.platform != "cuda" or compiler_options or _out_of_memory(str(e)) is not None:
                raise
            options = dict(GPU_FALLBACK_OPTIONS)
            report.update(compiler_options=options, triton_error=str(e).splitlines()[0][:300])
            loop_compiled, lower_s, compile_s = compile_loop(lm, options)
    except Exception as e:  # noqa: BLE001 - a program that does not fit is a result, not a failure
        needed = _out_of_memory(str(e))
        if needed is None:
            raise
        report.update({
            "est_fits": False,
            "est_peak_bytes_per_device": needed,
            "memory_source": "the compiler's out-of-memory error (its figure includes the arguments: it matches "
                             "arguments + temporaries of the same program on a larger chip)",
            "compile_error": str(e).splitlines()[0][:500],
        })
        return report
    memory = _memory(loop_compiled)
    loop_text = loop_compiled.as_text()
    if hlo_path:
        from musicgen_jax.files import atomic_write

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(loop_text)

        atomic_write(hlo_path, write)
    module = hlo.parse_hlo(loop_text)
    loop = hlo.decode_loop(module)
    kernels = hlo.loop_kernels(module, loop)
    hoisted = _hoisted_casts(module, loop, params, compute)

    # per-step cost: every kernel of one loop iteration (body + condition) analysed on its own
    kernel_list = hlo.kernel_costs(module, loop.body) + hlo.kernel_costs(module, loop.condition)
    step = hlo.summarize_kernels(kernel_list)
    native = hlo.native_cost(loop_compiled)  # TPU: its own count of the whole program (body once)

    # reference bytes per device: the weights a step reads (at the dtype the loop holds them in) + KV
    step_weights = _step_weight_bytes(params, compute, c, hoisted, rows)
    shard = max(1, num_devices)  # the model axes split weights and KV (approx. evenly)
    ref_full = (step_weights + kv_full + cross_kv) / shard
    ref_live = (step_weights + kv_live + cross_kv) / shard

    # length-aware pieces (generate.kv_pieces): bytes and flops per step are linear in the positions read
    pieces = _pieces(prefix, shape, cache_len, target.platform if length_aware else None)
    full_bytes, full_flops = step["hbm_bytes"], step["flops"]
    bound = min((kv for _, kv in pieces if kv is not None), default=None)
    if bound is not None:
        short, _, short_s = compile_loop(lm.clone(kv_length=bound), options)
        short_module = hlo.parse_hlo(short.as_text())
        short_loop = hlo.decode_loop(short_module)
        short_step = hlo.summarize_kernels(hlo.kernel_costs(short_module, short_loop.body)
                                           + hlo.kernel_costs(short_module, short_loop.condition))
        compile_s += short_s

        def at(kv, full, part):  # linear in the positions read, through (bound, part) and (cache_len, full)
            return part + (full - part) * ((cache_len if kv is None else kv) - bound) / (cache_len - bound)
    else:
        short_step = step

        def at(kv, full, part):
            return full
    counts = [n for n, _ in pieces]
    piece_bytes = [at(kv, full_bytes, short_step["hbm_bytes"]) for _, kv in pieces]
    piece_flops = [at(kv, full_flops, short_step["flops"]) for _, kv in pieces]
    total_count = sum(counts) or 1
    launch_s = kernels["total"] * target.launch_seconds
    piece_s = [max(b / target.hbm_bandwidth, f / target.peak_flops) + launch_s for b, f in zip(piece_bytes, piece_flops)]
    step = dict(step, hbm_bytes=sum(n * b for n, b in zip(counts, piece_bytes)) / total_count,
                flops=sum(n * f for n, f in zip(counts, piece_flops)) / total_count)
    memory_s = step["hbm_bytes"] / target.hbm_bandwidth
    compute_s = step["flops"] / target.peak_flops
    step_s = sum(n * t for n, t in zip(counts, piece_s)) / total_count
    report.update({
        "est_peak_bytes_per_device": memory["peak"],
        "memory_source": memory["source"],
        "memory_parts": memory["parts"],
        "est_fits": memory["peak"] <= target.hbm_bytes,
        "est_flops_per_step": step["flops"],
        "est_bytes_per_step": step["hbm_bytes"],
        "est_bytes_per_step_whole_buffer": full_bytes,
        "length_aware": {"pieces": [{"steps": n, "kv_length": kv} for n, kv in pieces],
                         "programs": len({kv for _, kv in pieces})} if length_aware else None,
        "xla_bytes_per_step": step["bytes_accessed"],
        "cost_source": COST_SOURCE[target.platform == "cuda"],
        "est_bytes_top_kernels": step["top_by_bytes"],
        "kernels_counted_plainly": step["approx"],
        "xla_native_cost_loop_program": native,
        "step_weight_bytes": step_weights,
        "weights_cast_hoisted": hoisted,
        "est_bytes_ratio_full_kv": step["hbm_bytes"] / ref_full if ref_full else None,
        "est_bytes_ratio_live_kv": step["hbm_bytes"] / ref_live if ref_live else None,
        "est_kernels_per_step": kernels["total"],
        "kernels_body": kernels["body"],
        "kernels_condition": kernels["condition"],
        "kernels_by_kind": kernels["by_kind"],
        "kernels_by_name": kernels["by_name"],
        "kernels_unknown_trip_counts": kernels["unknown_trip_counts"],
        "est_memory_ms_per_step": memory_s * 1e3,
        "est_compute_ms_per_step": compute_s * 1e3,
        "est_launch_ms_per_step": launch_s * 1e3,
        "est_ms_per_step": step_s * 1e3,
        "est_bound": "launch" if launch_s > max(memory_s, compute_s) else
                     ("memory" if memory_s >= compute_s else "compute"),
        "est_seconds": step_s * total_steps,
        "est_realtime_factor": float(seconds) / (step_s * total_steps) if step_s > 0 else None,
        "lower_seconds": lower_s,
        "compile_seconds": compile_s,
    })
    return report
