"""Audio embeddings for FAD behind one small interface, and a registry of the backends.

A backend has a `name`, the `sample_rate` it works at, and `embed(wav, sample_rate) -> [n, dim]`: one clip
([samples] or [channels, samples], any rate and channel count: each backend resamples and mixes as its
model expects) to n embedding rows, which FAD pools over a whole set.

    vggish   VGGish (Flax port, evaluation/vggish.py) exactly as audiocraft's FAD runs it: 16 kHz mono,
             the FAD tool's loudness normalisation, one 128-d embedding per 1 s window every 0.5 s.
             Weights: torchvggish's published state_dict (downloaded once into the cache, or a path).
    encodec  the continuous latents of our EnCodec encoder (before quantisation): one 128-d row per
             codec frame (50 per second for the 32 kHz codec). Uses the codec MusicGen already loads.
    clap     LAION-CLAP audio embedding, one 512-d row per clip (optional extra `eval-clap`).
    passt    PaSST embedding, one 768-d row per segment of up to `pretrained_length` s (extra `eval-passt`).

New backends: `@register_embedding("name")` on a factory `(**options) -> backend`.
"""
from __future__ import annotations

import functools
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from musicgen_jax.evaluation.audio_io import as_channels_first, to_mono


@runtime_checkable
class EmbeddingBackend(Protocol):
    name: str
    sample_rate: int

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """One clip [N] or [C, N] at `sample_rate` -> embeddings [n, dim] (n may be 0 for a short clip)."""
        ...


_REGISTRY: dict[str, Callable[..., EmbeddingBackend]] = {}


def register_embedding(name: str):
    """Decorator: register a factory `(**options) -> EmbeddingBackend` under `name`."""
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def embedding_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def load_embedding(name: str, **options) -> EmbeddingBackend:
    """The backend `name` built with `options` (see each factory)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown embedding {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**options)


# ----------------------------------------------------------------------------------------------------------
# vggish


class VGGishEmbedding:
    """VGGish as audiocraft's FAD (TensorFlow FAD tool) runs it; see evaluation/vggish.py."""

    name = "vggish"

    def __init__(self, model, step: int | None = None):
        from musicgen_jax.evaluation import vggish

        self.model = model  # a VGGishModel (or any callable [n, 96, 64] -> [n, 128])
        self.sample_rate = vggish.SAMPLE_RATE
        self.step = step or vggish.FAD_STEP

    def embed(self, wav, sample_rate: int) -> np.ndarray:
        from musicgen_jax.evaluation import vggish

        return np.asarray(self.model(vggish.fad_examples(to_mono(wav, sample_rate, self.sample_rate), self.step)))


@register_embedding("vggish")
def _vggish(weights: str | None = None, final_relu: bool = False, batch_size: int = 32,
            progress: bool = True) -> VGGishEmbedding:
    """weights: torchvggish state_dict file (None: download the published one into the cache once).
    final_relu: torchvggish's extra ReLU on the embedding (off: the TF model the FAD tool uses)."""
    from musicgen_jax.evaluation.vggish import VGGishModel, load_vggish_params

    return VGGishEmbedding(VGGishModel(load_vggish_params(weights, progress=progress), final_relu=final_relu,
                                       batch_size=batch_size))


# ----------------------------------------------------------------------------------------------------------
# encodec


class EncodecEmbedding:
    """Our EnCodec encoder's latents before the quantizer: [frames, dimension] per clip."""

    name = "encodec"

    def __init__(self, codec):
        self.codec = codec  # a CompressionModel
        self.sample_rate = codec.sample_rate
        self.channels = codec.config.channels  # the mono codec of a stereo model takes one channel
        self._encode = _encoder_fn(codec.config)

    def embed(self, wav, sample_rate: int) -> np.ndarray:
        from musicgen_jax.audio import convert_channels, resample

        x = as_channels_first(wav).astype(np.float32)
        x = convert_channels(resample(x, sample_rate, self.sample_rate), self.channels)
        latents = self._encode(self.codec.params, np.ascontiguousarray(x.T[None], np.float32))  # [1, T, D]
        return np.asarray(latents[0], np.float32)


@functools.lru_cache(maxsize=8)
def _encoder_fn(config):
    """The jitted SEANet encoder of a codec config (shared by every backend of that config: one compile per
    input length)."""
    import jax

    from musicgen_jax.modules.encodec import Encodec

    module = Encodec(config)
    return jax.jit(lambda params, x: module.apply({"params": params}, x, method=lambda m, y: m.encoder(y)))


@register_embedding("encodec")
def _encodec(codec="facebook/encodec_32khz") -> EncodecEmbedding:
    """codec: a CompressionModel, or an EnCodec / MusicGen checkpoint name or directory."""
    if isinstance(codec, str):
        from musicgen_jax.codec import CompressionModel

        codec = CompressionModel.from_pretrained(codec)
    return EncodecEmbedding(codec)


# ----------------------------------------------------------------------------------------------------------
# optional reference packages


@register_embedding("clap")
def _clap(checkpoint: str | None = None, arch: str | None = None, enable_fusion: bool = False):
    """LAION-CLAP audio embeddings (pip install 'musicgen_jax[eval-clap]'), see evaluation/clap.py."""
    from musicgen_jax.evaluation.clap import ClapModel

    return ClapModel.load(checkpoint=checkpoint, arch=arch, enable_fusion=enable_fusion)


@register_embedding("passt")
def _passt(pretrained_length: int = 20):
    """PaSST embeddings (pip install 'musicgen_jax[eval-passt]'), see evaluation/passt.py."""
    from musicgen_jax.evaluation.passt import PasstModel

    return PasstModel.load(pretrained_length=pretrained_length)


__all__ = ["EmbeddingBackend", "register_embedding", "embedding_names", "load_embedding", "VGGishEmbedding",
           "EncodecEmbedding"]
