"""`musicgen-jax evaluate`: the paper's metrics over a folder of generated audio.

    musicgen-jax evaluate --generated DIR --reference DIR [--captions CSV] --metrics fad,kl,clap,chroma \
        [--embedding vggish|encodec|clap|passt] [--json FILE]

Wired into musicgen_jax/cli.py by `add_evaluate_command(subparsers)`.
"""
from __future__ import annotations

import argparse
import sys

from musicgen_jax.evaluation.errors import BackendLoadError, MissingExtraError


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """Add the `evaluate` sub-command to an argparse subparsers object."""
    p = subparsers.add_parser(
        "evaluate", help="FAD / KL / CLAP / chroma metrics of generated audio against references",
        description="Objective metrics as in the MusicGen paper (audiocraft's definitions). Files pair up by "
                    "name (relative path without extension); any rate and channel count is resampled as each "
                    "model expects.")
    p.add_argument("--generated", required=True, metavar="DIR", help="folder of generated audio")
    p.add_argument("--reference", metavar="DIR", help="folder of reference audio (fad, kl, chroma)")
    p.add_argument("--captions", metavar="CSV",
                   help="captions for the CLAP score: a key column (ytid/id/name/file) and a caption column")
    p.add_argument("--metrics", default="fad,kl,clap,chroma", help="comma-separated: fad,kl,clap,chroma")
    p.add_argument("--embedding", default="vggish", help="FAD embedding: vggish (the paper's), encodec, clap or passt")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (atomically)")
    p.add_argument("--vggish-weights", metavar="FILE",
                   help="torchvggish state_dict (vggish-10086976.pth, or .safetensors/.npz with its keys); "
                        "default: downloaded once into ~/.cache/musicgen_jax")
    p.add_argument("--codec", default="facebook/encodec_32khz",
                   help="EnCodec or MusicGen checkpoint for --embedding encodec")
    p.add_argument("--clap-checkpoint", metavar="FILE",
                   help="LAION-CLAP checkpoint (default: music_audioset_epoch_15_esc_90.14.pt from the hub)")
    p.add_argument("--passt-length", type=int, default=20, choices=(10, 20, 30),
                   help="PaSST window in seconds (audiocraft's MusicGen evaluation: 20)")
    p.add_argument("--model-card", metavar="NAME",
                   help="show the model card's numbers beside ours, e.g. facebook/musicgen-small")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=evaluate_command)
    return p


def embedding_options(args) -> dict:
    if args.embedding == "vggish":
        return {"weights": args.vggish_weights, "progress": not args.quiet}
    if args.embedding == "encodec":
        return {"codec": args.codec}
    if args.embedding == "clap":
        return {"checkpoint": args.clap_checkpoint}
    if args.embedding == "passt":
        return {"pretrained_length": args.passt_length}
    return {}


def evaluate_command(args) -> int:
    from musicgen_jax.evaluation.embeddings import embedding_names
    from musicgen_jax.evaluation.pipeline import (EvaluationSet, default_backends, evaluate, format_table,
                                                  parse_metrics, write_json)

    metrics = parse_metrics(args.metrics)
    if args.embedding not in embedding_names():
        raise ValueError(f"unknown --embedding {args.embedding!r}; choose one of {', '.join(embedding_names())}")
    files = EvaluationSet.from_folders(args.generated, args.reference, args.captions)
    backends = default_backends(args.embedding, embedding_options(args), passt_length=args.passt_length,
                                clap_checkpoint=args.clap_checkpoint)
    try:
        results = evaluate(files, metrics, backends, progress=not args.quiet)
    except (MissingExtraError, BackendLoadError) as e:
        print(f"musicgen-jax evaluate: error: {e}", file=sys.stderr)
        return 2
    results = {"metrics": list(metrics), "generated": args.generated, "reference": args.reference,
               "captions": args.captions, **results}
    print(format_table(results, args.model_card))
    if args.json:
        print(f"results written to {write_json(args.json, results)}")
    return 0


def main(argv=None) -> int:
    """`python -m musicgen_jax.evaluation.cli ...` (same as `musicgen-jax evaluate ...`)."""
    parser = argparse.ArgumentParser(prog="musicgen-jax")
    add_evaluate_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"musicgen-jax evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
