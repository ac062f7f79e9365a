"""Errors of the evaluation package that name what to do."""
from __future__ import annotations

import importlib


class MissingExtraError(ImportError):
    """An optional evaluation backend whose reference package is not installed."""


class BackendLoadError(RuntimeError):
    """A backend's model or weights could not be built or fetched (offline, corrupt file, ...)."""


def import_extra(module: str, package: str, extra: str, what: str):
    """`importlib.import_module(module)`, or MissingExtraError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs the `{package}` package, which is not installed ({e}); install the extra: "
            f"pip install 'musicgen_jax[{extra}]' (with torch pinned first: pip install torch==2.13.0)") from e
