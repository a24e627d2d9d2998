"""Sentence embeddings in-process, with the exact encoder, tokenizer and grouping the server runs.

``RepositoryEmbedder`` opens the repository's ``encoder/1/model.onnx`` with ONNX Runtime,
tokenizes with ``headroom.text_tokenizer`` and groups texts of similar token length with
``headroom.length_groups`` (the modules the ``embed`` model imports), bounded by the parameters
of ``embed/config.pbtxt``. Heads trained here therefore see the same
features as the served ``embed`` model produces, at the same cost per text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from headroom import config
from headroom.length_groups import GroupingLimits, plan_groups
from headroom.model_config import parameters_in
from headroom.text_tokenizer import TextTokenizer, find_tokenizer_file
from headroom.token_features import TokenFeatures


def grouping_limits(repository: Path) -> GroupingLimits:
    """The ``GroupingLimits`` the served ``embed`` model uses (its ``config.pbtxt``)."""
    parameters = parameters_in(Path(repository) / config.EMBED_MODEL)
    return GroupingLimits(
        max_batch_tokens=int(parameters["max_batch_tokens"]),
        max_rows=int(parameters["max_rows"]),
        max_added_padding=int(parameters["max_added_padding"]),
    )


class RepositoryEmbedder:
    """Embeds texts with the encoder ONNX file installed in the model repository.

    Texts are grouped as the served ``embed`` model groups them; ``alone=True`` runs every text
    in an encoder call of its own instead (the reference answers of the tests).
    """

    def __init__(self, repository: Path, alone: bool = False, threads: int = 0) -> None:
        import dataclasses

        import onnxruntime as ort

        repository = Path(repository)
        model_path = config.encoder_version_dir(repository) / "model.onnx"
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path} is missing: run `headroom export` first")
        parameters = parameters_in(repository / config.EMBED_MODEL)
        self.tokenizer = TextTokenizer(
            find_tokenizer_file(repository / config.ENCODER_MODEL), max_length=int(parameters["max_length"])
        )
        self.limits = grouping_limits(repository)
        if alone:
            self.limits = dataclasses.replace(self.limits, max_rows=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])

    def plan(self, texts: Sequence[str]):
        """The tokenized texts and the groups the encoder runs them in."""
        tokens = self.tokenizer.encode(texts)
        return tokens, plan_groups(tokens.lengths, self.limits)

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """FP32 [len(texts), 384] L2-normalised sentence embeddings, in the order of ``texts``."""
        from tqdm import tqdm

        tokens, groups = self.plan(texts)
        embeddings = np.zeros((len(tokens), config.EMBEDDING_DIM), dtype=np.float32)
        # disable=None: a bar on a terminal only.
        bar = tqdm(total=len(tokens), desc="embedding", unit="text", leave=False, disable=None if progress else True)
        with bar:
            for rows in groups:
                input_ids, attention_mask = tokens.padded(rows)
                feed = {"input_ids": input_ids, "attention_mask": attention_mask}
                embeddings[rows] = self.session.run(["sentence_embedding"], feed)[0]
                bar.update(len(rows))
        return embeddings

    def tokens(self, texts: Sequence[str]) -> list[TokenFeatures]:
        """Each text's token embeddings and offsets, grouped as ``embed`` groups them: what the
        served ``embed`` answers for a slot row (offline parity, benchmarks)."""
        tokens = self.tokenizer.encode(texts, offsets=True)
        groups = plan_groups(tokens.lengths, self.limits)
        features: list = [None] * len(tokens)
        for rows in groups:
            input_ids, attention_mask = tokens.padded(rows)
            feed = {"input_ids": input_ids, "attention_mask": attention_mask}
            per_token = self.session.run(["token_embeddings"], feed)[0]
            offsets = tokens.padded_offsets(rows)
            for position, row in enumerate(rows.tolist()):
                count = int(tokens.lengths[row])
                features[row] = TokenFeatures(per_token[position, :count].copy(), offsets[position, :count].copy())
        return features
