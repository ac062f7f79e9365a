"""The notebooks (notebooks/*.ipynb): committed without outputs, each with a papermill `parameters` cell, and
executed here with papermill on tiny random-weight checkpoints (testing.save_reference_musicgen, 32 kHz and 50
frames/s as the real models, a 2 s window so that long-form is cheap) and tiny generated audio; any cell error
fails, and the executed notebooks must hold audio players, figures and the lines each section prints.

The three run at once, each `python -m papermill` with its own kernel (XLA's CPU compiles are mostly
single-threaded): quickstart and finetune on one CPU device (as on a one-accelerator Colab), tpu on 4 (XLA's
host platform device count) so that its meshes have data, fsdp and tensor axes. They are marked `parity`
because the checkpoints are written with torch/transformers, as for the other tests that build checkpoints on
disk. EXECUTED_NOTEBOOKS=DIR keeps the executed copies there.

    python tests/test_notebooks.py notebooks/*.ipynb     # strips outputs (before committing a notebook)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ("quickstart", "finetune", "tpu")
# the tiny codec at the real rates: hop 8 * 5 * 4 * 4 = 640 samples, 50 frames/s at 32 kHz
CODEC_50HZ = dict(sampling_rate=32000, audio_channels=1, num_filters=4, upsampling_ratios=[8, 5, 4, 4], hidden_size=8,
                  codebook_size=32, target_bandwidths=[1.0], use_causal_conv=False, use_conv_shortcut=False,
                  pad_mode="reflect", normalize=False, chunk_length_s=None)
WINDOW = 2.0  # the tiny checkpoint's generation window (its training segment), so that long-form is cheap
# XLA's CPU compile time dominates at these sizes: its cheaper settings (as in tests/train_fixtures.tiny_overrides)
# take about a third off, for the kernels' every compile (flags) and the training steps (compiler options)
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FAST_COMPILE = "compiler_options={xla_backend_optimization_level: 0, xla_llvm_disable_expensive_passes: true}"
# what each section of a notebook must leave behind: players and pictures (at least), and lines of its output
EXPECTED = {
    "quickstart": dict(audio=7, images=7, text=["loaded in", "codebooks at 50 frames/s", "keeps 1 s and adds 1 s",
                                                "dB SNR", "melody.wav"]),
    "finetune": dict(audio=7, images=9, text=["$ musicgen-jax prepare", "LoRA rank", "full fine-tuning: lr",
                                              "$ musicgen-jax export", "adapter-only", "max difference",
                                              "$ musicgen-jax evaluate", "after full"]),
    "tpu": dict(audio=2, images=4, text=["generation mesh {'data': 2, 'fsdp': 1, 'tensor': 2}",
                                         "training mesh {'data': 1, 'fsdp': 2, 'tensor': 2}", "MiB in use", "step 2: loss"]),
}


def _notebook(name: str):
    import nbformat

    return nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_stripped_and_parameterized(name):
    import nbformat
    import papermill

    nb = _notebook(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        left = cell.outputs or cell.execution_count is not None or {"execution", "papermill"} & set(cell.metadata)
        assert not left, f"{name}: outputs left in (python tests/test_notebooks.py {name}.ipynb strips them):\n" \
                         f"{cell.source[:200]}"
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: the first code cell is not tagged parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    found = papermill.inspect_notebook(os.path.join(NOTEBOOKS, f"{name}.ipynb"))
    assert {"MODEL", "OUT_DIR", "REPO_URL", "REPO_DIR", "INSTALL"} <= set(found), sorted(found)
    text = json.dumps(nb)
    for placeholder in ("<your-fork>", "<OWNER>", "your-fork"):
        assert placeholder not in text, f"{name}: placeholder {placeholder!r} (the README's badges hold the URL)"
    assert nb.metadata.kernelspec.name == "python3"


# ------------------------------------------------------------------ execution
# each notebook's parameters in CI (besides MODEL, OUT_DIR, REPO_DIR, INSTALL) and its CPU device count
FAST_OVERRIDES = ["model.remat=false", "data.max_text_tokens=8", FAST_COMPILE]
CASES = {
    "quickstart": (1, dict(PROMPTS=["happy rock guitar"], DURATION=1.0, LONG_DURATION=WINDOW + 1.0, STREAM_CHUNK=0.5)),
    "finetune": (1, dict(SEGMENT_SECONDS=1.0, BATCH_SIZE=2, STEPS=3, FULL_STEPS=2, PLOT_EVERY=1, DURATION=1.0,
                         DEMO_CLIPS=4, DEMO_SECONDS=2.0, EVAL_EMBEDDING="encodec", EXTRA_OVERRIDES=FAST_OVERRIDES)),
    "tpu": (4, dict(BATCH=8, DURATION=1.0, TRAIN_STEPS=2, SEGMENT_SECONDS=0.5, AOT_MODEL="", AOT_BATCH=2,
                    AOT_SECONDS=1.0, EXTRA_OVERRIDES=FAST_OVERRIDES)),
}
TIMEOUT = 900  # seconds for one notebook (all run at once: about 2 minutes together on 2 idle cores)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny checkpoints (mono with a 2 s window, melody) and a compilation cache shared by the kernels."""
    from musicgen_jax.testing import save_reference_musicgen

    root = tmp_path_factory.mktemp("notebooks")
    mono, melody = str(root / "tiny-musicgen"), str(root / "tiny-melody")
    save_reference_musicgen(mono, codec=CODEC_50HZ, seed=1)
    path = os.path.join(mono, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["segment_duration"] = WINDOW  # read back as the generation window (as our exports record it)
    with open(path, "w") as f:
        json.dump(config, f)
    save_reference_musicgen(melody, kind="melody", codec=CODEC_50HZ, seed=2, chroma_length=16)
    return {"root": root, "mono": mono, "melody": melody, "cache": str(root / "xla-cache")}


class Execution:
    """`python -m papermill NOTEBOOK OUT -f PARAMETERS` in a subprocess (its own kernel and environment)."""

    def __init__(self, name: str, world):
        import yaml

        devices, parameters = CASES[name]
        self.name, self.folder = name, world["root"] / f"run-{name}"
        self.folder.mkdir()
        self.out, self.log = self.folder / f"{name}.ipynb", self.folder / "papermill.log"
        parameters = {"MODEL": world["mono"], "OUT_DIR": str(self.folder / "out"), "REPO_DIR": ROOT, "INSTALL": False,
                      **({"MELODY_MODEL": world["melody"]} if name == "quickstart" else {}),
                      **({"WORK_DIR": str(self.folder / "work"), "EVAL_CODEC": world["mono"]} if name == "finetune" else {}),
                      **parameters}
        (self.folder / "parameters.yaml").write_text(yaml.safe_dump(parameters))
        # the kernel inherits this environment: CPU devices, no network, the shared compilation cache
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_XLA_FLAGS}",
                   JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   JAX_COMPILATION_CACHE_DIR=world["cache"], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "papermill", os.path.join(NOTEBOOKS, f"{name}.ipynb"), str(self.out),
                 "-f", str(self.folder / "parameters.yaml"), "--cwd", str(self.folder), "-k", "python3",
                 "--no-progress-bar", "--execution-timeout", str(TIMEOUT), "--log-level", "WARNING"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def result(self):
        import nbformat

        try:
            code = self.process.wait(max(1.0, TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name}.ipynb did not finish within {TIMEOUT} s:\n{self.log.read_text()[-5000:]}")
        keep = os.environ.get("EXECUTED_NOTEBOOKS")
        if keep and self.out.exists():
            os.makedirs(keep, exist_ok=True)
            shutil.copy(self.out, os.path.join(keep, f"{self.name}.ipynb"))
        assert code == 0, f"{self.name}.ipynb failed (papermill exit code {code}):\n{self.log.read_text()[-8000:]}"
        return nbformat.read(str(self.out), as_version=4), time.monotonic() - self.started

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # papermill and its kernel (a session of their own)
            self.process.wait()


@pytest.fixture(scope="module")
def executions(world, request):
    """The selected notebooks, all started at once (XLA's CPU compiles are mostly single-threaded)."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_notebook_runs" and hasattr(item, "callspec")]
    runs = {name: Execution(name, world) for name in dict.fromkeys(names)}
    yield runs
    for run in runs.values():
        run.stop()


def _check_outputs(name: str, nb) -> None:
    """Audio players (IPython's Audio: an HTML <audio> with a base64 audio/wav source), PNG figures, no errors,
    and the expected lines of text."""
    audio = images = 0
    text = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{name}: {output.get('ename')}: {output.get('evalue')}"
            data = output.get("data", {})
            html = data.get("text/html", "")
            audio += "<audio" in html and "data:audio/wav;base64," in html
            images += "image/png" in data
            text.append(output.get("text", "") + data.get("text/plain", "") + data.get("text/markdown", ""))
    expected = EXPECTED[name]
    assert audio >= expected["audio"], f"{name}: {audio} audio players, expected at least {expected['audio']}"
    assert images >= expected["images"], f"{name}: {images} figures, expected at least {expected['images']}"
    text = "\n".join(text)
    for line in expected["text"]:
        assert line in text, f"{name}: {line!r} not in the outputs:\n{text[-3000:]}"


@pytest.mark.parity  # the checkpoints are written with torch
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, executions):
    """Every cell runs (papermill fails on the first error) and leaves its players, figures and lines."""
    nb, seconds = executions[name].result()
    _check_outputs(name, nb)
    print(f"{name}.ipynb executed in {seconds:.0f} s")


def strip(path: str) -> None:
    """Remove outputs, execution counts and run metadata (papermill's, Colab's, Jupyter's) from a notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in ("execution", "papermill", "outputId", "colab", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


if __name__ == "__main__":
    for notebook in sys.argv[1:]:
        strip(notebook)
        print(f"stripped {notebook}")
