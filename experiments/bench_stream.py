"""Streaming vs one-shot generation: time to first audio and total time.

    python experiments/bench_stream.py --seconds 10 30

A random-weight checkpoint with a preset's real shapes (default musicgen-small: T5-base, EnCodec 32 kHz,
1024-wide 24-layer decoder; built with transformers, nothing downloaded) generates the same prompt with the
same seed both ways, default sampling settings (top-k 250, CFG 3), batch 1:
  * one-shot: `MusicGen.generate`; its first audio is its whole result;
  * stream: `MusicGen.generate_stream(chunk_seconds=...)`; first audio = the first chunk.
Each duration is compiled first (a stream closed after its first chunk and a one-shot codec decode of
that length), then timed once each way. The script also checks that the stream decoded the one-shot
call's tokens and prints the SNR of the joined stream against the one-shot audio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np

PROMPT = "lofi hip hop with a mellow piano"


def build_model(preset_name: str = "musicgen-small"):
    """A MusicGen with the preset's real shapes and random weights (via a saved transformers checkpoint)."""
    from musicgen_jax.config import preset
    from musicgen_jax.musicgen import MusicGen
    from musicgen_jax.testing import ENCODEC_32KHZ, T5_BASE, lm_reference_kwargs, save_reference_musicgen

    with tempfile.TemporaryDirectory() as tmp:
        save_reference_musicgen(tmp, **lm_reference_kwargs(preset(preset_name).lm), text=T5_BASE,
                                codec=ENCODEC_32KHZ, widen=False, attention=None)
        return MusicGen.from_pretrained(tmp)


def compile_for(mg, prompts: list[str], chunk_seconds: float) -> float:
    """Compile what a generation of the current duration runs (both ways); -> seconds spent."""
    import jax

    start = time.perf_counter()
    stream = mg.generate_stream(prompts, chunk_seconds=chunk_seconds, seed=0)
    next(stream)  # prefill and loop programs, the stream's codec programs
    stream.close()
    frames = int(mg.duration * mg.frame_rate)
    jax.block_until_ready(mg.compression_model.decode(np.zeros((len(prompts), mg.config.lm.num_codebooks, frames),
                                                               np.int32)))
    return time.perf_counter() - start


def time_one_shot(mg, prompts: list[str], seed: int = 0) -> dict:
    start = time.perf_counter()
    wav, tokens = mg.generate(prompts, return_tokens=True, seed=seed)
    wav = np.asarray(wav)
    total = time.perf_counter() - start
    return {"first_audio_s": total, "total_s": total, "wav": wav, "tokens": np.asarray(tokens)}


def time_stream(mg, prompts: list[str], chunk_seconds: float, seed: int = 0) -> dict:
    """Times `generate_stream`; the tokens it decoded come back from its stream decoder."""
    codec = mg.compression_model
    decoders = []
    make = codec.stream_decoder
    codec.stream_decoder = lambda *args, **kwargs: decoders.append(make(*args, **kwargs)) or decoders[-1]
    try:
        start = time.perf_counter()
        chunks, arrivals = [], []
        for chunk in mg.generate_stream(prompts, chunk_seconds=chunk_seconds, seed=seed):
            arrivals.append(time.perf_counter() - start)
            chunks.append(chunk)
    finally:
        del codec.stream_decoder  # back to the class's method
    return {"first_audio_s": arrivals[0], "total_s": arrivals[-1], "chunks": len(chunks),
            "wav": np.concatenate(chunks, axis=-1), "tokens": decoders[0].codes}


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise))


def run(mg, seconds: float, chunk_seconds: float, batch: int = 1) -> dict:
    prompts = [PROMPT] * batch
    mg.set_generation_params(duration=seconds)
    compile_s = compile_for(mg, prompts, chunk_seconds)
    one_shot = time_one_shot(mg, prompts)
    stream = time_stream(mg, prompts, chunk_seconds)
    return {"seconds": seconds, "chunk_seconds": chunk_seconds, "batch": batch, "compile_s": compile_s,
            "one_shot_total_s": one_shot["total_s"], "stream_first_audio_s": stream["first_audio_s"],
            "stream_total_s": stream["total_s"], "chunks": stream["chunks"],
            "tokens_identical": bool(np.array_equal(one_shot["tokens"], stream["tokens"])),
            "same_length": one_shot["wav"].shape == stream["wav"].shape,
            "snr_db": snr_db(one_shot["wav"], stream["wav"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="musicgen-small", help="preset whose shapes to use")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0], help="durations to generate")
    parser.add_argument("--chunk-seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import jax

    mg = build_model(args.model)
    rows = [run(mg, s, args.chunk_seconds, args.batch) for s in args.seconds]
    device = jax.devices()[0].device_kind
    print(f"{args.model} shapes, random weights, sampling (top-k 250, cfg 3), batch {args.batch}, "
          f"chunks of {args.chunk_seconds:g} s, {jax.default_backend()} ({device})")
    print("| audio | one-shot: first audio = total | stream: first audio | stream: total | chunks | tokens | SNR |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seconds']:g} s | {r['one_shot_total_s']:.1f} s | {r['stream_first_audio_s']:.1f} s | "
              f"{r['stream_total_s']:.1f} s | {r['chunks']} | {'identical' if r['tokens_identical'] else 'DIFFER'} | "
              f"{r['snr_db']:.0f} dB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": device, "backend": jax.default_backend(), "rows": rows}, f,
                      indent=2)
    return 0 if all(r["tokens_identical"] and r["same_length"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
