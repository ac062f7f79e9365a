"""What the web app does for one request, without gradio: check the page's values, keep one model in
memory, stream the generation as 16-bit wav chunks, write the finished wav and its picture.

Every problem a user can fix ends as an `AppError` whose text is shown in the page as it is (the page
layer turns it into a gradio message); nothing here raises a traceback at the user.

    request = check_request(prompt, duration, model, melody, top_k, top_p, temperature, cfg_coef, seed,
                            limits)
    for event in generate(request, cache, folder, limits):   # Status | Chunk | Result
        ...
"""
from __future__ import annotations

import dataclasses
import gc
import io
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
import wave
from typing import Callable, Collection, Iterator

import numpy as np

from musicgen_jax.config import MAX_SEED, check_number, official_repo

logger = logging.getLogger("musicgen_jax.app")

MAX_PROMPT_CHARS = 512  # as the public demo


class AppError(Exception):
    """A message for the person using the page: what went wrong and what to do, in one or two lines."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """The app's bounds. max_duration: the duration slider's top (past the model's window the piece is
    generated in windows, as audiocraft does). chunk_seconds: audio per streamed chunk, which is also
    how late Stop may take effect."""

    max_duration: float = 120.0
    max_prompt_chars: int = MAX_PROMPT_CHARS
    chunk_seconds: float = 1.0


@dataclasses.dataclass(frozen=True)
class Request:
    """One checked request. seed None: a random seed is drawn (and reported) when it runs."""

    prompt: str
    duration: float
    model: str
    melody: str | None = None
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int | None = None


def _number(label: str, value, low: float, high: float = float("inf"), *, integer: bool = False):
    """A page control's value checked, with the control's label in the message."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AppError(f"{label} is empty: enter a number.")
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # gradio numbers may come as 12.0
    try:
        return check_number(label, value, low, high, integer=integer)
    except ValueError as e:
        raise AppError(f"{e}.") from None


def check_request(prompt, duration, model, melody=None, top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0,
                  seed=-1, limits: Limits = Limits(), models: Collection[str] | None = None) -> Request:
    """The page's values -> a Request, or AppError saying which value is wrong and why. seed -1 (or
    empty): random. models: the only model names accepted (None: any hub name or local folder)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise AppError("The prompt is empty: describe the music you want, e.g. "
                       "'lofi hip hop with a mellow piano'.")
    prompt = prompt.strip()
    if len(prompt) > limits.max_prompt_chars:
        raise AppError(f"The prompt is too long: {len(prompt)} characters, at most {limits.max_prompt_chars}. "
                       "Shorten it.")
    duration = _number("Duration", duration, 1, limits.max_duration)
    if not isinstance(model, str) or not model.strip():
        raise AppError("No model chosen: pick one from the list or type a local checkpoint folder.")
    if models is not None and model.strip() not in models:
        raise AppError(f"This app loads only the models in its list, not {model.strip()!r}.")
    if melody is not None and not isinstance(melody, str):
        raise AppError("The melody must be an audio file.")
    if seed is None or (isinstance(seed, (int, float)) and seed == -1) or (isinstance(seed, str) and not seed.strip()):
        seed = None
    else:
        try:
            seed = _number("Seed", seed, 0, MAX_SEED, integer=True)
        except AppError:
            raise AppError(f"Seed must be -1 (random) or an integer in [0, {MAX_SEED}], got {seed!r}.") from None
    return Request(prompt=prompt, duration=duration, model=model.strip(), melody=melody or None,
                   top_k=_number("Top-k", top_k, 0, integer=True), top_p=_number("Top-p", top_p, 0, 1),
                   temperature=_number("Temperature", temperature, 0),
                   cfg_coef=_number("Classifier-free guidance", cfg_coef, -1e6, 1e6), seed=seed)


# ------------------------------------------------------------------ the model
def _load_musicgen(name: str):
    from musicgen_jax.musicgen import MusicGen

    return MusicGen.from_pretrained(name)


def model_key(name: str) -> str:
    """One spelling per model: local folders by their real path, 'small' as 'facebook/musicgen-small'."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return os.path.realpath(path)
    try:
        return official_repo(name)
    except ValueError:
        return name


def is_melody(model) -> bool:
    return bool(getattr(model.config.lm, "is_melody", False))


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


class ModelCache:
    """One model in memory: the last one asked for. Asking for another frees the current one first (two
    need not fit at once). loader(name) -> model; MusicGen.from_pretrained by default."""

    def __init__(self, loader: Callable[[str], object] | None = None):
        self._loader = loader or _load_musicgen
        self._lock = threading.Lock()
        self.key: str | None = None
        self.model = None

    def get(self, name: str):
        key = model_key(name)
        with self._lock:
            if key != self.key:
                self.model = self.key = None
                gc.collect()
                try:
                    model = self._loader(name)
                except (ValueError, TypeError, OSError) as e:  # hub.py: offline, unknown name, damaged files
                    raise AppError(f"Cannot load the model {name!r}: {e}") from None
                except (MemoryError, RuntimeError) as e:
                    if not out_of_memory(e):
                        raise
                    raise AppError(f"Not enough memory to load the model {name!r}: choose a smaller one.") from None
                self.model, self.key = model, key
            return self.model


# ------------------------------------------------------------------ files
class OutputFolder:
    """Where finished pieces are written: a fresh subfolder per piece under one temporary root. Pieces
    older than max_age seconds are removed whenever a new one is made (as audiocraft's demo does), the
    root when the app exits (`cleanup`)."""

    def __init__(self, root: str | None = None, max_age: float = 3600.0):
        self.root = root or tempfile.mkdtemp(prefix="musicgen-jax-app-")
        os.makedirs(self.root, exist_ok=True)
        self.max_age = max_age

    def new(self) -> str:
        now = time.time()
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            try:
                if now - os.path.getmtime(path) > self.max_age:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        return tempfile.mkdtemp(dir=self.root)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def file_stem(prompt: str, seed: int) -> str:
    """'musicgen_lofi_hip_hop_with_a_seed42': a download name that says what the file is."""
    words = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:40].rstrip("_")
    return f"musicgen_{words or 'music'}_seed{seed}"


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """[C, n] float -> a 16-bit PCM wav file's bytes (what the streaming player is fed)."""
    pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2").T  # [n, C]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(wav.shape[0])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(np.ascontiguousarray(pcm).tobytes())
    return buffer.getvalue()


def read_melody(path: str, duration: float, warn: Callable[[str], None] = logger.warning) -> tuple[np.ndarray, int]:
    """An uploaded or recorded melody -> (wav [C, N] float32, its rate), cut to the first `duration`
    seconds as audiocraft's demo does (the model resamples it to its rate and mixes it to mono).
    soundfile reads wav/flac/ogg/mp3; anything else (a browser's webm recording, m4a) goes through ffmpeg
    when it is installed. Reading warnings (a truncated file) are passed to warn."""
    from musicgen_jax.audio import read_audio

    name = os.path.basename(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wav, rate = read_audio(path)
        for warning in caught:
            warn(f"Melody file {name}: {str(warning.message).replace(path, name)}")
    except (ValueError, OSError) as first:
        decoded = _ffmpeg_read(path)
        if decoded is None:
            logger.info("melody %s unreadable: %s", path, first)
            raise AppError(f"Cannot read the melody file {name}: it is not audio this app can read "
                           "(use wav, flac, ogg or mp3).") from None
        wav, rate = decoded
    if wav.shape[-1] == 0 or not np.isfinite(wav).all():
        raise AppError(f"The melody file {name} holds no usable audio.")
    return wav[:, : max(1, int(rate * duration))], rate


def _ffmpeg_read(path: str) -> tuple[np.ndarray, int] | None:
    import soundfile as sf

    if shutil.which("ffmpeg") is None:
        return None
    result = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", path, "-vn", "-f", "wav",
                             "-acodec", "pcm_f32le", "pipe:1"], capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        return None
    try:
        data, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - whatever ffmpeg made, it is not audio we can use
        return None
    return np.ascontiguousarray(data.T), int(rate)


# ------------------------------------------------------------------ one generation
@dataclasses.dataclass(frozen=True)
class Status:
    text: str


@dataclasses.dataclass(frozen=True)
class Chunk:
    wav: bytes  # a 16-bit wav file of the new audio
    seconds: float  # audio generated so far
    text: str


@dataclasses.dataclass(frozen=True)
class Result:
    wav_path: str
    picture_path: str | None
    text: str


def generate(request: Request, cache: ModelCache, folder: OutputFolder, limits: Limits = Limits(),
             warn: Callable[[str], None] = logger.warning) -> Iterator[Status | Chunk | Result]:
    """Runs one request: Status while the model loads, a Chunk per `limits.chunk_seconds` of audio, then
    the Result (wav and picture written). Closing this generator (the page's Stop) closes the model's
    stream, which ends the generation within one chunk. warn(text): a message that does not stop it."""
    started = time.monotonic()
    yield Status(f"Loading {request.model}…" if model_key(request.model) != cache.key else "Starting…")
    model = cache.get(request.model)
    melody = {}
    if request.melody is not None:
        if is_melody(model):
            wav, rate = read_melody(request.melody, request.duration, warn)
            melody = dict(melody_wavs=[wav], melody_sample_rate=rate)
        else:
            warn(f"{request.model} is not a melody model: the melody is ignored "
                 "(choose a musicgen-melody model to use it).")
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    try:
        model.set_generation_params(duration=request.duration, use_sampling=True, top_k=request.top_k,
                                    top_p=request.top_p, temperature=request.temperature,
                                    cfg_coef=request.cfg_coef,
                                    duration_limit=max(request.duration, limits.max_duration))
    except (ValueError, TypeError) as e:
        raise AppError(f"These settings do not suit {request.model}: {e}") from None
    rate = model.sample_rate
    yield Status(f"Generating {request.duration:g} s with {request.model} (seed {seed})…")
    logger.info("generating %g s with %s (seed %d): %r", request.duration, request.model, seed, request.prompt)
    try:
        stream = model.generate_stream([request.prompt], chunk_seconds=limits.chunk_seconds, seed=seed, **melody)
    except (ValueError, TypeError) as e:  # the inputs, checked before any work
        raise AppError(f"Cannot generate: {e}") from None
    pieces, samples, first_audio = [], 0, None
    finished = False
    try:
        for chunk in _guarded(stream, request):
            chunk = np.asarray(chunk, np.float32)[0]  # [C, n]
            if chunk.shape[-1] == 0:
                continue
            if first_audio is None:
                first_audio = time.monotonic() - started
            pieces.append(chunk)
            samples += chunk.shape[-1]
            yield Chunk(wav_bytes(chunk, rate), samples / rate,
                        f"Generated {samples / rate:.1f} of {request.duration:g} s (seed {seed})")
        finished = True
    finally:
        stream.close()
        if not finished:
            logger.info("generation stopped after %.1f of %g s", samples / rate, request.duration)
    if not pieces:
        raise AppError("The model returned no audio.")
    wav = np.concatenate(pieces, axis=-1)
    wav_path, picture_path = _write_result(wav, rate, folder, file_stem(request.prompt, seed))
    summary = (f"{wav.shape[-1] / rate:.1f} s, {wav.shape[0]} channel(s) at {rate} Hz with {request.model}, "
               f"seed {seed}: first audio after {first_audio:.1f} s, done in {time.monotonic() - started:.1f} s.")
    logger.info("done: %s", summary)
    yield Result(wav_path, picture_path, summary)


def _guarded(stream, request: Request):
    """The model's chunks, its user-facing errors turned into messages."""
    try:
        yield from stream
    except (ValueError, TypeError) as e:
        raise AppError(f"Cannot generate: {e}") from None
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise AppError(f"Out of memory generating {request.duration:g} s: choose a shorter duration or a "
                       "smaller model.") from None


def _write_result(wav: np.ndarray, rate: int, folder: OutputFolder, stem: str) -> tuple[str, str | None]:
    from musicgen_jax.audio import write_wav

    directory = folder.new()
    wav_path = write_wav(os.path.join(directory, stem + ".wav"), wav, rate)
    try:
        from musicgen_jax.app.picture import render

        picture = render(wav, rate, os.path.join(directory, stem + ".png"))
    except ImportError:  # matplotlib missing: the music matters more than its picture
        logger.warning("matplotlib is not installed: no waveform picture (pip install 'musicgen_jax[app]')")
        picture = None
    return wav_path, picture
