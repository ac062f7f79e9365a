"""T5 tokenizer: ids identical to transformers' T5Tokenizer (built from the same spiece.model) and to
sentencepiece, on the edge cases MusicGen prompts hit; slow-tokenizer semantics; warnings and errors."""
import json
import os
import shutil
import warnings

import huggingface_hub.constants
import numpy as np
import pytest

from musicgen_jax.tokenizer import T5Tokenizer
from tests.t5_fixtures import english_corpus, put_in_hub_cache, train_spiece

LONG = " ".join(english_corpus(400, seed=7))[:2000]
CASES = {
    "empty": "",
    "spaces": "   ",
    "whitespace": " \t\n  \r\n",
    "english": "lofi hip hop with a mellow piano, 90 bpm",
    "inner spaces": "  slow   jazz \t with  drums  ",
    "chinese": "轻松的钢琴音乐",
    "emoji": "happy dance 🎉🎶 with synth",
    "mixed": "Piano 钢琴 and a violin",
    "nfkc": "ｆｕｌｌwidth ﬁddle, café",
    "sentinels": "<extra_id_0> loud drums <extra_id_1>bass",
    "specials": "a<pad>b <unk> c</s>d",
    "long": LONG,
}


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("spiece"))
    train_spiece(directory)
    return directory


@pytest.fixture(scope="module")
def ours(spiece_dir):
    return T5Tokenizer.from_pretrained(spiece_dir)


@pytest.fixture(scope="module")
def reference(spiece_dir):
    """transformers' T5Tokenizer from the folder (`T5Tokenizer(vocab_file=...)` maps all to <unk>)."""
    from transformers import T5Tokenizer as HFT5Tokenizer

    return HFT5Tokenizer.from_pretrained(spiece_dir)


@pytest.fixture(scope="module")
def sp(spiece_dir):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=os.path.join(spiece_dir, "spiece.model"))


@pytest.mark.parity
def test_reference_is_trustworthy(reference, sp):
    """Guard: the reference gives real sentencepiece ids (not all <unk>), or the comparisons prove nothing."""
    ids = reference(CASES["english"])["input_ids"]
    assert ids == sp.encode(CASES["english"]) + [1]
    assert len(ids) > 5 and ids.count(2) == 0 and len(set(ids)) > 5


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_match_transformers(ours, reference, sp, case):
    text = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the <unk> warning for chinese is tested below
        got = ours.encode(text)
    assert got == reference(text)["input_ids"]
    if "<" not in text:  # without special token strings the ids are sentencepiece's + </s>
        assert got == sp.encode(text) + [1]


def test_edge_case_ids(ours, sp):
    assert ours.encode("") == [1]
    assert ours.encode(" \t\n ") == [1]
    assert 2 in ours.encode(CASES["emoji"])
    with pytest.warns(UserWarning):
        chinese = ours.encode(CASES["chinese"])
    assert chinese == [sp.piece_to_id("\u2581"), 2, 1]  # one <unk> for a run of unknown characters
    assert len(ours.encode(LONG)) > 500  # no truncation (t5-base's model_max_length is 512)
    vocab = sp.get_piece_size() + 100
    assert ours.vocab_size == vocab
    assert ours.encode("<extra_id_0>")[0] == vocab - 1 and ours.encode("<extra_id_99>")[0] == vocab - 100


@pytest.mark.parity
def test_literal_eos_is_not_doubled(ours, reference):
    """Slow T5Tokenizer: no second </s> after a prompt ending in "</s>" (transformers 5.x adds one)."""
    body = ours.encode("soft piano")[:-1]
    assert ours.encode("soft piano</s>") == body + [1]
    assert ours.encode("soft piano </s>") == body + [1]
    assert reference("soft piano</s>")["input_ids"] == body + [1, 1]


@pytest.mark.parity
def test_padded_batch_matches_transformers(ours, reference):
    prompts = [CASES["english"], "", CASES["emoji"], CASES["long"], "jazz"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these is mostly unknown
        batch = ours(prompts)
    ref = reference(prompts, padding=True, return_tensors="np")
    assert batch.ids.dtype == np.int32 and batch.mask.dtype == np.int32
    np.testing.assert_array_equal(batch.ids, ref["input_ids"])
    np.testing.assert_array_equal(batch.mask, ref["attention_mask"])
    ids, mask = batch  # unpacks as a pair
    assert ids.shape == mask.shape == (5, max(len(ours.encode(p)) for p in prompts))
    assert (ids[mask == 0] == 0).all() and mask[1].sum() == 1


def test_pad_to_multiple_of(ours):
    ids, mask = ours(["jazz", "rock and roll"], pad_to_multiple_of=16)
    assert ids.shape == (2, 16) and mask.sum() == len(ours.encode("jazz")) + len(ours.encode("rock and roll"))


def test_unknown_text_warns_naming_the_prompt(ours):
    with pytest.warns(UserWarning, match=CASES["chinese"]):
        ours([CASES["english"], CASES["chinese"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours([CASES["english"], CASES["emoji"], CASES["mixed"]])  # some <unk>, but mostly known


def test_bad_inputs(ours):
    with pytest.raises(ValueError, match="no prompts"):
        ours([])
    with pytest.raises(TypeError):
        ours(["fine", None])
    with pytest.raises(TypeError):
        ours([b"bytes"])
    with pytest.raises(TypeError):
        ours(3)
    single = ours("jazz")  # a lone string is a batch of one
    assert single.ids.shape[0] == 1


def test_from_pretrained_forms(spiece_dir, tmp_path, monkeypatch):
    model = os.path.join(spiece_dir, "spiece.model")
    expected = T5Tokenizer(model).encode(CASES["english"])
    assert T5Tokenizer.from_pretrained(model).encode(CASES["english"]) == expected  # the file itself

    musicgen = tmp_path / "musicgen"  # a MusicGen transformers dir: spiece.model at the top level
    musicgen.mkdir()
    shutil.copy(model, musicgen / "spiece.model")
    (musicgen / "config.json").write_text(json.dumps({"model_type": "musicgen"}))
    (musicgen / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 10}))
    tok = T5Tokenizer.from_pretrained(str(musicgen))
    assert tok.encode(CASES["english"]) == expected and tok.extra_ids == 10

    with pytest.raises(FileNotFoundError, match="spiece.model"):
        T5Tokenizer.from_pretrained(str(tmp_path))

    cache = tmp_path / "cache"
    put_in_hub_cache(str(cache), "google-t5/t5-tiny-test", {"spiece.model": model})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert T5Tokenizer.from_pretrained("google-t5/t5-tiny-test").encode(CASES["english"]) == expected
