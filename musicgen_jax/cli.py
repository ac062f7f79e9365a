"""`musicgen-jax` command line: codec encode | decode | roundtrip (generate/train/... join later)."""
from __future__ import annotations

import argparse
import sys

import numpy as np

DEFAULT_CODEC = "facebook/encodec_32khz"


def _load_codec(name: str):
    from musicgen_jax.codec import CompressionModel

    return CompressionModel.from_pretrained(name)


def _read_for_codec(codec, path: str) -> np.ndarray:
    from musicgen_jax.audio import read_audio

    wav, _ = read_audio(path, sample_rate=codec.sample_rate, channels=codec.channels)
    return wav[None]  # [1, C, N]


def codec_encode(args) -> int:
    from musicgen_jax.audio import save_npy

    codec = _load_codec(args.model)
    codes = np.asarray(codec.encode(_read_for_codec(codec, args.input)))
    save_npy(args.output, codes)
    print(f"{args.input} -> {args.output}: codes {codes.shape} at {codec.frame_rate:g} Hz")
    return 0


def codec_decode(args) -> int:
    from musicgen_jax.audio import write_wav

    codec = _load_codec(args.model)
    codes = np.load(args.input)
    if codes.ndim == 2:
        codes = codes[None]
    wav = np.asarray(codec.decode(codes))[0]
    write_wav(args.output, wav, codec.sample_rate)
    print(f"{args.input} -> {args.output}: {wav.shape[-1] / codec.sample_rate:.2f} s at {codec.sample_rate} Hz")
    return 0


def codec_roundtrip(args) -> int:
    from musicgen_jax.audio import write_wav

    codec = _load_codec(args.model)
    wav = _read_for_codec(codec, args.input)
    out = np.asarray(codec.decode(codec.encode(wav)))[0, :, : wav.shape[-1]]
    write_wav(args.output, out, codec.sample_rate)
    print(f"{args.input} -> {args.output}: {out.shape[-1] / codec.sample_rate:.2f} s through the codec")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-jax", description="MusicGen in JAX")
    commands = parser.add_subparsers(dest="command", required=True)

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
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"musicgen-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
