"""Resolve a model name or path to a local directory: local folder, Hugging Face cache, then the hub."""
from __future__ import annotations

import os
from typing import Callable


class ModelNotAvailableError(FileNotFoundError):
    """The model is neither a local directory nor in the hub cache, and it cannot be downloaded."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve(name_or_path: str, allow_patterns: list[str] | None = None,
            complete: Callable[[str], bool] | None = None) -> str:
    """A local directory holding the checkpoint `name_or_path`.

    A directory is returned as is. Otherwise the name is a hub repo id ("facebook/musicgen-small"):
    the local cache is tried first, then the hub unless HF_HUB_OFFLINE is set. `complete(directory)`
    says whether a cached snapshot holds what the caller needs (a snapshot fetched for the tokenizer
    alone has no weights); an incomplete one counts as not cached.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model name or path must be a string, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ValueError("model name or path is empty")
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise ValueError(f"{name!r} is a file; pass the directory that holds the checkpoint")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"no such checkpoint directory: {name}")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    cached = None
    try:
        cached = snapshot_download(name, allow_patterns=allow_patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    except Exception as e:  # invalid repo id and the like
        raise ValueError(f"unknown model name {name!r}: {e}") from e
    if cached is not None and (complete is None or complete(cached)):
        return cached
    if _offline():
        where = "is not in the Hugging Face cache" if cached is None else \
            f"is only partly in the Hugging Face cache ({cached} lacks the files needed here)"
        raise ModelNotAvailableError(
            f"{name!r} {where} and HF_HUB_OFFLINE is set. Download it on a "
            f"connected machine (`huggingface-cli download {name}`) or pass a local directory "
            "that holds the checkpoint.")
    try:
        return snapshot_download(name, allow_patterns=allow_patterns)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ValueError(f"unknown model name {name!r}: no such repository on the Hugging Face hub") from e
    except Exception as e:
        raise ModelNotAvailableError(
            f"could not download {name!r} ({type(e).__name__}: {e}) and no cached copy exists; "
            "check the network or pass a local directory that holds the checkpoint.") from e
