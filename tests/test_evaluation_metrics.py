"""The evaluation metrics on synthetic data with known answers, and against the reference formulas.

Known answers are computed here independently of the code under test: Frechet distances of Gaussians in
closed form (diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2; general ones through an
eigen-decomposition), the FAD tool's own accumulation of statistics, KL by hand and with torch's
`kl_div` exactly as audiocraft calls it, cosine similarity with torch's `F.cosine_similarity`.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from musicgen_jax.evaluation import metrics as M


def random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d)) * scale
    return a @ a.T / d + 0.1 * np.eye(d)


def sqrt_spd(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ---------------------------------------------------------------------------------------------- Frechet


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 16)) @ np.random.default_rng(1).standard_normal((16, 16))
    assert abs(M.frechet_audio_distance(x, x)) < 1e-8
    assert M.frechet_audio_distance(x, x + 0.5) > 0.5 ** 2 * 16 - 1e-6  # shifted by 0.5 in all 16 dims


def test_frechet_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([3.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 9 + 4 + sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a, b))  # 13 + 1 + 1 + 6.25
    assert expected == pytest.approx(21.25)
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_closed_form_general_gaussians():
    """Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix: eigenvalues, no sqrtm."""
    rng = np.random.default_rng(3)
    d = 12
    s1, s2 = random_spd(rng, d), random_spd(rng, d, 2.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r = sqrt_spd(s1)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_of_samples_matches_the_fad_tool_formula():
    """Statistics accumulated as google-research's ComputeMeanAndCovariance does (sum of outer products),
    distance as its fad_utils.frechet_distance (scipy sqrtm, real part)."""
    from scipy import linalg

    rng = np.random.default_rng(4)
    gen = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 8)) + 1.0
    ref = rng.standard_normal((400, 8)) * 0.7

    def tool_stats(x):
        n = x.shape[0]
        mean_acc, cov_acc = np.zeros((8, 1)), np.zeros((8, 8))
        for row in x:
            e = row.reshape(8, 1)
            mean_acc += e
            cov_acc += e * e.T
        mu = mean_acc / n
        return mu.ravel(), cov_acc / (n - 1) - mu * mu.T * n / (n - 1)

    (m1, s1), (m2, s2) = tool_stats(gen), tool_stats(ref)
    root = linalg.sqrtm(s1.dot(s2)).real
    expected = (m1 - m2).dot(m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert M.frechet_audio_distance(gen, ref) == pytest.approx(expected, rel=1e-9)
    mu, sigma = M.gaussian_stats(gen)
    np.testing.assert_allclose(mu, m1, rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(gen, rowvar=False), rtol=1e-10, atol=1e-12)


def test_frechet_of_shifted_gaussian_samples_is_near_the_closed_form():
    rng = np.random.default_rng(5)
    shift = np.array([2.0, 0.0, -1.0, 0.5])
    a = rng.standard_normal((20000, 4))
    b = rng.standard_normal((20000, 4)) * 2.0 + shift  # N(shift, 4 I)
    expected = shift @ shift + 4 * (1 - 2) ** 2  # 5.25 + 4
    assert M.frechet_audio_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_errors():
    x = np.zeros((3, 4))
    with pytest.raises(M.MetricError, match="at least 2"):
        M.frechet_audio_distance(np.ones((1, 4)), x)
    with pytest.raises(M.MetricError, match="dimensions differ"):
        M.frechet_audio_distance(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(M.MetricError, match="NaN"):
        M.frechet_audio_distance(np.full((3, 4), np.nan), x)
    with pytest.raises(M.MetricError, match="imaginary"):  # not a covariance: sqrt(-I) = iI
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


# ---------------------------------------------------------------------------------------------- KL


def test_kl_known_values():
    q, p = np.array([[0.5, 0.5, 0.0]]), np.array([[0.9, 0.1, 0.0]])
    eps = 1e-6
    expected = 0.5 * (math.log(0.5) - math.log(0.9 + eps)) + 0.5 * (math.log(0.5) - math.log(0.1 + eps))
    assert M.kl_divergence(p, q)[0] == pytest.approx(expected, rel=1e-12)  # target 0 contributes 0
    same = M.softmax(np.random.default_rng(0).standard_normal((4, 10)))
    assert np.all(np.abs(M.kl_divergence(same, same)) < 1e-5)


def test_kl_accumulator_means_over_rows_both_directions():
    rng = np.random.default_rng(1)
    p, q = M.softmax(rng.standard_normal((6, 5))), M.softmax(rng.standard_normal((6, 5)))
    acc = M.KLAccumulator()
    acc.update(p[:2], q[:2])
    acc.update(p[2:], q[2:])
    out = acc.compute()
    pq = np.mean([np.sum(q[i] * np.log(q[i] / (p[i] + 1e-6))) for i in range(6)])
    qp = np.mean([np.sum(p[i] * np.log(p[i] / (q[i] + 1e-6))) for i in range(6)])
    assert out["kld"] == out["kld_pq"] == pytest.approx(pq, rel=1e-10)
    assert out["kld_qp"] == pytest.approx(qp, rel=1e-10)
    assert out["kld_both"] == pytest.approx(pq + qp, rel=1e-10)
    with pytest.raises(M.MetricError, match="zero pairs"):
        M.KLAccumulator().compute()
    with pytest.raises(M.MetricError, match="shape"):
        M.kl_divergence(p[:2], q[:3])


@pytest.mark.parity
def test_kl_equals_audiocraft_torch_formula():
    """audiocraft: F.kl_div((pred + 1e-6).log(), target, reduction='none').sum(-1), PaSST probs = softmax."""
    import torch

    rng = np.random.default_rng(2)
    logits_g, logits_r = rng.standard_normal((7, 527)) * 3, rng.standard_normal((7, 527)) * 3
    pg = torch.softmax(torch.tensor(logits_g), -1)
    pr = torch.softmax(torch.tensor(logits_r), -1)
    pr[0, :10] = 0  # exact zeros in the target: torch's xlogy convention
    ref = torch.nn.functional.kl_div((pg + 1e-6).log(), pr, reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(M.kl_divergence(pg.numpy(), pr.numpy()), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(M.softmax(logits_g), pg.numpy(), rtol=1e-12)


def test_split_segments_as_audiocraft():
    sr = 32000
    wav = np.arange(45 * sr, dtype=np.float32)
    pieces = M.split_segments(wav, 20 * sr, int(0.15 * sr))
    assert [p.shape[0] for p in pieces] == [20 * sr, 20 * sr, 5 * sr]
    assert pieces[1][0] == 20 * sr  # consecutive, no overlap
    short_tail = M.split_segments(np.zeros(20 * sr + int(0.1 * sr)), 20 * sr, int(0.15 * sr))
    assert [p.shape[0] for p in short_tail] == [20 * sr]  # a 0.1 s tail is dropped
    assert M.split_segments(np.zeros(int(0.15 * sr)), 20 * sr, int(0.15 * sr)) == []  # "> min", not ">="


# ---------------------------------------------------------------------------------------------- cosine


def test_clap_score_known_values():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    t = np.array([[2.0, 0.0], [1.0, 0.0], [4.0, 3.0]])
    assert M.clap_score(a, t) == pytest.approx((1 + 0 + 24 / 25) / 3)
    with pytest.raises(M.MetricError, match="pair"):
        M.clap_score(a, t[:2])


@pytest.mark.parity
def test_cosine_similarity_equals_torch():
    import torch

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((6, 12)), rng.standard_normal((6, 12))
    a[0] *= 1e-10  # below eps: each norm is clamped separately
    b[1] = 0
    ref = torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=1, eps=1e-8).numpy()
    np.testing.assert_allclose(M.cosine_similarity(a, b), ref, rtol=1e-12, atol=1e-15)


def test_chroma_accumulator_counts_frames():
    acc = M.ChromaCosineAccumulator()
    one_hot = np.eye(12)[[0, 0, 4, 7]]
    acc.update(one_hot, one_hot, 4)
    acc.update(one_hot, np.eye(12)[[0, 5, 5, 5]], 3)  # only 3 frames: 1 + 0 + 0
    assert acc.frames == 7
    assert acc.compute() == pytest.approx(5 / 7)
    assert M.chroma_frames_compared(10 * 32000, 4096) == 79  # ceil(320000 / 4096)
