"""Tokenization shared by the served ``embed`` and ``pipeline`` models and in-process head training.

The models import it from the installed ``headroom`` package (the Triton image installs it,
``docker/triton/Dockerfile``), and so does ``headroom.export.embeddings``: training and serving
features are computed by the same code.

Texts are tokenized once, unpadded (``TextTokenizer.encode``): their token counts decide how
they are grouped for the encoder (``length_groups.py``), and each group is then padded only to
its own longest text (``TokenizedTexts.padded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from headroom.config import TOKENIZER_FILE
from tokenizers import Tokenizer


class TokenizedTexts:
    """Token ids of a list of texts, truncated and unpadded (and, when asked for, each token's
    character offsets into its text: code points, end exclusive, (0, 0) for [CLS] and [SEP])."""

    def __init__(self, ids: list[list[int]], offsets: list[list[tuple[int, int]]] | None = None) -> None:
        self.ids = ids
        self.offsets = offsets
        #: Tokens of each text, [CLS] and [SEP] included.
        self.lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def padded(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention mask of ``rows`` (in that order), INT64 [len(rows), longest of them]."""
        longest = int(self.lengths[rows].max()) if len(rows) else 0
        input_ids = np.zeros((len(rows), longest), dtype=np.int64)
        attention_mask = np.zeros((len(rows), longest), dtype=np.int64)
        for position, row in enumerate(rows):
            tokens = self.ids[row]
            input_ids[position, : len(tokens)] = tokens
            attention_mask[position, : len(tokens)] = 1
        return input_ids, attention_mask

    def padded_offsets(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Character offsets of ``rows``' tokens, INT32 [len(rows), longest of them, 2], (-1, -1)
        past a text's end (``encode(..., offsets=True)`` first)."""
        if self.offsets is None:
            raise ValueError("tokenized without offsets: encode(texts, offsets=True)")
        longest = int(self.lengths[rows].max()) if len(rows) else 0
        offsets = np.full((len(rows), longest, 2), -1, dtype=np.int32)
        for position, row in enumerate(rows):
            if self.offsets[row]:
                offsets[position, : len(self.offsets[row])] = self.offsets[row]
        return offsets


class TextTokenizer:
    """Batch tokenizer of the served encoder: truncates at ``max_length``, never pads by itself."""

    def __init__(self, tokenizer_file: str | Path, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(max_length=max_length)
        # The exported tokenizer.json may carry a fixed padding length: padding is done per group.
        self._tokenizer.no_padding()

    def encode(self, texts: Sequence[str], offsets: bool = False) -> TokenizedTexts:
        """Every text's token ids, truncated at ``max_length``, unpadded; with ``offsets``, each
        token's character offsets into its text too (token heads need them)."""
        if not texts:
            return TokenizedTexts([], [] if offsets else None)
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = [encoding.ids for encoding in encodings]
        return TokenizedTexts(ids, [encoding.offsets for encoding in encodings] if offsets else None)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask of all ``texts`` padded to the longest, INT64 [len(texts), longest]."""
        tokens = self.encode(texts)
        return tokens.padded(np.arange(len(tokens)))


def find_tokenizer_file(encoder_dir: str | Path) -> Path:
    """``tokenizer.json`` of the newest encoder version folder that has one."""
    encoder_dir = Path(encoder_dir)
    versions = sorted(
        (p for p in encoder_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
        reverse=True,
    )
    for version in versions:
        candidate = version / TOKENIZER_FILE
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {TOKENIZER_FILE} in any version folder of {encoder_dir}")


class BlankCheck:
    """Is a request's TEXT blank to the encoder?

    A text is blank when the encoder's tokenizer keeps nothing of it: only whitespace, or
    characters its normaliser drops (control and format characters, U+FFFD, combining marks it
    strips). Such a text would be encoded as ``[CLS] [SEP]`` and get an answer about nothing, so
    the pipeline refuses it like an empty one. The check runs the served tokenizer's own
    normaliser, so it agrees with the encoder whatever Unicode version either side was built with.
    """

    def __init__(self, tokenizer_file: str | Path) -> None:
        self._normalizer = Tokenizer.from_file(str(tokenizer_file)).normalizer

    def __call__(self, text: str) -> bool:
        if any(character.isalnum() for character in text):
            return False  # the common case, decided without normalising
        normalized = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        return not normalized.strip()
