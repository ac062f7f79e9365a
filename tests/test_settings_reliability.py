"""Bad settings and inputs at the generation API and the CLI get a clear error naming the parameter and
the value, before any work (issue 12, generation half). JAX only: a random tiny model stands in for a
checkpoint (`load_checkpoint` is patched), so these run without torch or files on disk."""
from __future__ import annotations

import math
import os
import re
from types import SimpleNamespace

import flax.linen as nn
import jax
import numpy as np
import pytest

from musicgen_jax import cli
from musicgen_jax.config import GenerationParams, SamplingParams, tiny
from musicgen_jax.convert import checkpoint as checkpoint_module
from musicgen_jax.modules.encodec import Encodec
from musicgen_jax.modules.lm import init_lm
from musicgen_jax.modules.t5 import T5Encoder, init_t5
from musicgen_jax.musicgen import MusicGen, prepare_melodies, prepare_prompt
from musicgen_jax.testing import train_spiece
from musicgen_jax.tokenizer import T5Tokenizer

FRAMES = 12  # per generation in the tests that run one (the tiny codec runs at 4000 frames/s)


def random_params(init, seed: int):
    """Normal(0, 0.1) weights at the shapes `init()` would give (traced only: eager or jitted init of
    the codec takes tens of seconds on a busy 2-core machine)."""
    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(jax.eval_shape(init))["params"]
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """What load_checkpoint returns, for a random tiny model (mono, text-conditioned)."""
    directory = str(tmp_path_factory.mktemp("spm"))
    train_spiece(directory, vocab_size=100)
    config, key = tiny(), jax.random.PRNGKey(0)
    wav = np.zeros((1, 64, 1), np.float32)
    return checkpoint_module.Checkpoint(
        config=config, lm_params=random_params(lambda: init_lm(config.lm, key), 1),
        t5_params=random_params(lambda: init_t5(T5Encoder(config.t5), key), 2),
        codec_params=random_params(lambda: Encodec(config.encodec).init(key, wav), 3),
        tokenizer=T5Tokenizer.from_pretrained(directory), generation=GenerationParams(), directory=directory,
        layout="transformers")


@pytest.fixture
def load_tiny(tiny_checkpoint, monkeypatch):
    """MusicGen.from_pretrained(any name) -> the tiny model."""
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda name, **kwargs: tiny_checkpoint)


@pytest.fixture(scope="module")
def mg(tiny_checkpoint):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_module, "load_checkpoint", lambda name, **kwargs: tiny_checkpoint)
        model = MusicGen.from_pretrained("tiny")
    model.set_generation_params(duration=FRAMES / model.frame_rate)
    return model


@pytest.fixture
def no_loading(monkeypatch):
    """Fails a test that loads a model or codec: the error must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", refuse)
    monkeypatch.setattr(cli, "_load_codec", refuse)


def settings_only() -> MusicGen:
    """A facade without weights: enough for set_generation_params (it reads only the config)."""
    return MusicGen(SimpleNamespace(config=tiny()), compression_model=None)


# --------------------------------------------------------------------------------------------------- API


@pytest.mark.parametrize("name,value", [
    ("cfg_coef", math.nan), ("cfg_coef", math.inf), ("cfg_coef", -math.inf),
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -0.5),
    ("top_p", math.nan), ("top_p", 1.5), ("top_p", -0.1),
    ("top_k", -1), ("top_k", 2.5), ("top_k", np.float64(3.0)),
    ("extend_stride", math.nan), ("extend_stride", math.inf), ("two_step_cfg", 1), ("use_sampling", "no"),
    ("duration", math.nan), ("duration", math.inf), ("duration", 0.0), ("duration_limit", math.nan),
    ("duration_limit", -1.0),
])
def test_settings_refuse_non_finite_and_out_of_range_values(name, value):
    mg = settings_only()
    before = mg.generation_params
    with pytest.raises(ValueError, match=name) as error:
        mg.set_generation_params(**{name: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)
    assert mg.generation_params is before  # nothing half-applied


def test_settings_accept_numpy_scalars_and_audiocraft_edge_values():
    mg = settings_only()
    mg.set_generation_params(duration=np.float32(8.0), top_k=np.int64(0), top_p=np.float32(1.0),
                             temperature=np.float64(0.0), cfg_coef=-1.0, two_step_cfg=np.bool_(True))
    params = mg.generation_params
    assert params.duration == 8.0 and type(params.duration) is float and params.sampling.top_k == 0
    assert params.sampling.greedy  # temperature 0 is greedy, as audiocraft (sampling needs temp > 0)
    assert params.guidance.coef == -1.0  # negative CFG is allowed, as in audiocraft


def test_duration_limit_per_call():
    mg = settings_only()
    assert mg.duration_limit == 600.0 and mg.max_duration == 30.0  # the limit is not the model's window
    with pytest.raises(ValueError, match=r"duration 1e\+09 s is over the limit of 600 s.*duration_limit"):
        mg.set_generation_params(duration=1e9)
    with pytest.raises(ValueError, match="duration 700 s is over the limit of 600 s"):
        mg.set_generation_params(duration=700)
    mg.set_generation_params(duration=700, duration_limit=900)  # raised in the same call
    assert (mg.duration, mg.duration_limit) == (700.0, 900.0)
    with pytest.raises(ValueError, match="over the limit of 500 s"):
        mg.set_generation_params(duration_limit=500)  # below the duration already set
    with pytest.raises(ValueError, match="duration must be a finite number > 0, got inf"):
        GenerationParams(duration=math.inf)


def test_from_pretrained_takes_a_duration_limit(load_tiny):
    mg = MusicGen.from_pretrained("tiny", duration_limit=1200)
    assert mg.duration_limit == 1200.0
    mg.set_generation_params(duration=1000)
    with pytest.raises(ValueError, match="duration_limit"):
        MusicGen.from_pretrained("tiny", duration_limit=math.nan)


def test_call_arguments_are_checked(mg):
    for seed in (-1, 1.5, 2 ** 40, "1"):
        with pytest.raises(ValueError, match=f"seed must be an integer in \\[0, 4294967295\\], got {seed!r}"):
            mg.generate(["x"], seed=seed)
    with pytest.raises(ValueError, match="progress must be True or False, got 'yes'"):
        mg.generate(["x"], progress="yes")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        mg.generate_unconditional(0)
    wav, tokens = mg.generate_unconditional(np.int64(2), return_tokens=True, seed=np.int32(1))
    assert tokens.shape == (2, 4, FRAMES)


def test_duration_under_one_frame_is_refused(mg):
    params = mg.generation_params
    try:
        mg.set_generation_params(duration=0.5 / mg.frame_rate)
        with pytest.raises(ValueError, match=r"duration 0.000125 s is shorter than one frame \(0.00025 s at 4000"):
            mg.generate(["x"])
    finally:
        mg.generation_params = params


@pytest.mark.parametrize("dtype,conversion", [(np.int16, "/ 32768"), (np.int32, "/ 2147483648"),
                                              (np.uint8, "- 128) / 128")])
def test_integer_pcm_is_refused_with_the_conversion(mg, dtype, conversion):
    """One policy for audio prompts and melodies, as codec.encode: float samples only; integer PCM gets
    the scaling soundfile would apply."""
    pcm = np.zeros((1, 1, 40), dtype)
    conversion = re.escape(conversion)
    with pytest.raises(ValueError, match=f"prompt is integer PCM .*{dtype.__name__}.*{conversion}"):
        mg.generate_continuation(pcm, 32000, ["x"])
    with pytest.raises(ValueError, match=f"integer PCM .*{conversion}"):
        prepare_prompt(pcm[0], 32000, 32000, 1.0)
    with pytest.raises(ValueError, match=f"melody 0 is integer PCM .*{conversion}"):
        prepare_melodies([pcm[0, 0]], 32000, 1, 32000)
    with pytest.raises(ValueError, match=f"melody_wavs is integer PCM .*{conversion}"):
        prepare_melodies(pcm, 32000, 1, 32000)
    with pytest.raises(ValueError, match="float audio samples"):
        prepare_prompt(np.zeros((1, 1, 4), bool), 32000, 32000, 1.0)
    float_prompt = (pcm.astype(np.float32) / 32768)
    assert prepare_prompt(float_prompt, 32000, 32000, 1.0).dtype == np.float32


# --------------------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "-1"], "argument --batch-size: must be an integer >= 1, got '-1'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--top-k", "-5"], "argument --top-k: must be an integer >= 0, got '-5'"),
    (["--top-k", "2.5"], "argument --top-k: must be an integer >= 0, got '2.5'"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got '-1'"),
    (["--top-p", "nan"], "argument --top-p: must be a finite number in [0, 1], got 'nan'"),
    (["--temperature", "inf"], "argument --temperature: must be a finite number >= 0, got 'inf'"),
    (["--cfg-coef", "nan"], "argument --cfg-coef: must be a finite number, got 'nan'"),
    (["--duration", "inf"], "argument --duration: must be a finite number > 0, got 'inf'"),
    (["--duration", "0"], "argument --duration: must be a finite number > 0, got '0'"),
    (["--extend-stride", "-3"], "argument --extend-stride: must be a finite number > 0, got '-3'"),
    (["--duration-limit", "0"], "argument --duration-limit: must be a finite number > 0, got '0'"),
    (["--duration", "1e9"], "error: duration 1e+09 s is over the limit of 600 s"),
])
def test_cli_refuses_bad_settings_before_loading(capsys, no_loading, tmp_path, argv, message):
    code, out, err = run_cli(capsys, "generate", "x", "--out", tmp_path / "x.wav", *argv)
    assert code == 2 and message in err and not os.listdir(tmp_path)


def test_cli_prepare_refuses_bad_numbers(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prepare", tmp_path, tmp_path / "out", "--batch-size", "0")
    assert code == 2 and "argument --batch-size: must be an integer >= 1, got '0'" in err


def test_cli_duration_limit_can_be_raised(capsys, load_tiny, tmp_path, monkeypatch):
    seen = {}

    def generate(self, batch, **kwargs):
        seen["limit"] = self.duration_limit
        return np.zeros((len(batch), 1, 8), np.float32)

    monkeypatch.setattr(MusicGen, "generate", generate)
    code, _, err = run_cli(capsys, "generate", "x", "--duration", "700", "--duration-limit", "800", "--quiet",
                           "--out", tmp_path / "x.wav")
    assert code == 0, err
    assert seen["limit"] == 800.0


def test_cli_checks_every_output_path_before_loading(capsys, no_loading, tmp_path):
    (tmp_path / "song_1.wav").mkdir()  # the second of three outputs is a directory
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases = [
        (["generate", "a", "b", "c", "--out", tmp_path / "song.wav"], "song_1.wav: it is a directory"),
        (["generate", "a", "--out", tmp_path], "it is a directory"),
        (["generate", "a", "--out", blocker / "out.wav"], "is a file, not a folder"),
    ]
    wav = tmp_path / "in.wav"
    wav.write_bytes(b"")  # never read: the destination is refused first
    for command in ("encode", "decode", "roundtrip"):
        cases.append((["codec", command, wav, tmp_path / "song_1.wav"], "it is a directory"))
        cases.append((["codec", command, tmp_path / "missing.wav", tmp_path / "o.wav"], "input file not found"))
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err and err.startswith("musicgen-jax: error: "), (argv, err)
        assert not any(p.name.startswith(("song_0", "song_2", "o.")) for p in tmp_path.iterdir())


def test_cli_input_errors_are_one_line_with_exit_code_2(capsys, no_loading, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"caf\xe9 jazz\n")  # latin-1, not UTF-8
    for argv, message in [
        (["--prompts-file", prompts], "prompts.txt is not UTF-8 text"),
        (["--prompts-file", tmp_path / "none.txt"], "No such file or directory"),
        (["x", "--melody", tmp_path / "none.wav"], "audio file not found"),
        ([], "no prompt given"),
    ]:
        code, _, err = run_cli(capsys, "generate", *argv, "--out", tmp_path / "o.wav")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_out_of_memory_is_reported(capsys, load_tiny, tmp_path, monkeypatch):
    def exhausted(self, *args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00TiB")

    monkeypatch.setattr(MusicGen, "generate", exhausted)
    code, _, err = run_cli(capsys, "generate", "x", "--quiet", "--out", tmp_path / "o.wav")
    assert code == 2 and "out of memory" in err and "--batch-size" in err


def test_cli_shows_one_progress_bar_over_all_batches(capsys, load_tiny, tmp_path):
    """4 prompts in batches of 2: one bar over both batches (2 x 12 frames), none with --quiet."""
    duration = FRAMES / 4000
    code, out, err = run_cli(capsys, "generate", *"abcd", "--batch-size", "2", "--duration", duration,
                             "--seed", "1", "--out", tmp_path / "s.wav")
    assert code == 0, err
    assert "4 prompt(s) in 2 batch(es)" in err and f"{2 * FRAMES}/{2 * FRAMES}" in err
    assert sorted(os.listdir(tmp_path)) == [f"s_{i}.wav" for i in range(4)] and out.count(".wav:") == 4
    code, out, err = run_cli(capsys, "generate", "a", "b", "--duration", duration, "--quiet",
                             "--out", tmp_path / "q.wav")
    assert code == 0 and "batch" not in err and "q_1.wav" in out


def test_sampling_params_remain_static_and_hashable():
    """Checked values are stored as plain Python numbers: one compiled program per distinct setting."""
    a = SamplingParams(top_k=np.int64(5), temperature=np.float32(0.5))
    assert hash(a) == hash(SamplingParams(top_k=5, temperature=0.5))
