"""The web app's request handling (musicgen_jax/app) with a fake model: the messages for bad values, the
one-model cache, streaming and Stop, melody files, and the gradio page in process, called through
gradio_client (the official client) as API users call it: errors come back as messages, a full queue as
a busy message, a cancelled call closes the model's stream within one chunk. The real model in a real
browser: test_app_server.py."""
from __future__ import annotations

import io
import socket
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf

from musicgen_jax.app import service
from musicgen_jax.app.service import AppError, Chunk, Limits, ModelCache, OutputFolder, Result, Status, check_request

RATE = 32000


class FakeModel:
    """Stands in for MusicGen: generate_stream yields `chunk_seconds` of a sine per chunk, `delay` s apart,
    and records what it was asked and when its stream was closed."""

    def __init__(self, melody: bool = False, delay: float = 0.0, channels: int = 1, fail: Exception | None = None):
        self.config = types.SimpleNamespace(lm=types.SimpleNamespace(is_melody=melody))
        self.sample_rate, self.audio_channels = RATE, channels
        self.delay, self.fail = delay, fail
        self.params, self.calls, self.streams = {}, [], []  # streams: per call, chunks yielded and closed

    def set_generation_params(self, **params):
        if params.get("top_k", 0) > 10_000:
            raise ValueError("top_k must be at most the codebook size")
        self.params = params

    def generate_stream(self, descriptions, *, chunk_seconds=1.0, seed=None, **melody):
        self.calls.append(dict(descriptions=descriptions, chunk_seconds=chunk_seconds, seed=seed, **melody))
        total, step = int(self.params["duration"] * RATE), int(chunk_seconds * RATE)
        stream = types.SimpleNamespace(yielded=0, closed=threading.Event())
        self.streams.append(stream)

        def chunks():
            try:
                for start in range(0, total, step):
                    time.sleep(self.delay)
                    if self.fail is not None:
                        raise self.fail
                    t = np.arange(start, min(total, start + step)) / RATE
                    stream.yielded += 1
                    yield np.tile(0.3 * np.sin(2 * np.pi * 440 * t), (1, self.audio_channels, 1)).astype(np.float32)
            finally:
                stream.closed.set()

        return chunks()


def run(request, model, tmp_path, **kwargs):
    return list(service.generate(request, ModelCache(lambda name: model), OutputFolder(str(tmp_path)), **kwargs))


# ------------------------------------------------------------------ checks of the page's values
@pytest.mark.parametrize("change, message", [
    (dict(prompt="   "), "The prompt is empty"),
    (dict(prompt=None), "The prompt is empty"),
    (dict(prompt="x" * 513), "The prompt is too long: 513 characters, at most 512"),
    (dict(duration=0.5), "Duration must be a finite number in [1, 120], got 0.5"),
    (dict(duration=121), "Duration must be a finite number in [1, 120], got 121"),
    (dict(duration=None), "Duration is empty"),
    (dict(model=" "), "No model chosen"),
    (dict(model="someone/else", models=("facebook/musicgen-small",)),
     "This app loads only the models in its list, not 'someone/else'."),
    (dict(top_k=-1), "Top-k must be an integer >= 0"),
    (dict(top_k=2.5), "Top-k must be an integer >= 0, got 2.5"),
    (dict(top_p=1.5), "Top-p must be a finite number in [0, 1]"),
    (dict(temperature=-0.1), "Temperature must be a finite number >= 0"),
    (dict(cfg_coef=float("nan")), "Classifier-free guidance must be a finite number"),
    (dict(seed=-2), "Seed must be -1 (random) or an integer in [0, 4294967295], got -2"),
    (dict(seed=2 ** 32), "Seed must be -1 (random) or an integer in [0, 4294967295], got 4294967296"),
    (dict(seed=1.5), "Seed must be -1 (random) or an integer in [0, 4294967295], got 1.5"),
])
def test_bad_values_are_named_in_the_message(change, message):
    values = dict(prompt="jazz", duration=10, model="facebook/musicgen-small", melody=None, top_k=250, top_p=0.0,
                  temperature=1.0, cfg_coef=3.0, seed=-1) | change
    with pytest.raises(AppError) as error:
        check_request(**values)
    assert message in str(error.value)


def test_values_are_normalised():
    request = check_request("  jazz  ", 10.0, " small ", None, 250.0, 0, 1, 3, 12.0, Limits())
    assert request == service.Request(prompt="jazz", duration=10.0, model="small", top_k=250, seed=12)
    assert check_request("jazz", 5, "small", seed=None).seed is None  # empty seed box: random
    assert check_request("x" * 512, 5, "small").prompt == "x" * 512  # the limit itself is fine
    assert check_request("jazz", 200, "m", limits=Limits(max_duration=300)).duration == 200


# ------------------------------------------------------------------ the model cache
def test_one_model_is_kept_and_replaced(tmp_path):
    loads = []

    def loader(name):
        loads.append(name)
        return types.SimpleNamespace(name=name)

    cache = ModelCache(loader)
    first = cache.get("small")
    assert cache.get("facebook/musicgen-small") is first  # same model, another spelling: not reloaded
    local = tmp_path / "ckpt"
    local.mkdir()
    second = cache.get(str(local))
    assert cache.get(str(local) + "/") is second and cache.model is second  # the first one is dropped
    assert loads == ["small", str(local)]


def test_a_model_that_cannot_load_gives_a_message(tmp_path, monkeypatch):
    """The real loader, offline, with an empty hub cache: hub.py's message, in the page's words."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cache = ModelCache()
    with pytest.raises(AppError, match=r"Cannot load the model 'facebook/musicgen-small': .*not in the Hugging Face "
                                       r"cache and HF_HUB_OFFLINE is set"):
        cache.get("facebook/musicgen-small")
    with pytest.raises(AppError, match="no such checkpoint directory: /no/such/folder"):
        cache.get("/no/such/folder")
    assert cache.model is None


# ------------------------------------------------------------------ one generation
def test_stream_then_the_wav_and_its_picture(tmp_path):
    model = FakeModel(channels=2)
    request = check_request("Lofi hip-hop, mellow piano!", 2.5, "fake", top_k=50, top_p=0.9, temperature=0.7,
                            cfg_coef=4.0, seed=7)
    events = run(request, model, tmp_path, limits=Limits(chunk_seconds=1.0))
    assert [type(e) for e in events] == [Status, Status, Chunk, Chunk, Chunk, Result]
    assert model.params == dict(duration=2.5, use_sampling=True, top_k=50, top_p=0.9, temperature=0.7, cfg_coef=4.0,
                                duration_limit=120.0)
    assert model.calls == [dict(descriptions=["Lofi hip-hop, mellow piano!"], chunk_seconds=1.0, seed=7)]
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert [c.seconds for c in chunks] == [1.0, 2.0, 2.5]
    played = np.concatenate([sf.read(io.BytesIO(c.wav), dtype="float32")[0] for c in chunks])
    result = events[-1]
    assert result.wav_path.endswith("musicgen_lofi_hip_hop_mellow_piano_seed7.wav")
    wav, rate = sf.read(result.wav_path, dtype="float32")
    assert rate == RATE and wav.shape == (int(2.5 * RATE), 2) and np.isfinite(wav).all()
    np.testing.assert_allclose(played, wav, atol=1e-4)  # the file is what was played
    with open(result.picture_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "2.5 s, 2 channel(s) at 32000 Hz with fake, seed 7" in result.text
    assert model.streams[0].closed.is_set()


def test_closing_stops_the_model_within_one_chunk(tmp_path):
    """Stop: gradio closes the page's generator; the model's stream is closed before another chunk."""
    model = FakeModel()
    events = service.generate(check_request("jazz", 60, "fake"), ModelCache(lambda name: model),
                              OutputFolder(str(tmp_path)))
    for event in events:
        if isinstance(event, Chunk):
            break
    events.close()
    assert model.streams[0].closed.is_set() and model.streams[0].yielded == 1
    assert not any(p.suffix == ".wav" for p in tmp_path.rglob("*"))


def test_random_seed_is_drawn_and_reported(tmp_path):
    model = FakeModel()
    result = run(check_request("jazz", 1, "fake"), model, tmp_path)[-1]
    seed = model.calls[0]["seed"]
    assert 0 <= seed < 2 ** 32 and f"seed {seed}" in result.text


def test_melody_is_read_cut_and_passed(tmp_path):
    """audiocraft's demo: the clip's first `duration` seconds at its own rate (the model resamples)."""
    path = str(tmp_path / "melody.flac")
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (3 * 22050, 2)), 22050)
    model = FakeModel(melody=True)
    run(check_request("jazz", 2, "fake", melody=path), model, tmp_path)
    call = model.calls[0]
    assert call["melody_sample_rate"] == 22050 and call["melody_wavs"][0].shape == (2, 2 * 22050)


def test_melody_problems_are_messages(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are not audio samples")
    with pytest.raises(AppError, match="Cannot read the melody file notes.wav"):
        run(check_request("jazz", 2, "fake", melody=str(bad)), FakeModel(melody=True), tmp_path)
    cut = tmp_path / "cut.wav"
    sf.write(str(cut), np.zeros(16000), 16000)
    cut.write_bytes(cut.read_bytes()[:-8000])  # the header still declares 16000 frames
    warnings, model = [], FakeModel(melody=True)
    run(check_request("jazz", 1, "fake", melody=str(cut)), model, tmp_path, warn=warnings.append)
    assert warnings == ["Melody file cut.wav: audio file cut.wav is truncated: its header declares 16000 frames, the "
                        "file holds 12000 (4000 frames, 0.250 s missing); using what is there"]
    assert model.calls[0]["melody_wavs"][0].shape == (1, 12000)
    warnings, model = [], FakeModel(melody=False)
    path = str(tmp_path / "melody.wav")
    sf.write(path, np.zeros(8000), 8000)
    run(check_request("jazz", 1, "small", melody=path), model, tmp_path, warn=warnings.append)
    assert warnings == ["small is not a melody model: the melody is ignored (choose a musicgen-melody model to use "
                        "it)."]
    assert "melody_wavs" not in model.calls[0]


def test_model_errors_are_messages(tmp_path):
    with pytest.raises(AppError, match="These settings do not suit fake: top_k must be at most the codebook size"):
        run(check_request("jazz", 1, "fake", top_k=20_000), FakeModel(), tmp_path)
    with pytest.raises(AppError, match="Out of memory generating 1 s"):
        run(check_request("jazz", 1, "fake"), FakeModel(fail=RuntimeError("RESOURCE_EXHAUSTED: 9 GB")), tmp_path)


# ------------------------------------------------------------------ the page, through gradio_client
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_with_fake(tmp_path_factory):
    """The app on 127.0.0.1 with a slow fake model (0.5 s a chunk), a queue of one, and its client."""
    from gradio_client import Client

    from musicgen_jax.app import build_app

    models = {"fake": FakeModel(delay=0.5),  # a chunk every 0.5 s: longer than a cancel takes to arrive
              "broken": FakeModel(fail=ZeroDivisionError("division by zero")),
              "fake-melody": FakeModel(melody=True)}
    folder = OutputFolder(str(tmp_path_factory.mktemp("app-out")))
    page = build_app("fake", queue_size=1, cache=ModelCache(models.__getitem__), folder=folder)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), models
    finally:
        page.close()


def test_api_errors_are_messages(page_with_fake):
    from gradio_client.exceptions import AppError as ClientError

    client, _ = page_with_fake
    crash = "Generation failed (ZeroDivisionError: division by zero); details are in the server log."
    for values, message in [(dict(prompt=""), "The prompt is empty"),
                            (dict(prompt="y" * 600), "The prompt is too long: 600 characters, at most 512"),
                            (dict(prompt="jazz", top_p=2), "Top-p must be a finite number in [0, 1], got 2"),
                            (dict(prompt="jazz", model="broken"), crash)]:
        with pytest.raises(ClientError) as error:
            client.predict(duration=1, api_name="/generate", **values)
        assert message in str(error.value) and "Traceback" not in str(error.value)


def test_api_melody_file(page_with_fake, tmp_path):
    """A melody sent by the client (gradio_client.handle_file) reaches the model cut to the duration."""
    from gradio_client import handle_file

    client, models = page_with_fake
    path = str(tmp_path / "tune.ogg")
    sf.write(path, 0.1 * np.ones((5 * 16000, 1)), 16000)
    client.predict(prompt="jazz", duration=2, model="fake-melody", melody=handle_file(path), api_name="/generate")
    call = models["fake-melody"].calls[-1]
    assert call["melody_sample_rate"] == 16000 and call["melody_wavs"][0].shape == (1, 2 * 16000)


def test_full_queue_says_busy_and_cancel_stops_within_a_chunk(page_with_fake):
    """One generation runs, one waits (--queue-size 1): a third is told the queue is full. Cancelling the
    running one (the page's Stop) closes the model's stream within one chunk; the waiting one then runs."""
    from gradio_client.utils import QueueError

    client, models = page_with_fake
    fake = models["fake"]
    running = client.submit(prompt="first", duration=30, api_name="/generate")
    for outputs in running:
        if outputs[4].startswith("Generated "):
            break
    waiting = client.submit(prompt="second", duration=1, api_name="/generate")
    time.sleep(0.3)
    rejected = client.submit(prompt="third", duration=1, api_name="/generate")
    with pytest.raises(QueueError, match="Queue is full"):
        rejected.result(timeout=30)
    stream = fake.streams[-1]
    yielded, stop = stream.yielded, time.monotonic()
    running.cancel()
    # The cancel travels client -> server -> the worker's generator, which closes the model's stream at its
    # next chunk: on a loaded 2-core runner that took up to ~1.5 s (3 chunks). Bound it in time (3 s: at
    # most 6 chunks of 0.5 s), far short of the 30 chunks the stream would otherwise yield.
    assert stream.closed.wait(5) and time.monotonic() - stop < 3
    assert stream.yielded <= yielded + 6 < 30
    wav_path, playlist, picture, status, progress = waiting.result(timeout=30)
    assert sf.info(wav_path).frames == RATE and playlist.endswith(".m3u8") and picture.endswith(".png")
    assert status.startswith("1.0 s, 1 channel(s) at 32000 Hz with fake")
    assert progress.startswith("Generated 1.0 of 1 s")


def test_melody_input_shows_for_melody_models():
    from musicgen_jax.app.page import OFFICIAL_MODELS, melody_visible

    assert OFFICIAL_MODELS[:3] == ("facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large")
    assert len(OFFICIAL_MODELS) == 10
    assert [melody_visible(m) for m in ("facebook/musicgen-small", "facebook/musicgen-stereo-melody", "/my/model")] \
        == [False, True, True]


# ------------------------------------------------------------------ the command
def test_app_command(monkeypatch, capsys):
    from musicgen_jax import app, cli

    args = cli.build_parser().parse_args(["app"])
    assert (args.model, args.host, args.port, args.share, args.max_duration, args.queue_size) == \
        ("facebook/musicgen-small", "127.0.0.1", 7860, False, 120.0, 16)
    assert app.main(["--help"]) == 0 and "--queue-size" in capsys.readouterr().out  # python -m musicgen_jax.app
    assert cli.main(["app", "--queue-size", "0"]) == 2
    assert "argument --queue-size: must be an integer >= 1, got '0'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # not installed: `import gradio` fails
    assert cli.main(["app"]) == 2
    assert capsys.readouterr().err.strip() == \
        "musicgen-jax: error: the web app needs gradio: pip install 'musicgen_jax[app]'"


def test_without_ffmpeg_the_player_gets_the_finished_file(tmp_path):
    """No ffmpeg, no streamed player: the audio output gets the finished wav instead."""
    from gradio_client import Client

    from musicgen_jax.app import build_app

    page = build_app("fake", cache=ModelCache(lambda name: FakeModel()), folder=OutputFolder(str(tmp_path)),
                     stream=False)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        wav_path, audio, *_ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            prompt="jazz", duration=1, api_name="/generate")
    finally:
        page.close()
    assert sf.info(wav_path).frames == RATE and sf.info(audio).frames == RATE
