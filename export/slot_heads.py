"""Train a tenant's token head (its slots) and export it as a tiny ONNX model.

A token head maps the encoder's ``token_embeddings`` FP32 [B, T, 384] to ``tag_probabilities``
FP32 [B, T, K], one BIO tag distribution per token (``headroom.bio_tags``: "O", "B-<slot>",
"I-<slot>"...). Like a sentence head it is a regularised multinomial logistic regression
(scikit-learn), here over every word token of the training texts with the tag its character
spans give it. Each token is read beside its ``DEFAULT_WINDOW`` neighbours on either side
(``headroom.head_format.windowed``): on Home Assistant's held-out templates with unseen slot
values, entity F1 went from 0.46 with the token alone to 0.61 with one neighbour a side and 0.66
with two (``bench/nlu_accuracy.py``). Exported as ``Pad`` + ``Slice`` + ``Concat`` + ``MatMul`` +
``Add`` + ``Softmax``, which the executor recognises and stacks. Serving decodes the
probabilities with constrained Viterbi (only valid BIO sequences).

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
from headroom.export.heads import head_model
from headroom.head_format import FINGERPRINT_KEY, METRICS_KEY, TOKEN_HEAD_INPUT, TOKEN_HEAD_OUTPUT, windowed
from headroom.token_features import TokenFeatures
from onnx import TensorProto, helper, numpy_helper

#: ONNX metadata key of a token head's tag names (also in ``tags.txt``).
TAGS_KEY = "tags"
#: The bias of a tag no training token carries (an I- tag of a slot whose values are all one
#: token): its probability stays ~e-13, so decoding never picks it.
ABSENT_TAG_BIAS = -30.0
#: Neighbours a token is read beside, on either side (0: the token alone).
DEFAULT_WINDOW = 2
#: A windowed head's features are 5 times wider than the token's, so it is regularised more:
#: C 1 and the heads' C 10 measured the same (0.503 and 0.506 entity F1, one neighbour a side,
#: on an earlier draft of the Home Assistant split).
WINDOW_REGULARISATION_C = 1.0


TokenEmbedder = Callable[[Sequence[str]], list[TokenFeatures]]


@dataclass
class TrainedSlotHead:
    weights: np.ndarray  # [K, (2 window + 1) D]
    bias: np.ndarray  # [K]
    tags: list[str]
    metrics: dict = field(default_factory=dict)
    window: int = 0

    def tag_probabilities(self, token_embeddings: np.ndarray) -> np.ndarray:
        """[S, T, K] for token embeddings [S, T, D] ([T, K] for [T, D])."""
        single = token_embeddings.ndim == 2
        x = windowed(token_embeddings[None] if single else token_embeddings, self.window)
        logits = x @ self.weights.T + self.bias
        if single:
            logits = logits[0]
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=-1, keepdims=True)

    def spans(self, text: str, features: TokenFeatures) -> list:
        """The ``headroom.bio_tags.CharSpan`` entities this head finds in ``text``."""
        probabilities = self.tag_probabilities(features.embeddings)[None]
        (token_spans,) = decode(probabilities, [len(features.offsets)], self.tags)
        return char_spans(token_spans, features.offsets, text)


def _targets(features: Sequence[TokenFeatures], entities: Sequence[Sequence], tags: list[str], window: int):
    """Stacked word-token features [N, (2 window + 1) D] and their tag ids [N] (special tokens
    left out as rows; they are neighbours, as when served)."""
    rows, targets = [], []
    for one, spans in zip(features, entities, strict=True):
        tag_ids, _dropped = token_targets(one.offsets, spans, tags)
        keep = tag_ids != IGNORED
        rows.append(windowed(one.embeddings[None], window)[0][keep])
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
    regularisation_c: float | None = None,
    window: int = DEFAULT_WINDOW,
) -> TrainedSlotHead:
    """Token head for ``entities`` (per text: objects with start, end, label) in ``texts``;
    ``regularisation_c`` None: ``WINDOW_REGULARISATION_C`` for a window, else the heads' default."""
    if regularisation_c is None:
        regularisation_c = WINDOW_REGULARISATION_C if window else config.DEFAULT_HEAD_REGULARISATION_C
    started = time.perf_counter()
    features = embed_tokens(texts)
    fitting = time.perf_counter()
    tags = tag_names(sorted({span.label for spans in entities for span in spans}))
    order = np.random.default_rng(config.TRAINING_SEED).permutation(len(texts))
    held = max(1, int(round(config.HOLDOUT_FRACTION * len(texts))))
    test, train = order[:held], order[held:]
    x, y = _targets([features[i] for i in train], [entities[i] for i in train], tags, window)
    holdout = TrainedSlotHead(*_fit(x, y, tags, regularisation_c), tags, window=window)
    predicted = [_entity_set(holdout.spans(texts[i], features[i])) for i in test]
    scores = entity_scores(predicted, [_entity_set(entities[i]) for i in test])
    x, y = _targets(features, entities, tags, window)
    weights, bias = _fit(x, y, tags, regularisation_c)
    finished = time.perf_counter()
    metrics = {
        "holdout_entity_f1": scores["f1"],
        "holdout_entity_precision": scores["precision"],
        "holdout_entity_recall": scores["recall"],
        "slots": len(tags) // 2,
        "token_window": window,
        "train_tokens": int(len(y)),
        "token_embedding_seconds": round(fitting - started, 3),
        "token_fitting_seconds": round(finished - fitting, 3),
    }
    return TrainedSlotHead(weights, bias, tags, metrics, window)


def slot_head_to_onnx(head: TrainedSlotHead, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """``token_embeddings`` [B, T, D] -> (each token beside its ``window`` neighbours: Pad, Slice,
    Concat) -> MatMul(W^T) + b -> Softmax -> ``tag_probabilities`` [B, T, K]."""
    window = head.window
    dim = head.weights.shape[1] // (2 * window + 1)
    nodes, initializers = [], []
    features = TOKEN_HEAD_INPUT
    if window:
        # Padded by `window` zero tokens at both ends; slice `offset` is [offset, T + offset).
        initializers.append(numpy_helper.from_array(np.array([0, window, 0, 0, window, 0], np.int64), "pads"))
        nodes.append(helper.make_node("Pad", [TOKEN_HEAD_INPUT, "pads"], ["padded"], mode="constant"))
        shifted = []
        for offset in range(2 * window + 1):
            end = offset - 2 * window  # counted from the padded end; 0: to the end
            initializers += [
                numpy_helper.from_array(np.array([offset], np.int64), f"start{offset}"),
                numpy_helper.from_array(np.array([end if end else np.iinfo(np.int64).max], np.int64), f"end{offset}"),
                numpy_helper.from_array(np.array([1], np.int64), f"axis{offset}"),
            ]
            nodes.append(
                helper.make_node(
                    "Slice", ["padded", f"start{offset}", f"end{offset}", f"axis{offset}"], [f"shifted{offset}"]
                )
            )
            shifted.append(f"shifted{offset}")
        nodes.append(helper.make_node("Concat", shifted, ["windowed"], axis=-1))
        features = "windowed"
    nodes += [
        helper.make_node("MatMul", [features, "weights"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [TOKEN_HEAD_OUTPUT], axis=-1),
    ]
    initializers += [
        numpy_helper.from_array(np.ascontiguousarray(head.weights.T, dtype=np.float32), "weights"),
        numpy_helper.from_array(head.bias.astype(np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes=nodes,
        name="token_head",
        inputs=[helper.make_tensor_value_info(TOKEN_HEAD_INPUT, TensorProto.FLOAT, ["batch", "tokens", dim])],
        outputs=[helper.make_tensor_value_info(TOKEN_HEAD_OUTPUT, TensorProto.FLOAT, ["batch", "tokens", "tags"])],
        initializer=initializers,
    )
    return head_model(graph, metadata)


def exported_slot_head(head: TrainedSlotHead, fingerprint: str) -> bytes:
    """A trained token head's ONNX file, with its tags, encoder fingerprint and metrics as metadata."""
    model = slot_head_to_onnx(
        head,
        metadata={TAGS_KEY: json.dumps(head.tags), FINGERPRINT_KEY: fingerprint, METRICS_KEY: json.dumps(head.metrics)},
    )
    return model.SerializeToString()
