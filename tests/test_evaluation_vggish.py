"""VGGish: the Flax port and its front end vs the `torchvggish` package (random weights, real shapes), the
FAD tool's windowing and normalisation, and weight loading / fetching errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from musicgen_jax.evaluation import vggish as V


def he_init_(model, seed: int = 0):
    """Re-draw a torch VGGish's weights so every layer's output is O(1) (torch's default init shrinks
    activations layer by layer until any port would agree): std sqrt(2 / fan_in), biases std 0.1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model


@pytest.fixture(scope="module")
def torch_vggish():
    from torchvggish import torchvggish

    return he_init_(torchvggish._vgg(postprocess=False).eval())


def torch_state(model) -> dict:
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parity
def test_front_end_equals_torchvggish():
    from torchvggish import mel_features, vggish_input

    rng = np.random.default_rng(0)
    mono = rng.standard_normal(16000 * 3 + 777) * 0.3
    ref = vggish_input.waveform_to_examples(mono, 16000, return_tensor=False)
    ours = V.waveform_to_examples(mono, 16000)
    assert ours.shape == ref.shape == (3, 96, 64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)
    stereo = rng.standard_normal((2, 16000 * 2)) * 0.3  # ours [C, N], torchvggish [N, C]
    np.testing.assert_allclose(V.waveform_to_examples(stereo, 16000),
                               vggish_input.waveform_to_examples(stereo.T, 16000, return_tensor=False), atol=1e-10)
    np.testing.assert_array_equal(V.mel_matrix(), mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=64, num_spectrogram_bins=257, audio_sample_rate=16000, lower_edge_hertz=125,
        upper_edge_hertz=7500))


@pytest.mark.parity
def test_network_equals_torchvggish_random_weights(torch_vggish):
    import torch

    params = V.vggish_params_from_state_dict(torch_state(torch_vggish))
    x = torch.randn(5, 1, 96, 64, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        ref = torch_vggish(x).numpy()  # torchvggish: ReLU after the last layer
        h = torch_vggish.features(x).permute(0, 2, 3, 1).reshape(5, -1)
        ref_linear = torch_vggish.embeddings[:-1](h).numpy()  # the TF model's output: no final ReLU
    assert ref.shape == (5, 128) and np.abs(ref).max() > 1.0 and 0.2 < (ref > 0).mean() < 0.9
    assert (ref_linear < 0).any()
    model = V.VGGishModel(params, final_relu=False, batch_size=4)  # 2 batches, the 2nd padded
    np.testing.assert_allclose(model(x.numpy()[:, 0]), ref_linear, rtol=0, atol=1e-4)
    model.final_relu = True  # torchvggish's output; same compiled program, [N, 1, 96, 64] input
    np.testing.assert_allclose(model(x.numpy()), ref, rtol=0, atol=1e-4)
    module_out = V.VGGish(final_relu=True).apply({"params": params}, x.numpy()[:1])  # the module's own flag
    np.testing.assert_allclose(np.asarray(module_out), ref[:1], rtol=0, atol=1e-4)


@pytest.mark.parity
def test_weights_from_published_pth_layout(torch_vggish, tmp_path):
    import torch

    torch.save(torch_vggish.state_dict(), tmp_path / "vggish.pth")
    expected = V.vggish_params_from_state_dict(torch_state(torch_vggish))  # checked against torch above
    loaded = V.load_vggish_params(str(tmp_path / "vggish.pth"))
    for layer in expected:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(loaded[layer][leaf], expected[layer][leaf])


@pytest.mark.parity
def test_pca_postprocess_equals_torchvggish():
    import torch
    from torchvggish import torchvggish

    rng = np.random.default_rng(3)
    eigen, means = rng.standard_normal((128, 128)) * 0.1, rng.standard_normal(128)
    proc = object.__new__(torchvggish.Postprocessor)  # its __init__ downloads the released PCA params
    proc._pca_matrix = torch.as_tensor(eigen).float()
    proc._pca_means = torch.as_tensor(means.reshape(-1, 1)).float()
    emb = rng.standard_normal((4, 128)) * 5
    ref = proc.postprocess(torch.as_tensor(emb).float()).numpy()
    ours = V.pca_postprocess(emb, eigen, means)
    assert len(np.unique(ref)) > 50  # spread over the 0..255 range, not all clipped
    assert np.mean(ours != ref) < 0.01  # fp32 vs fp64: a value next to a .5 may round the other way
    np.testing.assert_allclose(ours, ref, atol=1.0)


def test_weight_errors_name_the_problems(tmp_path):
    from musicgen_jax.convert.common import CheckpointError

    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: V.VGGish().init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 64))))["params"]
    rng = np.random.default_rng(0)
    params = {layer: {leaf: (rng.standard_normal(s.shape).astype(np.float32) if s.size < 1e6
                             else np.zeros(s.shape, np.float32)) for leaf, s in leaves.items()}
              for layer, leaves in shapes.items()}
    state = {}
    for ours, theirs, kind in V._LAYERS:
        k = np.asarray(params[ours]["kernel"])
        state[f"{theirs}.weight"] = k.transpose(3, 2, 0, 1) if kind == "conv" else k.T
        state[f"{theirs}.bias"] = np.asarray(params[ours]["bias"])
    back = V.vggish_params_from_state_dict(state)
    np.testing.assert_array_equal(back["conv3_2"]["kernel"], params["conv3_2"]["kernel"])
    broken = dict(state)
    del broken["features.0.bias"]
    broken["embeddings.4.weight"] = np.zeros((64, 4096), np.float32)
    broken["extra.weight"] = np.zeros(1)
    with pytest.raises(CheckpointError) as err:
        V.vggish_params_from_state_dict(broken)
    for text in ("missing features.0.bias", "embeddings.4.weight: shape (64, 4096)", "unexpected keys: extra.weight"):
        assert text in str(err.value)
    with pytest.raises(V.VGGishError, match="not found"):
        V.load_vggish_params(str(tmp_path / "nope.pth"))
    np.savez(tmp_path / "partial.npz", **{k: v for k, v in state.items() if k.startswith("features.0.")})
    with pytest.raises(CheckpointError, match=r"(?s)partial\.npz .*missing embeddings\.4\.bias"):  # no torch
        V.load_vggish_params(str(tmp_path / "partial.npz"))


def test_missing_weights_offline_say_how_to_pass_them(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(V.VGGishError, match="--vggish-weights"):
        V.load_vggish_params(None, progress=False)


def test_download_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    source = tmp_path / "served.pth"
    source.write_bytes(b"not the weights")
    target = tmp_path / "cache" / "vggish.pth"
    with pytest.raises(V.VGGishError, match="sha256"):
        V.download_weights(str(target), url=source.as_uri(), progress=False)
    assert not target.exists() and not [p for p in os.listdir(target.parent) if p.startswith(".tmp")]
    import hashlib

    assert not hashlib.sha256(b"not the weights").hexdigest().startswith(V.WEIGHTS_SHA256_PREFIX)


# ---------------------------------------------------------------------------------------------- FAD windows


def test_fad_tool_normalisation_known_values():
    """peak -> -1 dBFS, 16-bit rounding, then division by the signed maximum of the integers."""
    x = np.array([0.5, -1.0, 0.25, 0.0])
    out = V.audiocraft_fad_samples(x)
    q = np.round(x * 10 ** (-1 / 20) * 32768)  # [14602, -29205, 7301, 0]
    np.testing.assert_array_equal(out, q / q.max())
    np.testing.assert_allclose(out, [1.0, -2.0, 0.5, 0.0], atol=1e-4)
    silent = V.audiocraft_fad_samples(np.zeros(10))
    assert np.all(silent == 0)
    negative = V.audiocraft_fad_samples(np.array([-0.5, -1.0]))  # no positive sample: divided by 0.1
    np.testing.assert_allclose(negative, np.round(np.array([-0.5, -1.0]) * 10 ** (-1 / 20) * 32768) / 0.1)


def test_fad_windows_are_one_second_every_half_second():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(16000 * 3 + 5000) * 0.1
    ex = V.fad_examples(x)
    assert ex.shape == (1 + (x.shape[0] - 16000) // 8000, 96, 64) == (5, 96, 64)
    norm = V.audiocraft_fad_samples(x)
    np.testing.assert_allclose(ex[3], V.log_mel_spectrogram(norm[24000:40000])[:96], atol=1e-12)
    assert V.fad_examples(x[:15999]).shape == (0, 96, 64)
    assert V.fad_examples(x[:16000]).shape == (1, 96, 64)


def test_vggish_backend_embeds_any_rate_and_channels():
    from musicgen_jax.evaluation.embeddings import VGGishEmbedding

    calls = []

    def fake_model(examples):
        calls.append(examples.shape)
        return examples.mean(axis=(1, 2))[:, None].repeat(128, 1)

    backend = VGGishEmbedding(fake_model)
    stereo_44k = np.random.default_rng(5).standard_normal((2, 44100 * 2)) * 0.1
    emb = backend.embed(stereo_44k, 44100)
    assert emb.shape == (3, 128) and calls == [(3, 96, 64)]  # 2 s at 16 kHz: windows at 0, 0.5, 1 s
