"""Synthetic heads for the density and throughput benchmarks: thousands of heads without training.

A synthetic head is written exactly as onboarding writes a head (``export.head_store``'s layout:
``head_<name>/config.pbtxt`` plus ``1/model.onnx``, ``1/labels.txt``, ``1/head.json`` with the
served encoder's fingerprint, so the executor's encoder check passes), but without staging and
fsync: ten thousand heads take seconds, not minutes. Two kinds:

- ``linear``: a random ``Gemm`` + ``Softmax`` head (what training exports), 2-20 classes;
- ``mlp``: a random ``Gemm`` + ``Relu`` + ``Gemm`` + ``Softmax`` head, which the executor cannot
  stack and runs as its own ONNX Runtime session.

Weights come from a seed derived from the head's name, so ``reference_probabilities`` recomputes
what the server must answer without keeping 10,000 weight matrices in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from headroom import config
from headroom.export.heads import HEAD_IR_VERSION, HEAD_OPSET, TrainedHead, head_to_onnx
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from headroom.repository.head_store import HEAD_INFO_FILE, LABELS_FILE, registration_config
from onnx import TensorProto, helper, numpy_helper

MIN_CLASSES = 2
MAX_CLASSES = 20
MLP_HIDDEN = 32
#: Logit scale of the random weights: embeddings are unit vectors, so this keeps probabilities
#: away from one-hot (a wrong row would show) without overflowing.
WEIGHT_SCALE = 3.0


@dataclass(frozen=True)
class SyntheticHead:
    name: str
    classes: int
    kind: str  # "linear" or "mlp"

    @property
    def model_name(self) -> str:
        return f"{config.HEAD_MODEL_PREFIX}{self.name}"

    @property
    def labels(self) -> list[str]:
        return [f"{self.name}_c{index:02d}" for index in range(self.classes)]

    @property
    def resident_bytes(self) -> int:
        """What the executor counts for this head once resident (stacked weights and bias)."""
        if self.kind != "linear":
            raise ValueError("only stacked linear heads have a fixed resident size")
        return 4 * self.classes * (config.EMBEDDING_DIM + 1)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little"))


def _linear_parameters(head: SyntheticHead) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(head.name)
    weights = (rng.standard_normal((head.classes, config.EMBEDDING_DIM)) * WEIGHT_SCALE).astype(np.float32)
    bias = (rng.standard_normal(head.classes) * 0.1).astype(np.float32)
    return weights, bias


def _mlp_parameters(head: SyntheticHead) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = _rng(head.name)
    w1 = (rng.standard_normal((MLP_HIDDEN, config.EMBEDDING_DIM)) * WEIGHT_SCALE).astype(np.float32)
    b1 = (rng.standard_normal(MLP_HIDDEN) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((head.classes, MLP_HIDDEN)) * 0.5).astype(np.float32)
    b2 = (rng.standard_normal(head.classes) * 0.1).astype(np.float32)
    return w1, b1, w2, b2


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def reference_probabilities(head: SyntheticHead, embeddings: np.ndarray) -> np.ndarray:
    """What the head computes offline for ``embeddings`` [B, 384]."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if head.kind == "linear":
        weights, bias = _linear_parameters(head)
        return _softmax(embeddings @ weights.T + bias)
    w1, b1, w2, b2 = _mlp_parameters(head)
    hidden = np.maximum(embeddings @ w1.T + b1, 0.0)
    return _softmax(hidden @ w2.T + b2)


def _mlp_onnx(head: SyntheticHead, metadata: dict[str, str]) -> onnx.ModelProto:
    """``sentence_embedding`` [B, 384] -> Gemm -> Relu -> Gemm -> Softmax -> ``probabilities`` [B, C]."""
    w1, b1, w2, b2 = _mlp_parameters(head)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", [HEAD_INPUT, "w1", "b1"], ["hidden_pre"], transB=1),
            helper.make_node("Relu", ["hidden_pre"], ["hidden"]),
            helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], [HEAD_OUTPUT], axis=-1),
        ],
        name="mlp_head",
        inputs=[helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", config.EMBEDDING_DIM])],
        outputs=[helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", "classes"])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    opset = [helper.make_opsetid("", HEAD_OPSET)]
    model = helper.make_model(graph, opset_imports=opset, producer_name="headroom-bench")
    model.ir_version = HEAD_IR_VERSION
    for key, value in metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model


def head_model(head: SyntheticHead, fingerprint: str) -> onnx.ModelProto:
    metadata = {"labels": json.dumps(head.labels), "encoder_fingerprint": fingerprint, "metrics": "{}"}
    if head.kind == "linear":
        weights, bias = _linear_parameters(head)
        return head_to_onnx(TrainedHead(weights=weights, bias=bias, labels=head.labels), metadata=metadata)
    return _mlp_onnx(head, metadata)


def plan_heads(names: Iterable[str], mlp_every: int = 0, seed: int = 0) -> list[SyntheticHead]:
    """One head per name: 2-20 classes, every ``mlp_every``-th head (from the 1st) non-linear."""
    rng = np.random.default_rng(seed)
    heads = []
    for index, name in enumerate(names):
        classes = int(rng.integers(MIN_CLASSES, MAX_CLASSES + 1))
        kind = "mlp" if mlp_every and index % mlp_every == mlp_every // 2 else "linear"
        heads.append(SyntheticHead(name, classes, kind))
    return heads


def write_head_files(
    repository: Path,
    head: SyntheticHead,
    fingerprint: str,
    config_text: Callable[[str], str] = registration_config,
    version: int = 1,
) -> Path:
    """Write one head in the repository layout of ``export.head_store`` (no staging, no fsync).

    ``config_text(name)`` gives ``config.pbtxt``: the registration ensemble by default; the
    issue-2 baseline passes its per-head ONNX Runtime model instead.
    """
    model_dir = repository / head.model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(head_model(head, fingerprint).SerializeToString())
    (version_dir / LABELS_FILE).write_text("\n".join(head.labels) + "\n", encoding="utf-8")
    info = {
        "name": head.name,
        "version": version,
        "labels": head.labels,
        "encoder_fingerprint": fingerprint,
        "metrics": {"synthetic": head.kind, "classes": head.classes},
        "trained_from": "bench.synthetic_heads",
    }
    (version_dir / HEAD_INFO_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")
    # config.pbtxt last: a folder without it is not a model to ``head_models_in``.
    tmp = model_dir / f".config.pbtxt.{os.getpid()}.tmp"
    tmp.write_text(config_text(head.name), encoding="utf-8")
    tmp.replace(model_dir / "config.pbtxt")
    return model_dir


def write_heads(
    repository: Path,
    heads: Iterable[SyntheticHead],
    fingerprint: str,
    config_text: Callable[[str], str] = registration_config,
) -> int:
    count = 0
    for head in heads:
        write_head_files(repository, head, fingerprint, config_text)
        count += 1
    return count
