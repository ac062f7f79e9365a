"""Resolve a model name or path to a local directory: local folder, Hugging Face cache, then the hub.

The official MusicGen repositories hold two complete layouts side by side (transformers files and
audiocraft's `state_dict.bin` + `compression_state_dict.bin`), and some hold each set of weights in
two formats. A loader therefore asks for ONE layout at a time, with the file patterns below, so a first
run downloads only what it reads: transformers safetensors, else transformers torch pickles, else
(MusicGen and EnCodec only) the audiocraft files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

# ------------------------------------------------------------------ file patterns (the one place)
MUSICGEN_CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json")
CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
TORCH_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")
AUDIOCRAFT_MUSICGEN_FILES = ("state_dict.bin", "compression_state_dict.bin")
AUDIOCRAFT_CODEC_FILES = ("compression_state_dict.bin",)

TRANSFORMERS = "transformers"
AUDIOCRAFT = "audiocraft"


class ModelNotAvailableError(FileNotFoundError):
    """The model is neither a local directory nor in the hub cache, and it cannot be downloaded."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def snapshot_download(repo_id: str, **kwargs) -> str:
    """`huggingface_hub.snapshot_download`, imported on first use (tests replace this name)."""
    from huggingface_hub import snapshot_download as download

    return download(repo_id, **kwargs)


# ------------------------------------------------------------------ what a directory holds
def _index_shards(path: str) -> set[str] | None:
    try:
        with open(path) as f:
            return set(json.load(f)["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def has_complete_weights(directory: str) -> bool:
    """transformers weights (`convert.common.has_transformers_weights`) with every shard an index
    names present: a snapshot whose download stopped between shards is not complete."""
    from musicgen_jax.convert.common import has_transformers_weights

    if not has_transformers_weights(directory):
        return False
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        shards = _index_shards(os.path.join(directory, index))
        if shards and all(os.path.isfile(os.path.join(directory, s)) for s in shards):
            return True
    return any(os.path.isfile(os.path.join(directory, n)) for n in ("model.safetensors", "pytorch_model.bin"))


def is_transformers_checkpoint(directory: str) -> bool:
    """config.json and complete transformers weights."""
    return os.path.isfile(os.path.join(directory, "config.json")) and has_complete_weights(directory)


def is_audiocraft_musicgen(directory: str) -> bool:
    return all(os.path.isfile(os.path.join(directory, n)) for n in AUDIOCRAFT_MUSICGEN_FILES)


def is_audiocraft_codec(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "compression_state_dict.bin"))


@dataclass(frozen=True)
class Layout:
    """One way a checkpoint can be laid out: the files to fetch and the test that they are there."""
    name: str  # TRANSFORMERS or AUDIOCRAFT
    patterns: tuple[str, ...] | None  # None: the whole repository
    complete: Callable[[str], bool] | None  # None: trust the hub library (see `_accepts`)
    describe: str = ""  # for error messages


MUSICGEN_LAYOUTS = (
    Layout(TRANSFORMERS, MUSICGEN_CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS_FILES, is_transformers_checkpoint,
           "config.json + model.safetensors (or its index and shards)"),
    Layout(TRANSFORMERS, MUSICGEN_CONFIG_FILES + TOKENIZER_FILES + TORCH_FILES, is_transformers_checkpoint,
           "config.json + pytorch_model.bin (or its index and shards)"),
    Layout(AUDIOCRAFT, AUDIOCRAFT_MUSICGEN_FILES, is_audiocraft_musicgen,
           "state_dict.bin + compression_state_dict.bin (audiocraft)"),
)
T5_LAYOUTS = (
    Layout(TRANSFORMERS, CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS_FILES, is_transformers_checkpoint,
           "config.json + model.safetensors (or its index and shards)"),
    Layout(TRANSFORMERS, CONFIG_FILES + TOKENIZER_FILES + TORCH_FILES, is_transformers_checkpoint,
           "config.json + pytorch_model.bin (or its index and shards)"),
)
ENCODEC_LAYOUTS = (
    Layout(TRANSFORMERS, CONFIG_FILES + SAFETENSORS_FILES, is_transformers_checkpoint,
           "config.json + model.safetensors (or its index and shards)"),
    Layout(TRANSFORMERS, CONFIG_FILES + TORCH_FILES, is_transformers_checkpoint,
           "config.json + pytorch_model.bin (or its index and shards)"),
    Layout(AUDIOCRAFT, AUDIOCRAFT_CODEC_FILES, is_audiocraft_codec, "compression_state_dict.bin (audiocraft)"),
)


# ------------------------------------------------------------------ resolution
def _local_or_repo(name_or_path) -> tuple[str | None, str]:
    """(local directory, name): the directory when `name_or_path` is one, else None and the repo id."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model name or path must be a string, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ValueError("model name or path is empty")
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        return local, name
    if os.path.exists(local):
        raise ValueError(f"{name!r} is a file; pass the directory that holds the checkpoint")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"no such checkpoint directory: {name}")
    return None, name


def _cached(name: str, patterns: Sequence[str] | None) -> tuple[str | None, bool]:
    """(snapshot directory or None, whether the hub library called it complete for `patterns`)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, allow_patterns=_listed(patterns), local_files_only=True), True
    except LocalEntryNotFoundError as e:  # IncompleteSnapshotError (newer hub versions) says where it is
        return getattr(e, "snapshot_path", None), False
    except FileNotFoundError:
        return None, False
    except Exception as e:  # invalid repo id and the like
        raise ValueError(f"unknown model name {name!r}: {e}") from e


def _download(name: str, patterns: Sequence[str] | None) -> str:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return snapshot_download(name, allow_patterns=_listed(patterns))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ValueError(f"unknown model name {name!r}: no such repository on the Hugging Face hub") from e
    except Exception as e:
        raise ModelNotAvailableError(
            f"could not download {name!r} ({type(e).__name__}: {e}) and no cached copy exists; "
            "check the network or pass a local directory that holds the checkpoint.") from e


def _listed(patterns: Sequence[str] | None) -> list[str] | None:
    return None if patterns is None else list(patterns)


def _accepts(layout: Layout, directory: str, whole: bool) -> bool:
    """Whether a cached snapshot serves `layout`. Without a completeness test, the hub library's word
    (newer versions know the repository's file list) decides, and when the whole repository was asked
    for, any snapshot of it counts: its reader gives the precise error if a file is missing."""
    if layout.complete is not None:
        return layout.complete(directory)
    return whole or layout.patterns is None


def _download_command(name: str, patterns: Sequence[str] | None) -> str:
    """The `hf download` command line that fetches what a layout needs into the cache."""
    return " ".join(["hf download", name] + [f"--include '{p}'" for p in patterns or ()])


def _from_hub(name: str, layouts: Sequence[Layout]) -> tuple[str, int | None]:
    """(snapshot directory, index of the first layout it serves), cache first, then the hub.

    Every layout is looked for in the cache, in order, before anything is downloaded; on the hub,
    layouts are fetched in order until one is complete, so the files of a later layout are fetched only
    when the repository lacks those of the earlier ones. Index None: the last fetch served none.
    """
    partial = None
    for i, layout in enumerate(layouts):
        directory, whole = _cached(name, layout.patterns)
        if directory is None:
            continue
        if _accepts(layout, directory, whole):
            return directory, i
        partial = directory
    if _offline():
        where = "is not in the Hugging Face cache" if partial is None else \
            f"is only partly in the Hugging Face cache ({partial} lacks the files needed here)"
        raise ModelNotAvailableError(
            f"{name!r} {where} and HF_HUB_OFFLINE is set. Load it once with network access (the files "
            f"are then cached), or fetch them on a connected machine "
            f"(`{_download_command(name, layouts[0].patterns)}`), or pass a local directory that holds "
            "the checkpoint.")
    directory = None
    for i, layout in enumerate(layouts):
        directory = _download(name, layout.patterns)
        if layout.complete is None or layout.complete(directory):
            return directory, i
    return directory, None


def resolve(name_or_path: str, allow_patterns: list[str] | None = None,
            complete: Callable[[str], bool] | None = None) -> str:
    """A local directory holding the checkpoint `name_or_path`.

    A directory is returned as is. Otherwise the name is a hub repo id ("facebook/musicgen-small"):
    the local cache is tried first, then the hub unless HF_HUB_OFFLINE is set. `complete(directory)`
    says whether a cached snapshot holds what the caller needs (a snapshot fetched for the tokenizer
    alone has no weights); an incomplete one counts as not cached. Without `allow_patterns` the whole
    repository is fetched: loaders of checkpoints use `resolve_musicgen`, `resolve_t5` or
    `resolve_encodec` instead, which fetch one layout only.
    """
    local, name = _local_or_repo(name_or_path)
    if local is not None:
        return local
    patterns = None if allow_patterns is None else tuple(allow_patterns)
    return _from_hub(name, [Layout("", patterns, complete)])[0]


def resolve_layout(name_or_path: str, layouts: Sequence[Layout], what: str) -> tuple[str, str]:
    """(directory, layout name) of the first of `layouts` that `name_or_path` holds.

    A local directory is inspected in the order of `layouts`; a hub name is resolved through the cache
    and then the hub, fetching only the files of one layout at a time (see `_from_hub`).
    """
    local, name = _local_or_repo(name_or_path)
    expected = "; or ".join(layout.describe for layout in layouts)
    if local is not None:
        for layout in layouts:
            if layout.complete(local):
                return local, layout.name
        raise FileNotFoundError(f"{local} holds no {what} checkpoint: expected {expected}")
    directory, index = _from_hub(name, layouts)
    if index is None:
        raise ModelNotAvailableError(f"{name!r} on the Hugging Face hub holds no {what} checkpoint: "
                                     f"expected {expected}")
    return directory, layouts[index].name


def resolve_musicgen(name_or_path: str) -> tuple[str, str]:
    """(directory, "transformers" | "audiocraft") of a MusicGen checkpoint: a local directory or a hub name.

    transformers weights are preferred when both layouts are present (the official repositories hold
    both): safetensors, else `pytorch_model*.bin`, and only when the repository has neither, audiocraft's
    `state_dict.bin` + `compression_state_dict.bin`. From the hub, only the chosen layout's files are
    fetched (plus the small config and tokenizer files), never both layouts' weights.
    """
    return resolve_layout(name_or_path, MUSICGEN_LAYOUTS, "MusicGen")


def resolve_t5(name_or_path: str) -> str:
    """Directory of a transformers T5 checkpoint ("t5-base", or a local MusicGen/T5 directory):
    config, tokenizer files and safetensors weights, else torch pickles."""
    return resolve_layout(name_or_path, T5_LAYOUTS, "T5")[0]


def resolve_encodec(name_or_path: str) -> tuple[str, str]:
    """(directory, "transformers" | "audiocraft") of an EnCodec checkpoint ("facebook/encodec_32khz",
    a MusicGen repository, or a local directory): config.json + safetensors, else torch pickles, else
    audiocraft's `compression_state_dict.bin`. transformers weights are preferred when both are present."""
    return resolve_layout(name_or_path, ENCODEC_LAYOUTS, "EnCodec")
