"""EnCodec parity against transformers' EncodecModel, loaders for both layouts, stereo, errors, CLI."""
from __future__ import annotations

import json
import os

import huggingface_hub.constants
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file as load_numpy

from musicgen_jax.codec import CompressionModel
from musicgen_jax.convert.common import CheckpointError
from musicgen_jax.convert.encodec import (encodec_config_from_hf, encodec_params_from_state_dict,
                                          load_encodec)
from musicgen_jax.testing import ENCODEC_32KHZ, TINY_ENCODEC, put_in_hub_cache
from musicgen_jax.testing import reference_encodec as build_reference  # codebooks spread over the latents
from tests.helpers import legacy_weight_norm_names, snr_db

TINY = TINY_ENCODEC  # 32 kHz, hop 8, 4 codebooks of 32 codes
REAL_32K = ENCODEC_32KHZ  # facebook/encodec_32khz, the codec of every MusicGen model


def reference_codes_and_audio(model: EncodecModel, wav: np.ndarray):
    import torch

    with torch.no_grad():
        codes = model.encode(torch.from_numpy(wav)).audio_codes[0]
        audio = model.decode(codes[None], [None]).audio_values
    return codes.numpy(), audio.numpy()


def random_wav(batch, channels, length, seed=1):
    return (np.random.default_rng(seed).standard_normal((batch, channels, length)) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("encodec_tiny")
    model = build_reference(TINY)
    model.save_pretrained(path)
    return str(path), model


def assert_parity(codec: CompressionModel, reference: EncodecModel, wav: np.ndarray, min_unique: int = 8):
    ref_codes, ref_audio = reference_codes_and_audio(reference, wav)
    assert len(np.unique(ref_codes)) >= min_unique, "reference codes are not diverse: the test proves nothing"
    codes = np.asarray(codec.encode(wav))
    np.testing.assert_array_equal(codes, ref_codes)
    audio = np.asarray(codec.decode(ref_codes))
    assert audio.shape == ref_audio.shape == (wav.shape[0], wav.shape[1], codes.shape[-1] * codec.hop_length)
    assert snr_db(ref_audio, audio) >= 60


@pytest.mark.parity
@pytest.mark.parametrize("length", [77, 5, 64, 1])
def test_tiny_parity_any_length(tiny_dir, length):
    path, reference = tiny_dir
    codec = CompressionModel.from_pretrained(path)
    assert_parity(codec, reference, random_wav(2, 1, length), min_unique=1 if length < 16 else 8)


@pytest.mark.parity
@pytest.mark.parametrize("variant", [
    dict(pad_mode="constant"),
    dict(use_causal_conv=True, use_conv_shortcut=True),  # the 24 kHz codec's structure
    dict(num_residual_layers=2, num_lstm_layers=1),
])
def test_tiny_parity_variants(tmp_path, variant):
    reference = build_reference({**TINY, **variant})
    reference.save_pretrained(tmp_path)
    assert_parity(CompressionModel.from_pretrained(str(tmp_path)), reference, random_wav(2, 1, 83))


@pytest.mark.parity
@pytest.mark.slow
def test_real_32khz_parity(tmp_path):
    reference = build_reference(REAL_32K)
    reference.save_pretrained(tmp_path)
    codec = CompressionModel.from_pretrained(str(tmp_path))
    assert codec.config.num_codebooks == 4 and codec.hop_length == 640 and codec.frame_rate == 50
    assert_parity(codec, reference, random_wav(2, 1, 6 * 640 + 123), min_unique=20)


@pytest.mark.parity
def test_legacy_weight_norm_names_and_pickle(tiny_dir, tmp_path):
    """Official repos store weight_g/weight_v; pytorch_model.bin pickles load too."""
    import torch
    from safetensors.torch import load_file

    path, reference = tiny_dir
    state = legacy_weight_norm_names(load_file(os.path.join(path, "model.safetensors")))
    assert any(k.endswith(".weight_g") for k in state)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    torch.save(state, legacy / "pytorch_model.bin")
    assert_parity(CompressionModel.from_pretrained(str(legacy)), reference, random_wav(1, 1, 99))


@pytest.mark.parity
def test_musicgen_checkpoint_audio_encoder_part(tmp_path):
    from musicgen_jax.testing import reference_musicgen

    text = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    model = reference_musicgen(dim=16, layers=1, heads=4, ffn=32, text=text, codec=TINY, widen=False)
    reference = build_reference(TINY, seed=3)
    model.audio_encoder.load_state_dict(reference.state_dict())
    model.save_pretrained(tmp_path)
    codec = CompressionModel.from_pretrained(str(tmp_path))
    assert_parity(codec, reference, random_wav(1, 1, 90))


def _audiocraft_state(hf_state: dict) -> dict:
    """transformers EnCodec keys -> audiocraft SEANet/RVQ keys (weight_g/weight_v style)."""
    out = {}
    for key, value in legacy_weight_norm_names(hf_state).items():
        if key.startswith("quantizer."):
            key = key.replace("quantizer.layers.", "quantizer.vq.layers.").replace(".codebook.", "._codebook.")
        else:
            key = key.replace("encoder.layers.", "encoder.model.").replace("decoder.layers.", "decoder.model.")
            is_tr = key.startswith("decoder.") and any(f"model.{i}.conv." in key for i in (3, 6))
            key = key.replace(".conv.", ".convtr.convtr." if is_tr else ".conv.conv.")
        out[key] = value
    return out


def _audiocraft_xp_cfg(hf_kwargs: dict) -> str:
    return yaml.safe_dump({
        "compression_model": "encodec", "sample_rate": hf_kwargs["sampling_rate"], "channels": 1,
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": hf_kwargs["sampling_rate"],
                    "channels": 1, "causal": False, "renormalize": False},
        "seanet": {"dimension": hf_kwargs["hidden_size"], "channels": 1, "causal": False,
                   "n_filters": hf_kwargs["num_filters"], "n_residual_layers": 1,
                   "ratios": hf_kwargs["upsampling_ratios"], "activation": "ELU",
                   "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {},
                   "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 7, "dilation_base": 2,
                   "pad_mode": hf_kwargs["pad_mode"], "true_skip": True, "compress": 2, "lstm": 2,
                   "disable_norm_outer_blocks": 0,
                   "decoder": {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None},
                   "encoder": {}},
        "rvq": {"n_q": 4, "bins": hf_kwargs["codebook_size"]},
    })


@pytest.mark.parity
def test_audiocraft_trained_codec(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    path, reference = tiny_dir
    hf_state = dict(load_file(os.path.join(path, "model.safetensors")))
    pkg = {"best_state": _audiocraft_state(hf_state), "xp.cfg": _audiocraft_xp_cfg(TINY),
           "version": "1.3.0", "exported": True}
    torch.save(pkg, tmp_path / "compression_state_dict.bin")
    codec = CompressionModel.from_pretrained(str(tmp_path / "compression_state_dict.bin"))
    assert codec.config.pad_mode == "reflect"
    assert_parity(codec, reference, random_wav(2, 1, 77))


@pytest.mark.parity
def test_audiocraft_pointer_resolves_through_hub_cache(tiny_dir, tmp_path, monkeypatch):
    import torch

    path, reference = tiny_dir
    cache = tmp_path / "hub"
    put_in_hub_cache(str(cache), "facebook/encodec_32khz", path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               tmp_path / "compression_state_dict.bin")
    codec = CompressionModel.from_pretrained(str(tmp_path / "compression_state_dict.bin"))
    assert_parity(codec, reference, random_wav(1, 1, 77))
    # a MusicGen audiocraft folder holding the pointer works the same way
    config, _ = load_encodec(str(tmp_path))
    assert config == codec.config


def test_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local directory"):
        load_encodec("facebook/encodec_32khz")
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        load_encodec(str(tmp_path / "nope") + "/")


@pytest.mark.parity
def test_stereo_interleaves_two_mono_streams(tiny_dir):
    path, reference = tiny_dir
    mono = CompressionModel.from_pretrained(path)
    stereo = CompressionModel(mono.config, mono.params, audio_channels=2)
    assert stereo.num_codebooks == 8
    wav = random_wav(2, 2, 77)
    codes = np.asarray(stereo.encode(wav))
    left, _ = reference_codes_and_audio(reference, wav[:, :1])
    right, _ = reference_codes_and_audio(reference, wav[:, 1:])
    np.testing.assert_array_equal(codes[:, 0::2], left)  # [1L, 1R, 2L, 2R, ...]
    np.testing.assert_array_equal(codes[:, 1::2], right)
    audio = np.asarray(stereo.decode(codes))
    np.testing.assert_allclose(audio[:, 0], np.asarray(mono.decode(left))[:, 0], atol=1e-6)
    np.testing.assert_allclose(audio[:, 1], np.asarray(mono.decode(right))[:, 0], atol=1e-6)


@pytest.mark.parity
def test_checkpoint_problems_listed_in_one_error(tiny_dir):
    path, _ = tiny_dir
    with open(os.path.join(path, "config.json")) as f:
        cfg = encodec_config_from_hf(json.load(f))
    state = dict(load_numpy(os.path.join(path, "model.safetensors")))
    del state["encoder.layers.0.conv.bias"]
    state["encoder.layers.99.conv.bias"] = np.zeros(3, np.float32)
    state["decoder.layers.0.conv.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError) as err:
        encodec_params_from_state_dict(state, cfg)
    message = str(err.value)
    assert "encoder.layers.0.conv.bias" in message
    assert "encoder.layers.99.conv.bias" in message
    assert "decoder/conv_in/bias" in message and "(5,)" in message


def test_unsupported_48khz_is_refused():
    with pytest.raises(ValueError, match="time-group-norm"):
        encodec_config_from_hf(dict(norm_type="time_group_norm", normalize=True, chunk_length_s=1.0))


@pytest.mark.parity
def test_bad_inputs(tiny_dir):
    codec = CompressionModel.from_pretrained(tiny_dir[0])
    cases = [
        (np.zeros((1, 77), np.float32), "shape"),
        (np.zeros((1, 2, 77), np.float32), "channel"),
        (np.zeros((1, 1, 0), np.float32), "empty"),
        (np.full((1, 1, 10), np.nan, np.float32), "NaN"),
        (np.zeros((1, 1, 10), np.int32), "floating"),
    ]
    for wav, match in cases:
        with pytest.raises(ValueError, match=match):
            codec.encode(wav)
    with pytest.raises(TypeError):
        codec.encode([0.0, 1.0])
    with pytest.raises(ValueError, match="out of range"):
        codec.decode(np.full((1, 4, 3), 32, np.int32))
    with pytest.raises(ValueError, match="codebooks"):
        codec.decode(np.zeros((1, 3, 3), np.int32))
    with pytest.raises(ValueError, match="integers"):
        codec.decode(np.zeros((1, 4, 3), np.float32))


@pytest.mark.parity
def test_encodec_param_count_matches_pytorch():
    """Our tree at the real 32 kHz size vs the torch module built on the meta device.

    We fold weight norm (g disappears), sum the two LSTM biases, and hold the codebooks as params
    (torch buffers): the counts must agree after exactly those three adjustments.
    """
    import torch
    from flax import traverse_util
    from transformers import EncodecConfig as HFEncodecConfig
    from transformers import EncodecModel

    from musicgen_jax.convert.encodec import encodec_abstract_params

    with torch.device("meta"):
        model = EncodecModel(HFEncodecConfig(**REAL_32K))
    torch_count = 0
    for name, p in model.named_parameters():
        if name.endswith(("original0", "weight_g")) or "bias_hh" in name:
            continue
        torch_count += p.numel()
    torch_count += sum(b.numel() for n, b in model.named_buffers() if n.endswith("codebook.embed"))
    ours = encodec_abstract_params(encodec_config_from_hf(REAL_32K))
    count = sum(int(np.prod(x.shape)) for x in traverse_util.flatten_dict(ours).values())
    assert count == torch_count
    assert count > 50_000_000 // 10  # sanity: millions of weights, not a toy


@pytest.mark.parity
def test_cli_encode_decode_roundtrip(tiny_dir, tmp_path):
    import soundfile as sf

    from musicgen_jax.audio import read_audio
    from musicgen_jax.cli import main

    path, reference = tiny_dir
    wav16k = (np.sin(np.arange(1600) * 0.05) * 0.5).astype(np.float32)
    sf.write(tmp_path / "in.wav", wav16k, 16000)
    assert main(["codec", "encode", str(tmp_path / "in.wav"), str(tmp_path / "codes.npy"), "--model", path]) == 0
    codes = np.load(tmp_path / "codes.npy")
    resampled, _ = read_audio(str(tmp_path / "in.wav"), sample_rate=32000)
    assert resampled.shape[-1] == 3200  # resampled to the codec rate
    ref_codes, ref_audio = reference_codes_and_audio(reference, resampled[None])
    np.testing.assert_array_equal(codes, ref_codes)
    assert main(["codec", "decode", str(tmp_path / "codes.npy"), str(tmp_path / "out.wav"), "--model", path]) == 0
    out, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 32000 and out.shape == (codes.shape[-1] * 8,)
    np.testing.assert_allclose(out, np.clip(ref_audio[0, 0], -1, 1), atol=2 / 32768)
    assert main(["codec", "roundtrip", str(tmp_path / "in.wav"), str(tmp_path / "rt.wav"), "--model", path]) == 0
    assert sf.info(str(tmp_path / "rt.wav")).frames == 3200
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # atomic writes left nothing


def test_cli_reports_bad_model(tmp_path, capsys):
    from musicgen_jax.cli import main

    import soundfile as sf

    sf.write(tmp_path / "x.wav", np.zeros(3200, np.float32), 32000)
    missing = str(tmp_path / "missing") + "/"
    assert main(["codec", "encode", str(tmp_path / "x.wav"), str(tmp_path / "y.npy"), "--model", missing]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err, err  # the model is named, not the (present) input
