"""Test setup: 8 fake CPU devices for sharding tests, fp32 matmuls for parity, and a guard that keeps
the quick loop (`pytest -m "not parity"`) free of torch."""
import os
import sys

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_finish(session):
    """Collecting must not import torch: tests that need it are marked `parity` and import it inside
    the test or fixture, so `-m "not parity"` runs without torch (installed or not)."""
    if "not parity" in (session.config.option.markexpr or "") and "torch" in sys.modules:
        raise pytest.UsageError("torch was imported while collecting the tests; import it inside the "
                                "parity tests and fixtures that need it")
