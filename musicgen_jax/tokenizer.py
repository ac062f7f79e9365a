"""T5 tokenizer with the semantics of transformers' slow (sentencepiece) T5Tokenizer, legacy mode.

That is the tokenizer audiocraft used when MusicGen was trained (transformers 4.x, `legacy=True`):
  - special token strings in the text are kept whole: `</s>` (eos), `<pad>`, `<unk>` and the
    sentinels `<extra_id_0>` .. `<extra_id_{n-1}>`, whose ids count down from the top of the
    vocabulary (`<extra_id_0>` = sentencepiece size + extra_ids - 1); whitespace next to a sentinel is
    dropped. Every other stretch of text is encoded by sentencepiece alone, which applies the model's
    own normalisation (NFKC, whitespace folding for T5's spiece.model);
  - `</s>` is appended unless the ids already end with it;
  - a batch is padded with `<pad>` (id 0) to its longest row; nothing is truncated.
So "" and whitespace-only prompts give [eos]; characters outside the vocabulary (Chinese, emoji for
T5) become `<unk>` (one id for each run of unknown characters), and a warning names the prompt when
most of its text is unknown.

transformers 5.x replaced the slow class by a `tokenizers`-based one that gives the same ids except
that it always appends `</s>`, even after a prompt ending in a literal "</s>".
"""
from __future__ import annotations

import json
import os
import re
import warnings
from typing import NamedTuple, Sequence

import numpy as np

from musicgen_jax import hub

SPIECE_NAME = "spiece.model"


class TokenizedBatch(NamedTuple):
    """ids [B, S] int32 (padded with the pad id) and mask [B, S] int32 (1 = real token)."""

    ids: np.ndarray
    mask: np.ndarray


def _visible_chars(piece: str) -> int:
    """Characters of a piece other than whitespace and the sentencepiece space marker."""
    return sum(1 for ch in piece if not ch.isspace() and ch != "\u2581")


class T5Tokenizer:
    """Text -> T5 token ids. `tokenizer(["a prompt", ...])` -> TokenizedBatch(ids, mask)."""

    def __init__(self, spiece_path: str, extra_ids: int = 100):
        import sentencepiece as spm

        if not os.path.isfile(spiece_path):
            raise FileNotFoundError(f"sentencepiece model not found: {spiece_path}")
        self.path = os.fspath(spiece_path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError) as e:  # an empty file says only "unk is not defined"
            raise ValueError(f"cannot read sentencepiece model {self.path} (empty, truncated or not a "
                             f"sentencepiece model): {e}") from None
        self.extra_ids = int(extra_ids)
        self.unk_id = self.sp.unk_id()
        self.pad_id = self._required_piece("<pad>")
        self.eos_id = self._required_piece("</s>")
        self.specials = {"</s>": self.eos_id, "<pad>": self.pad_id, "<unk>": self.unk_id}
        self.specials.update({f"<extra_id_{i}>": self.vocab_size - 1 - i for i in range(self.extra_ids)})
        names = sorted(self.specials, key=len, reverse=True)  # longest first
        self._split_re = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

    def _required_piece(self, piece: str) -> int:
        pid = self.sp.piece_to_id(piece)
        if pid == self.unk_id:
            raise ValueError(f"the sentencepiece model {self.path} has no {piece!r} piece: not a T5 spiece.model")
        return pid

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "T5Tokenizer":
        """From a spiece.model file, a directory holding one (a T5 checkpoint or a MusicGen
        transformers directory), or a hub name such as "t5-base" (cache first, see `hub.resolve`)."""
        if isinstance(name_or_path, (str, os.PathLike)) and os.path.isfile(name_or_path):
            return cls(os.fspath(name_or_path), _extra_ids(os.path.dirname(os.fspath(name_or_path))))
        directory = hub.resolve(name_or_path, allow_patterns=[SPIECE_NAME, "tokenizer_config.json"])
        path = os.path.join(directory, SPIECE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no {SPIECE_NAME} in {directory}; pass a T5 checkpoint (e.g. 't5-base'), a MusicGen "
                "transformers directory or the path of a spiece.model")
        return cls(path, _extra_ids(directory))

    @property
    def vocab_size(self) -> int:
        """sentencepiece pieces + sentinels (32100 for t5-base; the model's table has 32128 rows)."""
        return self.sp.get_piece_size() + self.extra_ids

    def _split(self, text: str) -> list[str]:
        """Text -> alternating plain chunks and special token strings (chunks may be empty)."""
        parts = self._split_re.split(text)
        for i, part in enumerate(parts):
            if part.startswith("<extra_id_") and part in self.specials:  # sentinels eat nearby spaces
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        return parts

    def _encode_with_unk(self, text: str) -> tuple[list[int], float]:
        """-> (ids with eos, fraction of the visible characters that became <unk>)."""
        ids, unk_chars, chars = [], 0, 0
        for i, part in enumerate(self._split(text)):
            if i % 2:  # odd entries of re.split are the captured special tokens
                ids.append(self.specials[part])
                continue
            if not part:
                continue
            part_ids = self.sp.encode(part)
            pieces = self.sp.encode(part, out_type=str)  # unknown stretches keep their own text
            ids.extend(part_ids)
            chars += sum(_visible_chars(p) for p in pieces)
            unk_chars += sum(_visible_chars(p) for p, t in zip(pieces, part_ids) if t == self.unk_id)
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids, unk_chars / max(chars, 1)

    def _encode_checked(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be a string, got {type(text).__name__}: {text!r}")
        ids, unk = self._encode_with_unk(text)
        if unk > 0.5:
            shown = text if len(text) <= 80 else text[:77] + "..."
            warnings.warn(f"{unk:.0%} of the prompt {shown!r} is unknown to the T5 vocabulary and "
                          "became <unk>: the text encoder will not understand it (T5 knows English, "
                          "German, French and Romanian).", stacklevel=3)  # points at our caller
        return ids

    def encode(self, text: str) -> list[int]:
        """One prompt -> ids ending with </s> (no padding)."""
        return self._encode_checked(text)

    def __call__(self, prompts: Sequence[str] | str, pad_to_multiple_of: int | None = None) -> TokenizedBatch:
        """Prompts -> TokenizedBatch(ids [B, S] int32, mask [B, S] int32), padded to the longest row
        (rounded up to a multiple of `pad_to_multiple_of` if given, to limit recompilations)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("no prompts given: pass a non-empty list of strings")
        rows = []
        for prompt in prompts:  # a loop, not a comprehension: keeps the warning's stacklevel right
            rows.append(self._encode_checked(prompt))
        length = max(len(r) for r in rows)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
            mask[b, : len(row)] = 1
        return TokenizedBatch(ids, mask)


def _extra_ids(directory: str) -> int:
    """Sentinel count from tokenizer_config.json when present (100 for every released T5)."""
    path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            value = config.get("extra_ids")
            return 100 if value is None else int(value)
        except (ValueError, TypeError, AttributeError) as e:  # bad JSON, not an object, not a number
            raise ValueError(f"{path} is not a valid tokenizer config: {e}") from None
    return 100
