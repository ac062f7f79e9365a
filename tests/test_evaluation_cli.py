"""`musicgen-jax evaluate` and the evaluation pipeline on short generated wav files: the encodec embedding on
a tiny random codec (vs transformers' encoder), FAD / chroma through the CLI, KL and CLAP through their
adapters with fake models, the optional extras' error paths, and the MusicCaps protocol with a stub model."""
from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest

from musicgen_jax.audio import write_wav
from musicgen_jax.evaluation import pipeline as E
from musicgen_jax.evaluation.cli import main as evaluate_main
from musicgen_jax.evaluation.errors import BackendLoadError, MissingExtraError

C4, E4, G4 = 261.63, 329.63, 392.00  # chroma bins 0, 4, 7


def tone(freq: float, seconds: float, rate: int = 32000, channels: int = 1, noise: float = 0.0, seed: int = 0):
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.5 * np.sin(2 * np.pi * freq * t) + noise * np.random.default_rng(seed).standard_normal(t.shape)
    return np.repeat(wav[None], channels, axis=0).astype(np.float32)


def write_set(folder, items: dict, rate: int = 32000, channels: int = 1):
    os.makedirs(folder, exist_ok=True)
    for name, (freq, seconds, noise) in items.items():
        write_wav(os.path.join(folder, f"{name}.wav"), tone(freq, seconds, rate, channels, noise, seed=len(name)), rate)
    return str(folder)


TONES = {"a": (C4, 0.4, 0.0), "b": (E4, 0.3, 0.01), "sub/c": (G4, 0.3, 0.0)}  # 2 lengths: 2 compiles


def random_codec():
    """A CompressionModel with random Flax params at the tiny preset's codec shapes (no torch)."""
    import jax
    import jax.numpy as jnp

    from musicgen_jax.codec import CompressionModel
    from musicgen_jax.config import tiny
    from musicgen_jax.modules.encodec import Encodec

    cfg = tiny().encodec
    shapes = jax.eval_shape(Encodec(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 64, cfg.channels)))["params"]
    rng = np.random.default_rng(0)  # drawn here: compiling the init (a full encode + decode) takes long
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.3).astype(np.float32), shapes)
    return CompressionModel(cfg, params)


def no_model(what):
    def build():
        raise AssertionError(f"the {what} model must not be loaded for these metrics")

    return build


# ---------------------------------------------------------------------------------------------- encodec


def test_encodec_embedding_any_rate_and_channels():
    from musicgen_jax.evaluation.embeddings import EncodecEmbedding
    from musicgen_jax.modules.encodec import Encodec

    codec = random_codec()
    backend = EncodecEmbedding(codec)
    wav = tone(C4, 0.05, rate=32000)
    emb = backend.embed(wav, 32000)
    hop = codec.config.hop_length
    assert emb.shape == (-(-wav.shape[1] // hop), codec.config.dimension)
    direct = Encodec(codec.config).apply({"params": codec.params}, wav.T[None], method=lambda m, x: m.encoder(x))
    np.testing.assert_allclose(emb, np.asarray(direct[0]), rtol=1e-6, atol=1e-6)
    stereo_16k = tone(C4, 0.05, rate=16000, channels=2)
    assert backend.embed(stereo_16k, 16000).shape == (-(-1600 // hop), codec.config.dimension)  # -> 32 kHz mono


def test_fad_and_chroma_pipeline_known_answers(tmp_path):
    from musicgen_jax.evaluation.embeddings import EncodecEmbedding

    gen = write_set(tmp_path / "gen", TONES)
    same = write_set(tmp_path / "same", TONES)
    shifted = write_set(tmp_path / "shifted", {"a": (E4, 0.4, 0.0), "b": (G4, 0.3, 0.01), "sub/c": (C4, 0.3, 0.0)})
    backend = EncodecEmbedding(random_codec())
    backends = E.Backends(embedding=lambda: backend, passt=no_model("PaSST"), clap=no_model("CLAP"))
    same_res = E.evaluate(E.EvaluationSet.from_folders(gen, same), ["fad", "chroma"], backends, progress=False)
    assert abs(same_res["fad"]) < 1e-6
    assert same_res["fad_generated_rows"] == same_res["fad_reference_rows"] == 4000 * (0.4 + 0.3 + 0.3)
    assert same_res["chroma_cosine"] == pytest.approx(1.0)
    assert same_res["chroma_pairs"] == 3 and same_res["chroma_frames"] == 4 + 3 + 3  # ceil(n / 4096) each
    other = E.evaluate(E.EvaluationSet.from_folders(gen, shifted), ["fad", "chroma"], backends, progress=False)
    assert other["fad"] > 1e-3
    assert other["chroma_cosine"] == pytest.approx(0.0)  # every frame's pitch class differs


@pytest.fixture(scope="module")
def tiny_codec_dir(tmp_path_factory):
    from musicgen_jax.testing import TINY_ENCODEC, reference_encodec

    path = tmp_path_factory.mktemp("eval_codec")
    model = reference_encodec(TINY_ENCODEC)
    model.save_pretrained(path)
    return str(path), model


@pytest.mark.parity
def test_encodec_latents_equal_transformers_encoder(tiny_codec_dir):
    import torch

    from musicgen_jax.codec import CompressionModel
    from musicgen_jax.evaluation.embeddings import EncodecEmbedding

    path, reference = tiny_codec_dir
    wav = tone(C4, 0.02, noise=0.2)
    with torch.no_grad():
        ref = reference.encoder(torch.from_numpy(wav[None]))[0].T.numpy()  # [T, D] before the quantizer
    ours = EncodecEmbedding(CompressionModel.from_pretrained(path)).embed(wav, 32000)
    assert ours.shape == ref.shape and np.abs(ref).max() > 0.1
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parity
def test_cli_encodec_fad_and_chroma(tiny_codec_dir, tmp_path, capsys):
    path, _ = tiny_codec_dir
    gen = write_set(tmp_path / "gen", TONES)
    ref = write_set(tmp_path / "ref", TONES, rate=44100, channels=2)  # other rate and channel count
    noise = write_set(tmp_path / "noise", {k: (C4, s, 1.0) for k, (_, s, _) in TONES.items()}, rate=22050)
    out = tmp_path / "out" / "results.json"
    args = ["--generated", gen, "--metrics", "fad,chroma", "--embedding", "encodec", "--codec", path, "--quiet"]
    assert evaluate_main(args + ["--reference", ref, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FAD" in printed and "chroma cosine" in printed and str(out) in printed
    close = json.loads(out.read_text())
    assert close["metrics"] == ["fad", "chroma"] and close["fad_embedding"] == "encodec" and close["pairs"] == 3
    assert close["chroma_cosine"] == pytest.approx(1.0)
    assert not [p for p in os.listdir(out.parent) if p.startswith(".tmp")]
    assert evaluate_main(args + ["--reference", noise, "--json", str(out)]) == 0
    far = json.loads(out.read_text())
    assert far["fad"] > 20 * max(close["fad"], 1e-6)


# ---------------------------------------------------------------------------------------------- KL / CLAP


class NumpyPasst:
    """A PaSST stand-in without torch: PasstModel's segmenting, label distributions from band energies."""

    def __init__(self, pretrained_length):
        from musicgen_jax.evaluation.passt import PasstModel

        self._real = PasstModel(model=None, pretrained_length=pretrained_length)
        self.sample_rate = self._real.sample_rate
        self.pieces = []

    def segments(self, wav, rate):
        return self._real.segments(wav, rate)

    def label_probs_of_pieces(self, pieces):
        self.pieces.append([p.shape[0] for p in pieces])
        feats = [np.log1p(np.abs(np.fft.rfft(p))[:3000].reshape(3, -1).sum(1)) for p in pieces]
        return E.M.softmax(np.stack(feats))


def test_kl_pipeline_segments_and_pairs(tmp_path):
    gen = write_set(tmp_path / "gen", {"x": (C4, 2.5, 0.0), "y": (E4, 1.2, 0.0)})
    ref = write_set(tmp_path / "ref", {"x": (C4, 2.5, 0.0), "y": (E4, 1.0, 0.0), "z": (G4, 1.0, 0.0)}, rate=48000)
    classifier = NumpyPasst(pretrained_length=1)
    backends = E.Backends(embedding=no_model("embedding"), passt=lambda: classifier, clap=no_model("CLAP"))
    res = E.evaluate(E.EvaluationSet.from_folders(gen, ref), ["kl"], backends, progress=False)
    # x: 2.5 s -> pieces of 1, 1, 0.5 s; y: cut to the shorter 1.0 s -> one piece; z: unpaired
    assert classifier.pieces == [[32000, 32000, 16000]] * 2 + [[32000]] * 2
    assert res["kl_rows"] == 4 and res["pairs"] == 2
    assert abs(res["kld"]) < 1e-3 and res["kld_both"] == pytest.approx(res["kld"] + res["kld_qp"])
    shifted = write_set(tmp_path / "shifted", {"x": (G4 * 4, 2.5, 0.3), "y": (C4 * 8, 1.0, 0.3)})
    far = E.evaluate(E.EvaluationSet.from_folders(gen, shifted), ["kl"], E.Backends(
        embedding=no_model("embedding"), passt=lambda: NumpyPasst(1), clap=no_model("CLAP")), progress=False)
    assert far["kld"] > 10 * abs(res["kld"]) + 1e-3


def fake_torch_passt():
    import torch

    class FakePasst(torch.nn.Module):
        """mode "all": [B, T] -> [B, 527 logits + 8 embedding] (torch.stft called as hear21passt does)."""

        def forward(self, x):
            spec = torch.stft(x, 64, hop_length=32, window=torch.hann_window(64), return_complex=False)
            power = (spec ** 2).sum(-1).mean(-1)  # [B, 33]
            logits = torch.cat([power, torch.zeros(x.shape[0], 527 - power.shape[1])], dim=1)
            print("PaSST says a lot")
            return torch.cat([logits, power[:, :8] * 2], dim=1)

    return FakePasst()


@pytest.mark.parity
def test_passt_adapter_with_fake_model(capsys):
    import torch

    from musicgen_jax.evaluation.passt import PasstModel

    stft = torch.stft
    model = PasstModel(fake_torch_passt(), pretrained_length=1)
    wav = tone(C4, 2.2, rate=16000, channels=2, noise=0.05)  # 16 kHz stereo -> 32 kHz mono pieces
    probs = model.label_probs(wav, 16000)
    assert torch.stft is stft and "PaSST says" not in capsys.readouterr().out  # restored, silenced
    assert probs.shape == (3, 527) and np.allclose(probs.sum(1), 1.0)  # 1 s, 1 s, 0.2 s
    pieces = model.segments(wav, 16000)
    with torch.no_grad():
        logits = fake_torch_passt()(torch.from_numpy(pieces[2][None]))[0, :527]
    np.testing.assert_allclose(probs[2], torch.softmax(logits, -1).numpy(), rtol=1e-6, atol=1e-12)
    assert model.embed(wav, 16000).shape == (3, 8)


class FakeClap:
    """laion_clap.CLAP_Module's two methods: audio embedding from (mean, rms, seconds), text from words."""

    def __init__(self):
        self.audio_lengths = []

    def get_audio_embedding_from_data(self, x, use_tensor=False):
        import torch

        assert use_tensor and all(isinstance(w, torch.Tensor) and w.dim() == 1 for w in x)
        self.audio_lengths += [int(w.shape[0]) for w in x]
        return torch.stack([torch.stack([w.mean() + 1, w.pow(2).mean().sqrt(), torch.tensor(w.shape[0] / 48000.)])
                            for w in x]).double()

    def get_text_embedding(self, texts, use_tensor=False):
        import torch

        return torch.tensor([[len(t), t.count(" ") + 1.0, 1.0] for t in texts], dtype=torch.float64)


@pytest.mark.parity
def test_clap_adapter_and_score_with_fake_model(tmp_path):
    from musicgen_jax.evaluation.clap import ClapModel

    gen = write_set(tmp_path / "gen", {"a": (C4, 0.5, 0.0), "b": (E4, 0.25, 0.0)}, rate=32000)
    write_wav(str(tmp_path / "gen" / "c.wav"), tone(G4, 0.4, rate=24000, channels=2), 24000)
    captions = tmp_path / "captions.csv"
    captions.write_text("ytid,caption\na,calm piano\nb,loud drums and bass\nc.wav,synth\n")
    fake = FakeClap()
    clap = ClapModel(fake)
    backends = E.Backends(embedding=no_model("embedding"), passt=no_model("PaSST"), clap=lambda: clap)
    res = E.evaluate(E.EvaluationSet.from_folders(gen, captions=str(captions)), ["clap"], backends, progress=False)
    assert fake.audio_lengths == [24000, 12000, 19200]  # 48 kHz mono
    texts = {"a": "calm piano", "b": "loud drums and bass", "c": "synth"}
    expected = []
    for key, length in zip("abc", fake.audio_lengths):
        from musicgen_jax.audio import read_audio
        from musicgen_jax.evaluation.audio_io import to_mono

        w = to_mono(*read_audio(str(tmp_path / "gen" / f"{key}.wav")), 48000).astype(np.float32)
        a = np.array([w.mean() + 1, np.sqrt(np.mean(w.astype(np.float64) ** 2)), length / 48000])
        t = np.array([len(texts[key]), texts[key].count(" ") + 1.0, 1.0])
        expected.append(a @ t / np.linalg.norm(a) / np.linalg.norm(t))
    assert res["clap_pairs"] == 3
    assert res["clap"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert clap.embed(tone(C4, 0.1), 32000).shape == (1, 3)


# ---------------------------------------------------------------------------------------------- extras, errors


def test_missing_extras_name_them(monkeypatch, tmp_path, capsys):
    from musicgen_jax.evaluation.clap import ClapModel
    from musicgen_jax.evaluation.passt import PasstModel

    monkeypatch.setitem(sys.modules, "laion_clap", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "hear21passt", None)
    with pytest.raises(MissingExtraError, match=r"musicgen_jax\[eval-clap\]"):
        ClapModel.load()
    with pytest.raises(MissingExtraError, match=r"musicgen_jax\[eval-passt\]"):
        PasstModel.load()
    gen = write_set(tmp_path / "gen", {"a": (C4, 0.3, 0.0)})
    captions = tmp_path / "c.csv"
    captions.write_text("name,text\na,piano\n")
    assert evaluate_main(["--generated", gen, "--captions", str(captions), "--metrics", "clap", "--quiet"]) == 2
    assert "eval-clap" in capsys.readouterr().err
    assert evaluate_main(["--generated", gen, "--reference", gen, "--metrics", "kl", "--quiet"]) == 2
    assert "eval-passt" in capsys.readouterr().err


def test_weights_that_cannot_be_fetched(monkeypatch):
    from musicgen_jax.evaluation.clap import ClapModel
    from musicgen_jax.evaluation.passt import PasstModel

    class NoHub:
        def __init__(self, **kwargs):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load roberta-base")

    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=NoHub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-cache")
    with pytest.raises(BackendLoadError, match="--clap-checkpoint"):
        ClapModel.load()  # the default checkpoint is not cached and downloads are off
    with pytest.raises(BackendLoadError, match="roberta-base"):
        ClapModel.load(checkpoint="/some/local/file.pt")

    def no_download(**kwargs):
        raise ConnectionError("cannot reach github.com")

    package = types.ModuleType("hear21passt")
    monkeypatch.setitem(sys.modules, "hear21passt", package)
    monkeypatch.setitem(sys.modules, "hear21passt.base20sec", types.SimpleNamespace(get_basic_model=no_download))
    with pytest.raises(BackendLoadError, match="GitHub"):
        PasstModel.load(pretrained_length=20)
    with pytest.raises(BackendLoadError, match="no 30 s model"):
        PasstModel.load(pretrained_length=30)


def test_cli_input_errors(tmp_path, capsys):
    gen = write_set(tmp_path / "gen", {"a": (C4, 0.3, 0.0), "b": (E4, 0.3, 0.0)})
    other = write_set(tmp_path / "other", {"zz": (C4, 0.3, 0.0)})
    captions = tmp_path / "c.csv"
    captions.write_text("ytid,caption\na,piano\n")
    cases = [
        (["--metrics", "fad,bleu"], "unknown metric(s) bleu"),
        (["--metrics", "fad"], "need reference audio"),
        (["--metrics", "clap"], "needs captions"),
        (["--metrics", "clap", "--captions", str(captions)], "1 generated file(s) have no caption"),
        (["--metrics", "chroma", "--reference", other], "no generated file has a reference file"),
        (["--metrics", "fad", "--reference", str(tmp_path / "missing")], "reference audio folder not found"),
        (["--metrics", "fad", "--reference", other, "--embedding", "mfcc"], "unknown --embedding 'mfcc'"),
    ]
    for extra, message in cases:
        assert evaluate_main(["--generated", gen, "--quiet", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("url,label\nx,y\n")
    with pytest.raises(ValueError, match="needs a key column"):
        E.read_captions(str(bad_csv))


def test_table_shows_model_card_numbers():
    res = {"fad": 5.0, "fad_embedding": "vggish", "fad_generated_rows": 10, "fad_reference_rows": 12,
           "kld": 1.5, "kld_qp": 1.2, "kl_rows": 4, "clap": 0.3, "clap_pairs": 4}
    table = E.format_table(res, "facebook/musicgen-small")
    assert "4.88" in table and "1.42" in table and "0.27" in table and "5.0000" in table
    assert "model card" not in E.format_table(res, None)


# ---------------------------------------------------------------------------------------------- MusicCaps


class StubMusicGen:
    """The parts of MusicGen the protocol uses; noise seeded by the batch seed, so reruns are checkable."""

    sample_rate = 32000

    def __init__(self):
        self.calls = []

    def set_generation_params(self, duration):
        self.duration = duration

    def generate(self, texts, progress=False, seed=None):
        self.calls.append((list(texts), seed))
        rng = np.random.default_rng(seed)
        return rng.uniform(-0.5, 0.5, (len(texts), 1, int(self.duration * self.sample_rate))).astype(np.float32)

    def generate_with_chroma(self, texts, melodies, rate, progress=False, seed=None):
        assert rate == self.sample_rate and len(melodies) == len(texts)
        self.melody_lengths = [m.shape[-1] for m in melodies]
        return self.generate(texts, progress, seed)


MUSICCAPS_CSV = """ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval
id0,30,40,"/m/0",[],"a calm piano piece",1,True,False
id1,0,10,"/m/0",[],"fast drums",2,False,True
id2,10,20,"/m/0",[],"sad violin",3,True,True
id3,0,10,"/m/0",[],"no clip for this one",4,True,False
id4,0,10,"/m/0",[],"lofi hip hop",5,False,False
"""


def test_musiccaps_generation_is_batched_seeded_and_resumable(tmp_path):
    from musicgen_jax.evaluation import musiccaps as MC

    csv_path = tmp_path / "musiccaps.csv"
    csv_path.write_text(MUSICCAPS_CSV)
    assert [it.ytid for it in MC.read_musiccaps(str(csv_path), "balanced")] == ["id0", "id2", "id3"]
    assert [it.ytid for it in MC.read_musiccaps(str(csv_path), "audioset_eval")] == ["id1", "id2"]
    items = MC.read_musiccaps(str(csv_path), limit=5)
    out = tmp_path / "gen"
    model = StubMusicGen()
    stats = MC.generate_missing(model, items, str(out), duration=0.1, batch_size=2, seed=7, progress=False)
    assert stats == {"generated": 5, "already_there": 0, "captions": 5}
    assert model.calls == [(["a calm piano piece", "fast drums"], 7), (["sad violin", "no clip for this one"], 8),
                           (["lofi hip hop"], 9)]
    first = {it.ytid: (out / f"{it.ytid}.wav").read_bytes() for it in items}
    os.remove(out / "id2.wav")  # interrupted run: one file of the 2nd batch missing
    model.calls.clear()
    stats = MC.generate_missing(model, items, str(out), duration=0.1, batch_size=2, seed=7, progress=False)
    assert stats == {"generated": 1, "already_there": 4, "captions": 5}
    assert model.calls == [(["sad violin", "no clip for this one"], 8)]  # same batch, same seed
    assert {it.ytid: (out / f"{it.ytid}.wav").read_bytes() for it in items} == first


def test_musiccaps_run_evaluates_against_references(tmp_path, capsys):
    from musicgen_jax.evaluation import musiccaps as MC
    from musicgen_jax.evaluation.embeddings import EncodecEmbedding

    csv_path = tmp_path / "musiccaps.csv"
    csv_path.write_text(MUSICCAPS_CSV)
    audio = write_set(tmp_path / "audio", {"id0": (C4, 0.25, 0.1), "id1": (E4, 0.25, 0.1), "id2": (G4, 0.2, 0.1),
                                           "id4": (C4, 0.25, 0.1)}, rate=48000, channels=2)
    model = StubMusicGen()
    backend = EncodecEmbedding(random_codec())
    backends = E.Backends(embedding=lambda: backend, passt=no_model("PaSST"), clap=no_model("CLAP"))
    res = MC.run(str(csv_path), audio, str(tmp_path / "gen"), model, metrics=["fad", "chroma"], duration=0.25,
                 batch_size=3, melody=True, backends=backends, progress=False)
    assert "1 caption(s) have no reference clip" in capsys.readouterr().err
    assert res["missing_references"] == 1 and res["generated"] == 4 and res["pairs"] == 4
    assert model.melody_lengths == [int(0.25 * 32000)]  # last batch (id4): reference clip at the model's rate
    assert res["fad"] > 0 and 0 <= res["chroma_cosine"] <= 1 and res["fad_embedding"] == "encodec"
    model.calls.clear()
    again = MC.run(str(csv_path), audio, str(tmp_path / "gen"), "no/model/needed", metrics=["fad"], duration=0.25,
                   batch_size=3, backends=backends, progress=False)
    assert again["generated"] == 0 and again["fad"] == pytest.approx(res["fad"])
