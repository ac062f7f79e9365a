"""Ahead-of-time compiles for accelerators that are not present, and cost reports from them.

    from musicgen_jax.aot import report_decode, report_train, format_report
    print(format_report(report_decode("musicgen-small", "h100", batch=1, seconds=30.0)))

Call `musicgen_jax.aot.targets.prepare_jax()` before jax starts a backend (the reports call it too).
Training is imported only when `report_train` is called: the inference side never imports
musicgen_jax.train.
"""
from musicgen_jax.aot.decode import report_decode
from musicgen_jax.aot.report import format_report, read_json, write_json
from musicgen_jax.aot.targets import TARGETS, Target, get_target, prepare_jax, target_devices


def report_train(recipe, target, num_devices, *, overrides=(), **kwargs):
    """The train step of a recipe compiled for `num_devices` devices of `target` (musicgen_jax.aot.train)."""
    from musicgen_jax.aot.train import report_train as _report_train

    return _report_train(recipe, target, num_devices, overrides=overrides, **kwargs)


__all__ = ["report_decode", "report_train", "format_report", "write_json", "read_json", "TARGETS", "Target",
           "get_target", "prepare_jax", "target_devices"]
