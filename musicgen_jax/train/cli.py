"""The training commands of `musicgen-jax` (their arguments are defined in musicgen_jax/cli.py, which
imports this module only when one of them runs):

    musicgen-jax prepare AUDIO_DIR OUT_DIR [--codec facebook/encodec_32khz] [--segment-seconds 30] ...
    musicgen-jax train --config configs/train/small.yaml [section.key=value ...]
    musicgen-jax export CHECKPOINT_DIR OUT_DIR [--base facebook/musicgen-small] [--no-ema] [--adapter-only]

While one runs, the library's INFO messages ("resumed from step N", skipped files) go to stderr: a
handler on the `musicgen_jax` logger, since jax / absl configure the root logger before us (so that
`logging.basicConfig` would do nothing).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import sys


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes (captured output, tqdm)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


@contextlib.contextmanager
def _messages_shown():
    """musicgen_jax's INFO and above on stderr during a command; the logger is restored after."""
    logger = logging.getLogger("musicgen_jax")
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger's handlers would print them a second time
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _command(fn):
    @functools.wraps(fn)
    def run(args) -> int:
        with _messages_shown():
            return fn(args)

    return run


def _load_codec(name: str, channels: int | None):
    from musicgen_jax.codec import CompressionModel

    return CompressionModel.from_pretrained(name, audio_channels=channels)


@_command
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


@_command
def train_command(args) -> int:
    from musicgen_jax.train.config import load_config
    from musicgen_jax.train.loop import TrainingDiverged, train

    cfg = load_config(args.config, args.overrides)
    try:
        history = train(cfg)
    except TrainingDiverged as e:
        print(f"musicgen-jax: error: {e}", file=sys.stderr)
        return 1
    if history:
        last = history[-1]
        print(f"step {int(last['step'])}: loss {last['loss']:.4f}")
    return 0


@_command
def export_command(args) -> int:
    from musicgen_jax.train.export import export_checkpoint

    adapter_only = getattr(args, "adapter_only", False)
    out = export_checkpoint(args.checkpoint_dir, args.out_dir, base=args.base, use_ema=not args.no_ema,
                            adapter_only=adapter_only)
    how = "MusicGen.from_pretrained(BASE, adapters=...) or transformers + peft" if adapter_only else \
        "MusicGen.from_pretrained"
    print(f"{args.checkpoint_dir} -> {out} (load it with {how})")
    return 0
