"""The paper's objective metrics as audiocraft computes them, in numpy/scipy (no model in this file).

- Frechet distance (FAD): embeddings of the generated set and of the reference set are each summarised by
  a Gaussian (mean, covariance with the n - 1 denominator); the distance is
  |mu_g - mu_r|^2 + Tr(S_g) + Tr(S_r) - 2 Tr(sqrt(S_g S_r)). The square root follows the guards of
  the TensorFlow FAD tool that audiocraft runs (google-research `frechet_audio_distance/fad_utils.py`,
  as fadtk / pytorch-fid): scipy's `sqrtm`; if the result is not finite, retry with `eps` added to both
  diagonals; fail if the diagonal of the root has an imaginary part above 1e-3; keep the real part.
- KL divergence (audiocraft `metrics/kld.py`): per pair of label distributions, sum_c q_c (log q_c -
  log(p_c + 1e-6)) with p from the generated audio and q from the reference (torch's `kl_div` on
  `(p + eps).log()`, 0 log 0 = 0); `kld` = `kld_pq` is its mean over pairs, `kld_qp` the reverse
  direction, `kld_both` their sum.
- CLAP score (audiocraft `CLAPTextConsistencyMetric`): mean cosine similarity of each generated clip's
  audio embedding with its text's embedding.
- Chroma cosine similarity (audiocraft `ChromaCosineSimilarityMetric`): chromagrams of generated and
  reference audio compared frame by frame (cosine, eps 1e-8) over the first ceil(samples / hop) frames,
  averaged over all frames of all pairs.

Cosine similarities follow torch's `F.cosine_similarity`: x.y / (max(|x|, eps) * max(|y|, eps)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FAD_SQRT_EPS = 1e-7  # the diagonal offset of google-research's _stable_trace_sqrt_product (audiocraft's FAD)
KL_EPS = 1e-6  # audiocraft kl_divergence epsilon
COSINE_EPS = 1e-8  # audiocraft's cosine_similarity eps (CLAP, chroma)


class MetricError(ValueError):
    """Inputs a metric cannot be computed from (too few embeddings, mismatched shapes, NaNs, ...)."""


# ----------------------------------------------------------------------------------------------------------
# Frechet distance


def _as_matrix(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricError(f"{name} must be a 2-D array [count, dim], got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise MetricError(f"{name} has embeddings of dimension 0")
    if not np.isfinite(arr).all():
        raise MetricError(f"{name} contains NaN or infinite values")
    return arr


def gaussian_stats(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """embeddings [n, d] -> (mean [d], covariance [d, d]) in float64, covariance with the n - 1 denominator
    (np.cov(rowvar=False); the FAD tool's accumulated sum(x x^T)/(n-1) - m m^T n/(n-1) is the same)."""
    x = _as_matrix(embeddings, "embeddings")
    if x.shape[0] < 2:
        raise MetricError(f"a covariance needs at least 2 embeddings, got {x.shape[0]}")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():  # nearly singular product: offset both diagonals
        offset = np.eye(sigma1.shape[0]) * eps
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            worst = float(np.max(np.abs(np.diagonal(root).imag)))
            raise MetricError(f"the square root of the covariance product has large imaginary parts "
                              f"(up to {worst:.3g}): too few embeddings for their dimension?")
        root = root.real
    return float(np.trace(root))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FAD_SQRT_EPS) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau), with the FAD tool's
    square-root guards (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise MetricError(f"means must be 1-D of one length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricError(f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise MetricError(f"{name} contains NaN or infinite values")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * _trace_sqrt_product(sigma1, sigma2, eps))


def frechet_audio_distance(generated, reference, eps: float = FAD_SQRT_EPS) -> float:
    """FAD between two sets of embeddings [n_g, d] and [n_r, d] (each row one window / frame / clip)."""
    g, r = _as_matrix(generated, "generated embeddings"), _as_matrix(reference, "reference embeddings")
    if g.shape[1] != r.shape[1]:
        raise MetricError(f"embedding dimensions differ: generated {g.shape[1]}, reference {r.shape[1]}")
    return frechet_distance(*gaussian_stats(g), *gaussian_stats(r), eps=eps)


# ----------------------------------------------------------------------------------------------------------
# label distributions and KL


def softmax(logits, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _probabilities(p, name: str) -> np.ndarray:
    arr = np.asarray(p, np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise MetricError(f"{name} must be [count, classes], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MetricError(f"{name} contains NaN or infinite values")
    if (arr < 0).any():
        raise MetricError(f"{name} has negative probabilities")
    return arr


def kl_divergence(pred_probs, target_probs, eps: float = KL_EPS) -> np.ndarray:
    """Per row: sum_c target_c * (log target_c - log(pred_c + eps)), 0 where target_c = 0 -> [count]."""
    p = _probabilities(pred_probs, "pred_probs")
    q = _probabilities(target_probs, "target_probs")
    if p.shape != q.shape:
        raise MetricError(f"label distributions differ in shape: {p.shape} vs {q.shape}")
    safe_q = np.where(q > 0, q, 1.0)
    return np.sum(np.where(q > 0, q * (np.log(safe_q) - np.log(p + eps)), 0.0), axis=-1)


@dataclass
class KLAccumulator:
    """audiocraft's KLDivergenceMetric state: running sums over (generated, reference) distribution pairs."""

    kld_pq_sum: float = 0.0
    kld_qp_sum: float = 0.0
    count: int = 0

    def update(self, generated_probs, reference_probs) -> None:
        pq = kl_divergence(generated_probs, reference_probs)
        if np.isnan(pq).any():
            raise MetricError("KL divergence is NaN")
        self.kld_pq_sum += float(pq.sum())
        self.kld_qp_sum += float(kl_divergence(reference_probs, generated_probs).sum())
        self.count += int(pq.shape[0])

    def compute(self) -> dict[str, float]:
        if self.count <= 0:
            raise MetricError("KL divergence over zero pairs: no audio long enough for the classifier")
        pq, qp = self.kld_pq_sum / self.count, self.kld_qp_sum / self.count
        return {"kld": pq, "kld_pq": pq, "kld_qp": qp, "kld_both": pq + qp}


def split_segments(wav: np.ndarray, max_samples: int, min_samples: int) -> list[np.ndarray]:
    """audiocraft's PaSST segmenting: cut [..., N] into consecutive pieces of max_samples (the last may be
    shorter, no padding) and drop pieces of at most min_samples samples."""
    if max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    n = wav.shape[-1]
    pieces = [wav[..., i:i + max_samples] for i in range(0, n, max_samples)]
    return [p for p in pieces if p.shape[-1] > min_samples]


# ----------------------------------------------------------------------------------------------------------
# cosine similarity: CLAP score, chroma


def cosine_similarity(a, b, eps: float = COSINE_EPS, axis: int = -1) -> np.ndarray:
    """torch.nn.functional.cosine_similarity: a.b / (max(|a|, eps) * max(|b|, eps)) along `axis`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise MetricError(f"cosine similarity of arrays of different shapes {a.shape} and {b.shape}")
    na = np.maximum(np.linalg.norm(a, axis=axis), eps)
    nb = np.maximum(np.linalg.norm(b, axis=axis), eps)
    return np.sum(a * b, axis=axis) / (na * nb)


def clap_score(audio_embeddings, text_embeddings) -> float:
    """Mean cosine similarity of paired audio and text embeddings [n, d] (audiocraft's text consistency)."""
    a = _as_matrix(audio_embeddings, "audio embeddings")
    t = _as_matrix(text_embeddings, "text embeddings")
    if a.shape != t.shape:
        raise MetricError(f"audio embeddings {a.shape} and text embeddings {t.shape} do not pair up")
    return float(cosine_similarity(a, t).mean())


def chroma_frames_compared(num_samples: int, hop_length: int) -> int:
    """audiocraft: ceil(size / winhop) frames of each pair are compared (size in samples at the chroma rate)."""
    return int(math.ceil(num_samples / hop_length))


@dataclass
class ChromaCosineAccumulator:
    """audiocraft's ChromaCosineSimilarityMetric state: sum of frame cosines and number of frames."""

    cosine_sum: float = 0.0
    frames: int = 0

    def update(self, generated_chroma, reference_chroma, frames: int) -> None:
        """chroma [F, n_chroma] of one pair; compares the first `frames` frames."""
        g = np.asarray(generated_chroma, np.float64)[:frames]
        r = np.asarray(reference_chroma, np.float64)[:frames]
        if g.shape != r.shape:
            raise MetricError(f"chromagrams differ in shape: {g.shape} vs {r.shape}")
        self.cosine_sum += float(cosine_similarity(r, g).sum())
        self.frames += int(g.shape[0])

    def compute(self) -> float:
        if self.frames <= 0:
            raise MetricError("chroma cosine similarity over zero frames")
        return self.cosine_sum / self.frames


__all__ = [
    "MetricError", "gaussian_stats", "frechet_distance", "frechet_audio_distance", "softmax", "sigmoid",
    "kl_divergence", "KLAccumulator", "split_segments", "cosine_similarity", "clap_score",
    "chroma_frames_compared", "ChromaCosineAccumulator",
]
