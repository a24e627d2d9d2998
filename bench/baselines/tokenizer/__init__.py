"""Benchmark baseline, **not a serving mode**: the ``tokenizer`` model of issues 2-8.

Until the ``embed`` model tokenized texts itself (issue 9), ``embed`` was an ensemble of this
Python model (TEXT -> ``input_ids``, ``attention_mask``, padded to each request's longest text)
and ``encoder``. ``bench.model_per_tenant`` still gives each tenant of its one-model-per-tenant
baseline an ensemble of this tokenizer and a full model. Its tokenization is the served one:
``add_tokenizer_model`` copies ``model_repository/embed/1/text_tokenizer.py`` in beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from headroom import config

MODEL_NAME = "tokenizer"
SOURCE = Path(__file__).resolve().parent
#: The module it imports, taken from the served ``embed`` model (one copy of the tokenization).
TOKENIZER_MODULE = config.MODEL_REPOSITORY / config.EMBED_MODEL / "1" / "text_tokenizer.py"


def add_tokenizer_model(repository: Path) -> Path:
    """Write the ``tokenizer`` model into ``repository`` (which must hold the encoder); its folder."""
    target = repository / MODEL_NAME
    if target.exists():
        shutil.rmtree(target)
    (target / "1").mkdir(parents=True)
    shutil.copy2(SOURCE / "config.pbtxt", target / "config.pbtxt")
    shutil.copy2(SOURCE / "1" / "model.py", target / "1" / "model.py")
    shutil.copy2(TOKENIZER_MODULE, target / "1" / TOKENIZER_MODULE.name)
    return target
