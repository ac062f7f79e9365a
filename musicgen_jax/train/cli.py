"""The training commands of `musicgen-jax` (their arguments are defined in musicgen_jax/cli.py, which
imports this module only when one of them runs):

    musicgen-jax prepare AUDIO_DIR OUT_DIR [--codec facebook/encodec_32khz] [--segment-seconds 30] ...
    musicgen-jax train --config configs/train/small.yaml [section.key=value ...]
    musicgen-jax export CHECKPOINT_DIR OUT_DIR [--base facebook/musicgen-small] [--no-ema]
"""
from __future__ import annotations

import logging


def _load_codec(name: str, channels: int | None):
    from musicgen_jax.codec import CompressionModel

    return CompressionModel.from_pretrained(name, audio_channels=channels)


def prepare_command(args) -> int:
    from musicgen_jax.train.prepare import PrepareOptions, prepare

    codec = _load_codec(args.codec, args.channels)
    opts = PrepareOptions(segment_seconds=args.segment_seconds, min_segment_ratio=args.min_segment_ratio,
                          encode_batch=args.batch_size, records_per_shard=args.records_per_shard,
                          min_sample_rate=args.min_sample_rate, chroma=args.chroma, progress=not args.quiet)
    report = prepare(args.audio_dir, args.out_dir, codec, opts, codec_name=args.codec)
    print(f"{args.out_dir}: {report.files} file(s), {report.segments} segment(s); "
          f"{len(report.skipped)} skipped, {report.silent_segments} silent segment(s) dropped")
    for entry in report.skipped:
        print(f"  skipped {entry['path']}: {entry['reason']}")
    return 0


def train_command(args) -> int:
    from musicgen_jax.train.config import load_config
    from musicgen_jax.train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    history = train(cfg)
    if history:
        last = history[-1]
        print(f"step {int(last['step'])}: loss {last['loss']:.4f}")
    return 0


def export_command(args) -> int:
    from musicgen_jax.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint_dir, args.out_dir, base=args.base, use_ema=not args.no_ema)
    print(f"{args.checkpoint_dir} -> {out} (load it with MusicGen.from_pretrained)")
    return 0
