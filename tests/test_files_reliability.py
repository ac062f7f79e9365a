"""Bad inputs and faults in the file-facing parts (issue 12): output files (umask, links, devices,
read-only folders, killed writes), corrupt checkpoints and weights, truncated audio, out-of-range codes,
long codec inputs. Each test names the fault it covers; the README's Reliability table lists them."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from musicgen_jax import files
from musicgen_jax.files import atomic_write, check_destination


def _write_bytes(data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write


# ----------------------------------------------------------------------------------------------------------
# output files


def test_atomic_write_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = atomic_write(tmp_path / "a.bin", _write_bytes(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "b.bin", _write_bytes(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "b.bin").st_mode) == 0o644


def test_atomic_write_keeps_mode_of_replaced_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o604)
    atomic_write(path, _write_bytes(b"new"))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604


def test_atomic_write_writes_through_symlink(tmp_path):
    target = tmp_path / "real" / "out.wav"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.wav"
    link.symlink_to(target)
    assert atomic_write(link, _write_bytes(b"new")) == str(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert not [n for n in os.listdir(target.parent) if n.startswith(".tmp")]


def test_check_destination_refuses_directory_device_and_path_under_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory") as e:
        check_destination(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="device or other special file"):
        check_destination("/dev/null")
    link = tmp_path / "null.wav"
    link.symlink_to("/dev/null")
    with pytest.raises(ValueError, match="device or other special file"):
        atomic_write(link, _write_bytes(b"x"))
    assert link.is_symlink()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="special file"):
        check_destination(fifo)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for bad in (plain / "out.wav", plain / "sub" / "out.wav"):
        with pytest.raises(ValueError, match=f"{plain} is a file, not a folder"):
            check_destination(bad)
    # missing folders are fine (created on write), ~ is expanded
    assert check_destination(tmp_path / "new" / "deeper" / "x.wav") == str(tmp_path / "new" / "deeper" / "x.wav")
    assert check_destination("~/x.wav") == os.path.join(os.path.expanduser("~"), "x.wav")


_READ_ONLY_CHECK = """
import os, tempfile
d = tempfile.mkdtemp()
os.chmod(d, 0o555)
for p in (os.path.join(d, "out.wav"), os.path.join(d, "sub", "out.wav")):
    try:
        check_destination(p)
    except ValueError as e:
        assert "not writable" in str(e) and d in str(e), e
    else:
        raise SystemExit("no error for " + p)
os.chmod(d, 0o755)
f = os.path.join(d, "ro.wav")
open(f, "w").close()
os.chmod(f, 0o444)
try:
    check_destination(f)
except ValueError as e:
    assert "read-only" in str(e) and f in str(e), e
else:
    raise SystemExit("no error for read-only file")
os.remove(f)
os.rmdir(d)
print("ok")
"""


def test_check_destination_refuses_read_only_folder(tmp_path):
    """Permission bits do not stop root, so as root the check runs in a child that drops to `nobody`."""
    src = open(files.__file__).read() + "\n" + _READ_ONLY_CHECK  # stdlib only: any python 3.8+ runs it
    if os.geteuid() != 0:
        proc = subprocess.run([sys.executable, "-"], input=src, text=True, capture_output=True, timeout=60)
    else:
        for python in (sys.executable, "/usr/bin/python3"):  # ours may sit in a folder only root can enter
            try:
                proc = subprocess.run([python, "-"], input=src, text=True, capture_output=True, timeout=60,
                                      user=65534, group=65534, cwd="/", env={"PATH": "/usr/bin:/bin"})
                break
            except (PermissionError, FileNotFoundError):
                continue
        else:
            pytest.skip("no python that user nobody may run")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


_SLOW_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"x" * 100000)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

files.atomic_write(sys.argv[2], write)
"""


def test_killed_write_leaves_no_visible_file_and_is_cleaned_next_time(tmp_path):
    out = tmp_path / "out.wav"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, files.__file__, str(out)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        temps = [n for n in os.listdir(tmp_path) if n.startswith(files.TMP_PREFIX)]
        assert len(temps) == 1 and temps[0].startswith(".")  # hidden
        files._remove_stale_temps(str(tmp_path))  # a live writer's temp file is left alone
        assert os.listdir(tmp_path) == temps
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    assert os.listdir(tmp_path) == temps  # what SIGKILL leaves: a hidden temp file
    atomic_write(tmp_path / "other.wav", _write_bytes(b"y"))  # the next write into the folder cleans it
    assert sorted(os.listdir(tmp_path)) == ["other.wav"]


def test_failed_write_leaves_nothing(tmp_path):
    def fail(tmp):
        _write_bytes(b"half")(tmp)
        raise RuntimeError("boom")

    (tmp_path / "out.wav").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.wav", fail)
    assert os.listdir(tmp_path) == ["out.wav"] and (tmp_path / "out.wav").read_bytes() == b"old"


# ----------------------------------------------------------------------------------------------------------
# checkpoints: damaged weight files, bad configs, missing or non-finite tensors


def _tiny_encodec_dir(path, state=None, config=None) -> str:
    from safetensors.numpy import save_file

    from musicgen_jax.testing import TINY_ENCODEC

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config if config is not None else json.dumps({"model_type": "encodec", **TINY_ENCODEC}))
    state = {"encoder.layers.0.conv.bias": np.zeros(4, np.float32)} if state is None else state
    save_file(state, os.path.join(path, "model.safetensors"))
    return str(path)


def test_empty_or_truncated_safetensors_is_named(tmp_path):
    from musicgen_jax.convert.common import CheckpointError, load_state_dict_file
    from musicgen_jax.convert.encodec import load_encodec

    directory = _tiny_encodec_dir(tmp_path / "codec", {"a": np.ones(100, np.float32), "b": np.ones(9, np.float32)})
    path = os.path.join(directory, "model.safetensors")
    good = open(path, "rb").read()
    assert sorted(load_state_dict_file(path)) == ["a", "b"]
    cases = {0: r"is empty \(0 bytes\)", 5: "shorter than the 8-byte header length", 40: "its header claims",
             len(good) - 10: "10 missing"}
    for size, problem in cases.items():
        with open(path, "wb") as f:
            f.write(good[:size])
        for load in (load_state_dict_file, lambda p: load_encodec(directory)):
            with pytest.raises(CheckpointError, match=problem) as e:
                load(path)
            assert path in str(e.value)
    with open(path, "wb") as f:  # a header that is not JSON
        f.write((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"x" * 10)
    with pytest.raises(CheckpointError, match="its header is not valid"):
        load_state_dict_file(path)


def test_truncated_torch_checkpoint_is_named_without_torch(tmp_path):
    """torch.save writes a zip archive; a cut one lacks the archive's end (checked before torch loads)."""
    from musicgen_jax.convert.common import CheckpointError
    from musicgen_jax.convert.encodec import load_encodec

    path = str(tmp_path / "compression_state_dict.bin")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 5000)
    with open(path, "rb") as f:
        whole = f.read()
    with open(path, "wb") as f:
        f.write(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="is truncated") as e:
        load_encodec(path)
    assert path in str(e.value)
    open(path, "wb").close()
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_encodec(path)


@pytest.mark.parity
def test_truncated_real_torch_checkpoint_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    from musicgen_jax.convert.common import CheckpointError, load_torch_pickle

    path = str(tmp_path / "state_dict.bin")
    torch.save({"best_state": {"w": torch.ones(1000)}, "xp.cfg": "{}"}, path)
    assert float(load_torch_pickle(path)["best_state"]["w"].sum()) == 1000
    whole = open(path, "rb").read()
    for size in (len(whole) // 2, len(whole) - 5):
        with open(path, "wb") as f:
            f.write(whole[:size])
        with pytest.raises(CheckpointError, match="is truncated: the torch checkpoint's zip archive is incomplete") as e:
            load_torch_pickle(path)
        assert path in str(e.value)


def test_invalid_config_json_is_named(tmp_path):
    from musicgen_jax.convert.checkpoint import load_checkpoint
    from musicgen_jax.convert.encodec import load_encodec

    for text, problem in (('{"model_type": "encodec",', "is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
                          (b"\xff\xfe{}".decode("latin-1"), "is not valid JSON")):
        directory = _tiny_encodec_dir(tmp_path / f"c{len(text)}", config=text)
        with pytest.raises(ValueError, match=problem) as e:
            load_encodec(directory)
        assert os.path.join(directory, "config.json") in str(e.value)
    # valid JSON, but a MusicGen config without its parts: the missing key and the file are named
    directory = _tiny_encodec_dir(tmp_path / "musicgen", config=json.dumps({"model_type": "musicgen", "decoder": {}}))
    with pytest.raises(ValueError, match="missing key") as e:
        load_checkpoint(directory)
    assert os.path.join(directory, "config.json") in str(e.value)
    bad_type = json.dumps({"model_type": "encodec", "upsampling_ratios": 5})
    directory = _tiny_encodec_dir(tmp_path / "typed", config=bad_type)
    with pytest.raises(ValueError) as e:
        load_encodec(directory)
    assert os.path.join(directory, "config.json") in str(e.value)


def test_missing_tensors_name_the_weights_file(tmp_path):
    from musicgen_jax.convert.common import CheckpointError
    from musicgen_jax.convert.encodec import load_encodec

    directory = _tiny_encodec_dir(tmp_path / "codec")
    with pytest.raises(CheckpointError, match="missing keys") as e:
        load_encodec(directory)
    assert os.path.join(directory, "model.safetensors") in str(e.value)


def test_non_finite_weights_are_refused(tmp_path):
    from musicgen_jax.convert.common import CheckpointError, check_finite
    from musicgen_jax.convert.encodec import load_encodec

    for bad in (np.nan, np.inf):
        weights = np.zeros((2, 3), np.float32)
        weights[1, 2] = bad
        directory = _tiny_encodec_dir(tmp_path / str(bad), {"encoder.layers.0.conv.bias": np.zeros(4, np.float32),
                                                            "encoder.layers.1.conv.weight": weights})
        with pytest.raises(CheckpointError, match="'encoder.layers.1.conv.weight' holds 1 NaN or infinite") as e:
            load_encodec(directory)
        assert os.path.join(directory, "model.safetensors") in str(e.value)
    # audiocraft pickles hold nested dicts (best_state); integer buffers are not checked
    check_finite({"model": {"w": np.ones(3, np.float32)}, "steps": np.array([2 ** 40])}, "x.bin")
    with pytest.raises(CheckpointError, match="x.bin: tensor 'model.w'"):
        check_finite({"model": {"w": np.array([1.0, np.nan])}}, "x.bin")


def test_damaged_tokenizer_files_are_named(tmp_path):
    from musicgen_jax.tokenizer import T5Tokenizer

    for name, data in (("empty", b""), ("garbage", b"not a model")):
        path = tmp_path / name / "spiece.model"
        path.parent.mkdir()
        path.write_bytes(data)
        with pytest.raises(ValueError, match="cannot read sentencepiece model") as e:
            T5Tokenizer.from_pretrained(str(path.parent))
        assert str(path) in str(e.value)
    (tmp_path / "empty" / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="is not a valid tokenizer config") as e:
        T5Tokenizer.from_pretrained(str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "tokenizer_config.json") in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# audio files


def test_truncated_wav_warns_and_reads_what_is_there(tmp_path):
    import soundfile as sf

    from musicgen_jax.audio import read_audio

    path = str(tmp_path / "cut.wav")
    sf.write(path, np.zeros((1000, 2), np.float32), 32000, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file reads without a warning
        assert read_audio(path)[0].shape == (2, 1000)
    whole = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(whole[: 44 + 400 * 4 + 2])  # header + 400.5 frames
    with pytest.warns(UserWarning, match=r"is truncated: its header declares 1000 frames, the file holds 400 "
                                         r"\(600 frames, 0\.019 s missing\)") as w:
        wav, rate = read_audio(path)
    assert path in str(w[0].message) and wav.shape == (2, 400) and rate == 32000


# ----------------------------------------------------------------------------------------------------------
# codec: codes out of range, long inputs


@pytest.fixture(scope="module")
def tiny_codec():
    from musicgen_jax.testing import random_codec

    return random_codec(chunk_seconds=None)


def test_decode_checks_code_range_before_any_cast(tiny_codec):
    card = tiny_codec.cardinality
    good = np.zeros((1, tiny_codec.num_codebooks, 3), np.int64)
    assert tiny_codec.decode(good).shape == (1, 1, 3 * tiny_codec.hop_length)
    for value in (2 ** 32 + 1, 2 ** 31, 2 ** 32, -1, -(2 ** 32) + 1, card):  # int32 casts would wrap some into range
        codes = good.copy()
        codes[0, 1, 2] = value
        with pytest.raises(ValueError, match=f"codes out of range \\[0, {card}\\)"):
            tiny_codec.decode(codes)
    with pytest.raises(ValueError, match="out of range"):
        tiny_codec.decode(np.full_like(good, 2 ** 63 + 5, dtype=np.uint64))
    for dtype, fill in ((np.float32, 1.0), (np.float64, np.nan), (np.bool_, True)):
        with pytest.raises(ValueError, match="codes must be integers"):
            tiny_codec.decode(np.full(good.shape, fill, dtype))


def test_long_inputs_are_encoded_and_decoded_in_windows(tiny_codec):
    """The audio-rate convolutions run on windows of 200 frames + their reach (5 frames each side), the
    LSTMs on the whole sequence: codes identical to one pass, audio within float rounding."""
    from musicgen_jax.testing import random_codec

    windowed = random_codec(chunk_seconds=0.05)
    assert (windowed.chunk_frames, windowed.encode_context, windowed.decode_context) == (200, 5, 5)
    seen = []
    for name in ("_encode_convs_fn", "_decode_convs_fn", "_encode_fn", "_decode_fn"):
        fn = getattr(windowed, name)
        windowed.__dict__[name] = lambda p, x, fn=fn, name=name: seen.append((name, x.shape[-2:])) or fn(p, x)
    n = 2350 * 8 - 3
    t = np.arange(n) / 32000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(20 * t)))
           + 0.05 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)[None, None]
    codes = np.asarray(windowed.encode(wav))
    reference = np.asarray(tiny_codec.encode(wav))
    assert codes.shape == reference.shape == (1, 4, 2350)
    assert len(np.unique(reference)) > 10
    np.testing.assert_array_equal(codes, reference)
    audio = np.asarray(windowed.decode(reference))
    one_pass = np.asarray(tiny_codec.decode(reference))
    np.testing.assert_allclose(audio, one_pass, rtol=0, atol=1e-6 * np.abs(one_pass).max())
    windows = -(-2350 // 200)  # every call one window long (one shape to compile), the one-pass fns unused
    assert seen == [("_encode_convs_fn", (1, 210 * 8 - 3))] * windows + [("_decode_convs_fn", (210, 16))] * windows
    short = wav[..., : 210 * 8]  # up to one window: the one-pass functions
    np.testing.assert_array_equal(np.asarray(windowed.encode(short)), np.asarray(tiny_codec.encode(short)))
    assert seen[-1][0] == "_encode_fn"
