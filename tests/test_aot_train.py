"""Ahead-of-time train step report (musicgen_jax/aot/train.py): the trainer's own step for the tiny model,
compiled for a TPU topology (4 v5e chips, data x fsdp) and a GPU target (2 H100s, with LoRA too), with no
such hardware present. Needs the [aot] extra (libtpu; jax-cuda12-plugin and -pjrt): skipped without it."""
from __future__ import annotations

import pytest

from musicgen_jax import sharding as S
from musicgen_jax.train.config import load_config

# the tiny preset's codec runs at 4000 frames/s: 6 ms are 24 frames (25 LM steps)
TINY = ["model.preset=tiny", "model.t5=random", "data.batch_size=8", "data.max_text_tokens=8",
        "data.segment_seconds=0.006", "mesh.data=2", "mesh.fsdp=-1", "steps=100"]


def _check(report, cfg, num_devices):
    assert report["mesh"] == dict(zip(S.MESH_AXES, S.mesh_shape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor,
                                                                 num_devices)))
    assert report["num_devices"] == num_devices and report["global_batch"] == 8 and report["frames"] == 24
    assert report["tokens_per_step"] == 8 * 25
    assert report["fits"] and 0 < report["peak_bytes_per_device"] <= report["hbm_bytes"]
    assert report["peak_bytes_per_device"] >= report["params_bytes_per_device"] > 0
    assert report["optimizer_bytes_per_device"] >= 2 * report["params_bytes_per_device"]  # AdamW moments
    assert report["model_flops_per_step"] > 0 and report["xla_flops_per_device_once"] > 0
    # loop bodies multiplied by their trip counts (layers under nn.scan: 2), GEMM custom calls counted: at
    # least the model's matmuls of this device's rows
    assert 2 in report["xla_loop_trip_counts"]
    assert report["xla_flops_per_device"] > report["xla_flops_per_device_once"]
    assert report["xla_flops_per_device"] >= 0.8 * report["model_flops_per_step"] / num_devices
    assert report["xla_bytes_per_device"] > 0 and report["est_step_seconds"] > 0
    assert 0 < report["mfu_bound"] <= 1
    assert report["compile_seconds"] > 0


def test_train_step_on_v5e_topology():
    pytest.importorskip("libtpu")
    from musicgen_jax.aot.train import format_train, report_train

    overrides = TINY + ["optim.accum_steps=2"]
    report = report_train(None, "v5e", 4, overrides=overrides)
    cfg = load_config(None, overrides)
    _check(report, cfg, 4)
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and report["platform"] == "tpu"
    assert report["rows_per_device_per_micro_batch"] == 1 and not report["lora"]
    # params sharded over fsdp: a device holds about half of them
    assert report["params_bytes_per_device"] < 0.75 * 4 * report["trainable_params"]
    text = format_train(report)
    assert "4 x v5e" in text and "fits" in text and "estimate" in text


def test_train_step_on_gpu_target_with_lora():
    pytest.importorskip("jax_plugins.xla_cuda12")
    from musicgen_jax.aot.train import report_train

    cfg = load_config(None, TINY)
    report = report_train(cfg, "h100", 2)  # a loaded config works as well as a path
    _check(report, cfg, 2)
    assert report["platform"] == "cuda" and report["compiler_options"]["xla_gpu_enable_triton_gemm"] is False
    assert report["frozen_lm_params"] == 0

    lora = report_train(cfg, "h100", 2, overrides=["lora.rank=4", "lora.base_dtype=bfloat16"])
    _check(lora, cfg, 2)
    # adapters trained, the LM frozen in bf16 as a separate (non-donated) argument
    assert lora["lora"] and 0 < lora["trainable_params"] < lora["frozen_lm_params"]
    assert lora["frozen_bytes_per_device"] >= 2 * lora["frozen_lm_params"]
    assert lora["model_flops_per_step"] < report["model_flops_per_step"]  # no weight gradients of the base


def test_batch_that_the_mesh_cannot_split_is_refused():
    pytest.importorskip("libtpu")
    from musicgen_jax.aot.train import report_train

    with pytest.raises(ValueError, match="multiple of data x fsdp = 4"):
        report_train(None, "v5e", 4, overrides=TINY + ["data.batch_size=6", "mesh.data=1"])
