"""Ahead-of-time decode reports (musicgen_jax.aot): a tiny LM's decode loop compiled for a TPU v5e chip and
an H100 that are not here (compile only; needs the [aot] extra, else those tests skip)."""
import json
import math

import pytest

from musicgen_jax.aot import format_report, report_decode
from musicgen_jax.aot.report import read_json, write_json
from musicgen_jax.aot.targets import get_target
from musicgen_jax.config import tiny

LM = tiny().lm  # a bare LMConfig: 50 Hz frames, 30 s window
SECONDS = 2.0  # 100 frames: a 150-step buffer bucket


def _report(target: str) -> dict:
    return report_decode(LM, target, batch=1, seconds=SECONDS)


@pytest.fixture(scope="module")
def tpu_report():
    pytest.importorskip("libtpu")
    return _report("v5e")


@pytest.fixture(scope="module")
def gpu_report():
    pytest.importorskip("jax_plugins.xla_cuda12")
    return _report("h100")


def _check(r: dict, target: str) -> None:
    t = get_target(target)
    assert r["kind"] == "decode" and r["estimates_from"] == "compiled program, no hardware"
    assert (r["target"], r["batch"], r["rows"], r["num_devices"]) == (target, 1, 2, 1)
    assert r["frames"] == 100 and r["steps"] == 100 + len(LM.delays) - 1  # frames + delays (+ the prefill call)
    # kernels: some, and the breakdowns account for every one of them
    assert r["est_kernels_per_step"] > 0
    assert r["kernels_body"] + r["kernels_condition"] == r["est_kernels_per_step"]
    assert sum(r["kernels_by_kind"].values()) == r["est_kernels_per_step"]
    assert sum(r["kernels_by_name"].values()) == r["est_kernels_per_step"]
    assert r["kernels_unknown_trip_counts"] == []
    # bytes: a step reads at least every weight it uses (from HBM, or on TPU perhaps from VMEM: XLA's count)
    assert 0 < r["step_weight_bytes"] <= r["weight_bytes"] == _held_weight_bytes()  # as from_pretrained holds them
    assert r["xla_bytes_per_step"] >= r["step_weight_bytes"]
    assert r["est_bytes_per_step"] > 0 and r["est_flops_per_step"] > 0
    assert r["kernels_counted_plainly"] == 0
    # memory: the params are arguments of the loop
    assert r["est_peak_bytes_per_device"] >= r["weight_bytes"]
    assert r["est_fits"] is True and r["hbm_bytes"] == int(t.hbm_bytes)
    # the estimate is the stated formula
    for key in ("est_ms_per_step", "est_seconds", "est_memory_ms_per_step", "est_compute_ms_per_step",
                "est_bytes_ratio_full_kv", "est_bytes_ratio_live_kv"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["est_memory_ms_per_step"] == pytest.approx(r["est_bytes_per_step"] / t.hbm_bandwidth * 1e3)
    assert r["est_compute_ms_per_step"] == pytest.approx(r["est_flops_per_step"] / t.peak_flops * 1e3)
    assert r["est_launch_ms_per_step"] == pytest.approx(r["est_kernels_per_step"] * t.launch_seconds * 1e3)
    assert r["est_ms_per_step"] == pytest.approx(
        max(r["est_memory_ms_per_step"], r["est_compute_ms_per_step"]) + r["est_launch_ms_per_step"])
    assert r["est_seconds"] == pytest.approx(r["est_ms_per_step"] * r["steps"] / 1e3)
    assert r["est_bytes_ratio_live_kv"] >= r["est_bytes_ratio_full_kv"]  # the live part of the cache is smaller
    assert r["compile_seconds"] > 0
    # a 2 s window (153-position cache) lies inside the first 512-position segment: one whole-buffer program
    assert r["length_aware"] == {"pieces": [{"steps": r["steps"] - 1, "kv_length": None}], "programs": 1}
    assert r["est_bytes_per_step"] == r["est_bytes_per_step_whole_buffer"]
    text = format_report(r)
    assert "est." in text and "estimate" in text and target in text


def _held_weight_bytes() -> int:
    """Bytes of the tiny LM's params held for bf16 decoding: matmul weights bf16, the rest float32."""
    import jax
    import jax.numpy as jnp

    from musicgen_jax.modules.lm import abstract_lm_params, inference_params

    held = jax.eval_shape(lambda p: inference_params(p, jnp.bfloat16), abstract_lm_params(LM))
    assert {x.dtype for x in jax.tree.leaves(held)} == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(held))


def test_decode_report_tpu(tpu_report, tmp_path):
    _check(tpu_report, "v5e")
    assert tpu_report["launch_seconds"] == 0 and tpu_report["est_launch_ms_per_step"] == 0
    path = write_json(str(tmp_path / "aot.json"), [tpu_report])
    assert read_json(path) == [json.loads(json.dumps(tpu_report))]


def test_decode_report_gpu(gpu_report):
    _check(gpu_report, "h100")
    assert gpu_report["est_bytes_per_step"] >= gpu_report["step_weight_bytes"]  # no on-chip memory to keep them
    # GEMMs are kernels: Triton GEMM fusions (the default), or cuBLAS calls where Triton could not tile one
    assert any("gemm" in k or "cublas" in k for k in gpu_report["kernels_by_name"])
    assert gpu_report["est_launch_ms_per_step"] > 0


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match="h100.*v5e"):
        get_target("h800")
    with pytest.raises(ValueError, match="unknown target 'tpu9'"):
        report_decode(LM, "tpu9")
    with pytest.raises(ValueError, match="window"):
        report_decode(LM, "h100", seconds=31.0)


def test_kernel_count_of_a_cpu_while_loop():
    """The HLO reader on any machine: a while loop compiled for the CPU, its body's kernels and cost."""
    import jax
    import jax.numpy as jnp

    from musicgen_jax.aot import hlo

    def f(w, x, n):
        def body(c):
            i, x = c
            return i + 1, jnp.tanh(x @ w) * 2.0

        return jax.lax.while_loop(lambda c: c[0] < n, body, (0, x))[1]

    compiled = jax.jit(f).lower(jnp.zeros((64, 64)), jnp.zeros((2, 64)), 3).compile()
    module = hlo.parse_hlo(compiled.as_text())
    loop = hlo.decode_loop(module)
    kernels = hlo.loop_kernels(module, loop)
    assert kernels["total"] > 0 and sum(kernels["by_kind"].values()) == kernels["total"]
    cost = hlo.summarize_kernels(hlo.kernel_costs(module, loop.body))
    assert cost["flops"] >= 2 * 2 * 64 * 64 and cost["hbm_bytes"] >= 64 * 64 * 4  # the matmul, its weight
    assert cost["approx"] == 0


def test_loop_aware_cost_counts_each_body_by_its_trips():
    """A 5-step loop of a [2, 64] x [64, 64] matmul: XLA's cost counts the body once, the loop-aware cost
    5 times (trip count read from the compiled loop)."""
    import jax
    import jax.numpy as jnp

    from musicgen_jax.aot import hlo

    def f(w, x):
        return jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ w), x)

    compiled = jax.jit(f).lower(jnp.zeros((64, 64)), jnp.zeros((2, 64))).compile()
    cost = hlo.loop_aware_cost(hlo.parse_hlo(compiled.as_text()))
    matmul = 2 * 2 * 64 * 64
    assert cost["loops"] == [5]
    assert matmul <= cost["flops_once"] < 2 * matmul and 5 * matmul <= cost["flops"] < 6 * matmul
    assert cost["bytes_accessed"] >= 5 * 64 * 64 * 4 and cost["collective_bytes"] == 0


TPU_STYLE_LOOP = """HloModule loop

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %two = s32[] constant(2)
  %next = s32[] add(%i, %two)
  %gather = ((f32[8]{0}), f32[64]{0}) all-gather-start(%x), dimensions={0}
  %gathered = f32[64]{0} all-gather-done(%gather)
  %y = f32[8]{0} slice(%gathered), slice={[0:8]}
  ROOT %t = (s32[], f32[8]{0}) tuple(%next, %y)
}

%cond (q: (s32[], f32[8])) -> pred[] {
  %q = (s32[], f32[8]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %x.bound = s32[] constant(7)
  %bound = s32[] constant(24)
  ROOT %lt = pred[] compare(%j, %bound), direction=LT
}

ENTRY %main (a: f32[8]) -> (s32[], f32[8]) {
  %a = f32[8]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]{0}) tuple(%zero, %a)
  ROOT %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
}
"""


def test_trip_count_and_collectives_of_a_loop_without_a_known_trip_count():
    """TPU prints no known_trip_count: the count is the condition's bound (24) over the body's step (2);
    an async all-gather's shape is (operands, results): it delivers its result, f32[64]."""
    from musicgen_jax.aot import hlo

    module = hlo.parse_hlo(TPU_STYLE_LOOP)
    (loop,) = hlo.while_loops(module)
    assert loop.known_trip_count is None and hlo.trip_count(module, loop) == 12
    start = module.instruction(loop.body, "gather")
    assert hlo.collective_bytes(start) == 64 * 4
    assert hlo.collective_bytes(module.instruction(loop.body, "gathered")) == 0


def test_out_of_memory_is_a_result():
    """TPU's compiler refuses a program that does not fit; the report reads how much it needed."""
    from musicgen_jax.aot.decode import _out_of_memory

    message = ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Ran out of memory on HBM, the total "
               "memory required for HLO temporaries (28.92G) exceeds available HBM (15.75G).")
    assert _out_of_memory(message) == pytest.approx(28.92 * 2 ** 30)
    assert _out_of_memory("INVALID_ARGUMENT: something else") is None
