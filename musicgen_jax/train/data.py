"""Input pipeline over prepared shards (grain, random access).

    global stream:  shuffle(seed, reshuffled every epoch) -> repeat -> decode -> random crop -> tokenize
    process p:      rows [b*G + p*G/P, b*G + (p+1)*G/P) of global batch b   (G global batch, P processes)

Every transformation is a pure function of the global element index (grain's MapDataset: random
crops are seeded by that index), so
  * the iterator state is one integer, the next batch index, identical on every process; it is saved
    with the model checkpoint and restores the exact stream;
  * P processes together see exactly the rows one process would: a multi-host run trains on the same
    global batches as a single-host run.
Batches hold numpy arrays with a leading local batch dimension:
    codes [b, K, T] int32, frames [b] int32, text_ids [b, L] int32, text_mask [b, L] int32,
    chroma [b, F] int32 (melody models: dominant chroma bin per frame).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from musicgen_jax import chroma
from musicgen_jax.config import LMConfig
from musicgen_jax.tokenizer import T5Tokenizer
from musicgen_jax.train.records import DatasetInfo, decode_record, read_index, shard_paths



def check_dataset(info: DatasetInfo, lm: LMConfig, directory: str) -> None:
    """The dataset must have been encoded for this LM (codebooks, cardinality, melody chroma)."""
    problems = []
    if info.num_codebooks != lm.num_codebooks:
        problems.append(f"{info.num_codebooks} codebooks (the LM has {lm.num_codebooks})")
    if info.codebook_size != lm.codebook_size:
        problems.append(f"codebook size {info.codebook_size} (the LM has {lm.codebook_size})")
    if lm.is_melody and not info.chroma:
        problems.append("no chroma (a melody model needs `prepare --chroma`)")
    if info.num_records == 0:
        problems.append("no records")
    if problems:
        raise ValueError(f"dataset {directory} does not fit the model: " + "; ".join(problems))


class Crop:
    """Random crop of `frames` frames within a record's real audio (codes, frames, chroma)."""

    def __init__(self, frames: int | None, frame_rate: float, sample_rate: int):
        self.frames = frames
        self.chroma_per_frame = sample_rate / chroma.HOP_LENGTH / frame_rate

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        codes, valid = record["codes"], int(record["frames"])
        if self.frames is None or self.frames >= codes.shape[-1]:
            return record
        start = int(rng.integers(0, max(valid - self.frames, 0) + 1))
        out = dict(record, codes=codes[:, start:start + self.frames], frames=min(self.frames, max(valid - start, 0)))
        if "chroma" in record:
            c0 = int(start * self.chroma_per_frame)
            out["chroma"] = record["chroma"][c0:c0 + max(1, round(self.frames * self.chroma_per_frame))]
        return out


class Featurize:
    """Record -> model inputs: tokenized caption padded / cut to `max_text_tokens`, chroma tiled or cut
    to the LM's prefix length. Drops the string fields (batches are numeric)."""

    def __init__(self, tokenizer: T5Tokenizer, max_text_tokens: int, chroma_frames: int | None):
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.chroma_frames = chroma_frames

    def text(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        ids = self.tokenizer.encode(caption)
        if len(ids) > self.max_text_tokens:  # keep the end-of-sequence token, as a full caption has
            ids = ids[: self.max_text_tokens - 1] + [ids[-1]]
        out = np.full((self.max_text_tokens,), self.tokenizer.pad_id, np.int32)
        out[: len(ids)] = ids
        mask = np.zeros((self.max_text_tokens,), np.int32)
        mask[: len(ids)] = 1
        return out, mask

    def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        ids, mask = self.text(record["text"])
        out = {"codes": np.asarray(record["codes"], np.int32), "frames": np.int32(record["frames"]),
               "text_ids": ids, "text_mask": mask}
        if self.chroma_frames:
            bins = np.asarray(record["chroma"], np.int32)  # [F] dominant bin per chroma frame
            out["chroma"] = chroma.fit_chroma_length(bins[:, None], self.chroma_frames)[:, 0] if len(bins) else \
                np.zeros((self.chroma_frames,), np.int32)
        return out


def batch_shapes(global_batch: int, num_codebooks: int, frames: int, max_text_tokens: int,
                 chroma_frames: int | None = None) -> dict[str, tuple[int, ...]]:
    """Global shapes of one batch (see module doc); `TrainData.batch_shapes` of a dataset, or of a recipe
    without one (ahead-of-time compiles)."""
    shapes = {"codes": (global_batch, num_codebooks, frames),
              "frames": (global_batch,),
              "text_ids": (global_batch, max_text_tokens),
              "text_mask": (global_batch, max_text_tokens)}
    if chroma_frames:
        shapes["chroma"] = (global_batch, chroma_frames)
    return shapes


class TrainData:
    """Iterator of this process's share of every global batch; `get_state`/`set_state` for resume."""

    def __init__(self, directory: str, *, tokenizer: T5Tokenizer, lm: LMConfig, global_batch: int,
                 max_text_tokens: int = 64, crop_seconds: float | None = None, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 2):
        import grain

        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.info = read_index(directory)
        check_dataset(self.info, lm, directory)
        self.local_batch = global_batch // process_count
        self.global_batch = global_batch
        crop = None if crop_seconds is None else int(round(crop_seconds * self.info.frame_rate))
        self.frames = min(crop or self.info.segment_frames, self.info.segment_frames)
        self.chroma_frames = lm.chroma_frames if lm.is_melody else None
        self.max_text_tokens = max_text_tokens

        source = grain.sources.ArrayRecordDataSource(shard_paths(directory, self.info))
        ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
        ds = ds.map(decode_record).random_map(Crop(crop, self.info.frame_rate, self.info.sample_rate))
        ds = ds.map(Featurize(tokenizer, max_text_tokens, self.chroma_frames))
        ds = ds.batch(self.local_batch, drop_remainder=True)[process_index::process_count]
        options = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
        self._dataset = ds.to_iter_dataset(options) if prefetch else ds.to_iter_dataset()
        self._iter = iter(self._dataset)

    def batch_shapes(self) -> dict[str, tuple[int, ...]]:
        """Global shapes of one batch (what the train step is compiled for)."""
        return batch_shapes(self.global_batch, self.info.num_codebooks, self.frames, self.max_text_tokens,
                            self.chroma_frames)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        return dict(self._iter.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        self._iter.set_state(state)
