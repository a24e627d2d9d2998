"""Reference answers: what the repository's own ONNX files give a text alone, offline."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from headroom import config
from headroom.export.embeddings import RepositoryEmbedder
from headroom.repository.head_store import versions_of


@lru_cache(maxsize=4)
def embedder(repository: Path) -> RepositoryEmbedder:
    """Embeds every text in an encoder call of its own."""
    return RepositoryEmbedder(repository, alone=True)


def offline(repository: Path, head: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities from the repository's encoder and head ONNX files, each text alone."""
    folder = repository / f"head_{head}"
    version = folder / str(versions_of(folder)[-1])
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"sentence_embedding": embedder(repository)(texts)})[0]
    return (version / "labels.txt").read_text().split(), probs


def served_variant(repository: Path) -> str:
    return json.loads((config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE).read_text())["variant"]


def tolerance(repository: Path) -> float:
    """How far a batched answer may differ from the same text alone (docs/benchmarks.md, "Choosing the encoder")."""
    return 1e-5 if served_variant(repository) in config.BATCH_INDEPENDENT_VARIANTS else 0.35
