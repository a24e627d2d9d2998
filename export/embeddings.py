"""Sentence embeddings in-process, with the exact encoder and tokenizer the server runs.

``RepositoryEmbedder`` opens ``model_repository/encoder/1/model.onnx`` with ONNX Runtime and
tokenizes with ``model_repository/tokenizer/1/text_tokenizer.py`` itself (loaded from that file),
so heads trained here see the same features as ``embed`` produces when serving.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headroom import config


def load_text_tokenizer_module(repository: Path = config.MODEL_REPOSITORY):
    """Import the served tokenizer's helper module from the model repository."""
    path = repository / config.TOKENIZER_MODEL / "1" / "text_tokenizer.py"
    spec = importlib.util.spec_from_file_location("headroom_served_text_tokenizer", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class RepositoryEmbedder:
    """Embeds texts with the encoder ONNX file installed in the model repository."""

    def __init__(self, repository: Path = config.MODEL_REPOSITORY, batch_size: int = config.EMBED_BATCH_SIZE) -> None:
        import onnxruntime as ort

        encoder_dir = config.encoder_version_dir(repository)
        model_path = encoder_dir / "model.onnx"
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path} is missing: run `headroom export` first")
        tokenizer_module = load_text_tokenizer_module(repository)
        self.tokenizer = tokenizer_module.TextTokenizer(
            tokenizer_module.find_tokenizer_file(repository / config.ENCODER_MODEL),
            max_length=config.MAX_SEQ_LEN_TOKENS,
        )
        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """FP32 [len(texts), 384] L2-normalised sentence embeddings."""
        batches = range(0, len(texts), self.batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="embedding", unit="batch", leave=False, disable=None)  # None: TTY only
        chunks = []
        for start in batches:
            input_ids, attention_mask = self.tokenizer(list(texts[start : start + self.batch_size]))
            chunks.append(
                self.session.run(["sentence_embedding"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]
            )
        if not chunks:
            return np.zeros((0, config.EMBEDDING_DIM), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)
