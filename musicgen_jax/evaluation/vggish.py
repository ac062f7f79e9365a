"""VGGish (Hershey et al. 2017) in Flax, its log-mel front end in numpy, and the FAD tool's windowing.

Front end (AudioSet `mel_features.py`, as shipped by torchvggish and the TF VGGish): 16 kHz mono;
frames of 400 samples (25 ms) every 160 (10 ms), periodic Hann window, |rfft| with n = 512; a 64-band
HTK-mel filterbank over 125-7500 Hz applied to the magnitudes (DC bin zeroed); log(mel + 0.01).
Examples are 96 consecutive frames (0.96 s) -> [n, 96, 64].

Network (`vggish_slim.py`): four conv groups of 3x3 convs (ReLU), each followed by 2x2 max-pooling
(64 | 128 | 256, 256 | 512, 512 channels), flattened in (height, width, channel) order, then
4096 -> 4096 -> 128 fully connected layers. The TF model used by the FAD tool has no activation after the
last layer (`activation_fn=None` in tensorflow/models); torchvggish applies a ReLU there:
`VGGish(final_relu=True)` gives torchvggish's output.

FAD windowing (google-research `frechet_audio_distance`, the tool audiocraft's FAD runs; see
`fad_examples`): the samples are scaled by their maximum, cut into 1 s windows every 0.5 s, and each
window gives one 96-frame example, i.e. one embedding per half second of audio.

Weights: the published torchvggish state_dict (`vggish-10086976.pth`, the TF checkpoint converted; keys
`features.{0,3,6,8,11,13}.*`, `embeddings.{0,2,4}.*`), or the same keys in .safetensors / .npz.
"""
from __future__ import annotations

import functools
import hashlib
import os
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

SAMPLE_RATE = 16000
STFT_WINDOW = 400  # 0.025 s at 16 kHz
STFT_HOP = 160  # 0.010 s
FFT_LENGTH = 512  # next power of two of the window
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames, examples do not overlap
EMBEDDING_SIZE = 128

FAD_WINDOW = SAMPLE_RATE  # the FAD tool embeds 1 s windows ...
FAD_STEP = 8000  # ... every 0.5 s (create_embeddings_main --model_step_size default)
FAD_MIN_RATIO = 0.1  # AudioSetModel.extract_features: samples /= max(0.1, max(samples)) (int16 units)

WEIGHTS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
WEIGHTS_SHA256_PREFIX = "10086976"

# (our layer name, torchvggish key prefix, kind)
_LAYERS = (("conv1", "features.0", "conv"), ("conv2", "features.3", "conv"),
           ("conv3_1", "features.6", "conv"), ("conv3_2", "features.8", "conv"),
           ("conv4_1", "features.11", "conv"), ("conv4_2", "features.13", "conv"),
           ("fc1_1", "embeddings.0", "dense"), ("fc1_2", "embeddings.2", "dense"),
           ("fc2", "embeddings.4", "dense"))
_CONV_GROUPS = ((("conv1", 64),), (("conv2", 128),), (("conv3_1", 256), ("conv3_2", 256)),
                (("conv4_1", 512), ("conv4_2", 512)))


class VGGishError(ValueError):
    """VGGish weights that cannot be found, fetched or read."""


# ----------------------------------------------------------------------------------------------------------
# front end


def _hertz_to_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)  # HTK


@functools.lru_cache(maxsize=4)
def mel_matrix(num_bands: int = NUM_BANDS, num_bins: int = FFT_LENGTH // 2 + 1, sample_rate: int = SAMPLE_RATE,
               low_hz: float = MEL_MIN_HZ, high_hz: float = MEL_MAX_HZ) -> np.ndarray:
    """[num_bins, num_bands] triangular weights, linear in mel, over bins spaced evenly 0..Nyquist."""
    nyquist = sample_rate / 2.0
    if not 0.0 <= low_hz < high_hz <= nyquist:
        raise ValueError(f"need 0 <= low_hz < high_hz <= Nyquist ({nyquist}), got {low_hz}, {high_hz}")
    bins_mel = _hertz_to_mel(np.linspace(0.0, nyquist, num_bins))[:, None]  # [bins, 1]
    edges = np.linspace(_hertz_to_mel(low_hz), _hertz_to_mel(high_hz), num_bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # no DC
    weights.setflags(write=False)
    return weights


def log_mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """Mono 16 kHz samples [N] -> log-mel [frames, 64] float64, frames = 1 + (N - 400) // 160 (0 if shorter)."""
    x = np.asarray(wav, np.float64)
    if x.ndim != 1:
        raise ValueError(f"log_mel_spectrogram takes mono samples [N], got shape {x.shape}")
    if x.shape[0] < STFT_WINDOW:
        return np.zeros((0, NUM_BANDS))
    frames = np.lib.stride_tricks.sliding_window_view(x, STFT_WINDOW)[::STFT_HOP]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi / STFT_WINDOW * np.arange(STFT_WINDOW))  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, FFT_LENGTH))
    return np.log(magnitude @ mel_matrix() + LOG_OFFSET)


def frame_examples(log_mel: np.ndarray, hop: int = EXAMPLE_FRAMES) -> np.ndarray:
    """[frames, 64] -> [n, 96, 64] complete examples every `hop` frames (no padding)."""
    if log_mel.shape[0] < EXAMPLE_FRAMES:
        return np.zeros((0, EXAMPLE_FRAMES, log_mel.shape[1]))
    view = np.lib.stride_tricks.sliding_window_view(log_mel, EXAMPLE_FRAMES, axis=0)[::hop]  # [n, 64, 96]
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def waveform_to_examples(wav, sample_rate: int) -> np.ndarray:
    """torchvggish's `waveform_to_examples`: [N] or [C, N] -> [n, 96, 64] non-overlapping 0.96 s examples.

    (torchvggish resamples with resampy and takes [N, C]; this takes [C, N] and resamples like audiocraft.)"""
    from musicgen_jax.evaluation.audio_io import to_mono

    return frame_examples(log_mel_spectrogram(to_mono(wav, sample_rate, SAMPLE_RATE)))


def audiocraft_fad_samples(wav16k: np.ndarray) -> np.ndarray:
    """What the FAD tool reads for one clip in audiocraft's pipeline, as float samples.

    audiocraft writes each clip with `audio_write(strategy="peak")`: scaled to a peak of -1 dBFS, then
    16-bit PCM (`i16_pcm`: round(x * 2^15)); the tool reads the integers and divides them by
    max(0.1, max(samples)) (its loudness normalisation; the signed maximum, not the absolute one).
    """
    x = np.asarray(wav16k, np.float64)
    peak = np.max(np.abs(x)) if x.size else 0.0
    if peak > 0:
        x = x * (10.0 ** (-1.0 / 20.0) / peak)
    q = np.round(x * 2.0 ** 15)
    if q.size and q.max() >= 2 ** 15:
        q = np.round(x * (2.0 ** 15 - 1))
    return q / max(FAD_MIN_RATIO, float(q.max()) if q.size else 0.0)


def fad_examples(wav16k: np.ndarray, step: int = FAD_STEP, normalize: bool = True) -> np.ndarray:
    """The FAD tool's examples of one mono 16 kHz clip: [n, 96, 64], one per 1 s window every `step` samples
    (n = 1 + (N - 16000) // step, 0 for clips under 1 s). normalize: apply `audiocraft_fad_samples` first."""
    x = audiocraft_fad_samples(wav16k) if normalize else np.asarray(wav16k, np.float64)
    starts = range(0, x.shape[0] - FAD_WINDOW + 1, step)
    examples = [frame_examples(log_mel_spectrogram(x[s:s + FAD_WINDOW])) for s in starts]
    if not examples:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS))
    return np.concatenate(examples)


# ----------------------------------------------------------------------------------------------------------
# network


class VGGish(nn.Module):
    """log-mel examples [N, 96, 64] (or torch layout [N, 1, 96, 64]) -> embeddings [N, 128]."""

    final_relu: bool = False  # True: torchvggish's output; False: the TF model the FAD tool runs
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS):
            raise ValueError(f"VGGish takes examples [N, {EXAMPLE_FRAMES}, {NUM_BANDS}], got shape {x.shape}")
        x = x[..., None].astype(jnp.float32)
        for group in _CONV_GROUPS:
            for name, features in group:
                x = nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision,
                                    name=name)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # [N, 6 * 4 * 512], (height, width, channel) order as TF
        x = nn.relu(nn.Dense(4096, precision=self.precision, name="fc1_1")(x))
        x = nn.relu(nn.Dense(4096, precision=self.precision, name="fc1_2")(x))
        x = nn.Dense(EMBEDDING_SIZE, precision=self.precision, name="fc2")(x)
        return nn.relu(x) if self.final_relu else x


def vggish_params_from_state_dict(state, what: str = "VGGish") -> dict:
    """torchvggish state_dict {name: array} -> our Flax params; one error lists every problem."""
    from musicgen_jax.convert.common import CheckpointError

    abstract = jax.eval_shape(lambda: VGGish().init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, EXAMPLE_FRAMES, NUM_BANDS))))["params"]
    params, problems, used = {}, [], set()
    for ours, theirs, kind in _LAYERS:
        layer = {}
        for suffix in ("weight", "bias"):
            key = f"{theirs}.{suffix}"
            if key not in state:
                problems.append(f"missing {key}")
                continue
            used.add(key)
            value = np.asarray(state[key], np.float32)
            if suffix == "weight":
                # torch conv [out, in, kh, kw] -> [kh, kw, in, out]; linear [out, in] -> [in, out]
                value = value.transpose(2, 3, 1, 0) if kind == "conv" and value.ndim == 4 else value.T
                name = "kernel"
            else:
                name = "bias"
            want = tuple(abstract[ours][name].shape)
            if value.shape != want:
                problems.append(f"{key}: shape {tuple(np.shape(state[key]))} does not fit ({want} in our layout)")
            elif not np.isfinite(value).all():
                problems.append(f"{key}: holds NaN or infinite values")
            layer[name] = value
        params[ours] = layer
    unexpected = sorted(k for k in state if k not in used)
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if problems:
        raise CheckpointError(f"{what} weights do not match torchvggish's VGGish:\n  " + "\n  ".join(problems))
    return params


def default_weights_path() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "musicgen_jax", "vggish", os.path.basename(WEIGHTS_URL))


def _offline() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "MUSICGEN_JAX_OFFLINE"))


def download_weights(path: str | None = None, url: str = WEIGHTS_URL, progress: bool = True) -> str:
    """Fetch torchvggish's published weights to `path` (default: the cache) unless already there; the file's
    sha256 must start with the hash in its name, as torch.hub checks. Returns the path."""
    from tqdm.auto import tqdm

    from musicgen_jax.files import atomic_write

    path = path or default_weights_path()
    if os.path.isfile(path):
        return path
    if _offline():
        raise VGGishError(f"VGGish weights are not at {path} and downloads are off (HF_HUB_OFFLINE / "
                          f"MUSICGEN_JAX_OFFLINE); fetch {url} and pass its path (--vggish-weights)")

    def fetch(tmp: str) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="VGGish weights", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if not digest.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
            raise VGGishError(f"downloaded VGGish weights from {url} have sha256 {digest.hexdigest()[:16]}..., "
                              f"expected a prefix {WEIGHTS_SHA256_PREFIX}: a corrupt or changed file")

    try:
        return atomic_write(path, fetch)
    except VGGishError:
        raise
    except OSError as e:
        raise VGGishError(f"cannot download the VGGish weights from {url} ({e}); fetch the file yourself "
                          f"and pass its path (--vggish-weights)") from e


def load_vggish_params(path: str | None = None, progress: bool = True) -> dict:
    """Params from a torchvggish state_dict file (.pth needs torch; .safetensors / .npz do not), downloading
    the published weights into the cache when `path` is None."""
    from musicgen_jax.convert.common import load_state_dict_file

    if path is None:
        path = download_weights(progress=progress)
    elif not os.path.isfile(path):
        raise VGGishError(f"VGGish weights file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            state = {k: data[k] for k in data.files}
    else:
        try:
            state = load_state_dict_file(path)
        except ImportError as e:
            raise VGGishError(f"reading {path} needs torch (pip install torch==2.13.0), or convert it to "
                              f".safetensors / .npz with the same keys") from e
    return vggish_params_from_state_dict(state, what=path)


class VGGishModel:
    """VGGish with params bound: jitted, in fixed-size batches (one compiled program for any count)."""

    def __init__(self, params, final_relu: bool = False, batch_size: int = 32):
        self.params = jax.tree.map(jnp.asarray, params)
        self.final_relu = final_relu  # applied after the jitted network: one program serves both
        self.batch_size = batch_size
        module = VGGish(final_relu=False)
        self._apply = jax.jit(lambda p, x: module.apply({"params": p}, x))

    @classmethod
    def from_pretrained(cls, path: str | None = None, **kwargs) -> "VGGishModel":
        return cls(load_vggish_params(path), **kwargs)

    def __call__(self, examples) -> np.ndarray:
        """[n, 96, 64] -> [n, 128] float32 (n may be 0)."""
        x = np.asarray(examples, np.float32)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS):
            raise ValueError(f"VGGish takes examples [n, {EXAMPLE_FRAMES}, {NUM_BANDS}], got shape {x.shape}")
        out = []
        for lo in range(0, x.shape[0], self.batch_size):
            batch = x[lo:lo + self.batch_size]
            padded = np.pad(batch, ((0, self.batch_size - batch.shape[0]), (0, 0), (0, 0)))
            out.append(np.asarray(self._apply(self.params, padded))[:batch.shape[0]])
        out = np.concatenate(out) if out else np.zeros((0, EMBEDDING_SIZE), np.float32)
        return np.maximum(out, 0.0) if self.final_relu else out


def pca_postprocess(embeddings, pca_eigen_vectors, pca_means) -> np.ndarray:
    """AudioSet's released-embedding postprocessing (torchvggish `Postprocessor`): PCA with whitening,
    clipped to [-2, 2] and quantised to 0..255 (returned as float). Not used by FAD."""
    e = np.asarray(embeddings, np.float64)
    applied = (e - np.asarray(pca_means, np.float64).reshape(1, -1)) @ np.asarray(pca_eigen_vectors, np.float64).T
    clipped = np.clip(applied, -2.0, 2.0)
    return np.round((clipped + 2.0) * (255.0 / 4.0))


__all__ = [
    "SAMPLE_RATE", "EMBEDDING_SIZE", "VGGish", "VGGishModel", "VGGishError", "mel_matrix", "log_mel_spectrogram",
    "frame_examples", "waveform_to_examples", "audiocraft_fad_samples", "fad_examples",
    "vggish_params_from_state_dict", "load_vggish_params", "download_weights", "default_weights_path",
    "pca_postprocess",
]
