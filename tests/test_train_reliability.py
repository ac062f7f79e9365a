"""Training faults and bad inputs get a clear message and lose nothing: relative paths, a corrupt newest
checkpoint, bad settings and recipes, a diverging run, an unreadable caption, resume messages and
metrics rows (issue 12, training half). Runs are the tiny preset for a few steps of the shared
120-step schedule, so their compiled programs come from the session's cache."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from musicgen_jax import cli
from musicgen_jax.train.checkpoint import Checkpointer
from musicgen_jax.train.config import load_config
from musicgen_jax.train.loop import Trainer
from tests.train_fixtures import corrupt_checkpoint, single_device_mesh, train_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_world(tmp_path_factory)


def _steps(directory) -> list[int]:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _train(world, **overrides) -> int:
    """`musicgen-jax train` on one device with the test overrides (+ `overrides`)."""
    return cli.main(["train", "--config", os.devnull, *world.overrides(**{"mesh.num_devices": 1, **overrides})])


def _rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------ relative paths


def test_relative_checkpoint_dir_trains_resumes_and_exports(world, tmp_path, monkeypatch, capsys):
    """Relative paths (as in every shipped recipe) save, resume and export from the working directory;
    the config stored in the checkpoint holds them absolute (an export from elsewhere finds them)."""
    monkeypatch.chdir(tmp_path)
    relative = {"checkpoint.dir": "runs/tiny", "checkpoint.every": 2, "data.train": os.path.relpath(world.data)}
    assert _train(world, stop_after=3, **relative) == 0
    assert _steps("runs/tiny") == [2, 3]
    assert _train(world, stop_after=1, **relative) == 0
    assert _steps("runs/tiny") == [2, 3, 4]

    meta = Checkpointer("runs/tiny", read_only=True).latest_meta()
    assert meta["config"]["checkpoint"]["dir"] == os.path.join(os.getcwd(), "runs", "tiny")
    assert os.path.samefile(meta["config"]["data"]["train"], world.data)
    capsys.readouterr()
    # a scratch run has no export base: the export stops there, after restoring step 4 (a relative
    # path used to make every step "unusable": "no usable checkpoint")
    assert cli.main(["export", "runs/tiny", "out"]) == 2
    err = capsys.readouterr().err
    assert "export needs a base checkpoint" in err and "unusable" not in err, err


# ------------------------------------------------------------------------------------ corrupt newest step


def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_continues(world, tmp_path, caplog):
    ckpt = str(tmp_path / "ckpt")
    extra = {"checkpoint.dir": ckpt, "checkpoint.every": 2, "checkpoint.keep": 10}
    first = Trainer(world.config(**extra), mesh=single_device_mesh())
    reference = {int(r["step"]): r["loss"] for r in first.run(stop_at=6)}
    first.close()
    corrupt_checkpoint(ckpt, 6)  # flipped bytes in the newest step
    os.makedirs(os.path.join(ckpt, "8"))  # a partial copy of a newer one
    shutil.copy(os.path.join(ckpt, "2", "_CHECKPOINT_METADATA"), os.path.join(ckpt, "8"))

    caplog.set_level("INFO", logger="musicgen_jax")
    trainer = Trainer(world.config(**extra), mesh=single_device_mesh())
    assert trainer.step == 4 and _steps(ckpt) == [2, 4]
    aside = sorted(os.listdir(os.path.join(ckpt, "corrupt")))
    assert [name.split("-")[0] for name in aside] == ["6", "8"]  # kept, not deleted
    messages = [r.getMessage() for r in caplog.records]
    assert any("moved unusable checkpoint step 6" in m for m in messages), messages
    assert any("resumed from step 4" in m for m in messages), messages
    # the run goes past the bad steps' numbers, saving them anew, with the losses of the first run
    losses = {int(r["step"]): r["loss"] for r in trainer.run(stop_at=8)}
    trainer.close()
    assert _steps(ckpt) == [2, 4, 6, 8]
    assert {s: losses[s] for s in (5, 6)} == {s: reference[s] for s in (5, 6)}


def test_a_changed_model_is_refused_and_its_checkpoints_are_kept(world, tmp_path, capsys):
    """Checkpoints that no step of which restores onto the run (here: the model changed) are not moved
    aside wholesale (the run would silently start over): the run stops, naming the folder."""
    ckpt = str(tmp_path / "ckpt")
    extra = {"checkpoint.dir": ckpt, "checkpoint.every": 2}
    assert _train(world, stop_after=2, **extra) == 0
    capsys.readouterr()
    assert _train(world, stop_after=2, **extra, **{"model.lm_overrides": "{num_layers: 1}"}) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint step in {ckpt} can be restored" in err and "use a new checkpoint.dir" in err, err
    assert _steps(ckpt) == [2] and not os.path.exists(os.path.join(ckpt, "corrupt"))


# ------------------------------------------------------------------------------------ settings, recipes


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=-1", "optim.lr must be a finite number > 0, got -1.0"),
    ("optim.lr=.inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.warmup_steps=-5", "optim.warmup_steps must be an integer >= 0, got -5"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be a finite number >= 0"),
    ("optim.ema_decay=1.5", "optim.ema_decay must be a finite number in [0, 1], got 1.5"),
    ("optim.cond_dropout=-0.1", "optim.cond_dropout must be a finite number in [0, 1)"),
    ("optim.grad_clip=nan", "optim.grad_clip must be a finite number >= 0, got nan"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("data.segment_seconds=inf", "data.segment_seconds must be a finite number > 0, got inf"),
    ("steps=0", "steps must be an integer >= 1, got 0"),
    ("checkpoint.every=0", "checkpoint.every must be an integer >= 1, got 0"),
    ("checkpoint.keep=-1", "checkpoint.keep must be an integer >= 1, got -1"),
    ("log.every=0", "log.every must be an integer >= 1, got 0"),
    ("mesh.tensor=0", "mesh.tensor must be an integer >= 1 or -1, got 0"),
    ("steps=true", "steps: cannot read True as int"),
    ("model.lm_overrides=3", "model.lm_overrides: cannot read 3 as a mapping"),
])
def test_bad_settings_are_refused_with_the_key_named(override, message):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    (b"steps: 10\noptim:\n  lr: [1e-3\n", "is not valid YAML: line 4, column 1"),
    (b"- steps: 10\n", "the top level must be a mapping of settings"),
    (b"optim:\n  lr: fast\n", "optim.lr: cannot read 'fast' as float"),
    (b"optim: 3\n", "optim must be a mapping, got int"),
    (b"optim: {lrr: 1}\n", "unknown key(s) in optim: lrr"),
    (b"steps: 10 \xff\n", "is not UTF-8 text"),
])
def test_invalid_recipes_name_the_file(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text)
    assert cli.main(["train", "--config", str(recipe)]) == 2  # a message, not a traceback
    err = capsys.readouterr().err
    assert err.startswith("musicgen-jax: error: ") and str(recipe) in err and message in err, err


# ------------------------------------------------------------------------------------ divergence


def test_non_finite_loss_stops_the_run_before_saving(world, tmp_path, capsys):
    """lr 1e30 without warmup: step 1 is finite (and saved), step 2 is NaN: the run stops there, saves
    nothing of it, lets the pending (async) save of step 1 finish, and exits 1 naming the step."""
    ckpt = tmp_path / "ckpt"
    rc = _train(world, **{"optim.lr": 1e30, "optim.warmup_steps": 0, "checkpoint.dir": str(ckpt),
                          "checkpoint.every": 1, "log.every": 10})
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged at step 2: loss nan" in err and "last checkpoint is step 1" in err, err
    assert _steps(ckpt) == [1]
    assert not [n for n in os.listdir(ckpt) if "tmp" in n]  # the async save of step 1 was finished
    assert Checkpointer(str(ckpt), read_only=True).latest_meta()["step"] == 1


def test_export_refuses_non_finite_weights(tmp_path):
    from musicgen_jax.config import tiny
    from musicgen_jax.train.export import export_transformers

    params = {"emb": np.zeros((2, 3), np.float32), "layers": {"ffn": np.array([[1.0, np.nan, np.inf]], np.float32)}}
    with pytest.raises(ValueError, match=r"non-finite weights: layers/ffn holds 2 NaN or infinite value\(s\) of 3"):
        export_transformers(str(tmp_path / "out"), tiny(), params, None, base="unused")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ prepare


def test_prepare_skips_a_caption_that_is_not_utf8(tmp_path):
    from musicgen_jax.train.prepare import PrepareOptions, find_items, prepare
    from tests.train_fixtures import random_tiny_codec, tone, write_audio

    src = tmp_path / "audio"
    src.mkdir()
    write_audio(str(src / "a.wav"), tone(0.2, 32000), 32000, "a calm piano")
    write_audio(str(src / "b.wav"), tone(0.2, 32000), 32000)
    (src / "b.txt").write_bytes("caf\xe9 jazz".encode("latin-1"))
    opts = PrepareOptions(segment_seconds=0.1, encode_batch=2, progress=False)
    report = prepare(str(src), str(tmp_path / "out"), random_tiny_codec(), opts)
    assert report.files == 1 and report.segments == 2
    with open(tmp_path / "out" / "report.json") as f:
        (skipped,) = json.load(f)["skipped"]
    assert skipped["path"].endswith("b.wav") and "b.txt is not UTF-8 text (byte 3)" in skipped["reason"]

    # the audiocraft layout: a sidecar .json that is not UTF-8, or not JSON
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / "x.json").write_bytes(b'{"description": "caf\xe9"}')
    (manifest / "y.json").write_text("{broken")
    (manifest / "data.jsonl").write_text('{"path": "x.wav"}\n{"path": "y.wav"}\n')
    x, y = find_items(str(manifest))
    assert "x.json is not UTF-8 text" in x.problem and "unreadable caption file" in y.problem


# ------------------------------------------------------------------------------------ resume: messages, metrics


def test_resume_is_reported_and_repeated_steps_are_not_logged_twice(world, tmp_path, capsys):
    """The CLI shows "resumed from step N" (INFO, once); log.jsonl keeps one row per step when steps
    after the restored checkpoint run again (and a torn last line is dropped)."""
    ckpt, jsonl = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    extra = {"checkpoint.dir": str(ckpt), "checkpoint.every": 2, "log.jsonl": str(jsonl), "log.every": 1}
    assert _train(world, stop_after=4, **extra) == 0
    first = {r["step"]: r["loss"] for r in _rows(jsonl)}
    assert sorted(first) == [1, 2, 3, 4] and _steps(ckpt) == [2, 4]
    shutil.rmtree(ckpt / "4")  # as if killed before step 4 was saved: steps 3 and 4 run again
    with open(jsonl, "a") as f:
        f.write('{"step": 5, "lo')
    capsys.readouterr()

    assert _train(world, stop_after=3, **extra) == 0
    err = capsys.readouterr().err
    assert err.count("resumed from step 2 of") == 1 and "INFO" in err, err
    rows = _rows(jsonl)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert {r["step"]: r["loss"] for r in rows[:4]} == first  # the rerun gives the same losses
