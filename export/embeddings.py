"""Sentence embeddings in-process, with the exact encoder, tokenizer and grouping the server runs.

``RepositoryEmbedder`` opens the repository's ``encoder/1/model.onnx`` with ONNX Runtime,
tokenizes with ``model_repository/embed/1/text_tokenizer.py`` and groups texts of similar token
length with ``model_repository/embed/1/length_groups.py`` (both loaded from those very files),
bounded by the parameters of ``embed/config.pbtxt``. Heads trained here therefore see the same
features as the served ``embed`` model produces, at the same cost per text.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from headroom import config


def load_model_module(model: str, module: str, repository: Path = config.MODEL_REPOSITORY) -> ModuleType:
    """Import helper module ``module`` of the served model ``model`` from the repository."""
    path = Path(repository) / model / "1" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"headroom_served_{model}_{module}", path)
    if spec is None or spec.loader is None or not path.exists():
        raise FileNotFoundError(f"cannot load {path}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(loaded)
    return loaded


def load_text_tokenizer_module(repository: Path = config.MODEL_REPOSITORY) -> ModuleType:
    """The served tokenizer wrapper (``embed/1/text_tokenizer.py``)."""
    return load_model_module(config.EMBED_MODEL, "text_tokenizer", repository)


def load_length_groups_module(repository: Path = config.MODEL_REPOSITORY) -> ModuleType:
    """The served length grouping (``embed/1/length_groups.py``)."""
    return load_model_module(config.EMBED_MODEL, "length_groups", repository)


def model_parameters(config_file: Path) -> dict[str, str]:
    """The ``parameters`` of a ``config.pbtxt``, read with Triton's own protobuf schema."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(Path(config_file).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in parsed.parameters.items()}


def grouping_limits(repository: Path = config.MODEL_REPOSITORY, module: ModuleType | None = None):
    """The ``GroupingLimits`` the served ``embed`` model uses (its ``config.pbtxt``)."""
    module = module or load_length_groups_module(repository)
    parameters = model_parameters(Path(repository) / config.EMBED_MODEL / "config.pbtxt")
    return module.GroupingLimits(
        max_batch_tokens=int(parameters["max_batch_tokens"]),
        max_rows=int(parameters["max_rows"]),
        max_added_padding=int(parameters["max_added_padding"]),
    )


class RepositoryEmbedder:
    """Embeds texts with the encoder ONNX file installed in the model repository.

    Texts are grouped as the served ``embed`` model groups them; ``alone=True`` runs every text
    in an encoder call of its own instead (the reference answers of the tests).
    """

    def __init__(self, repository: Path = config.MODEL_REPOSITORY, alone: bool = False, threads: int = 0) -> None:
        import dataclasses

        import onnxruntime as ort

        repository = Path(repository)
        model_path = config.encoder_version_dir(repository) / "model.onnx"
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path} is missing: run `headroom export` first")
        tokenizer_module = load_text_tokenizer_module(repository)
        groups_module = load_length_groups_module(repository)
        parameters = model_parameters(repository / config.EMBED_MODEL / "config.pbtxt")
        self.tokenizer = tokenizer_module.TextTokenizer(
            tokenizer_module.find_tokenizer_file(repository / config.ENCODER_MODEL),
            max_length=int(parameters["max_length"]),
        )
        self.limits = grouping_limits(repository, groups_module)
        if alone:
            self.limits = dataclasses.replace(self.limits, max_rows=1)
        self._plan_groups = groups_module.plan_groups
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])

    def plan(self, texts: Sequence[str]):
        """The tokenized texts and the groups the encoder runs them in."""
        tokens = self.tokenizer.encode(texts)
        return tokens, self._plan_groups(tokens.lengths, self.limits)

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
