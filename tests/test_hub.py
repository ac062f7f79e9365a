"""Which files a hub name makes us download: one layout's files only, cache first, clear offline errors.

A fake `snapshot_download` stands in for the hub: it copies the files of a fake repository that match
`allow_patterns` into a fake snapshot and records every call. Nothing here touches the network.
"""
import fnmatch
import json
import os

import pytest
from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

from musicgen_jax import hub
from musicgen_jax.convert import encodec, t5

TOKENIZER = ["spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
CONFIGS = ["config.json", "generation_config.json", "preprocessor_config.json"]
AUDIOCRAFT = ["state_dict.bin", "compression_state_dict.bin"]


def _index(shards: list[str]) -> bytes:
    return json.dumps({"metadata": {}, "weight_map": {f"w{i}": s for i, s in enumerate(shards)}}).encode()


def musicgen_repo(weights: str = "single", audiocraft: bool = True) -> dict[str, bytes]:
    """File name -> content of a MusicGen repo shaped like the official ones (contents are dummies)."""
    files = {n: b"{}" for n in CONFIGS + TOKENIZER}
    files.update({"README.md": b"card", ".gitattributes": b"", "model.safetensors.index.fp32.json": b"{}"})
    if weights == "single":
        files.update({"model.safetensors": b"st", "pytorch_model.bin": b"pt"})
    elif weights == "sharded":
        st = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        pt = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        files.update({n: b"w" for n in st + pt})
        files["model.safetensors.index.json"] = _index(st)
        files["pytorch_model.bin.index.json"] = _index(pt)
    elif weights == "bin":
        files["pytorch_model.bin"] = b"pt"
    elif weights == "none":
        files = {"README.md": b"card"}
    if audiocraft:
        files.update({n: b"ac" for n in AUDIOCRAFT})
    return files


class FakeHub:
    """A stand-in for huggingface_hub.snapshot_download over in-memory repositories."""

    def __init__(self, root, repos: dict[str, dict[str, bytes]]):
        self.root, self.repos = root, repos
        self.calls: list[tuple[str, list[str] | None, bool]] = []
        self.fetched: dict[str, set[str]] = {}

    def snapshot(self, repo_id: str) -> str:
        return os.path.join(self.root, repo_id.replace("/", "--"))

    def _wanted(self, repo_id, patterns):
        names = self.repos[repo_id]
        return [n for n in names if patterns is None or any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def __call__(self, repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        self.calls.append((repo_id, allow_patterns, local_files_only))
        snapshot = self.snapshot(repo_id)
        if local_files_only:  # like huggingface_hub 2.x, which knows the repo's file list once fetched
            if not os.path.isdir(snapshot):
                raise LocalEntryNotFoundError(f"{repo_id} is not cached")
            missing = [n for n in self._wanted(repo_id, allow_patterns) if not os.path.isfile(os.path.join(snapshot, n))]
            if missing:
                raise IncompleteSnapshotError(f"{repo_id} misses {missing}", snapshot_path=snapshot)
            return snapshot
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise AssertionError("download attempted in offline mode")
        os.makedirs(snapshot, exist_ok=True)
        for name in self._wanted(repo_id, allow_patterns):
            with open(os.path.join(snapshot, name), "wb") as f:
                f.write(self.repos[repo_id][name])
            self.fetched.setdefault(repo_id, set()).add(name)
        return snapshot

    def downloads(self, repo_id=None) -> list[list[str] | None]:
        return [p for r, p, local in self.calls if not local and (repo_id is None or r == repo_id)]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake = FakeHub(str(tmp_path / "snapshots"), {})
    monkeypatch.setattr(hub, "snapshot_download", fake)
    return fake


def test_musicgen_fetches_transformers_files_only(fake_hub):
    fake_hub.repos["facebook/musicgen-small"] = musicgen_repo("single")
    directory, layout = hub.resolve_musicgen("facebook/musicgen-small")
    assert layout == "transformers" and directory == fake_hub.snapshot("facebook/musicgen-small")
    assert fake_hub.fetched["facebook/musicgen-small"] == set(CONFIGS + TOKENIZER + ["model.safetensors"])
    assert len(fake_hub.downloads()) == 1
    # the second time it comes from the cache
    assert hub.resolve_musicgen("facebook/musicgen-small") == (directory, "transformers")
    assert len(fake_hub.downloads()) == 1


def test_musicgen_sharded_safetensors(fake_hub):
    fake_hub.repos["facebook/musicgen-melody"] = musicgen_repo("sharded")
    _, layout = hub.resolve_musicgen("facebook/musicgen-melody")
    fetched = fake_hub.fetched["facebook/musicgen-melody"]
    assert layout == "transformers"
    assert {"model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "preprocessor_config.json"} <= fetched
    assert not any(n.endswith(".bin") or n.startswith("pytorch_model") or "fp32" in n for n in fetched)


def test_musicgen_torch_pickles_when_no_safetensors(fake_hub):
    fake_hub.repos["facebook/musicgen-medium"] = musicgen_repo("bin")
    _, layout = hub.resolve_musicgen("facebook/musicgen-medium")
    assert layout == "transformers"
    assert fake_hub.fetched["facebook/musicgen-medium"] == set(CONFIGS + TOKENIZER + ["pytorch_model.bin"])
    assert len(fake_hub.downloads()) == 2  # safetensors tried first, found none


def test_musicgen_audiocraft_only_repo(fake_hub):
    files = musicgen_repo("none")
    fake_hub.repos["someone/musicgen-finetune"] = files
    directory, layout = hub.resolve_musicgen("someone/musicgen-finetune")
    assert layout == "audiocraft" and os.path.isfile(os.path.join(directory, "state_dict.bin"))
    assert fake_hub.fetched["someone/musicgen-finetune"] == set(AUDIOCRAFT)
    assert len(fake_hub.downloads()) == 3
    assert hub.resolve_musicgen("someone/musicgen-finetune") == (directory, "audiocraft")
    assert len(fake_hub.downloads()) == 3


def test_repo_without_weights_is_a_clear_error(fake_hub):
    fake_hub.repos["someone/empty"] = {"README.md": b"card", "config.json": b"{}"}
    with pytest.raises(FileNotFoundError, match="holds no MusicGen checkpoint.*state_dict.bin"):
        hub.resolve_musicgen("someone/empty")


def test_t5_fetches_its_files_only(fake_hub):
    fake_hub.repos["t5-base"] = {n: b"x" for n in [
        "config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
        "flax_model.msgpack", "rust_model.ot", "spiece.model", "tokenizer.json", "README.md"]}
    directory = t5._resolve("t5-base")
    assert directory == fake_hub.snapshot("t5-base")
    assert fake_hub.fetched["t5-base"] == {"config.json", "model.safetensors", "spiece.model", "tokenizer.json"}
    fake_hub.repos["old/t5"] = {"config.json": b"{}", "pytorch_model.bin": b"x", "tf_model.h5": b"x"}
    hub.resolve_t5("old/t5")
    assert fake_hub.fetched["old/t5"] == {"config.json", "pytorch_model.bin"}


def test_encodec_fetches_its_files_only(fake_hub, monkeypatch):
    fake_hub.repos["facebook/encodec_32khz"] = {n: b"x" for n in [
        "config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin", "README.md"]}
    seen = []
    monkeypatch.setattr(encodec, "load_encodec_transformers", lambda d, prefix="": seen.append((d, prefix)) or "codec")
    # config.json is read to tell an EnCodec repo from a MusicGen one
    fake_hub.repos["facebook/encodec_32khz"]["config.json"] = b'{"model_type": "encodec"}'
    assert encodec.load_encodec("facebook/encodec_32khz") == "codec"
    assert seen == [(fake_hub.snapshot("facebook/encodec_32khz"), "")]
    assert fake_hub.fetched["facebook/encodec_32khz"] == {"config.json", "model.safetensors"}


def test_audiocraft_codec_pointer_fetches_the_codec_only(fake_hub, monkeypatch, tmp_path):
    fake_hub.repos["facebook/encodec_32khz"] = {"config.json": b'{"model_type": "encodec"}',
                                                "model.safetensors": b"x", "pytorch_model.bin": b"x"}
    monkeypatch.setattr(encodec, "load_torch_pickle", lambda path: {"pretrained": "facebook/encodec_32khz"})
    monkeypatch.setattr(encodec, "load_encodec_transformers", lambda d, prefix="": "codec")
    assert encodec.load_encodec_audiocraft(str(tmp_path / "compression_state_dict.bin")) == "codec"
    assert fake_hub.fetched == {"facebook/encodec_32khz": {"config.json", "model.safetensors"}}


def test_codec_of_an_audiocraft_only_repo(fake_hub):
    fake_hub.repos["someone/codec"] = {"compression_state_dict.bin": b"x", "README.md": b"card"}
    directory, layout = hub.resolve_encodec("someone/codec")
    assert layout == "audiocraft" and fake_hub.fetched["someone/codec"] == {"compression_state_dict.bin"}


def test_offline(fake_hub, monkeypatch):
    fake_hub.repos["facebook/musicgen-small"] = musicgen_repo("single")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ModelNotAvailableError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        hub.resolve_musicgen("facebook/musicgen-small")
    with pytest.raises(hub.ModelNotAvailableError, match="not in the Hugging Face cache"):
        hub.resolve_t5("t5-base")
    assert fake_hub.downloads() == []
    # a snapshot holding the tokenizer only (fetched by T5Tokenizer) is not the model
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.resolve("facebook/musicgen-small", allow_patterns=["spiece.model", "tokenizer_config.json"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ModelNotAvailableError, match="only partly in the Hugging Face cache"):
        hub.resolve_musicgen("facebook/musicgen-small")
    # once fetched, the model resolves offline; a plain resolve takes the (partial) snapshot as is
    monkeypatch.delenv("HF_HUB_OFFLINE")
    directory, _ = hub.resolve_musicgen("facebook/musicgen-small")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_musicgen("facebook/musicgen-small") == (directory, "transformers")
    assert hub.resolve("facebook/musicgen-small") == directory


def test_interrupted_shard_download_is_not_cached(fake_hub, monkeypatch):
    fake_hub.repos["facebook/musicgen-large"] = musicgen_repo("sharded")
    directory, _ = hub.resolve_musicgen("facebook/musicgen-large")
    os.remove(os.path.join(directory, "model-00002-of-00002.safetensors"))
    assert not hub.has_complete_weights(directory)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ModelNotAvailableError, match="only partly"):
        hub.resolve_musicgen("facebook/musicgen-large")


def test_local_directories(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for name, data in musicgen_repo("single").items():
        (both / name).write_bytes(data)
    assert hub.resolve_musicgen(str(both)) == (str(both), "transformers")
    assert hub.resolve_encodec(str(both)) == (str(both), "transformers")
    audiocraft = tmp_path / "audiocraft"
    audiocraft.mkdir()
    for name in AUDIOCRAFT:
        (audiocraft / name).write_bytes(b"x")
    assert hub.resolve_musicgen(str(audiocraft)) == (str(audiocraft), "audiocraft")
    assert hub.resolve_encodec(str(audiocraft)) == (str(audiocraft), "audiocraft")
    with pytest.raises(FileNotFoundError, match="holds no MusicGen checkpoint"):
        hub.resolve_musicgen(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        hub.resolve_musicgen(str(tmp_path / "nope") + "/")
    with pytest.raises(TypeError):
        hub.resolve_musicgen(3)
