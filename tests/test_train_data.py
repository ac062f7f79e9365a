"""Data preparation (audio -> code shards: bad files reported and skipped, resumable, both input
layouts) and the input pipeline (deterministic, per-process sharding, checkpointable state)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from musicgen_jax.config import tiny
from musicgen_jax.tokenizer import T5Tokenizer
from musicgen_jax.train.data import TrainData
from musicgen_jax.train.prepare import PrepareOptions, Preparer, find_items, prepare
from musicgen_jax.train.records import decode_record, read_index, shard_paths
from tests.train_fixtures import random_tiny_codec, tone, train_world, write_audio

SEGMENT = 0.1  # seconds: 400 frames of the tiny codec (hop 8 at 32 kHz)


@pytest.fixture(scope="module")
def codec():
    return random_tiny_codec()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_world(tmp_path_factory)


def _records(directory):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    source = ArrayRecordDataSource(shard_paths(directory, read_index(directory)))
    return [decode_record(source[i]) for i in range(len(source))]


def _options(**kw):
    return PrepareOptions(**{"segment_seconds": SEGMENT, "min_segment_ratio": 0.5, "encode_batch": 4,
                             "records_per_shard": 4, "progress": False, **kw})


def test_prepare_skips_and_reports_bad_files(codec, tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    write_audio(str(src / "a_good.wav"), tone(0.25, 32000), 32000, "a calm piano")
    write_audio(str(src / "b_good.flac"), tone(0.3, 44100, 330, channels=2, seed=1), 44100, "stereo guitar")
    (src / "c_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (src / "c_corrupt.txt").write_text("broken file")
    write_audio(str(src / "d_silent.wav"), np.zeros((1, 8000)), 32000, "nothing at all")
    write_audio(str(src / "e_lowrate.wav"), tone(0.3, 8000), 8000, "telephone quality")
    write_audio(str(src / "f_nocaption.wav"), tone(0.3, 32000), 32000)
    write_audio(str(src / "g_emptycaption.wav"), tone(0.3, 32000), 32000, "   \n")
    write_audio(str(src / "h_short.wav"), tone(0.02, 32000), 32000, "too short")

    report = prepare(str(src), str(tmp_path / "out"), codec, _options())
    reasons = {os.path.basename(s["path"]): s["reason"] for s in report.skipped}
    assert set(reasons) == {"c_corrupt.wav", "d_silent.wav", "e_lowrate.wav", "f_nocaption.wav",
                            "g_emptycaption.wav", "h_short.wav"}
    assert reasons["c_corrupt.wav"].startswith("unreadable audio")
    assert reasons["d_silent.wav"] == "silent"
    assert "8000 Hz is below the minimum" in reasons["e_lowrate.wav"]
    assert "caption" in reasons["f_nocaption.wav"] and "caption" in reasons["g_emptycaption.wav"]
    assert reasons["h_short.wav"].startswith("shorter than")
    # 0.25 s -> 2 full segments + a 0.05 s tail (kept: min ratio 0.5); 0.3 s -> 3 segments
    assert report.files == 2 and report.segments == 6
    info = read_index(str(tmp_path / "out"))
    assert (info.num_codebooks, info.codebook_size, info.segment_frames) == (4, 32, 400)
    records = _records(str(tmp_path / "out"))
    assert len(records) == info.num_records == 6
    by_caption = {}
    for r in records:
        assert r["codes"].shape == (4, 400) and r["codes"].dtype == np.int16
        by_caption.setdefault(r["text"], []).append((r["offset"], r["frames"]))
    assert sorted(by_caption["a calm piano"]) == [(0.0, 400), (0.1, 400), (0.2, 200)]
    assert len(by_caption["stereo guitar"]) == 3
    with open(tmp_path / "out" / "report.json") as f:
        assert len(json.load(f)["skipped"]) == 6


def test_prepare_resumes_after_an_interruption(codec, tmp_path, monkeypatch):
    src = tmp_path / "audio"
    src.mkdir()
    for i in range(6):
        write_audio(str(src / f"{i}.wav"), tone(0.2, 32000, 200 + 50 * i, seed=i), 32000, f"tune {i}")
    clean = tmp_path / "clean"
    prepare(str(src), str(clean), codec, _options())

    out = tmp_path / "out"
    original_add = Preparer._add
    calls = []

    def flaky_add(self, item):
        calls.append(item.path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed in the middle of the job
        return original_add(self, item)

    monkeypatch.setattr(Preparer, "_add", flaky_add)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), str(out), codec, _options())
    state = json.loads((out / "prepare_state.json").read_text())
    committed = [p for p, status in state["done"].items() if status == "ok"]
    assert 0 < len(committed) < 6 and not (out / "index.json").exists()
    calls.clear()
    monkeypatch.setattr(Preparer, "_add", lambda self, item: (calls.append(item.path), original_add(self, item))[1])
    report = prepare(str(src), str(out), codec, _options())
    assert sorted(calls) == sorted(set(str(p) for p in sorted(src.glob("*.wav"))) - set(committed))
    assert report.files == 6

    def content(directory):
        return sorted((r["source"], r["offset"], r["codes"].tobytes()) for r in _records(str(directory)))

    assert content(out) == content(clean)


def test_audiocraft_manifest_layout_and_chroma(codec, tmp_path):
    src = tmp_path / "audio"
    (src / "sub").mkdir(parents=True)
    entries = []
    for name, rate, declared, desc in [("sub/x.wav", 32000, 32000, "jazz trio"), ("y.wav", 32000, 44100, "rock"),
                                       ("z.wav", 32000, 32000, "")]:
        write_audio(str(src / name), tone(0.2, rate), rate)
        with open(src / (os.path.splitext(name)[0] + ".json"), "w") as f:
            json.dump({"description": desc, "genre": "test", "bpm": 120}, f)
        entries.append({"path": name, "duration": 0.2, "sample_rate": declared})
    (src / "data.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n{not json\n")
    items = find_items(str(src))
    assert [os.path.basename(i.path) for i in items[:3]] == ["x.wav", "y.wav", "z.wav"] and len(items) == 4
    report = prepare(str(src), str(tmp_path / "out"), codec, _options(chroma=True))
    reasons = sorted(s["reason"] for s in report.skipped)
    assert reasons == ["empty or missing caption", "unreadable manifest line",
                       "wrong sample rate: the manifest says 44100 Hz, the file is 32000 Hz"]
    records = _records(str(tmp_path / "out"))
    assert {r["text"] for r in records} == {"jazz trio"} and len(records) == 2
    # a 0.1 s segment is padded to one 16384-sample FFT window: 1 + 16384 // 4096 chroma frames
    assert records[0]["chroma"].dtype == np.uint8 and records[0]["chroma"].shape == (5,)
    assert read_index(str(tmp_path / "out")).chroma


# ------------------------------------------------------------------------------------ input pipeline


def _pipeline(world, **kw):
    args = dict(tokenizer=T5Tokenizer.from_pretrained(world.tokenizer), lm=tiny().lm, global_batch=8,
                max_text_tokens=8, prefetch=0, seed=3)
    args.update(kw)
    return TrainData(world.data, **args)


def test_pipeline_is_deterministic_sharded_and_resumable(world):
    one = _pipeline(world)
    batches = [next(one) for _ in range(10)]  # 80 rows: more than one epoch of the 64 records
    b = batches[0]
    assert b["codes"].shape == (8, 4, 24) and b["text_ids"].shape == (8, 8) and b["frames"].shape == (8,)
    assert b["codes"].dtype == np.int32 and b["text_mask"][:, 0].all()
    # two processes: each gets its half of every global batch, in order
    p0, p1 = _pipeline(world, process_index=0, process_count=2), _pipeline(world, process_index=1, process_count=2)
    for ref in batches[:3]:
        got0, got1 = next(p0), next(p1)
        for key in ref:
            np.testing.assert_array_equal(np.concatenate([got0[key], got1[key]]), ref[key])
    # the state is one integer; restoring it resumes the exact stream (also with prefetching threads)
    state = one.get_state()
    following = next(one)
    resumed = _pipeline(world, prefetch=2)
    resumed.set_state(state)
    got = next(resumed)
    for key in following:
        np.testing.assert_array_equal(got[key], following[key])
    # epochs are reshuffled: the first 64 rows are a permutation of the data, the next ones another
    rows = np.concatenate([x["codes"] for x in batches])
    first, second = rows[:64].reshape(64, -1), rows[64:80].reshape(16, -1)
    assert len({r.tobytes() for r in first}) == 64
    assert not np.array_equal(second, first[:16])


def test_pipeline_crops_and_checks_the_model(world):
    data = _pipeline(world, crop_seconds=0.2)  # 10 frames at the synthetic 50 Hz
    assert data.batch_shapes()["codes"] == (8, 4, 10)
    b = next(data)
    assert b["codes"].shape == (8, 4, 10) and (b["frames"] == 10).all()
    with pytest.raises(ValueError, match=r"4 codebooks \(the LM has 8\)"):
        _pipeline(world, lm=tiny(stereo=True).lm)
    with pytest.raises(ValueError, match="needs `prepare --chroma`"):
        _pipeline(world, lm=tiny(melody=True).lm)
