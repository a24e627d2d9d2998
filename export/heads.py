"""Train a tenant's prediction head and export it as a tiny ONNX model.

A head maps ``sentence_embedding`` FP32 [B, 384] to ``probabilities`` FP32 [B, C]. It is a
regularised multinomial logistic regression (scikit-learn) fitted on embeddings from the
served encoder, exported as a hand-built ``Gemm`` + ``Softmax`` graph. Metrics come from a
stratified 20 % hold-out; the exported head is then refitted on all examples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from headroom import config
from headroom.export.datasets import LabelledTexts
from headroom.head_format import FINGERPRINT_KEY, HEAD_INPUT, HEAD_OUTPUT, LABELS_KEY, METRICS_KEY
from onnx import TensorProto, helper, numpy_helper

HEAD_OPSET = 17
#: IR version 8 keeps heads loadable by the ONNX Runtime inside Triton 24.x containers.
HEAD_IR_VERSION = 8

Embedder = Callable[[Sequence[str]], np.ndarray]


@dataclass
class TrainedHead:
    weights: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    labels: list[str]
    metrics: dict = field(default_factory=dict)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        logits = embeddings @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def _fit(embeddings: np.ndarray, labels: list[str], regularisation_c: float):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = LogisticRegression(C=regularisation_c, max_iter=2000, random_state=config.TRAINING_SEED)
    # One BLAS thread: the matrices are small ([examples, 384] x [384, classes]), and BLAS threads
    # that wait for each other made a fit of 1,000 examples 11x slower (3.0 s against 0.26 s)
    # while the server used the other core.
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(embeddings, labels)
    return model


def train_head(
    data: LabelledTexts, embed: Embedder, regularisation_c: float = config.DEFAULT_HEAD_REGULARISATION_C
) -> TrainedHead:
    """Embed the texts, measure on a stratified hold-out, refit on everything."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    embeddings = np.asarray(embed(data.texts), dtype=np.float32)
    fitting = time.perf_counter()
    if embeddings.shape != (len(data.texts), config.EMBEDDING_DIM):
        raise ValueError(
            f"embedder returned shape {embeddings.shape}, expected ({len(data.texts)}, {config.EMBEDDING_DIM})"
        )
    labels = np.asarray(data.labels)
    n_classes = len(set(data.labels))
    test_size = max(config.HOLDOUT_FRACTION, n_classes / len(labels))
    train_x, test_x, train_y, test_y = train_test_split(
        embeddings, labels, test_size=test_size, stratify=labels, random_state=config.TRAINING_SEED
    )
    holdout_model = _fit(train_x, list(train_y), regularisation_c)
    predicted = holdout_model.predict(test_x)
    metrics = {
        "holdout_accuracy": round(float(accuracy_score(test_y, predicted)), 4),
        "holdout_macro_f1": round(float(f1_score(test_y, predicted, average="macro")), 4),
        "train_examples": int(len(train_y)),
        "holdout_examples": int(len(test_y)),
        "classes": n_classes,
    }
    final = _fit(embeddings, list(labels), regularisation_c)
    classes = [str(c) for c in final.classes_]
    weights = final.coef_.astype(np.float32)
    bias = final.intercept_.astype(np.float32)
    if len(classes) == 2:
        # scikit-learn stores a binary problem as one logit for the second class; softmax over
        # [-z/2, z/2] gives exactly sigmoid(z), so the exported graph stays Gemm + Softmax.
        weights = np.vstack([-weights / 2, weights / 2])
        bias = np.concatenate([-bias / 2, bias / 2])
    finished = time.perf_counter()
    metrics["embedding_seconds"] = round(fitting - started, 3)
    metrics["fitting_seconds"] = round(finished - fitting, 3)
    metrics["training_seconds"] = round(finished - started, 2)  # both
    return TrainedHead(weights=weights, bias=bias, labels=classes, metrics=metrics)


def head_to_onnx(head: TrainedHead, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """``sentence_embedding`` [B, D] -> Gemm(W^T, b) -> Softmax -> ``probabilities`` [B, C]."""
    dim = head.weights.shape[1]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", [HEAD_INPUT, "weights", "bias"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], [HEAD_OUTPUT], axis=-1),
        ],
        name="head",
        inputs=[helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])],
        # Symbolic class axis: config.pbtxt declares dims [-1] so a new version may change C.
        outputs=[helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", "classes"])],
        initializer=[
            numpy_helper.from_array(head.weights.astype(np.float32), "weights"),
            numpy_helper.from_array(head.bias.astype(np.float32), "bias"),
        ],
    )
    return head_model(graph, metadata)


def head_model(graph: onnx.GraphProto, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """A head's ONNX model from its graph: headroom's opset and IR version, ``metadata`` as
    metadata properties, checked (sentence heads and token heads alike)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)], producer_name="headroom")
    model.ir_version = HEAD_IR_VERSION
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def exported_head(head: TrainedHead, fingerprint: str) -> bytes:
    """A trained head's ONNX file, with its labels, encoder fingerprint and metrics as metadata."""
    model = head_to_onnx(
        head,
        metadata={
            LABELS_KEY: json.dumps(head.labels),
            FINGERPRINT_KEY: fingerprint,
            METRICS_KEY: json.dumps(head.metrics),
        },
    )
    return model.SerializeToString()
