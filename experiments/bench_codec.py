"""EnCodec encode+decode throughput: musicgen-jax vs transformers' EncodecModel, same input, one run.

    python experiments/bench_codec.py --seconds 10 --batch 1 --repeats 3

Random weights at the real facebook/encodec_32khz shapes (speed does not depend on the values).
Prints seconds of audio processed per second of wall time for both and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (jit compile / allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per item")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import jax
    import torch
    from transformers import EncodecConfig, EncodecModel

    from musicgen_jax.codec import CompressionModel
    from musicgen_jax.testing import ENCODEC_32KHZ

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EncodecConfig(**ENCODEC_32KHZ)
    torch.manual_seed(0)
    reference = EncodecModel(config).eval()
    with torch.no_grad():
        for layer in reference.quantizer.layers:
            layer.codebook.embed.normal_()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = CompressionModel.from_pretrained(tmp)

    samples = int(args.seconds * 32000)
    wav = (np.random.default_rng(0).standard_normal((args.batch, 1, samples)) * 0.3).astype(np.float32)
    wav_t = torch.from_numpy(wav)

    def run_torch():
        with torch.inference_mode():
            codes = reference.encode(wav_t).audio_codes
            return reference.decode(codes, [None]).audio_values

    def run_jax():
        return jax.block_until_ready(ours.decode(ours.encode(wav)))

    t_torch = timeit(run_torch, args.repeats)
    t_jax = timeit(run_jax, args.repeats)
    audio = args.seconds * args.batch
    result = {
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "batch": args.batch,
        "seconds_per_item": args.seconds, "torch_s": t_torch, "jax_s": t_jax,
        "torch_audio_s_per_s": audio / t_torch, "jax_audio_s_per_s": audio / t_jax, "speedup": t_torch / t_jax,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }
    print(f"encode+decode of {args.batch} x {args.seconds:g} s on {result['backend']} ({result['device']}):")
    print(f"  transformers: {t_torch:.3f} s  ({result['torch_audio_s_per_s']:.1f} s audio / s)")
    print(f"  musicgen-jax: {t_jax:.3f} s  ({result['jax_audio_s_per_s']:.1f} s audio / s)")
    print(f"  speedup: {result['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
