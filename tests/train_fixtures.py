"""Helpers for the training tests: a tiny tokenizer, synthetic learnable datasets, test configs,
and a tiny transformers-layout MusicGen checkpoint (the base for fine-tuning and export; needs torch)."""
from __future__ import annotations

import os

import numpy as np

from musicgen_jax.train.records import DatasetInfo, encode_record, write_dataset

CAPTIONS = ("slow piano", "fast drums", "happy guitar", "sad violin")


def synthetic_codes(rng: np.random.Generator, caption_index: int, num_codebooks: int, frames: int,
                    card: int) -> np.ndarray:
    """[K, T] codes with learnable structure: codebook q walks by a caption-dependent stride from a
    random start, so every frame after the first follows from the previous one and the caption."""
    stride = 1 + caption_index % 2
    start = rng.integers(0, card, size=(num_codebooks, 1))
    return ((start + stride * np.arange(frames)[None]) % card).astype(np.int16)


def write_synthetic_dataset(directory: str, *, records: int = 64, frames: int = 24, num_codebooks: int = 4,
                            card: int = 32, seed: int = 0, records_per_shard: int = 16, chroma: bool = False,
                            short_every: int = 0) -> DatasetInfo:
    """A prepared-looking dataset of synthetic codes (no audio); `short_every` pads every n-th record."""
    rng = np.random.default_rng(seed)

    def items():
        for i in range(records):
            c = int(rng.integers(0, len(CAPTIONS)))
            codes = synthetic_codes(rng, c, num_codebooks, frames, card)
            valid = frames // 2 if short_every and i % short_every == 0 else frames
            bins = rng.integers(0, 12, size=(frames // 4 + 1,)) if chroma else None
            yield encode_record(codes, valid, CAPTIONS[c], chroma=bins, source=f"synthetic/{i}")

    info = DatasetInfo(sample_rate=32000, frame_rate=50.0, num_codebooks=num_codebooks, codebook_size=card,
                       segment_frames=frames, codec="synthetic", chroma=chroma)
    return write_dataset(directory, items(), info, records_per_shard)


def tiny_tokenizer(directory: str) -> str:
    """A sentencepiece model small enough for the tiny T5's 128-row table."""
    from musicgen_jax.testing import train_spiece

    path = os.path.join(directory, "spiece.model")
    if not os.path.isfile(path):
        train_spiece(directory, vocab_size=100)
    return directory


def tiny_overrides(data_dir: str, tokenizer_dir: str, **extra) -> list[str]:
    """Overrides of a fast scratch run of the `tiny` preset with a random text encoder."""
    base = {
        "steps": 120, "model.preset": "tiny", "model.t5": "random", "model.tokenizer": tokenizer_dir,
        "data.train": data_dir, "data.batch_size": 8, "data.max_text_tokens": 8, "data.prefetch": 0,
        "optim.lr": 2e-2, "optim.warmup_steps": 10, "optim.weight_decay": 0.0, "optim.cond_dropout": 0.1,
        "mesh.data": -1, "log.progress": False, "log.every": 10,
        # halves XLA's CPU compile time, which dominates these tests
        "compiler_options": "{xla_backend_optimization_level: 0, xla_llvm_disable_expensive_passes: true}",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


_COMPILE_CACHE: list[str] = []


def enable_compile_cache(directory: str) -> None:
    """Share compiled programs between the trainers (and subprocesses) of the training tests: XLA's
    CPU compilation dominates their run time. Idempotent within a session."""
    import jax

    if _COMPILE_CACHE:
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:  # the cache may have been initialised (disabled) by earlier tests of the session
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):
        pass
    _COMPILE_CACHE.append(str(directory))


def compile_cache_env() -> dict[str, str]:
    """Environment for subprocesses that should reuse the session's compilation cache."""
    if not _COMPILE_CACHE:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": _COMPILE_CACHE[0], "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


class TrainWorld:
    """Session-wide inputs of the training tests: a tokenizer, a synthetic dataset, a compile cache."""

    def __init__(self, root):
        root = str(root)
        enable_compile_cache(os.path.join(root, "xla-cache"))
        self.root = root
        self.tokenizer = tiny_tokenizer(os.path.join(root, "spm"))
        self.data = os.path.join(root, "data")
        write_synthetic_dataset(self.data)

    def overrides(self, **extra) -> list[str]:
        return tiny_overrides(self.data, self.tokenizer, **extra)

    def config(self, **extra):
        from musicgen_jax.train.config import load_config

        return load_config(None, self.overrides(**extra))


_WORLD: list[TrainWorld] = []


def train_world(tmp_path_factory) -> TrainWorld:
    """One TrainWorld per session (shared by every training test module)."""
    if not _WORLD:
        _WORLD.append(TrainWorld(tmp_path_factory.mktemp("train-world")))
    return _WORLD[0]


def single_device_mesh():
    import jax

    from musicgen_jax.sharding import make_mesh

    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def corrupt_checkpoint(directory: str, step: int) -> None:
    """Flip bytes in the largest data file of a checkpoint step (simulated silent corruption)."""
    files = []
    for root, _, names in os.walk(os.path.join(directory, str(step), "state")):
        files += [os.path.join(root, n) for n in names]
    target = max(files, key=os.path.getsize)
    with open(target, "r+b") as f:
        data = bytearray(f.read())
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
        f.seek(0)
        f.write(bytes(data))


def random_tiny_codec(seed: int = 0, channels: int = 1):
    """The tiny preset's EnCodec with random weights drawn on the host (no init compilation)."""
    import jax

    from musicgen_jax.codec import CompressionModel
    from musicgen_jax.config import tiny
    from musicgen_jax.convert.encodec import encodec_abstract_params

    cfg = tiny().encodec
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return CompressionModel(cfg, jax.tree.map(draw, encodec_abstract_params(cfg)), channels)


def write_audio(path: str, wav: np.ndarray, rate: int, caption: str | None = None) -> str:
    """wav [C, N] -> audio file (format from the extension); caption -> same-stem .txt."""
    import soundfile as sf

    sf.write(path, np.asarray(wav, np.float32).T, rate)
    if caption is not None:
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write(caption)
    return path


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    return np.repeat(wav[None], channels, axis=0).astype(np.float32)


TRAIN_T5 = dict(vocab_size=128, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3)


def save_tiny_transformers_musicgen(directory: str, seed: int = 0) -> str:
    """A random tiny transformers MusicGen (T5 width 24 != LM width 32, so it has a text projection;
    the tiny EnCodec; a 100-piece sentencepiece tokenizer) saved where `MusicGen.from_pretrained` can
    load it: testing.save_reference_musicgen at these sizes, with transformers' own init (not widened)."""
    from musicgen_jax.testing import save_reference_musicgen

    save_reference_musicgen(directory, dim=32, layers=2, heads=4, ffn=64, card=32, text=TRAIN_T5, widen=False,
                            spiece_vocab=100, seed=seed)
    return directory
