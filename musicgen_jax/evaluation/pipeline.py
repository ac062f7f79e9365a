"""Evaluate a folder of generated audio against a reference folder (and captions) with the paper's metrics.

    fad     Frechet distance between the embeddings of all generated and all reference clips (unpaired)
    kl      KL divergence of PaSST label distributions, generated vs reference, per pair of clips
    clap    CLAP score of each generated clip with its caption (needs captions)
    chroma  chroma cosine similarity, generated vs reference, per pair of clips (melody conditioning)

Pairs are files with the same key (relative path without extension) in both folders; each pair is cut to
the shorter of its two clips (audiocraft compares clips of one length). Every model is loaded once, only
for the metrics asked for; audio of any rate and channel count is brought to each model's rate.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from musicgen_jax.evaluation import metrics as M
from musicgen_jax.evaluation.audio_io import list_audio, load_audio, read_captions, to_mono
from musicgen_jax.files import atomic_write

METRICS = ("fad", "kl", "clap", "chroma")
NEEDS_REFERENCE = ("fad", "kl", "chroma")

# audiocraft's MODEL_CARD.md (MusicCaps, released models): FAD (VGGish), KLD (PaSST), text consistency
# (CLAP), chroma cosine similarity
MODEL_CARD = {
    "facebook/musicgen-small": {"fad": 4.88, "kld": 1.42, "clap": 0.27},
    "facebook/musicgen-medium": {"fad": 5.14, "kld": 1.38, "clap": 0.28},
    "facebook/musicgen-large": {"fad": 5.48, "kld": 1.37, "clap": 0.28},
    "facebook/musicgen-melody": {"fad": 4.93, "kld": 1.41, "clap": 0.27, "chroma_cosine": 0.44},
}


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def _bar(items, desc: str, progress: bool, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=not progress, unit="file", file=sys.stderr)


@dataclass
class EvaluationSet:
    """The files to evaluate: generated and reference {key: path}, captions {key: text}."""

    generated: dict[str, str]
    reference: dict[str, str] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_folders(cls, generated: str, reference: str | None = None, captions: str | None = None):
        return cls(list_audio(generated, "generated audio"),
                   list_audio(reference, "reference audio") if reference else {},
                   read_captions(captions) if captions else {})

    def pairs(self) -> list[tuple[str, str, str]]:
        """(key, generated path, reference path) for the keys in both folders."""
        keys = [k for k in self.generated if k in self.reference]
        if not keys:
            raise ValueError("no generated file has a reference file of the same name (relative path without "
                             f"extension); generated e.g. {_some(self.generated)}, reference e.g. "
                             f"{_some(self.reference)}")
        return [(k, self.generated[k], self.reference[k]) for k in keys]

    def captioned(self) -> list[tuple[str, str, str]]:
        """(key, generated path, caption) for every generated file; all must have a caption."""
        if not self.captions:
            raise ValueError("the CLAP score needs captions: pass --captions CSV (key and caption columns)")
        missing = [k for k in self.generated if k not in self.captions]
        if missing:
            raise ValueError(f"{len(missing)} generated file(s) have no caption in the captions file, e.g. "
                             f"{', '.join(missing[:5])}")
        return [(k, p, self.captions[k]) for k, p in self.generated.items()]


def _some(d: Mapping[str, str]) -> str:
    return ", ".join(list(d)[:3]) or "(none)"


def _paired_mono(gen_path: str, ref_path: str, rate: int) -> tuple[np.ndarray, np.ndarray]:
    g, g_rate = load_audio(gen_path)
    r, r_rate = load_audio(ref_path)
    g, r = to_mono(g, g_rate, rate), to_mono(r, r_rate, rate)
    n = min(g.shape[0], r.shape[0])
    return g[:n], r[:n]


# ----------------------------------------------------------------------------------------------------------
# the four metrics


def embed_files(backend, paths: Sequence[str], desc: str, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Every file's embedding rows stacked [n, dim]; the files that gave no row (too short) are listed."""
    rows, empty = [], []
    for path in _bar(paths, desc, progress):
        wav, rate = load_audio(path)
        emb = np.asarray(backend.embed(wav, rate))
        if emb.ndim != 2:
            raise ValueError(f"embedding backend {backend.name!r} returned shape {emb.shape} for {path}; "
                             "expected [rows, dim]")
        if emb.shape[0] == 0:
            empty.append(path)
        else:
            rows.append(emb)
    if not rows:
        raise M.MetricError(f"no {backend.name} embeddings: every file is too short ({_some(dict.fromkeys(empty))})")
    return np.concatenate(rows).astype(np.float64), empty


def compute_fad(backend, generated: Sequence[str], reference: Sequence[str], progress: bool = True) -> dict:
    gen, gen_empty = embed_files(backend, generated, f"FAD generated ({backend.name})", progress)
    ref, ref_empty = embed_files(backend, reference, f"FAD reference ({backend.name})", progress)
    out = {"fad": M.frechet_audio_distance(gen, ref), "fad_embedding": backend.name,
           "fad_generated_rows": int(gen.shape[0]), "fad_reference_rows": int(ref.shape[0])}
    if gen_empty or ref_empty:
        out["fad_skipped_files"] = gen_empty + ref_empty
    return out


def compute_kl(classifier, pairs: Sequence[tuple[str, str, str]], progress: bool = True) -> dict:
    """classifier: `segments(wav, rate)` / `label_probs_of_pieces(pieces)` (PasstModel)."""
    acc = M.KLAccumulator()
    for _, gen_path, ref_path in _bar(pairs, "KL (PaSST)", progress):
        g, r = _paired_mono(gen_path, ref_path, classifier.sample_rate)
        gen_pieces = classifier.segments(g, classifier.sample_rate)
        ref_pieces = classifier.segments(r, classifier.sample_rate)
        if not gen_pieces:
            continue
        acc.update(classifier.label_probs_of_pieces(gen_pieces), classifier.label_probs_of_pieces(ref_pieces))
    out = acc.compute()
    out["kl_rows"] = acc.count
    return out


def compute_clap(clap, items: Sequence[tuple[str, str, str]], batch_size: int = 16, progress: bool = True) -> dict:
    """clap: `audio_embeddings(list of 48 kHz mono)` and `text_embeddings(texts)` (ClapModel)."""
    total, count = 0.0, 0
    bar = _bar(None, "CLAP score", progress, total=len(items))
    for lo in range(0, len(items), batch_size):
        batch = items[lo:lo + batch_size]
        wavs = []
        for _, path, _ in batch:
            wav, rate = load_audio(path)
            wavs.append(to_mono(wav, rate, clap.sample_rate))
        audio = clap.audio_embeddings(wavs)
        text = clap.text_embeddings([caption for _, _, caption in batch])
        total += float(M.cosine_similarity(audio, text).sum())
        count += len(batch)
        bar.update(len(batch))
    bar.close()
    return {"clap": total / count, "clap_pairs": count}


def compute_chroma(pairs: Sequence[tuple[str, str, str]], sample_rate: int = 32000, n_chroma: int = 12,
                   radix2_exp: int = 14, argmax: bool = True, progress: bool = True) -> dict:
    """audiocraft's ChromaCosineSimilarityMetric with the MusicGen melody settings (32 kHz, 12 bins,
    n_fft 2^14, hop n_fft / 4, argmax)."""
    from musicgen_jax.chroma import extract_chroma

    n_fft = 2 ** radix2_exp
    hop = n_fft // 4
    acc = M.ChromaCosineAccumulator()
    for _, gen_path, ref_path in _bar(pairs, "chroma cosine", progress):
        g, r = _paired_mono(gen_path, ref_path, sample_rate)
        chroma = extract_chroma(np.stack([g, r]), sample_rate, n_fft=n_fft, hop_length=hop, n_chroma=n_chroma,
                                argmax=argmax, target_sample_rate=sample_rate)
        acc.update(chroma[0], chroma[1], M.chroma_frames_compared(g.shape[0], hop))
    return {"chroma_cosine": acc.compute(), "chroma_pairs": len(pairs), "chroma_frames": acc.frames}


# ----------------------------------------------------------------------------------------------------------
# all together


@dataclass
class Backends:
    """How to build each model (called only when its metric is asked for); tests pass fakes."""

    embedding: Callable[[], Any]
    passt: Callable[[], Any]
    clap: Callable[[], Any]


def default_backends(embedding: str = "vggish", embedding_options: Mapping[str, Any] | None = None,
                     passt_length: int = 20, clap_checkpoint: str | None = None) -> Backends:
    from musicgen_jax.evaluation.embeddings import load_embedding

    def passt():
        from musicgen_jax.evaluation.passt import PasstModel

        return PasstModel.load(pretrained_length=passt_length)

    def clap():
        from musicgen_jax.evaluation.clap import ClapModel

        return ClapModel.load(checkpoint=clap_checkpoint)

    return Backends(embedding=lambda: load_embedding(embedding, **dict(embedding_options or {})),
                    passt=passt, clap=clap)


def evaluate(files: EvaluationSet, metrics: Sequence[str] = METRICS, backends: Backends | None = None,
             progress: bool = True, clap_batch_size: int = 16) -> dict[str, Any]:
    """The requested metrics over `files`; a dict of numbers (and counts) ready for JSON."""
    metrics = parse_metrics(metrics)
    backends = backends or default_backends()
    if any(m in NEEDS_REFERENCE for m in metrics) and not files.reference:
        raise ValueError(f"metrics {', '.join(m for m in metrics if m in NEEDS_REFERENCE)} need reference audio "
                         "(--reference DIR)")
    results: dict[str, Any] = {"generated_files": len(files.generated), "reference_files": len(files.reference)}
    pairs = files.pairs() if any(m in ("kl", "chroma") for m in metrics) else []
    if pairs:
        results["pairs"] = len(pairs)
    captioned = files.captioned() if "clap" in metrics else []  # check captions before any model loads
    if "fad" in metrics:
        results.update(compute_fad(backends.embedding(), list(files.generated.values()),
                                   list(files.reference.values()), progress))
    if "kl" in metrics:
        results.update(compute_kl(backends.passt(), pairs, progress))
    if "clap" in metrics:
        results.update(compute_clap(backends.clap(), captioned, clap_batch_size, progress))
    if "chroma" in metrics:
        results.update(compute_chroma(pairs, progress=progress))
    return results


def format_table(results: Mapping[str, Any], reference_model: str | None = None) -> str:
    """The headline numbers as a text table (with the model card's values when a known model is named)."""
    card = MODEL_CARD.get(reference_model or "", {})
    rows = [("metric", "value", "over", "model card" if card else "")]
    spec = [("fad", "FAD", lambda r: f"{r['fad_generated_rows']} vs {r['fad_reference_rows']} "
                                     f"{r['fad_embedding']} rows"),
            ("kld", "KL (PaSST)", lambda r: f"{r['kl_rows']} segment pairs"),
            ("kld_qp", "KL reverse", lambda r: f"{r['kl_rows']} segment pairs"),
            ("clap", "CLAP score", lambda r: f"{r['clap_pairs']} clips"),
            ("chroma_cosine", "chroma cosine", lambda r: f"{r['chroma_frames']} frames, {r['chroma_pairs']} pairs")]
    for key, label, over in spec:
        if key in results:
            value = results[key]
            shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
            rows.append((label, shown, over(results), f"{card[key]:g}" if key in card else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths if w).rstrip())
    return "\n".join(lines)


def write_json(path: str, results: Mapping[str, Any]) -> str:
    """results as indented JSON, written atomically."""
    text = json.dumps(results, indent=2, sort_keys=False, default=_json_default) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write, suffix=".json")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


__all__ = ["METRICS", "MODEL_CARD", "EvaluationSet", "Backends", "default_backends", "evaluate", "compute_fad",
           "compute_kl", "compute_clap", "compute_chroma", "embed_files", "parse_metrics", "format_table",
           "write_json"]
