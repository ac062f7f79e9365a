"""PaSST through its reference package (`hear21passt`, extra `eval-passt`), as audiocraft's
`PasstKLDivergenceMetric` uses it.

audiocraft's settings for MusicGen: the 20 s model (`pretrained_length: 20`); audio converted to 32 kHz
mono, cut into consecutive pieces of at most 20 s (no padding; pieces of at most 0.15 s dropped), each
piece run alone through the model; label distribution = softmax over the 527 AudioSet logits. Each piece
is one row of the KL average. The weights are downloaded by hear21passt on first use.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np

from musicgen_jax.evaluation.audio_io import to_mono
from musicgen_jax.evaluation.errors import BackendLoadError, import_extra
from musicgen_jax.evaluation.metrics import split_segments

EXTRA = "eval-passt"
SAMPLE_RATE = 32000
MIN_SECONDS = 0.15
NUM_CLASSES = 527  # AudioSet labels
# pretrained window (s) -> module names (hear21passt on PyPI; audiocraft's pinned 0.0.19 used the underscored ones)
_MODULES = {10: ("hear21passt.base",), 20: ("hear21passt.base20sec", "hear21passt.base_20sec"),
            30: ("hear21passt.base30sec", "hear21passt.base_30sec")}


@contextlib.contextmanager
def _quiet_real_stft():
    """audiocraft's PaSST call: stdout silenced and torch.stft asked for real (not complex) output."""
    import torch

    original = torch.stft
    torch.stft = functools.partial(original, return_complex=False)
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="stft with return_complex=False is deprecated")
            yield
    finally:
        torch.stft = original


class PasstModel:
    """PaSST label distributions (for KL) and embeddings (an embedding backend: one row per piece)."""

    name = "passt"
    sample_rate = SAMPLE_RATE

    def __init__(self, model, pretrained_length: int = 20, num_classes: int = NUM_CLASSES):
        self.model = model  # hear21passt wrapper in mode "all": [B, T] -> [B, classes + embedding]
        self.max_samples = int(pretrained_length * SAMPLE_RATE)
        self.min_samples = int(MIN_SECONDS * SAMPLE_RATE)
        self.num_classes = num_classes

    @classmethod
    def load(cls, pretrained_length: int = 20) -> "PasstModel":
        if pretrained_length not in _MODULES:
            raise ValueError(f"PaSST comes with 10, 20 or 30 s windows, got {pretrained_length}")
        import_extra("hear21passt", "hear21passt", EXTRA, "The KL divergence (PaSST)")
        module = None
        for name in _MODULES[pretrained_length]:
            try:
                module = import_extra(name, "hear21passt", EXTRA, "The KL divergence (PaSST)")
                break
            except ImportError:
                continue
        if module is None:
            raise BackendLoadError(f"this hear21passt has no {pretrained_length} s model "
                                   f"(looked for {', '.join(_MODULES[pretrained_length])})")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                model = module.get_basic_model(mode="all")
        except Exception as e:
            raise BackendLoadError(f"building PaSST ({pretrained_length} s) failed: {type(e).__name__}: {e}. "
                                   f"hear21passt downloads its weights from GitHub on first use: run once online "
                                   f"(they are cached by torch.hub)") from e
        model.eval()
        return cls(model, pretrained_length=pretrained_length)

    def segments(self, wav, sample_rate: int) -> list[np.ndarray]:
        """A clip -> its 32 kHz mono pieces (float32) in audiocraft's segmenting."""
        mono = to_mono(wav, sample_rate, SAMPLE_RATE).astype(np.float32)
        return split_segments(mono, self.max_samples, self.min_samples)

    def _run(self, piece: np.ndarray) -> np.ndarray:
        import torch

        with _quiet_real_stft():
            out = self.model(torch.from_numpy(np.ascontiguousarray(piece[None], np.float32)))
        return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out)[0]

    def label_probs_of_pieces(self, pieces) -> np.ndarray:
        """32 kHz mono pieces -> [len(pieces), classes]: softmax of the logits, one piece at a time."""
        import torch

        rows = []
        for piece in pieces:
            logits = torch.from_numpy(self._run(piece)[:self.num_classes].astype(np.float32))
            rows.append(torch.softmax(logits, dim=-1).numpy().astype(np.float64))
        return np.stack(rows) if rows else np.zeros((0, self.num_classes))

    def label_probs(self, wav, sample_rate: int) -> np.ndarray:
        return self.label_probs_of_pieces(self.segments(wav, sample_rate))

    def embed(self, wav, sample_rate: int) -> np.ndarray:
        rows = [self._run(p)[self.num_classes:] for p in self.segments(wav, sample_rate)]
        return np.stack(rows).astype(np.float64) if rows else np.zeros((0, 0))


__all__ = ["PasstModel", "SAMPLE_RATE", "MIN_SECONDS", "NUM_CLASSES"]
