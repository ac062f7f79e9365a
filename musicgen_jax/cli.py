"""`musicgen-jax` command line: generate | prepare | train | export | evaluate | app | codec encode/decode/roundtrip.

Every command's arguments are defined here; the training commands' handlers are imported from
train/cli.py only when they run. `python -m musicgen_jax.cli ...` works like `musicgen-jax ...`.

Errors a user can fix (a bad argument, a missing or unwritable file, a setting out of range) end as one
`musicgen-jax: error: ...` line on stderr and exit code 2, like argparse's own usage errors; outputs are
checked (files.check_destination) before a model is loaded."""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from musicgen_jax.config import MAX_SEED, check_number, number_requirement
from musicgen_jax.evaluation.cli import add_evaluate_command

DEFAULT_CODEC = "facebook/encodec_32khz"
USER_ERRORS = (ValueError, TypeError, OSError)  # OSError: FileNotFoundError, PermissionError, ...


def number_arg(low: float = -math.inf, high: float = math.inf, *, strict: bool = False, integer: bool = False):
    """An argparse type: the text as an int/float within bounds (config.check_number), else a usage
    error that says what is wanted, e.g. `argument --batch-size: must be an integer >= 1, got '0'`."""
    wanted = number_requirement(low, high, strict=strict, integer=integer)

    def parse(text: str):
        try:
            return check_number("value", int(text) if integer else float(text), low, high, strict=strict,
                                integer=integer)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None

    return parse


POSITIVE_INT = number_arg(1, integer=True)
POSITIVE = number_arg(0, strict=True)  # a finite number > 0


def _load_codec(name: str):
    from musicgen_jax.codec import CompressionModel

    return CompressionModel.from_pretrained(name)


def _codec_paths(args) -> str:
    """Before the codec loads: the input must exist, the output be writable. -> the output's absolute path."""
    from musicgen_jax.files import check_destination

    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"input file not found: {args.input}")
    return check_destination(args.output)


def _read_for_codec(codec, path: str) -> np.ndarray:
    from musicgen_jax.audio import read_audio

    wav, _ = read_audio(path, sample_rate=codec.sample_rate, channels=codec.channels)
    return wav[None]  # [1, C, N]


def codec_encode(args) -> int:
    from musicgen_jax.audio import save_npy

    output = _codec_paths(args)
    codec = _load_codec(args.model)
    codes = np.asarray(codec.encode(_read_for_codec(codec, args.input)))
    save_npy(output, codes)
    print(f"{args.input} -> {output}: codes {codes.shape} at {codec.frame_rate:g} Hz")
    return 0


def codec_decode(args) -> int:
    from musicgen_jax.audio import write_wav

    output = _codec_paths(args)
    codec = _load_codec(args.model)
    codes = np.load(args.input)
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"{args.input} is not a single array (an .npz archive?): save codes with np.save")
    if codes.ndim == 2:
        codes = codes[None]
    wav = np.asarray(codec.decode(codes))[0]
    write_wav(output, wav, codec.sample_rate)
    print(f"{args.input} -> {output}: {wav.shape[-1] / codec.sample_rate:.2f} s at {codec.sample_rate} Hz")
    return 0


def codec_roundtrip(args) -> int:
    from musicgen_jax.audio import write_wav

    output = _codec_paths(args)
    codec = _load_codec(args.model)
    wav = _read_for_codec(codec, args.input)
    out = np.asarray(codec.decode(codec.encode(wav)))[0, :, : wav.shape[-1]]
    write_wav(output, out, codec.sample_rate)
    print(f"{args.input} -> {output}: {out.shape[-1] / codec.sample_rate:.2f} s through the codec")
    return 0


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.prompts_file} is not UTF-8 text ({e})") from None
    if not prompts:
        raise ValueError("no prompt given: pass PROMPT arguments or --prompts-file FILE")
    return prompts


def _output_paths(out: str, count: int) -> list[str]:
    if count == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext or '.wav'}" for i in range(count)]


def _settings(args) -> dict:
    """The generation settings given on the command line (set_generation_params names)."""
    given = dict(duration=args.duration, duration_limit=args.duration_limit, top_k=args.top_k, top_p=args.top_p,
                 use_sampling=False if args.greedy else None, temperature=args.temperature,
                 cfg_coef=args.cfg_coef, extend_stride=args.extend_stride)
    return {k: v for k, v in given.items() if v is not None}


def _stream_batch(model, batch: list[str], melody, seed, paths: list[str], progress, chunk_seconds: float
                  ) -> np.ndarray:
    """--stream: each wav of the batch written as its audio comes (audio.WavStream: a valid file at every
    moment, at the end the file the one-shot path writes); prints the time to first audio. -> [B, C, N]."""
    import contextlib
    import time

    from musicgen_jax.audio import WavStream

    melody_args = {} if melody is None else dict(melody_wavs=[melody[0]] * len(batch), melody_sample_rate=melody[1])
    started = time.perf_counter()
    chunks = []
    with contextlib.ExitStack() as files:
        outs = [files.enter_context(WavStream(path, model.sample_rate, model.audio_channels)) for path in paths]
        for chunk in model.generate_stream(batch, seed=seed, chunk_seconds=chunk_seconds, **melody_args):
            if not chunks:
                progress.write(f"first audio after {time.perf_counter() - started:.2f} s")
            for out, item in zip(outs, chunk):
                out.write(item)
            chunks.append(chunk)
    return np.concatenate(chunks, axis=-1)


def generate(args) -> int:
    """Prompts in batches of --batch-size, one progress bar over all of them. Everything that can be
    checked without the model (settings, prompts, melody file, every output path) is checked first."""
    from musicgen_jax.audio import write_wav
    from musicgen_jax.config import GenerationParams
    from musicgen_jax.files import check_destination
    from musicgen_jax.musicgen import MusicGen
    from musicgen_jax.sampler import Progress

    prompts = _read_prompts(args)
    settings = _settings(args)
    GenerationParams().with_changes(**settings)  # ranges and the duration limit, before the model loads
    paths = [check_destination(p) for p in _output_paths(args.out, len(prompts))]
    melody = None
    if args.melody:
        from musicgen_jax.audio import read_audio

        melody = read_audio(args.melody)  # (wav [C, N], rate): resampled and mixed by the model
    mesh = None
    if args.mesh:
        from musicgen_jax.sharding import parse_mesh

        mesh = parse_mesh(args.mesh)
    model = MusicGen.from_pretrained(args.model, mesh=mesh, adapters=args.adapters)
    model.set_generation_params(**settings)
    starts = range(0, len(prompts), args.batch_size)
    frames = int(model.duration * model.frame_rate)  # per batch
    progress = Progress(len(starts) * frames, bar=not args.quiet,
                        desc=f"{len(prompts)} prompt(s) in {len(starts)} batch(es)")
    for index, start in enumerate(starts):
        batch = prompts[start:start + args.batch_size]
        model.set_custom_progress_callback(lambda done, _, base=index * frames: progress.report(base + done))
        seed = None if args.seed is None else (args.seed + start) % (MAX_SEED + 1)
        if args.stream:
            wav = _stream_batch(model, batch, melody, seed, paths[start:start + len(batch)], progress,
                                args.chunk_seconds)
        elif melody is not None:
            wav = model.generate_with_chroma(batch, [melody[0]] * len(batch), melody[1], seed=seed)
        else:
            wav = model.generate(batch, seed=seed)
        wav = np.asarray(wav)  # [B, C, N]
        for i, item in enumerate(wav):
            path = paths[start + i] if args.stream else write_wav(paths[start + i], item, model.sample_rate)
            progress.write(f"{path}: {item.shape[-1] / model.sample_rate:.2f} s, {item.shape[0]} channel(s)  <- "
                           f"{batch[i]!r}")
    progress.close()
    return 0


def run_app(args) -> int:
    """`app`: the web app (musicgen_jax/app, gradio), imported only when it runs."""
    from musicgen_jax.app import serve

    return serve(model=args.model, host=args.host, port=args.port, share=args.share, max_duration=args.max_duration,
                 queue_size=args.queue_size)


def _add_app_command(subparsers) -> None:
    app = subparsers.add_parser("app", help="the web app: generate in the browser, audio streamed as it comes "
                                            "(needs the [app] extra)")
    app.add_argument("--model", default="facebook/musicgen-small",
                     help="the model selected when the page opens: hub name or local checkpoint directory")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    app.add_argument("--port", type=number_arg(1, 65535, integer=True), default=7860)
    app.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    app.add_argument("--max-duration", type=number_arg(1), default=120.0,
                     help="the duration slider's top, in seconds (default 120)")
    app.add_argument("--queue-size", type=POSITIVE_INT, default=16,
                     help="requests that may wait while one generates; more get a busy message (default 16)")
    app.set_defaults(func=run_app)


def _training(handler: str):
    """A command handler from train/cli.py, imported only when the command runs (generation and codec
    commands never load training code)."""
    def run(args) -> int:
        import importlib

        return getattr(importlib.import_module("musicgen_jax.train.cli"), handler)(args)

    return run


def _add_training_commands(subparsers) -> None:
    """`prepare`, `train` and `export`: their handlers live in train/cli.py, imported when they run."""
    prep = subparsers.add_parser("prepare", help="audio + captions -> EnCodec code shards for training")
    prep.add_argument("audio_dir", metavar="AUDIO_DIR",
                      help="audiocraft layout (*.jsonl manifest + sidecar .json) or audio files with .txt captions")
    prep.add_argument("out_dir", metavar="OUT_DIR")
    prep.add_argument("--codec", default="facebook/encodec_32khz",
                      help="EnCodec checkpoint, or a MusicGen checkpoint whose codec to use")
    prep.add_argument("--channels", type=number_arg(1, 2, integer=True), default=None,
                      help="2 for stereo models (default: the codec's)")
    prep.add_argument("--segment-seconds", type=POSITIVE, default=30.0)
    prep.add_argument("--min-segment-ratio", type=number_arg(0, 1), default=0.8,
                      help="keep a last partial segment holding at least this share of a segment")
    prep.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="segments per EnCodec call")
    prep.add_argument("--records-per-shard", type=POSITIVE_INT, default=1024)
    prep.add_argument("--min-sample-rate", type=POSITIVE_INT, default=16000)
    prep.add_argument("--chroma", action="store_true", help="store chroma for melody models")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_training("prepare_command"))

    train = subparsers.add_parser("train", help="train or fine-tune the MusicGen LM (resumes automatically)")
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/train/small.yaml")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    train.set_defaults(func=_training("train_command"))

    export = subparsers.add_parser("export", help="training checkpoint -> transformers-layout MusicGen directory")
    export.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR")
    export.add_argument("out_dir", metavar="OUT_DIR")
    export.add_argument("--base", default=None,
                        help="transformers MusicGen checkpoint providing text encoder and codec "
                             "(default: the run's init_from / checkpoint.export_base)")
    export.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    export.add_argument("--adapter-only", action="store_true",
                        help="LoRA runs: write the adapters as a PEFT folder (adapter_config.json + "
                             "adapter_model.safetensors) instead of merged weights")
    export.set_defaults(func=_training("export_command"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-jax", description="MusicGen in JAX")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text -> music (wav)")
    gen.add_argument("prompts", nargs="*", metavar="PROMPT", help="text description(s)")
    gen.add_argument("--prompts-file", help="a text file with one prompt per line")
    gen.add_argument("--model", default="facebook/musicgen-small", help="hub name or local checkpoint directory")
    gen.add_argument("--adapters", default=None,
                     help="LoRA adapter folder (PEFT format, e.g. from `export --adapter-only`) for --model")
    gen.add_argument("--duration", type=POSITIVE, default=None, help="seconds (default: the model's, 15 s)")
    gen.add_argument("--duration-limit", type=POSITIVE, default=None,
                     help="the most seconds one call may generate (default 600): raise it for longer pieces")
    gen.add_argument("--seed", type=number_arg(0, MAX_SEED, integer=True), default=None,
                     help="random seed (same seed, same music)")
    gen.add_argument("--out", default="out.wav", help="output wav; several prompts give OUT_0.wav, OUT_1.wav, ...")
    gen.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="prompts generated together")
    gen.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    gen.add_argument("--top-k", type=number_arg(0, integer=True), default=None, help="0: no top-k (default 250)")
    gen.add_argument("--top-p", type=number_arg(0, 1), default=None, help="> 0: nucleus sampling, over top-k")
    gen.add_argument("--temperature", type=number_arg(0), default=None, help="0: greedy (default 1)")
    gen.add_argument("--cfg-coef", type=number_arg(), default=None, help="classifier-free guidance (default 3)")
    gen.add_argument("--extend-stride", type=POSITIVE, default=None, help="long-form stride in seconds (18)")
    gen.add_argument("--melody", help="audio file whose melody (chroma) conditions a melody model")
    gen.add_argument("--stream", action="store_true",
                     help="write each wav while it is generated (a valid file at every moment); prints the time "
                          "to first audio")
    gen.add_argument("--chunk-seconds", type=POSITIVE, default=1.0, help="with --stream: audio per chunk (1 s)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--mesh", help="generate across devices, e.g. tensor=2 or data=4,tensor=2 (data: the rest); "
                                    "fsdp gathers weights every step, so prefer data and tensor")
    gen.set_defaults(func=generate)

    _add_training_commands(commands)  # prepare | train | export
    add_evaluate_command(commands)  # evaluate: musicgen_jax/evaluation/cli.py
    _add_app_command(commands)  # app: musicgen_jax/app

    codec = commands.add_parser("codec", help="EnCodec: audio <-> codes")
    codec_cmds = codec.add_subparsers(dest="codec_command", required=True)
    for name, fn, help_text, (src, dst) in [
        ("encode", codec_encode, "audio file -> codes .npy [1, K, T]", ("IN.wav", "OUT.npy")),
        ("decode", codec_decode, "codes .npy -> wav", ("IN.npy", "OUT.wav")),
        ("roundtrip", codec_roundtrip, "audio file -> codes -> wav", ("IN.wav", "OUT.wav")),
    ]:
        sub = codec_cmds.add_parser(name, help=help_text)
        sub.add_argument("input", metavar=src)
        sub.add_argument("output", metavar=dst)
        sub.add_argument("--model", default=DEFAULT_CODEC,
                         help="EnCodec or MusicGen checkpoint: hub name or local directory/file")
        sub.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command; returns its exit code (2 with one `error:` line on stderr for a user error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed usage and its error (2), or --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("musicgen-jax: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"musicgen-jax: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"musicgen-jax: error: out of memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
              "try a smaller --batch-size or --duration", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
