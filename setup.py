"""musicgen-jax: MusicGen (text-to-music) in JAX/Flax, loading the official weights."""
from setuptools import find_packages, setup

setup(
    name="musicgen_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of MusicGen with parity to the official weights",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["musicgen_jax", "musicgen_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5.0",
        "flax>=0.10.0",
        "optax>=0.2.2",
        "orbax-checkpoint>=0.5.20",
        "numpy>=1.24",
        "librosa>=0.10",
        "soundfile>=0.12",
        "soxr>=0.3",
        "sentencepiece>=0.1.99",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "grain>=0.2.18",  # training input pipeline
        "array-record>=0.5",  # training shards (written directly by train/records.py)
    ],
    extras_require={
        # torch: pre-install torch==2.13.0 (CPU) first; an unpinned torch pulls the CUDA wheels.
        "test": ["pytest>=7", "scipy", "torch>=2.1", "transformers>=4.40"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["musicgen-jax=musicgen_jax.cli:main"]},
)
