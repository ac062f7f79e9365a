"""Command-line entry points of the training package, added to `musicgen-jax` by the main CLI:

    musicgen-jax prepare AUDIO_DIR OUT_DIR [--codec facebook/encodec_32khz] [--segment-seconds 30] ...
    musicgen-jax train --config configs/train/small.yaml [section.key=value ...]
    musicgen-jax export CHECKPOINT_DIR OUT_DIR [--base facebook/musicgen-small] [--no-ema]

Wiring (musicgen_jax/cli.py): `from musicgen_jax.train.cli import add_train_commands` and
`add_train_commands(commands)` after the other sub-parsers. Each command sets `func(args) -> int`.
"""
from __future__ import annotations

import argparse
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


def add_train_commands(subparsers) -> None:
    """Add `prepare`, `train` and `export` to an argparse sub-parser collection."""
    prep = subparsers.add_parser("prepare", help="audio + captions -> EnCodec code shards for training")
    prep.add_argument("audio_dir", metavar="AUDIO_DIR",
                      help="audiocraft layout (*.jsonl manifest + sidecar .json) or audio files with .txt captions")
    prep.add_argument("out_dir", metavar="OUT_DIR")
    prep.add_argument("--codec", default="facebook/encodec_32khz",
                      help="EnCodec checkpoint, or a MusicGen checkpoint whose codec to use")
    prep.add_argument("--channels", type=int, default=None, help="2 for stereo models (default: the codec's)")
    prep.add_argument("--segment-seconds", type=float, default=30.0)
    prep.add_argument("--min-segment-ratio", type=float, default=0.8,
                      help="keep a last partial segment holding at least this share of a segment")
    prep.add_argument("--batch-size", type=int, default=8, help="segments per EnCodec call")
    prep.add_argument("--records-per-shard", type=int, default=1024)
    prep.add_argument("--min-sample-rate", type=int, default=16000)
    prep.add_argument("--chroma", action="store_true", help="store chroma for melody models")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=prepare_command)

    train = subparsers.add_parser("train", help="train or fine-tune the MusicGen LM (resumes automatically)")
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/train/small.yaml")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    train.set_defaults(func=train_command)

    export = subparsers.add_parser("export", help="training checkpoint -> transformers-layout MusicGen directory")
    export.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR")
    export.add_argument("out_dir", metavar="OUT_DIR")
    export.add_argument("--base", default=None,
                        help="transformers MusicGen checkpoint providing text encoder and codec "
                             "(default: the run's init_from / checkpoint.export_base)")
    export.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    export.set_defaults(func=export_command)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m musicgen_jax.train.cli ...`) until the main CLI is wired."""
    import sys

    parser = argparse.ArgumentParser(prog="musicgen-jax")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"musicgen-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
