"""Streaming generation (issue 13): `MusicGen.generate_stream` yields the audio of the matching one-shot call
in chunks, from the same tokens, while the LM runs chunk by chunk; closing it stops the work; the CLI's
--stream writes a valid wav at every moment. JAX only, on random tiny models (4000 frames/s, a 40-frame
window so that long-form restarts windows within a few hundred frames).

Stated bound: the joined stream is within 100 dB SNR of the one-shot audio (measured ~140 dB on the tiny
codec and EnCodec 32 kHz shapes: the same operations on windows of other shapes round differently)."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import soundfile as sf

from musicgen_jax import cli, sampler as sampler_module
from musicgen_jax.audio import WavStream, write_wav
from musicgen_jax.codec import CompressionModel
from musicgen_jax.config import GenerationParams, seconds_for_frames, tiny
from musicgen_jax.convert import checkpoint as checkpoint_module
from musicgen_jax.modules.lm import init_lm
from musicgen_jax.modules.t5 import T5Encoder, init_t5
from musicgen_jax.musicgen import MusicGen
from musicgen_jax.testing import random_codec, train_spiece
from musicgen_jax.tokenizer import T5Tokenizer
from tests.helpers import snr_db
from tests.test_settings_reliability import random_params

SNR_DB = 100.0  # the bound stated in the module docstring
RATE = 4000.0  # frames per second of the tiny codec
WINDOW = 40  # frames of the tiny models' generation window
CHUNK = 8  # frames per streamed chunk in these tests
PROMPTS = ["happy rock guitar", "slow sad violin"]


def seconds(frames: int) -> float:
    return seconds_for_frames(frames, RATE)


def tiny_model(directory: str, melody: bool = False) -> MusicGen:
    """A random tiny MusicGen (codebooks spread over its codec's latents, so that codes are diverse)."""
    config = dataclasses.replace(tiny(melody=melody), max_duration=seconds(WINDOW))
    key = jax.random.PRNGKey(0)
    codec = random_codec(seed=3)
    checkpoint = checkpoint_module.Checkpoint(
        config=config, lm_params=random_params(lambda: init_lm(config.lm, key), 1 + melody),
        t5_params=random_params(lambda: init_t5(T5Encoder(config.t5), key), 2), codec_params=codec.params,
        tokenizer=T5Tokenizer.from_pretrained(directory), generation=GenerationParams(), directory=directory,
        layout="transformers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_module, "load_checkpoint", lambda name, **kwargs: checkpoint)
        return MusicGen.from_pretrained("tiny")


@pytest.fixture(scope="module")
def spm(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("spm"))
    train_spiece(directory, vocab_size=100)
    return directory


@pytest.fixture(scope="module")
def mg(spm) -> MusicGen:
    """The mono model, its progress reports in `mg.reports` (reported throughout, so that every generation
    of these tests runs the same compiled programs)."""
    model = tiny_model(spm)
    model.reports = []
    model.set_custom_progress_callback(lambda done, total: model.reports.append(done))
    return model


@pytest.fixture(scope="module")
def melody_mg(spm, mg) -> MusicGen:
    model = tiny_model(spm, melody=True)
    model.compression_model = mg.compression_model  # the same weights; its compiled programs are shared
    model.set_custom_progress_callback(lambda done, total: None)
    return model


@pytest.fixture
def recorded(monkeypatch):
    """The StreamDecoders a stream creates: their `codes` are the tokens it decoded."""
    decoders = []
    make = CompressionModel.stream_decoder

    def recording(self, *args, **kwargs):
        decoders.append(make(self, *args, **kwargs))
        return decoders[-1]

    monkeypatch.setattr(CompressionModel, "stream_decoder", recording)
    return decoders


def settings(mg: MusicGen, frames: int, sampled: bool) -> None:
    mg.set_generation_params(duration=seconds(frames), use_sampling=sampled, top_k=8, cfg_coef=3.0,
                             extend_stride=seconds(25))


def audio(length: float, rate: int, batch: int, seed: int) -> np.ndarray:
    """A few random tones [B, 1, N]."""
    t = np.arange(int(length * rate)) / rate
    rng = np.random.default_rng(seed)
    return np.stack([[0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)] for _ in range(batch)]).astype(np.float32)


PROMPT_WAV = audio(0.004, 16000, 2, 0)  # 0.004 s at 16 kHz: resampled, then encoded to 16 frames
MELODY_WAV = audio(0.02, 32000, 2, 2)
CASES = {  # name: (model, frames, sampled, one-shot method, its arguments, generate_stream's). Batch 2 and one
    # length throughout (two windows and a piece of a third), so that the cases share compiled programs.
    "text, greedy, long-form": ("mg", 70, False, "generate", (PROMPTS,), dict()),
    "continuation, sampled, long-form": ("mg", 70, True, "generate_continuation", (PROMPT_WAV, 16000, PROMPTS),
                                         dict(prompt=PROMPT_WAV, prompt_sample_rate=16000)),
    "melody, sampled, long-form": ("melody_mg", 70, True, "generate_with_chroma", (PROMPTS, MELODY_WAV, 32000),
                                   dict(melody_wavs=MELODY_WAV, melody_sample_rate=32000)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stream_is_the_one_shot_generation(case, request, recorded):
    """Same seed and settings: the stream decodes exactly the one-shot call's tokens, in several chunks
    [B, C, n > 0] of float32 whose concatenation is that call's audio (same length, SNR bound)."""
    name, frames, sampled, method, args, kwargs = CASES[case]
    model = request.getfixturevalue(name)
    settings(model, frames, sampled)
    wav, tokens = getattr(model, method)(*args, return_tokens=True, seed=7)
    wav, tokens = np.asarray(wav), np.asarray(tokens)
    chunks = list(model.generate_stream(PROMPTS, chunk_seconds=seconds(CHUNK), seed=7, **kwargs))

    assert len(recorded) == 1
    np.testing.assert_array_equal(recorded[0].codes, tokens)
    assert tokens.shape[-1] == frames and len(np.unique(tokens)) > 8  # not a degenerate generation
    assert len(chunks) >= frames // CHUNK - 2
    assert all(c.dtype == np.float32 and c.shape[:2] == wav.shape[:2] and c.shape[-1] > 0 for c in chunks)
    joined = np.concatenate(chunks, axis=-1)
    assert joined.shape == wav.shape
    assert snr_db(wav, joined) >= SNR_DB


def test_sampled_stream_depends_on_the_seed(mg, recorded):
    """The matching above is not vacuous: another seed gives other tokens."""
    settings(mg, 30, True)
    for seed in (7, 8):
        list(mg.generate_stream(PROMPTS, chunk_seconds=seconds(CHUNK), seed=seed))
    assert not np.array_equal(recorded[0].codes, recorded[1].codes)


def test_stream_decoder_is_one_pass_decoding(mg):
    """Codes pushed in irregular pieces to a stereo codec (blocks of 8 frames; a long-input window of 24
    frames for the one-pass decode, so that both sides run windows) give one pass's audio; a frame's audio
    comes once (kernel_size - 1) + reach frames follow it."""
    mono = mg.compression_model
    codec = CompressionModel(mono.config, mono.params, audio_channels=2, chunk_seconds=seconds(24))
    pieces = [1, 3, 17, 2, 30, 9, 10]
    codes = np.random.default_rng(0).integers(0, codec.cardinality, (1, 8, sum(pieces)), dtype=np.int32)
    want = np.asarray(codec.decode(codes))  # [B, C, T * hop]
    decoder = codec.stream_decoder(8)
    held = codec.config.kernel_size - 1 + codec.decode_context
    out, pushed = [], 0
    for n in pieces:
        out.append(decoder.push(codes[..., pushed:pushed + n]))
        pushed += n
        assert sum(o.shape[-1] for o in out) == max(0, pushed - held) * codec.hop_length
    out.append(decoder.finish())
    joined = np.concatenate(out, axis=-1)
    assert joined.shape == want.shape == (1, 2, sum(pieces) * codec.hop_length)
    assert snr_db(want, joined) >= SNR_DB
    # what the LSTM's carry is worth: decoding from frame 16 afresh gives other audio there
    assert snr_db(want[..., 16 * codec.hop_length:], np.asarray(codec.decode(codes[..., 16:]))) < 40


def test_closing_the_stream_stops_the_generation(mg, monkeypatch):
    """Work runs only inside next(): after close(), no further chunk of the decode loop runs, and the
    progress callback is not told the generation finished."""
    calls = []
    steps = sampler_module.decode_steps_jit

    def counting(*args, **kwargs):
        calls.append(args[4])  # end
        return steps(*args, **kwargs)

    monkeypatch.setattr(sampler_module, "decode_steps_jit", counting)
    settings(mg, 70, True)
    list(mg.generate_stream(PROMPTS, chunk_seconds=seconds(CHUNK), seed=1))
    full = len(calls)
    assert mg.reports[-1] == 70
    calls.clear(), mg.reports.clear()
    stream = mg.generate_stream(PROMPTS, chunk_seconds=seconds(CHUNK), seed=1)
    assert not calls  # nothing runs before the first next()
    next(stream)
    first = len(calls)
    stream.close()
    assert len(calls) == first and first <= 3 < full
    assert not mg.reports or mg.reports[-1] < 70


def test_stream_checks_inputs_as_the_one_shot_calls(mg, melody_mg):
    """Bad inputs fail at the call (before any iteration) with the one-shot calls' own errors."""
    settings(mg, 40, False)
    wav = audio(0.004, 32000, 1, 0)
    pairs = [
        (lambda: mg.generate("one prompt"), lambda: mg.generate_stream("one prompt")),
        (lambda: mg.generate([3]), lambda: mg.generate_stream([3])),
        (lambda: mg.generate(["a"], seed=-1), lambda: mg.generate_stream(["a"], seed=-1)),
        (lambda: mg.generate(["a"], progress=2), lambda: mg.generate_stream(["a"], progress=2)),
        (lambda: mg.generate_continuation(wav, 0, ["a"]),
         lambda: mg.generate_stream(["a"], prompt=wav, prompt_sample_rate=0)),
        (lambda: mg.generate_continuation(wav.astype(np.int16), 32000, ["a"]),
         lambda: mg.generate_stream(["a"], prompt=wav.astype(np.int16), prompt_sample_rate=32000)),
        (lambda: mg.generate_continuation(wav, 32000, ["a", "b"]),
         lambda: mg.generate_stream(["a", "b"], prompt=wav, prompt_sample_rate=32000)),
        (lambda: mg.generate_with_chroma(["a"], wav, 32000),
         lambda: mg.generate_stream(["a"], melody_wavs=wav, melody_sample_rate=32000)),
        (lambda: melody_mg.generate_with_chroma(["a"], wav, None),
         lambda: melody_mg.generate_stream(["a"], melody_wavs=wav, melody_sample_rate=None)),
    ]
    for one_shot, stream in pairs:
        with pytest.raises((TypeError, ValueError)) as expected:
            one_shot()
        with pytest.raises(expected.type) as got:
            stream()
        assert str(got.value) == str(expected.value)
    for kwargs, message in [(dict(chunk_seconds=0), "chunk_seconds"), (dict(chunk_seconds=float("nan")), "chunk"),
                            (dict(prompt=wav, prompt_sample_rate=32000, melody_wavs=wav), "not both"),
                            (dict(prompt_sample_rate=32000), "without a prompt")]:
        with pytest.raises(ValueError, match=message):
            mg.generate_stream(["a"], **kwargs)


def test_cli_stream_writes_a_valid_wav_all_along(mg, tmp_path, monkeypatch, capsys):
    """generate --stream: after each chunk each file is a wav holding the audio so far; at the end it is
    `write_wav` of the joined stream, and the one-shot command's file up to the last bit of a sample."""
    monkeypatch.setattr(MusicGen, "from_pretrained", classmethod(lambda cls, *args, **kwargs: mg))
    seen = {}
    write = WavStream.write

    def checking(self, wav):
        write(self, wav)
        data, rate = sf.read(self.path, dtype="float32", always_2d=True)  # [N, C]
        assert rate == 32000 and data.shape == (self.frames, 1)
        seen.setdefault(self.path, []).append(np.asarray(wav))

    monkeypatch.setattr(WavStream, "write", checking)
    args = ["generate", *PROMPTS, "--duration", repr(seconds(70)), "--seed", "3", "--quiet"]
    stream = ["--stream", "--chunk-seconds", repr(seconds(CHUNK)), "--out", str(tmp_path / "stream.wav")]
    assert cli.main(args + stream) == 0
    assert "first audio after" in capsys.readouterr().out
    assert cli.main(args + ["--out", str(tmp_path / "once.wav")]) == 0
    for i in range(2):
        path = tmp_path / f"stream_{i}.wav"
        assert len(seen[str(path)]) >= 5
        write_wav(str(tmp_path / "joined.wav"), np.concatenate(seen[str(path)], axis=-1), 32000)
        assert path.read_bytes() == (tmp_path / "joined.wav").read_bytes()
        streamed, once = (sf.read(str(p), dtype="int16")[0] for p in (path, tmp_path / f"once_{i}.wav"))
        assert streamed.shape == once.shape == (70 * 8,)
        assert np.abs(streamed.astype(int) - once).max() <= 1
