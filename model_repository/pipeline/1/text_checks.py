"""Is a request's TEXT blank to the encoder? (no Triton import; unit-tested on its own)

A text is blank when the encoder's tokenizer keeps nothing of it: only whitespace, or
characters its normaliser drops (control and format characters, U+FFFD, combining marks it
strips). Such a text would be encoded as ``[CLS] [SEP]`` and get an answer about nothing, so
the pipeline refuses it like an empty one. The check runs the served tokenizer's own normaliser,
so it agrees with the encoder whatever Unicode version either side was built with.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


def find_tokenizer_file(encoder_dir: str) -> str:
    """``tokenizer.json`` of the newest encoder version folder that has one."""
    versions = sorted((n for n in os.listdir(encoder_dir) if n.isdigit()), key=int, reverse=True)
    for version in versions:
        candidate = os.path.join(encoder_dir, version, TOKENIZER_FILE)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"no {TOKENIZER_FILE} in any version folder of {encoder_dir}")


class BlankCheck:
    def __init__(self, tokenizer_file: str) -> None:
        self._normalizer = Tokenizer.from_file(tokenizer_file).normalizer

    def __call__(self, text: str) -> bool:
        if any(character.isalnum() for character in text):
            return False  # the common case, decided without normalising
        normalized = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        return not normalized.strip()
