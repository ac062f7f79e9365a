"""Generation speed: musicgen-jax vs transformers' MusicgenForConditionalGeneration.generate, one run.

    python experiments/bench_generate.py --frames 100 500 1500 --batch 1 8

Both load the same random-weight checkpoint with a preset's real shapes (default musicgen-small:
T5-base, EnCodec 32 kHz, 1024-wide 24-layer decoder), decode greedily with classifier-free guidance
(cfg 3) for the same number of frames and prompts, and include text encoding and audio decoding.
Our first call compiles; then ours and theirs run --repeats times, alternating, and the best of each
is reported (compile time is printed separately).
On a CPU, a batch-1 step is memory-bound: the script also measures memory bandwidth and prints the
step-time floor `decoder weight bytes / bandwidth` beside the measured ms/step.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np

PROMPT = "lofi hip hop with a mellow piano"


def memory_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth (read + write bytes / s) of a large numpy array: a rough STREAM-like figure."""
    src = np.ones(size_mb * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="musicgen-small", help="preset whose shapes to use")
    parser.add_argument("--frames", type=int, nargs="+", default=[100],
                        help="frames to generate (50 per second; 500 = 10 s, 1500 = 30 s)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our compute dtype")
    parser.add_argument("--skip-torch", action="store_true", help="time ours only")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each, alternating; best reported")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    from musicgen_jax.config import preset
    from musicgen_jax.musicgen import MusicGen
    from musicgen_jax.testing import ENCODEC_32KHZ, T5_BASE, lm_reference_kwargs, save_reference_musicgen

    with tempfile.TemporaryDirectory() as tmp:  # the preset's real shapes: T5-base, EnCodec 32 kHz, its decoder
        reference = save_reference_musicgen(tmp, **lm_reference_kwargs(preset(args.model).lm), text=T5_BASE,
                                            codec=ENCODEC_32KHZ, widen=False, attention=None)  # sdpa
        ours = MusicGen.from_pretrained(tmp, dtype=jnp.dtype(args.dtype))
    lm = ours.config.lm
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(ours.lm_params))
    bandwidth = memory_bandwidth_gbs() if jax.default_backend() == "cpu" else None

    def time_ours(prompts):
        start = time.perf_counter()
        jax.block_until_ready(ours.generate(prompts, return_tokens=True, seed=0))
        return time.perf_counter() - start

    def time_torch(prompts, steps):
        ids = ours.tokenizer(prompts)
        with torch.inference_mode():
            start = time.perf_counter()
            reference.generate(input_ids=torch.from_numpy(np.asarray(ids.ids)).long(),
                               attention_mask=torch.from_numpy(np.asarray(ids.mask)).long(),
                               do_sample=False, guidance_scale=3.0, max_new_tokens=steps)
            return time.perf_counter() - start

    device = jax.devices()[0].device_kind
    print(f"{args.model} shapes, greedy, cfg 3, {jax.default_backend()} ({device}), ours in {args.dtype}")
    print(f"decoder weights: {weight_bytes / 1e9:.2f} GB"
          + (f"; memory bandwidth {bandwidth:.1f} GB/s -> floor {1e3 * weight_bytes / (bandwidth * 1e9):.0f} ms/step"
             if bandwidth else ""), flush=True)
    rows = []
    for frames, batch in ((f, b) for f in args.frames for b in args.batch):
        steps = frames + max(lm.delays)  # model calls after the first: T + K - 1 in all
        ours.set_generation_params(duration=frames / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
        prompts = [PROMPT] * batch
        first = time_ours(prompts)
        ours_times, torch_times = [], []
        for _ in range(args.repeats):  # alternate, so that a slow spell of a shared machine hits both
            ours_times.append(time_ours(prompts))
            if not args.skip_torch:
                torch_times.append(time_torch(prompts, steps))
        t_ours = min(ours_times)
        row = {"batch": batch, "frames": frames, "jax_s": t_ours, "jax_ms_per_step": 1e3 * t_ours / (steps + 1),
               "jax_compile_s": first - t_ours, "jax_all_s": ours_times}
        if torch_times:
            t_torch = min(torch_times)
            row.update(torch_s=t_torch, torch_ms_per_step=1e3 * t_torch / (steps + 1), speedup=t_torch / t_ours,
                       torch_all_s=torch_times)
        rows.append(row)
        print(describe(row, ours.frame_rate), flush=True)  # each row as it finishes: a 30 s batch-8 run is long
        if args.json:
            save_json(args.json, {"model": args.model, "device": device, "backend": jax.default_backend(),
                                  "dtype": args.dtype, "weight_bytes": weight_bytes, "bandwidth_gbs": bandwidth,
                                  "rows": rows})
    return 0


def describe(row: dict, frame_rate: float) -> str:
    line = (f"  {row['frames']} frames ({row['frames'] / frame_rate:g} s), batch {row['batch']}: ours {row['jax_s']:.2f} s "
            f"({row['jax_ms_per_step']:.1f} ms/step, compile {row['jax_compile_s']:.1f} s)")
    if "torch_s" in row:
        line += (f" | transformers {row['torch_s']:.2f} s ({row['torch_ms_per_step']:.1f} ms/step)"
                 f" | {row['speedup']:.2f}x")
    return line


def save_json(path: str, results: dict) -> None:
    """Written whole each time, atomically, so an interrupted run leaves the rows so far."""
    from musicgen_jax.files import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)

    atomic_write(path, write)


if __name__ == "__main__":
    sys.exit(main())
