"""LAION-CLAP through its reference package (`laion-clap`, extra `eval-clap`), as audiocraft's
`CLAPTextConsistencyMetric` uses it.

audiocraft's settings for MusicGen: checkpoint `music_audioset_epoch_15_esc_90.14.pt` (LAION's music
CLAP, on the Hugging Face hub in `lukewys/laion_clap`), architecture HTSAT-base, no fusion. Audio goes in
as 48 kHz mono float tensors (`get_audio_embedding_from_data(..., use_tensor=True)`: no int16
quantisation), text through the default RoBERTa tokenizer (padding to 77 tokens, as audiocraft's own).
Clips longer than 10 s are cropped at a random offset by laion-clap; this adapter seeds numpy's global
generator around each call (and restores it) so scores are reproducible.
"""
from __future__ import annotations

import contextlib

import numpy as np

from musicgen_jax.evaluation.audio_io import to_mono
from musicgen_jax.evaluation.errors import BackendLoadError, import_extra

EXTRA = "eval-clap"
SAMPLE_RATE = 48000
DEFAULT_REPO = "lukewys/laion_clap"
DEFAULT_CHECKPOINT = "music_audioset_epoch_15_esc_90.14.pt"
DEFAULT_ARCH = "HTSAT-base"


@contextlib.contextmanager
def _seeded_numpy(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def fetch_default_checkpoint() -> str:
    """The music CLAP checkpoint audiocraft uses, from the Hugging Face cache or hub."""
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(DEFAULT_REPO, DEFAULT_CHECKPOINT)
    except Exception as e:
        raise BackendLoadError(
            f"cannot fetch the CLAP checkpoint {DEFAULT_REPO}/{DEFAULT_CHECKPOINT} ({type(e).__name__}: {e}); "
            f"download it once online, or pass a local file with --clap-checkpoint") from e


def read_clap_state(path: str) -> dict:
    """A laion-clap training checkpoint -> the model's state dict, as audiocraft's `load_clap_state_dict`:
    the `state_dict` entry if present, a DataParallel `module.` prefix removed, and the text branch's
    `position_ids` buffer dropped (newer transformers no longer have it)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # laion's files pickle more than tensors
    except Exception as e:
        raise BackendLoadError(f"cannot read the CLAP checkpoint {path}: {e}") from e
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not state:
        raise BackendLoadError(f"{path} holds no CLAP state dict")
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    state.pop("text_branch.embeddings.position_ids", None)
    return state


class ClapModel:
    """Audio and text embeddings of a LAION-CLAP model; also an embedding backend (one row per clip)."""

    name = "clap"
    sample_rate = SAMPLE_RATE

    def __init__(self, model, seed: int = 0):
        self.model = model  # laion_clap.CLAP_Module (or an object with the same two methods)
        self.seed = seed

    @classmethod
    def load(cls, checkpoint: str | None = None, arch: str | None = None, enable_fusion: bool = False,
             seed: int = 0) -> "ClapModel":
        laion_clap = import_extra("laion_clap", "laion-clap", EXTRA, "The CLAP score")
        path = checkpoint or fetch_default_checkpoint()
        try:
            model = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=arch or DEFAULT_ARCH)
        except Exception as e:
            raise BackendLoadError(
                f"building LAION-CLAP ({arch or DEFAULT_ARCH}) failed: {type(e).__name__}: {e}. It reads "
                f"roberta-base's tokenizer and config from the Hugging Face hub: run once online to cache "
                f"them") from e
        try:
            model.model.load_state_dict(read_clap_state(path))
        except BackendLoadError:
            raise
        except Exception as e:
            raise BackendLoadError(f"the CLAP checkpoint {path} does not fit {arch or DEFAULT_ARCH} "
                                   f"(enable_fusion={enable_fusion}): {e}") from e
        model.eval()
        return cls(model, seed=seed)

    def audio_embeddings(self, wavs) -> np.ndarray:
        """48 kHz mono clips (a list of [N] arrays) -> [B, dim]."""
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)) for w in wavs]
        with torch.no_grad(), _seeded_numpy(self.seed):
            out = self.model.get_audio_embedding_from_data(tensors, use_tensor=True)
        return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, np.float64)

    def text_embeddings(self, texts) -> np.ndarray:
        """list of strings -> [B, dim]."""
        import torch

        with torch.no_grad():
            out = self.model.get_text_embedding(list(texts), use_tensor=True)
        return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, np.float64)

    def embed(self, wav, sample_rate: int) -> np.ndarray:
        return self.audio_embeddings([to_mono(wav, sample_rate, self.sample_rate)])


__all__ = ["ClapModel", "read_clap_state", "fetch_default_checkpoint", "SAMPLE_RATE", "DEFAULT_CHECKPOINT"]
