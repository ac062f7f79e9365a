"""Ahead-of-time cost report: compile decode (and training) for GPUs / TPUs that are not here.

    python experiments/aot_report.py --target h100 h200 v5e v5p --model musicgen-small musicgen-medium \
        --batch 1 32 --seconds 30 [--devices N] [--json out.json]
    python experiments/aot_report.py --target h100 --model musicgen-small \
        --recipe configs/train/small.yaml --train-target h100 --train-devices 8 --json aot.json

Decode: for every target x model x batch, the decode loop (`generate.decode_steps`, as `MusicGen.generate`
runs it) is compiled for --devices devices of the target and reported: est. peak memory per device (fits?),
FLOPs and bytes per step (and their ratio to the weights read + KV cache), kernels per step, est. ms/step
and seconds for the duration (musicgen_jax/aot/decode.py). Training: each --recipe's train step for
--train-devices devices of each --train-target (musicgen_jax/aot/train.py).

Needs the [aot] extra (libtpu; jax-cuda12-plugin and -pjrt, no NVIDIA libraries needed). Every figure is an
estimate from a compiled program, not a measurement. A report that fails to compile is printed as FAILED
and saved as such; the others still run (exit status 1 if any failed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicgen_jax.aot.targets import prepare_jax  # noqa: E402  (no jax import before prepare_jax)

prepare_jax()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", nargs="*", default=["h100"], help="decode targets: h100 h200 a100 v4 v5e v5p v6e")
    parser.add_argument("--model", nargs="*", default=["musicgen-small"], help="presets to decode")
    parser.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes (prompts; CFG doubles rows)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio duration (at most the 30 s window)")
    parser.add_argument("--devices", type=int, default=1, help="devices per decode report (tensor parallel)")
    parser.add_argument("--mesh", default=None, help="decode mesh over --devices, e.g. data=2,tensor=2")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
    parser.add_argument("--param-dtype", default=None, help="dtype the matmul weights are held in (default: the "
                        "compute dtype, as MusicGen.from_pretrained holds them; float32 is a what-if)")
    parser.add_argument("--whole-buffer", action="store_true",
                        help="every step reads the whole cache buffer (no length-aware pieces)")
    parser.add_argument("--no-guidance", action="store_true", help="without classifier-free guidance")
    parser.add_argument("--xla-option", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra XLA compiler options for the decode compiles, e.g. "
                             "xla_gpu_enable_triton_gemm=true xla_gpu_autotune_level=0 (Triton GEMMs, untuned)")
    parser.add_argument("--recipe", nargs="*", default=[], help="training recipes (configs/train/*.yaml)")
    parser.add_argument("--train-target", nargs="*", default=None, help="train targets (default: --target)")
    parser.add_argument("--train-devices", type=int, default=8, help="devices per train report")
    parser.add_argument("--override", nargs="*", default=[], help="recipe overrides, section.key=value")
    parser.add_argument("--json", default=None, help="save every report here (JSON list, written atomically)")
    parser.add_argument("--hlo-dir", default=None, help="save each decode loop's optimized HLO text here")
    parser.add_argument("--table", action="store_true", help="also print the decode reports as a markdown table")
    args = parser.parse_args(argv)

    from musicgen_jax.aot import report_decode, report_train
    from musicgen_jax.aot.report import decode_table, format_report, write_json
    from musicgen_jax.aot.targets import get_target

    for name in list(args.target) + list(args.train_target or []):
        try:
            get_target(name)  # unknown names fail here, before any compile
        except ValueError as e:
            parser.error(str(e))
    options = {}
    for item in args.xla_option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--xla-option {item!r}: expected KEY=VALUE")
        low = value.lower()
        options[key] = True if low == "true" else False if low == "false" else int(value) if value.isdigit() else value

    reports = []
    failed = 0

    def run(what: str, fn):
        nonlocal failed
        start = time.perf_counter()
        try:
            report = fn()
        except Exception as e:  # noqa: BLE001 - report it, go on with the others
            failed += 1
            report = {"kind": "error", "what": what, "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        report["wall_seconds"] = time.perf_counter() - start
        reports.append(report)
        print(format_report(report), flush=True)
        print(flush=True)
        if args.json:  # after every report: a long run keeps what it has
            write_json(args.json, reports)

    for model in args.model:
        for target in args.target:
            for batch in args.batch:
                hlo_path = None
                if args.hlo_dir:
                    hlo_path = os.path.join(args.hlo_dir, f"decode-{model}-{target}x{args.devices}-b{batch}.hlo.txt")
                run(f"decode {model} on {args.devices} x {target}, batch {batch}",
                    lambda m=model, t=target, b=batch, h=hlo_path: report_decode(
                        m, t, batch=b, seconds=args.seconds, dtype=args.dtype, num_devices=args.devices,
                        guidance=not args.no_guidance, mesh=args.mesh, hlo_path=h, param_dtype=args.param_dtype,
                        length_aware=not args.whole_buffer,
                        compiler_options=options or None))
    for recipe in args.recipe:
        for target in (args.train_target or args.target):
            run(f"train {recipe} on {args.train_devices} x {target}",
                lambda r=recipe, t=target: report_train(r, t, args.train_devices, overrides=args.override))

    if args.table:
        print(decode_table(reports))
    if args.json:
        print(f"saved {len(reports)} report(s) to {write_json(args.json, reports)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
