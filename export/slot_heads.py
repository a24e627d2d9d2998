"""Train a tenant's token head (its slots) and export it as a tiny ONNX model.

A token head maps the encoder's ``token_embeddings`` FP32 [B, T, 384] to ``tag_probabilities``
FP32 [B, T, K], one BIO tag distribution per token (``headroom.bio_tags``: "O", "B-<slot>",
"I-<slot>"...). Like a sentence head it is a regularised multinomial logistic regression
(scikit-learn), here over every word token of the training texts with the tag its character
spans give it, exported as ``MatMul`` + ``Add`` + ``Softmax`` (stacked by the executor).
Serving decodes the probabilities with constrained Viterbi (only valid BIO sequences).

Metrics come from a 20 % hold-out of the texts (entity F1: exact span and label); the exported
head is then refitted on all texts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from headroom import config
from headroom.bio_tags import IGNORED, char_spans, decode, tag_names, token_targets
from headroom.export.heads import HEAD_IR_VERSION, HEAD_OPSET
from headroom.head_format import FINGERPRINT_KEY, METRICS_KEY, TOKEN_HEAD_INPUT, TOKEN_HEAD_OUTPUT
from headroom.token_features import TokenFeatures
from onnx import TensorProto, helper, numpy_helper

#: ONNX metadata key of a token head's tag names (also in ``tags.txt``).
TAGS_KEY = "tags"
#: The bias of a tag no training token carries (an I- tag of a slot whose values are all one
#: token): its probability stays ~e-13, so decoding never picks it.
ABSENT_TAG_BIAS = -30.0


TokenEmbedder = Callable[[Sequence[str]], list[TokenFeatures]]


@dataclass
class TrainedSlotHead:
    weights: np.ndarray  # [K, D]
    bias: np.ndarray  # [K]
    tags: list[str]
    metrics: dict = field(default_factory=dict)

    def tag_probabilities(self, token_embeddings: np.ndarray) -> np.ndarray:
        """[..., T, K] for token embeddings [..., T, D]."""
        logits = token_embeddings @ self.weights.T + self.bias
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=-1, keepdims=True)

    def spans(self, text: str, features: TokenFeatures) -> list:
        """The ``headroom.bio_tags.CharSpan`` entities this head finds in ``text``."""
        probabilities = self.tag_probabilities(features.embeddings)[None]
        (token_spans,) = decode(probabilities, [len(features.offsets)], self.tags)
        return char_spans(token_spans, features.offsets, text)


def _targets(features: Sequence[TokenFeatures], entities: Sequence[Sequence], tags: list[str]):
    """Stacked word-token features [N, D] and their tag ids [N] (special tokens left out)."""
    rows, targets = [], []
    for one, spans in zip(features, entities, strict=True):
        tag_ids, _dropped = token_targets(one.offsets, spans, tags)
        keep = tag_ids != IGNORED
        rows.append(one.embeddings[keep])
        targets.append(tag_ids[keep])
    return np.concatenate(rows).astype(np.float32), np.concatenate(targets)


def _fit(x: np.ndarray, y: np.ndarray, tags: list[str], regularisation_c: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights [K, D] and bias [K] over every tag of ``tags`` (absent ones can never win)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = LogisticRegression(C=regularisation_c, max_iter=2000, random_state=config.TRAINING_SEED)
    with threadpool_limits(limits=1, user_api="blas"):  # as export/heads.py: one BLAS thread
        model.fit(x, y)
    weights = np.zeros((len(tags), x.shape[1]), dtype=np.float32)
    bias = np.full(len(tags), ABSENT_TAG_BIAS, dtype=np.float32)
    classes = [int(c) for c in model.classes_]
    if len(classes) == 2:  # scikit-learn's binary form: one logit for the second class
        coef, intercept = model.coef_[0], model.intercept_[0]
        weights[classes[0]], bias[classes[0]] = -coef / 2, -intercept / 2
        weights[classes[1]], bias[classes[1]] = coef / 2, intercept / 2
    else:
        weights[classes] = model.coef_
        bias[classes] = model.intercept_
    return weights, bias


def entity_scores(predicted: Sequence[set], gold: Sequence[set]) -> dict[str, float]:
    """Micro precision, recall and F1 of exact (start, end, label) entities."""
    true_positive = sum(len(p & g) for p, g in zip(predicted, gold, strict=True))
    found, wanted = sum(len(p) for p in predicted), sum(len(g) for g in gold)
    precision = true_positive / found if found else 0.0
    recall = true_positive / wanted if wanted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def _entity_set(spans) -> set:
    return {(span.start, span.end, span.label) for span in spans}


def train_slot_head(
    texts: Sequence[str],
    entities: Sequence[Sequence],
    embed_tokens: TokenEmbedder,
    regularisation_c: float = config.DEFAULT_HEAD_REGULARISATION_C,
) -> TrainedSlotHead:
    """Token head for ``entities`` (per text: objects with start, end, label) in ``texts``."""
    started = time.perf_counter()
    features = embed_tokens(texts)
    fitting = time.perf_counter()
    tags = tag_names(sorted({span.label for spans in entities for span in spans}))
    order = np.random.default_rng(config.TRAINING_SEED).permutation(len(texts))
    held = max(1, int(round(config.HOLDOUT_FRACTION * len(texts))))
    test, train = order[:held], order[held:]
    x, y = _targets([features[i] for i in train], [entities[i] for i in train], tags)
    holdout = TrainedSlotHead(*_fit(x, y, tags, regularisation_c), tags)
    predicted = [_entity_set(holdout.spans(texts[i], features[i])) for i in test]
    scores = entity_scores(predicted, [_entity_set(entities[i]) for i in test])
    x, y = _targets(features, entities, tags)
    weights, bias = _fit(x, y, tags, regularisation_c)
    finished = time.perf_counter()
    metrics = {
        "holdout_entity_f1": scores["f1"],
        "holdout_entity_precision": scores["precision"],
        "holdout_entity_recall": scores["recall"],
        "slots": len(tags) // 2,
        "train_tokens": int(len(y)),
        "token_embedding_seconds": round(fitting - started, 3),
        "token_fitting_seconds": round(finished - fitting, 3),
    }
    return TrainedSlotHead(weights, bias, tags, metrics)


def slot_head_to_onnx(head: TrainedSlotHead, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """``token_embeddings`` [B, T, D] -> MatMul(W^T) + b -> Softmax -> ``tag_probabilities`` [B, T, K]."""
    dim = head.weights.shape[1]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [TOKEN_HEAD_INPUT, "weights"], ["projected"]),
            helper.make_node("Add", ["projected", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [TOKEN_HEAD_OUTPUT], axis=-1),
        ],
        name="token_head",
        inputs=[helper.make_tensor_value_info(TOKEN_HEAD_INPUT, TensorProto.FLOAT, ["batch", "tokens", dim])],
        outputs=[helper.make_tensor_value_info(TOKEN_HEAD_OUTPUT, TensorProto.FLOAT, ["batch", "tokens", "tags"])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(head.weights.T, dtype=np.float32), "weights"),
            numpy_helper.from_array(head.bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)], producer_name="headroom")
    model.ir_version = HEAD_IR_VERSION
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def exported_slot_head(head: TrainedSlotHead, fingerprint: str) -> bytes:
    """A trained token head's ONNX file, with its tags, encoder fingerprint and metrics as metadata."""
    model = slot_head_to_onnx(
        head,
        metadata={TAGS_KEY: json.dumps(head.tags), FINGERPRINT_KEY: fingerprint, METRICS_KEY: json.dumps(head.metrics)},
    )
    return model.SerializeToString()
