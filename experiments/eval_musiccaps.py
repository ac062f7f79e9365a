"""The MusicGen paper's objective evaluation on MusicCaps (see musicgen_jax/evaluation/musiccaps.py).

    python experiments/eval_musiccaps.py --csv musiccaps-public.csv --audio musiccaps_audio/ \
        --out generated/musicgen-small --model facebook/musicgen-small --metrics fad,kl,clap --json small.json

Generates 10 s for every caption whose reference clip (<ytid>.wav, any rate) is in --audio, batched,
seeded and resumable (existing outputs are kept), then prints FAD (VGGish), KL (PaSST), CLAP score and,
with --melody for melody models, chroma cosine similarity, beside the model card's numbers.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from musicgen_jax.evaluation.cli import embedding_options
    from musicgen_jax.evaluation.errors import BackendLoadError, MissingExtraError
    from musicgen_jax.evaluation.pipeline import default_backends, format_table, parse_metrics, write_json
    from musicgen_jax.evaluation.musiccaps import DURATION, SUBSETS, run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, help="MusicCaps CSV (ytid, caption, ...)")
    parser.add_argument("--audio", required=True, help="folder of the reference clips, <ytid>.<ext>")
    parser.add_argument("--out", required=True, help="folder for the generated clips (<ytid>.wav; resumable)")
    parser.add_argument("--model", default="facebook/musicgen-small", help="hub name or checkpoint directory")
    parser.add_argument("--metrics", default="fad,kl,clap", help="comma-separated: fad,kl,clap,chroma")
    parser.add_argument("--melody", action="store_true",
                        help="melody model: condition on each reference clip's chroma (add chroma to --metrics)")
    parser.add_argument("--subset", default="all", choices=SUBSETS)
    parser.add_argument("--limit", type=int, default=None, help="only the first N captions (a quick check)")
    parser.add_argument("--duration", type=float, default=DURATION)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding", default="vggish", help="FAD embedding: vggish, encodec, clap or passt")
    parser.add_argument("--vggish-weights", help="torchvggish state_dict (default: downloaded once)")
    parser.add_argument("--codec", default="facebook/encodec_32khz", help="codec for --embedding encodec")
    parser.add_argument("--clap-checkpoint", help="LAION-CLAP checkpoint (default: audiocraft's, from the hub)")
    parser.add_argument("--passt-length", type=int, default=20, choices=(10, 20, 30))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    try:
        backends = default_backends(args.embedding, embedding_options(args), passt_length=args.passt_length,
                                    clap_checkpoint=args.clap_checkpoint)
        results = run(args.csv, args.audio, args.out, args.model, metrics=parse_metrics(args.metrics),
                      subset=args.subset, limit=args.limit, duration=args.duration, batch_size=args.batch_size,
                      seed=args.seed, melody=args.melody, backends=backends, progress=not args.quiet)
    except (MissingExtraError, BackendLoadError, ValueError, FileNotFoundError) as e:
        print(f"eval_musiccaps: error: {e}", file=sys.stderr)
        return 2
    results = {"model": args.model, **results}
    print(format_table(results, args.model))
    if args.json:
        print(f"results written to {write_json(args.json, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
