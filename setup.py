"""musicgen-jax: MusicGen (text-to-music) in JAX/Flax, loading the official weights."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _packages() -> list[str]:
    """musicgen_jax and every subpackage. A folder of modules without __init__.py would silently be
    left out of the wheel (musicgen_jax/train once was), so that is an error here."""
    packages = find_packages(HERE, include=["musicgen_jax", "musicgen_jax.*"])
    for folder, dirs, files in os.walk(os.path.join(HERE, "musicgen_jax")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        name = os.path.relpath(folder, HERE).replace(os.sep, ".")
        if any(f.endswith(".py") for f in files) and name not in packages:
            raise SystemExit(f"{folder} has Python modules but no __init__.py: it would be missing from the wheel")
    return packages


setup(
    name="musicgen_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of MusicGen with parity to the official weights",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=_packages(),
    # Package data: only the GPU target descriptions of musicgen_jax/aot (checkpoints, tokenizers and
    # training recipes such as configs/train/*.yaml are paths the user passes).
    package_data={"musicgen_jax.aot": ["gpu_targets/*.txtpb"]},
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
        # torchvggish: the VGGish parity reference (pulls resampy + numba; uses the pre-installed torch)
        # the app's tests drive Debian's chromium + chromium-driver through selenium (.ci/run installs them)
        "test": ["pytest>=7", "scipy", "torch>=2.1", "transformers>=4.40", "torchvggish==0.2", "gradio>=6.0,<7",
                 "matplotlib>=3.7", "selenium>=4.10",
                 "papermill>=2.4", "ipykernel>=6",  # executes notebooks/*.ipynb (tests/test_notebooks.py)
                 "peft>=0.17"],  # the LoRA adapter-folder reference (tests/test_lora_peft.py)
        # the web app (`musicgen-jax app`); its streamed audio also needs ffmpeg on PATH
        "app": ["gradio>=6.0,<7", "matplotlib>=3.7"],
        # optional evaluation backends through their reference packages (torch models, weights fetched on
        # first use). laion-clap 1.1.6 / 1.1.7 pin numpy below 2, which current jax cannot use: 1.1.5 does not.
        "eval-clap": ["torch>=2.1", "laion-clap==1.1.5"],
        # hear21passt needs torchaudio: install the torchaudio built for your torch first
        "eval-passt": ["torch>=2.1", "hear21passt>=0.0.26"],
        "gpu": ["jax[cuda12]"],
        # compile for GPUs and TPUs that are not present (musicgen_jax/aot, experiments/aot_report.py): libtpu
        # and the CUDA plugin at the installed jax's version, without NVIDIA's libraries (cuda12-local)
        "aot": ["jax[tpu,cuda12-local]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["musicgen-jax=musicgen_jax.cli:main"]},
)
