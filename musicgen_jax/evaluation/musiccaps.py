"""The paper's MusicCaps protocol: generate 10 s for each caption, then compare with the reference clips.

MusicCaps (Agostinelli et al. 2023) is a CSV of 5.5k captions of 10 s YouTube clips (columns `ytid`,
`caption`, `is_balanced_subset`, `is_audioset_eval`, ...); the clips themselves are not distributed and
must be fetched separately into a folder as `<ytid>.<ext>`. Captions whose clip is missing are left out.

Generation is batched in a fixed order, batch b seeded with seed + b, and resumable: a caption whose
output file exists is not generated again, and a batch is only run if one of its outputs is missing, so an
interrupted run finishes with exactly the files an uninterrupted one writes. Melody models (with
`melody=True`) are conditioned on the chroma of the reference clip itself (the paper's melody evaluation;
audiocraft first removes drums and bass with Demucs, which this does not do).
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from musicgen_jax.evaluation.audio_io import list_audio

DURATION = 10.0  # seconds generated per caption (the length of MusicCaps clips)
SUBSETS = ("all", "balanced", "audioset_eval")


@dataclass(frozen=True)
class Item:
    ytid: str
    caption: str


def read_musiccaps(path: str, subset: str = "all", limit: int | None = None) -> list[Item]:
    """The captions of the MusicCaps CSV (`ytid`, `caption` columns), optionally only the genre-balanced
    subset (`is_balanced_subset`) or AudioSet's eval split (`is_audioset_eval`), and at most `limit`."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MusicCaps CSV not found: {path}")
    items, seen = [], set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        flag = {"balanced": "is_balanced_subset", "audioset_eval": "is_audioset_eval"}.get(subset)
        need = {"ytid", "caption"} | ({flag} if flag else set())
        if not need <= columns:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(need - columns))} (MusicCaps' CSV has "
                             "ytid, caption, is_balanced_subset, is_audioset_eval)")
        for line, row in enumerate(reader, start=2):
            if flag and str(row[flag]).strip().lower() not in ("true", "1"):
                continue
            ytid, caption = row["ytid"].strip(), row["caption"].strip()
            if not ytid or not caption:
                raise ValueError(f"{path}:{line}: empty ytid or caption")
            if ytid in seen:
                raise ValueError(f"{path}:{line}: ytid {ytid!r} appears twice")
            seen.add(ytid)
            items.append(Item(ytid, caption))
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"{path}: no captions selected (subset {subset!r})")
    return items


def output_path(out_dir: str, item: Item) -> str:
    return os.path.join(out_dir, f"{item.ytid}.wav")


def generate_missing(model, items: Sequence[Item], out_dir: str, *, duration: float = DURATION,
                     batch_size: int = 8, seed: int = 0, melody_paths: dict[str, str] | None = None,
                     progress: bool = True) -> dict[str, int]:
    """Write `<out_dir>/<ytid>.wav` for every item that has none.

    model: a MusicGen (or anything with sample_rate, set_generation_params(duration=...),
    generate(texts, progress=, seed=) and, for melody_paths, generate_with_chroma(texts, wavs, rate, ...)).
    Batches are items [b * batch_size, (b + 1) * batch_size) of `items`, seeded seed + b.
    """
    from tqdm.auto import tqdm

    from musicgen_jax.audio import read_audio, write_wav

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    model.set_generation_params(duration=duration)
    todo = [b for b in range(0, len(items), batch_size)
            if any(not os.path.isfile(output_path(out_dir, it)) for it in items[b:b + batch_size])]
    done = len(items) - sum(sum(not os.path.isfile(output_path(out_dir, it)) for it in items[b:b + batch_size])
                            for b in todo)
    written = 0
    bar = tqdm(total=len(items), initial=done, desc="generating", unit="clip", disable=not progress, file=sys.stderr)
    for start in todo:
        batch = list(items[start:start + batch_size])
        texts = [it.caption for it in batch]
        batch_seed = seed + start // batch_size
        if melody_paths is not None:
            melodies = [read_audio(melody_paths[it.ytid], sample_rate=model.sample_rate)[0] for it in batch]
            wav = model.generate_with_chroma(texts, melodies, model.sample_rate, progress=False, seed=batch_seed)
        else:
            wav = model.generate(texts, progress=False, seed=batch_seed)
        wav = np.asarray(wav)
        for it, audio in zip(batch, wav):
            path = output_path(out_dir, it)
            if not os.path.isfile(path):
                write_wav(path, audio, model.sample_rate)
                written += 1
                bar.update(1)
    bar.close()
    return {"generated": written, "already_there": done, "captions": len(items)}


def with_references(items: Sequence[Item], audio_dir: str) -> tuple[list[Item], dict[str, str], list[str]]:
    """The items whose reference clip `<audio_dir>/<ytid>.<ext>` exists, their paths, and the missing ytids."""
    found = list_audio(audio_dir, "MusicCaps audio")
    kept = [it for it in items if it.ytid in found]
    missing = [it.ytid for it in items if it.ytid not in found]
    if not kept:
        raise ValueError(f"none of the {len(items)} selected captions has a clip in {audio_dir} (expected files "
                         f"named <ytid>.wav etc., e.g. {items[0].ytid}.wav)")
    return kept, {it.ytid: found[it.ytid] for it in kept}, missing


def run(csv_path: str, audio_dir: str, out_dir: str, model, *, metrics: Sequence[str] = ("fad", "kl", "clap"),
        subset: str = "all", limit: int | None = None, duration: float = DURATION, batch_size: int = 8,
        seed: int = 0, melody: bool = False, backends=None, progress: bool = True) -> dict[str, Any]:
    """Generate what is missing into out_dir, then evaluate it against the reference clips.

    model: a MusicGen, or a checkpoint name / directory to load one from (only if something is missing)."""
    from musicgen_jax.evaluation.pipeline import EvaluationSet, evaluate

    items, references, missing = with_references(read_musiccaps(csv_path, subset, limit), audio_dir)
    if missing:
        print(f"{len(missing)} caption(s) have no reference clip in {audio_dir} and are left out "
              f"(e.g. {', '.join(missing[:3])})", file=sys.stderr)
    needs_generation = any(not os.path.isfile(output_path(out_dir, it)) for it in items)
    stats = {"generated": 0, "already_there": len(items), "captions": len(items)}
    if needs_generation:
        if isinstance(model, str):
            from musicgen_jax.musicgen import MusicGen

            model = MusicGen.from_pretrained(model)
        stats = generate_missing(model, items, out_dir, duration=duration, batch_size=batch_size, seed=seed,
                                 melody_paths=references if melody else None, progress=progress)
    files = EvaluationSet(generated={it.ytid: output_path(out_dir, it) for it in items},
                          reference=references, captions={it.ytid: it.caption for it in items})
    results = evaluate(files, metrics, backends, progress=progress)
    return {"protocol": "musiccaps", "subset": subset, "duration": duration, "seed": seed,
            "missing_references": len(missing), **stats, **results}


__all__ = ["Item", "read_musiccaps", "generate_missing", "with_references", "run", "output_path", "DURATION"]
