"""`musicgen-jax prepare AUDIO_DIR OUT_DIR`: audio + captions -> EnCodec codes in ArrayRecord shards.

Input layouts:
  * audiocraft: a JSONL manifest (`*.jsonl` or `*.jsonl.gz` in AUDIO_DIR, one {"path", "duration",
    "sample_rate", ...} per line; relative paths are relative to the manifest) and, next to each audio
    file, a sidecar `.json` whose "description" is the caption;
  * plain folder: audio files (wav, flac, ogg, mp3) anywhere below AUDIO_DIR, the caption in a `.txt`
    of the same stem.
Each file is read, resampled to the codec's rate and channel count, cut into non-overlapping segments
(`segment_seconds`; a last partial segment is kept, zero-padded, when it holds at least
`min_segment_ratio` of a segment), encoded in fixed-size jitted batches, and written as records
(records.py). Bad inputs are reported and skipped, never fatal: unreadable or missing files, a sample
rate below `min_sample_rate` or different from the manifest's, silence, no caption, an unreadable
caption (not UTF-8, bad sidecar JSON), too short.

Resumable: the list of finished files is committed (atomically, with the shard list) each time a shard
is closed; a restart skips those files and redoes the rest (an unfinished shard is discarded).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from musicgen_jax.audio import convert_channels, resample
from musicgen_jax.files import atomic_write
from musicgen_jax.train.records import DatasetInfo, ShardWriter, encode_record, write_index

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
STATE = "prepare_state.json"
REPORT = "report.json"


@dataclass(frozen=True)
class PrepareOptions:
    segment_seconds: float = 30.0
    min_segment_ratio: float = 0.8  # keep a last partial segment holding at least this share (audiocraft: 0.8)
    encode_batch: int = 8  # segments per jitted EnCodec call (the last batch is zero-padded)
    records_per_shard: int = 1024
    min_sample_rate: int = 16000
    silence_rms: float = 1e-4  # files (and segments) quieter than this RMS are skipped
    chroma: bool = False  # store the dominant chroma bin per frame (melody models)
    progress: bool = True


@dataclass
class Item:
    path: str
    caption: str | None
    manifest_rate: int | None = None  # the sample rate the manifest declares, when there is one
    problem: str | None = None  # found while listing (bad manifest line, unreadable caption): skipped


@dataclass
class Report:
    files: int = 0
    segments: int = 0
    silent_segments: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}


class SkipFile(Exception):
    """A file that cannot be used; the message is the reason reported."""


# ---------------------------------------------------------------------------------------- discovery


def _manifests(audio_dir: str) -> list[str]:
    names = sorted(n for n in os.listdir(audio_dir) if n.endswith((".jsonl", ".jsonl.gz")))
    return [os.path.join(audio_dir, n) for n in names]


def _read_text(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _sidecar_caption(path: str) -> str | None:
    """The "description" of an audiocraft sidecar .json."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return str(meta.get("description") or "").strip()


def _captioned(path: str, caption_file: str, read_caption, manifest_rate: int | None = None) -> Item:
    """Item(path) with the caption `read_caption(caption_file)` gives, or the reason it cannot be read."""
    try:
        return Item(path, read_caption(caption_file), manifest_rate)
    except UnicodeDecodeError as e:
        problem = f"caption file {caption_file} is not UTF-8 text (byte {e.start})"
    except (OSError, ValueError) as e:  # unreadable file, invalid JSON
        problem = f"unreadable caption file {caption_file} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return Item(path, None, manifest_rate, problem=problem)


def _manifest_items(manifest: str) -> Iterator[Item]:
    opener = gzip.open if manifest.endswith(".gz") else open
    base = os.path.dirname(manifest)
    with opener(manifest, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                path = entry["path"]
            except (json.JSONDecodeError, KeyError, TypeError):
                yield Item(f"{manifest}:{line_no}", None, problem="unreadable manifest line")
                continue
            path = path if os.path.isabs(path) else os.path.join(base, path)
            yield _captioned(path, os.path.splitext(path)[0] + ".json", _sidecar_caption, entry.get("sample_rate"))


def find_items(audio_dir: str) -> list[Item]:
    """Every (audio file, caption) of AUDIO_DIR, in a stable order (see module doc for layouts)."""
    if not os.path.isdir(audio_dir):
        raise FileNotFoundError(f"audio directory not found: {audio_dir}")
    manifests = _manifests(audio_dir)
    if manifests:
        return [item for m in manifests for item in _manifest_items(m)]
    items = []
    for root, _, names in sorted(os.walk(audio_dir)):
        for name in sorted(names):
            if name.lower().endswith(AUDIO_EXTENSIONS):
                path = os.path.join(root, name)
                items.append(_captioned(path, os.path.splitext(path)[0] + ".txt", _read_text))
    return items


# ---------------------------------------------------------------------------------------- one file


def _load(item: Item, sample_rate: int, channels: int, opts: PrepareOptions) -> np.ndarray:
    """Checked, resampled audio [C, N] of one item, or SkipFile."""
    import soundfile as sf

    if item.problem:
        raise SkipFile(item.problem)
    if not item.caption:
        raise SkipFile("empty or missing caption")
    try:
        info = sf.info(item.path)
        data, rate = sf.read(item.path, dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:  # soundfile raises several types for broken files
        raise SkipFile(f"unreadable audio ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if item.manifest_rate and int(item.manifest_rate) != rate:
        raise SkipFile(f"wrong sample rate: the manifest says {item.manifest_rate} Hz, the file is {rate} Hz")
    if rate < opts.min_sample_rate:
        raise SkipFile(f"wrong sample rate: {rate} Hz is below the minimum {opts.min_sample_rate} Hz")
    if data.shape[0] == 0 or info.frames == 0:
        raise SkipFile("empty audio")
    if not np.isfinite(data).all():
        raise SkipFile("audio contains NaN or infinite samples")
    wav = convert_channels(resample(np.ascontiguousarray(data.T), rate, sample_rate), channels)
    if float(np.sqrt(np.mean(np.square(wav)))) < opts.silence_rms:
        raise SkipFile("silent")
    return wav


def segments(wav: np.ndarray, segment: int, min_ratio: float) -> list[tuple[np.ndarray, int, int]]:
    """wav [C, N] -> [(segment [C, segment] zero-padded, valid samples, start sample)]."""
    out = []
    for start in range(0, wav.shape[-1], segment):
        piece = wav[:, start:start + segment]
        valid = piece.shape[-1]
        if valid < segment:
            if valid < min_ratio * segment:
                break
            piece = np.pad(piece, ((0, 0), (0, segment - valid)))
        out.append((piece, valid, start))
    return out


def chroma_bins(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Dominant chroma bin per chroma frame, [F] uint8 (melody conditioning, chroma.py)."""
    from musicgen_jax.chroma import extract_chroma

    return extract_chroma(wav[None], sample_rate)[0].argmax(-1).astype(np.uint8)


# ---------------------------------------------------------------------------------------- the job


@dataclass
class _Pending:
    wav: np.ndarray  # [C, segment]
    frames: int
    caption: str
    source: str
    offset: float


class Preparer:
    """Runs one prepare job (see module doc). `codec`: a CompressionModel."""

    def __init__(self, codec, out_dir: str, opts: PrepareOptions, codec_name: str = ""):
        self.codec, self.out_dir, self.opts = codec, out_dir, opts
        self.segment = int(round(opts.segment_seconds * codec.sample_rate))
        self.segment_frames = math.ceil(self.segment / codec.hop_length)
        self.info = DatasetInfo(sample_rate=codec.sample_rate, frame_rate=codec.frame_rate,
                                num_codebooks=codec.num_codebooks, codebook_size=codec.cardinality,
                                segment_frames=self.segment_frames, audio_channels=codec.channels,
                                codec=codec_name, chroma=opts.chroma)
        self.done: dict[str, str] = {}
        self.report = Report()
        self.queue: list[_Pending] = []
        self.writer: ShardWriter | None = None

    # -- persistence
    def _state_path(self) -> str:
        return os.path.join(self.out_dir, STATE)

    def _settings(self) -> dict[str, Any]:
        facts = dataclasses.asdict(self.info)
        facts.pop("shards")
        opts = dataclasses.asdict(self.opts)
        opts.pop("progress")
        return {"dataset": facts, "options": opts}

    def _resume(self) -> None:
        path = self._state_path()
        if not os.path.isfile(path):
            return
        with open(path) as f:
            state = json.load(f)
        if state["settings"] != self._settings():
            raise ValueError(f"{self.out_dir} was prepared with other settings ({state['settings']}); "
                             "use a new output directory")
        self.done = state["done"]
        self.info.shards = state["shards"]
        self.report = Report(**state["report"])  # an unfinished shard's hidden temp file: files.temp_file

    def _commit(self) -> None:
        state = {"settings": self._settings(), "done": self.done, "shards": self.info.shards,
                 "report": dataclasses.asdict(self.report)}

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(state, f)

        atomic_write(self._state_path(), write, suffix=".json")

    # -- encoding
    def _encode(self, batch: list[_Pending]) -> None:
        wavs = np.stack([p.wav for p in batch])
        if len(batch) < self.opts.encode_batch:  # static shape: one compilation
            pad = np.zeros((self.opts.encode_batch - len(batch),) + wavs.shape[1:], wavs.dtype)
            wavs = np.concatenate([wavs, pad])
        codes = np.asarray(self.codec.encode(wavs))[: len(batch), :, : self.segment_frames]  # [b, K, T]
        for p, c in zip(batch, codes):
            chroma = chroma_bins(p.wav, self.codec.sample_rate) if self.opts.chroma else None
            self._writer().write(encode_record(c, p.frames, p.caption, chroma=chroma, source=p.source,
                                               offset=p.offset))
            self.report.segments += 1

    def _flush(self, everything: bool) -> None:
        b = self.opts.encode_batch
        while len(self.queue) >= b or (everything and self.queue):
            batch, self.queue = self.queue[:b], self.queue[b:]
            self._encode(batch)

    def _writer(self) -> ShardWriter:
        if self.writer is None:
            name = f"shard-{len(self.info.shards):05d}.array_record"
            self.writer = ShardWriter(os.path.join(self.out_dir, name))
        return self.writer

    def _close_shard(self) -> None:
        self._flush(everything=True)
        if self.writer is not None:
            self.writer.close()
            self.info.shards.append({"path": os.path.basename(self.writer.path), "records": self.writer.records})
            self.writer = None
        self._commit()

    # -- driver
    def _add(self, item: Item) -> None:
        wav = _load(item, self.codec.sample_rate, self.codec.channels, self.opts)
        pieces = segments(wav, self.segment, self.opts.min_segment_ratio)
        if not pieces:
            raise SkipFile(f"shorter than {self.opts.min_segment_ratio:g} x {self.opts.segment_seconds:g} s")
        hop = self.codec.hop_length
        for piece, valid, start in pieces:
            if float(np.sqrt(np.mean(np.square(piece[:, :valid])))) < self.opts.silence_rms:
                self.report.silent_segments += 1
                continue
            self.queue.append(_Pending(piece, math.ceil(valid / hop), item.caption, item.path,
                                       start / self.codec.sample_rate))

    def run(self, items: list[Item]) -> Report:
        os.makedirs(self.out_dir, exist_ok=True)
        self._resume()
        todo = [it for it in items if it.path not in self.done]
        bar = _progress(self.opts.progress, len(items), len(items) - len(todo))
        for item in todo:
            try:
                self._add(item)
                self.done[item.path] = "ok"
                self.report.files += 1
            except SkipFile as e:
                self.done[item.path] = str(e)
                self.report.skipped.append({"path": item.path, "reason": str(e)})
                log.warning("skipped %s: %s", item.path, e)
            self._flush(everything=False)
            if self.writer is not None and self.writer.records >= self.opts.records_per_shard:
                self._close_shard()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=self.report.files, skipped=len(self.report.skipped))
        self._close_shard()
        write_index(self.out_dir, self.info)
        self._write_report()
        if bar is not None:
            bar.close()
        return self.report

    def _write_report(self) -> None:
        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(dataclasses.asdict(self.report), f, indent=1)

        atomic_write(os.path.join(self.out_dir, REPORT), write, suffix=".json")


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="file", desc="preparing")


def prepare(audio_dir: str, out_dir: str, codec, opts: PrepareOptions | None = None, codec_name: str = "") -> Report:
    """AUDIO_DIR -> OUT_DIR shards + index.json + report.json (see module doc)."""
    return Preparer(codec, out_dir, opts or PrepareOptions(), codec_name).run(find_items(audio_dir))
