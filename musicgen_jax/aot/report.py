"""Ahead-of-time reports as text and JSON.

    print(format_report(report))              # a decode or a train report (its "kind")
    write_json("aot.json", [report, ...])     # atomic: a reader never sees half a file
    reports = read_json("aot.json")

Every figure in a report is an estimate from a program compiled for a device that was not present;
the text says so on every report.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence


def _gb(x: float) -> str:
    """Bytes in GB, or MB / kB when small (tiny test models)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale or unit == "kB":
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def _num(x: float | None, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def _breakdown(counts: dict[str, int], limit: int = 8) -> str:
    items = list(counts.items())
    shown = ", ".join(f"{k} {v}" for k, v in items[:limit])
    rest = sum(v for _, v in items[limit:])
    return shown + (f", other {rest}" if rest else "")


def format_decode(r: dict[str, Any]) -> str:
    """A decode report (aot.decode.report_decode) as text."""
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "one device"
    fits = "fits" if r["est_fits"] else "DOES NOT FIT"
    head = [
        f"decode: {r['model']} on {r['num_devices']} x {r['target']} ({r['target_description']}), mesh {mesh}",
        f"  batch {r['batch']} ({r['rows']} rows{' with CFG' if r['guidance'] else ''}), {r['seconds']:g} s = "
        f"{r['frames']} frames, {r['steps']} steps, cache {r['cache_length']} positions, {r['dtype']} compute "
        f"({r['param_dtype']} params)",
    ]
    if "compile_error" in r:  # the compiler refused: out of device memory
        return "\n".join(head + [
            f"  est. peak memory per device {_gb(r['est_peak_bytes_per_device'])} of {_gb(r['hbm_bytes'])}: "
            f"{fits} ({r['memory_source']}): weights {_gb(r['weight_bytes'])}, KV cache {_gb(r['kv_cache_bytes'])}",
            f"  compiler: {r['compile_error']}",
            f"  (estimates from: {r['estimates_from']}; {r['note']})",
        ])
    launch = (f" + launches {r['est_launch_ms_per_step']:.3f} ms ({r['est_kernels_per_step']} x "
              f"{r['launch_seconds'] * 1e6:.1f} us)") if r["launch_seconds"] else ""
    kernel_word = "kernels" if r["platform"] == "cuda" else "top-level ops (one TPU program; not launches)"
    lines = head + [
        f"  est. peak memory per device {_gb(r['est_peak_bytes_per_device'])} of {_gb(r['hbm_bytes'])}: {fits}",
        f"  est. per step: {_num(r['est_flops_per_step'])} FLOPs, {_gb(r['est_bytes_per_step'])} accessed = "
        f"{_num(r['est_bytes_ratio_full_kv'], '.2f')}x (weights read {_gb(r['step_weight_bytes'])} + KV "
        f"{_gb(r['kv_cache_bytes'])} + cross K/V {_gb(r['cross_kv_bytes'])}), "
        f"{_num(r['est_bytes_ratio_live_kv'], '.2f')}x with the live KV ({_gb(r['kv_live_bytes_avg'])} on average)"
        + ("; XLA hoisted the weights' bf16 cast out of the loop" if r["weights_cast_hoisted"]
           and r["param_dtype"] == "float32" else ""),
        *([f"  length-aware: {len(r['length_aware']['pieces'])} pieces in {r['length_aware']['programs']} programs "
           f"(positions read: {', '.join(str(p['kv_length'] or r['cache_length']) for p in r['length_aware']['pieces'])}); "
           f"est. {_gb(r['est_bytes_per_step_whole_buffer'])} per step reading the whole buffer"]
          if r.get("length_aware") else []),
        f"  est. {kernel_word} per step: {r['est_kernels_per_step']} ({_breakdown(r['kernels_by_kind'])})",
        f"    by name: {_breakdown(r.get('kernels_by_name', {}))}",
        "    most bytes: " + ", ".join(f"{k} x{v['count']} {_gb(v['hbm_bytes'])}"
                                      for k, v in list(r.get("est_bytes_top_kernels", {}).items())[:6]),
        f"  est. {r['est_ms_per_step']:.3f} ms/step ({r['est_bound']}-bound: HBM {r['est_memory_ms_per_step']:.3f} ms,"
        f" compute {r['est_compute_ms_per_step']:.3f} ms{launch}) -> est. {r['est_seconds']:.2f} s for "
        f"{r['seconds']:g} s of audio ({_num(r['est_realtime_factor'], '.1f')}x real time)",
        f"  compiled in {r['compile_seconds']:.1f} s (+ lowering {r['lower_seconds']:.1f} s"
        + (f", + {r['step_compile_seconds']:.1f} s for the step's cost" if r.get("step_compile_seconds") else "")
        + f"); weights {_gb(r['weight_bytes'])} as held",
        f"  (estimates from: {r['estimates_from']}; {r['note']})",
    ]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """One report (decode or train) as text lines; every figure labelled an estimate."""
    kind = report.get("kind")
    if kind == "train":
        from musicgen_jax.aot.train import format_train

        return format_train(report)
    if kind == "decode":
        return format_decode(report)
    if kind == "error":
        return f"{report.get('what', 'report')}: FAILED: {report.get('error')}"
    raise ValueError(f"not an aot report (kind {kind!r})")


def decode_table(reports: Sequence[dict[str, Any]]) -> str:
    """Decode reports as one markdown table (est. figures)."""
    head = ("| model | target | batch | est. peak GB/device (fits) | est. GB/step (x weights+KV) | "
            "est. kernels/step | est. ms/step (bound) | est. s for the duration | compile s |")
    rows = [head, "|" + "---|" * 9]
    for r in reports:
        if r.get("kind") != "decode":
            continue
        devices = f"{r['num_devices']} x {r['target']}" if r["num_devices"] > 1 else r["target"]
        if "compile_error" in r:
            rows.append(f"| {r['model']} | {devices} | {r['batch']} | {r['est_peak_bytes_per_device'] / 1e9:.1f} "
                        f"(NO: out of memory) | - | - | - | - | - |")
            continue
        rows.append(
            f"| {r['model']} | {devices} | {r['batch']} | {r['est_peak_bytes_per_device'] / 1e9:.2f} "
            f"({'yes' if r['est_fits'] else 'NO'}) | {r['est_bytes_per_step'] / 1e9:.2f} "
            f"({_num(r['est_bytes_ratio_full_kv'], '.2f')}x) | {r['est_kernels_per_step']} | "
            f"{r['est_ms_per_step']:.2f} ({r['est_bound']}) | {r['est_seconds']:.1f} ({r['seconds']:g} s) | "
            f"{r['compile_seconds']:.0f} |")
    return "\n".join(rows)


def _plain(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python numbers, non-finite floats to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, reports: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """Write one report or a list of them as JSON, atomically. Returns the absolute path."""
    from musicgen_jax.files import atomic_write

    payload = _plain(reports)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")

    return atomic_write(path, write, suffix=".json")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
