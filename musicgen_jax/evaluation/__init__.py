"""Objective evaluation as in the MusicGen paper: FAD, KL (PaSST), CLAP score and chroma cosine similarity,
computed as audiocraft defines them, with swappable embedding backends (vggish, encodec, clap, passt).

    from musicgen_jax.evaluation import EvaluationSet, evaluate
    results = evaluate(EvaluationSet.from_folders("generated/", "reference/", "captions.csv"), ["fad", "kl"])

Layering: evaluation imports the inference modules (audio, chroma, codec); they never import it.
"""
from musicgen_jax.evaluation.embeddings import (EmbeddingBackend, embedding_names, load_embedding,
                                                register_embedding)
from musicgen_jax.evaluation.errors import BackendLoadError, MissingExtraError
from musicgen_jax.evaluation.pipeline import METRICS, MODEL_CARD, EvaluationSet, evaluate, format_table
from musicgen_jax.evaluation.metrics import (MetricError, clap_score, cosine_similarity, frechet_audio_distance,
                                             frechet_distance, gaussian_stats, kl_divergence)

__all__ = ["EmbeddingBackend", "embedding_names", "load_embedding", "register_embedding", "BackendLoadError",
           "MissingExtraError", "METRICS", "MODEL_CARD", "EvaluationSet", "evaluate", "format_table", "MetricError",
           "clap_score", "cosine_similarity", "frechet_audio_distance", "frechet_distance", "gaussian_stats",
           "kl_divergence"]
