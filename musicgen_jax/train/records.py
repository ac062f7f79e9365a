"""The on-disk training set: ArrayRecord shards of msgpack records, plus an `index.json`.

One record = one audio segment:
    codes  [K, T] int16   EnCodec codes (T = segment frames; padding frames hold the codes of silence)
    frames int            frames that hold real audio (< T for a padded last segment)
    text   str            the caption
    chroma [F] uint8      (optional, melody models) dominant chroma bin per chroma frame
    source str, offset float   where the segment comes from (file, seconds)

`index.json` lists the finished shards (with their record counts) and the facts a training run
checks against its model (frame rate, codebooks, cardinality, segment length). ArrayRecord (what
grain reads natively, with random access for global shuffling) is written with group_size 1 so
that a random read decodes one record, not a block.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
from flax import serialization

from musicgen_jax import files

INDEX = "index.json"
INDEX_VERSION = 1


@dataclass
class DatasetInfo:
    """What index.json says about a prepared dataset."""

    sample_rate: int
    frame_rate: float
    num_codebooks: int
    codebook_size: int
    segment_frames: int
    audio_channels: int = 1
    codec: str = ""
    chroma: bool = False
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"path": relative, "records": n}
    version: int = INDEX_VERSION

    @property
    def num_records(self) -> int:
        return sum(s["records"] for s in self.shards)


def encode_record(codes: np.ndarray, frames: int, text: str, *, chroma: np.ndarray | None = None,
                  source: str = "", offset: float = 0.0) -> bytes:
    if codes.ndim != 2:
        raise ValueError(f"codes must be [K, T], got shape {codes.shape}")
    record = {"codes": np.asarray(codes, np.int16), "frames": int(frames), "text": str(text),
              "source": source, "offset": float(offset)}
    if chroma is not None:
        record["chroma"] = np.asarray(chroma, np.uint8)
    return serialization.msgpack_serialize(record)


def decode_record(data: bytes) -> dict[str, Any]:
    return serialization.msgpack_restore(data)


class ShardWriter:
    """Writes one shard under a hidden temporary name (files.temp_file: a killed run's is removed by the
    next write into the folder); `close()` makes it visible (atomic rename)."""

    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = path
        self.tmp = files.temp_file(os.path.dirname(os.path.abspath(path)), ".array_record")
        self._writer = ArrayRecordWriter(self.tmp, "group_size:1")
        self.records = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.records += 1

    def close(self) -> None:
        self._writer.close()
        files.publish(self.tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def write_index(directory: str, info: DatasetInfo) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(asdict(info), f, indent=1)

    files.atomic_write(os.path.join(directory, INDEX), write, suffix=".json")


def read_index(directory: str) -> DatasetInfo:
    path = os.path.join(directory, INDEX)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} holds no {INDEX}: prepare it with `musicgen-jax prepare`")
    with open(path) as f:
        raw = json.load(f)
    if raw.get("version") != INDEX_VERSION:
        raise ValueError(f"{path}: unsupported dataset version {raw.get('version')!r} (expected {INDEX_VERSION})")
    return DatasetInfo(**raw)


def shard_paths(directory: str, info: DatasetInfo) -> list[str]:
    return [os.path.join(directory, s["path"]) for s in info.shards if s["records"] > 0]


def write_dataset(directory: str, records: Iterable[bytes], info: DatasetInfo,
                  records_per_shard: int = 1024) -> DatasetInfo:
    """Write encoded records into shards + index (used for synthetic data and tests)."""
    os.makedirs(directory, exist_ok=True)
    info.shards = []
    writer = None
    for record in records:
        if writer is None:
            name = f"shard-{len(info.shards):05d}.array_record"
            writer = ShardWriter(os.path.join(directory, name))
        writer.write(record)
        if writer.records >= records_per_shard:
            writer.close()
            info.shards.append({"path": os.path.basename(writer.path), "records": writer.records})
            writer = None
    if writer is not None:
        writer.close()
        info.shards.append({"path": os.path.basename(writer.path), "records": writer.records})
    write_index(directory, info)
    return info
