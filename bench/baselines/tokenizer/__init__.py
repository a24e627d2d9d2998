"""Benchmark baseline, **not a serving mode**: the ``tokenizer`` model of issues 2-8.

Until the ``embed`` model tokenized texts itself (issue 9), ``embed`` was an ensemble of this
Python model (TEXT -> ``input_ids``, ``attention_mask``, padded to each request's longest text)
and ``encoder``. ``bench.model_per_tenant`` still gives each tenant of its one-model-per-tenant
baseline an ensemble of this tokenizer and a full model. Its tokenization is the served one: it
imports ``headroom.text_tokenizer`` as ``embed`` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MODEL_NAME = "tokenizer"
SOURCE = Path(__file__).resolve().parent


def add_tokenizer_model(repository: Path) -> Path:
    """Write the ``tokenizer`` model into ``repository`` (which must hold the encoder); its folder."""
    target = repository / MODEL_NAME
    if target.exists():
        shutil.rmtree(target)
    (target / "1").mkdir(parents=True)
    shutil.copy2(SOURCE / "config.pbtxt", target / "config.pbtxt")
    shutil.copy2(SOURCE / "1" / "model.py", target / "1" / "model.py")
    return target
