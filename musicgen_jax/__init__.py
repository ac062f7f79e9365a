"""musicgen-jax: MusicGen text-to-music in JAX/Flax, with parity to the official PyTorch weights."""
from musicgen_jax.codec import CompressionModel
from musicgen_jax.config import (PRESETS, EncodecConfig, GenerationParams, LMConfig, MusicGenConfig,
                                 SamplingParams, T5Config, preset, tiny)
from musicgen_jax.musicgen import MusicGen

__all__ = ["MusicGen", "GenerationParams", "SamplingParams", "CompressionModel", "MusicGenConfig", "LMConfig",
           "T5Config", "EncodecConfig", "PRESETS", "preset", "tiny"]
__version__ = "0.1.0"
