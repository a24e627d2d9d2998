"""Tokenization shared by the served ``tokenizer`` model and in-process head training.

Kept in the model's own folder so the model repository stays self-contained (the official
Triton container needs nothing of this project installed); ``export/embeddings.py`` loads this
very file, so training and serving features are computed the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Batch tokenizer: truncates at ``max_length`` and pads to the longest text of the batch."""

    def __init__(self, tokenizer_file: str | Path, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(max_length=max_length)
        # No fixed length: padding goes to the longest sequence of each batch.
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both INT64 [len(texts), longest]."""
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return empty, empty.copy()
        encodings = self._tokenizer.encode_batch(texts)
        input_ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask


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
