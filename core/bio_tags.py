"""BIO tags of token heads (slots): tag names, training targets, constrained decoding, characters.

A token head gives each token of a text a distribution over K tags: ``O`` (no slot), and for
every slot ``B-<slot>`` (a span's first token) and ``I-<slot>`` (its other tokens), in the order
of ``tag_names``. Pure numpy: the executor (inside Triton), the pipeline and head training
import it alike.

- ``token_targets``: the tag id of every token of a training text from its character spans;
- ``viterbi`` / ``decode``: the most probable tag sequence that is valid BIO (``I-x`` only after
  ``B-x`` or ``I-x``), then its spans in token positions (``TokenSpan``);
- ``char_spans``: those spans as character offsets into the text (``CharSpan``), from the
  tokenizer's offsets, widened to whole words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OUTSIDE = "O"
BEGIN, INSIDE = "B-", "I-"
#: The target of tokens that carry no tag in training ([CLS], [SEP], padding).
IGNORED = -100


@dataclass(frozen=True)
class TokenSpan:
    """A decoded slot in token positions: tokens ``first`` .. ``end - 1`` of the row.

    ``score``: the mean, over the span's tokens, of the probability of the tag chosen for it."""

    first: int
    end: int
    label: str
    score: float


@dataclass(frozen=True)
class CharSpan:
    """A slot in a text: ``text`` is the text's characters ``start`` .. ``end - 1``."""

    start: int
    end: int
    label: str
    text: str
    score: float


def tag_names(slot_labels: Sequence[str]) -> list[str]:
    """``["O", "B-a", "I-a", "B-b", "I-b", ...]`` for the sorted distinct slot labels."""
    tags = [OUTSIDE]
    for label in sorted(set(slot_labels)):
        tags += [BEGIN + label, INSIDE + label]
    return tags


def slot_labels_of(tags: Sequence[str]) -> list[str]:
    """The slot labels of ``tag_names``' list (``check_tag_names`` first)."""
    return [tag[len(BEGIN) :] for tag in tags[1::2]]


def check_tag_names(tags: Sequence[str]) -> None:
    """ValueError unless ``tags`` is exactly ``tag_names`` of its slots (a head file's tags)."""
    tags = list(tags)
    if len(tags) < 3 or len(tags) % 2 == 0 or tags[0] != OUTSIDE:
        shown = tags[:5] + (["..."] if len(tags) > 5 else [])
        raise ValueError(f"tags must be 'O' then B-/I- pairs, one per slot; got {shown}")
    labels = [tag[len(BEGIN) :] for tag in tags[1::2]]
    if any(not tag.startswith(BEGIN) for tag in tags[1::2]) or tags != tag_names(labels) or not all(labels):
        raise ValueError(f"tags must be 'O', then 'B-<slot>', 'I-<slot>' for each slot in sorted order; got {tags}")


def _span_fields(span) -> tuple[int, int, str]:
    if isinstance(span, tuple):
        return int(span[0]), int(span[1]), str(span[2])
    return int(span.start), int(span.end), str(span.label)


def token_targets(offsets, spans: Sequence, tags: Sequence[str]) -> tuple[np.ndarray, int]:
    """Each token's tag id (int64 [T]) from character ``spans`` (start, end, label), and how many
    spans covered no token (beyond the truncation length: dropped, never invented).

    ``offsets``: each token's (start, end) in the text, (0, 0) for special tokens (IGNORED). A
    token belongs to a span when it lies inside it; the span's first token gets ``B-``, the
    others ``I-``; every other token ``O``.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    index = {tag: i for i, tag in enumerate(tags)}
    special = offsets[:, 1] <= offsets[:, 0]
    targets = np.where(special, IGNORED, index[OUTSIDE]).astype(np.int64)
    dropped = 0
    for span in spans:
        start, end, label = _span_fields(span)
        inside = np.flatnonzero(~special & (offsets[:, 0] >= start) & (offsets[:, 1] <= end))
        if inside.size == 0:
            dropped += 1
            continue
        targets[inside] = index[INSIDE + label]
        targets[inside[0]] = index[BEGIN + label]
    return targets, dropped


def allowed_transitions(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(may start [K], may follow [K_previous, K_next]): ``I-x`` only after ``B-x`` or ``I-x``."""
    k = len(tags)
    start = np.ones(k, dtype=bool)
    follow = np.ones((k, k), dtype=bool)
    for j, tag in enumerate(tags):
        if tag.startswith(INSIDE):
            label = tag[len(INSIDE) :]
            start[j] = False
            follow[:, j] = [previous in (BEGIN + label, INSIDE + label) for previous in tags]
    return start, follow


def _viterbi_batch(log_probs: np.ndarray, tags: Sequence[str]) -> np.ndarray:
    """Best valid paths [S, T] of log probabilities [S, T, K] (every row its full length).

    The constraint has a shape that makes each step O(S x K), not O(S x K^2): ``O`` and ``B-x``
    may follow any tag (the best previous score), ``I-x`` only ``B-x`` or ``I-x`` (the better
    of two)."""
    rows, length, k = log_probs.shape
    inside = np.array([tag.startswith(INSIDE) for tag in tags])
    inside_ids = np.flatnonzero(inside)
    begin_ids = np.array([list(tags).index(BEGIN + tags[j][len(INSIDE) :]) for j in inside_ids], dtype=np.int64)
    free_ids = np.flatnonzero(~inside)
    score = np.where(inside, -np.inf, log_probs[:, 0])  # [S, K]
    back = np.zeros((rows, length, k), dtype=np.int64)
    for t in range(1, length):
        best = score.argmax(axis=1)  # [S]
        from_begin = score[:, begin_ids] >= score[:, inside_ids]  # [S, I]
        previous = np.empty((rows, k), dtype=np.int64)
        previous[:, free_ids] = best[:, None]
        previous[:, inside_ids] = np.where(from_begin, begin_ids[None, :], inside_ids[None, :])
        back[:, t] = previous
        score = np.take_along_axis(score, previous, axis=1) + log_probs[:, t]
    path = np.zeros((rows, length), dtype=np.int64)
    path[:, -1] = score.argmax(axis=1)
    for t in range(length - 1, 0, -1):
        path[:, t - 1] = np.take_along_axis(back[:, t], path[:, t][:, None], axis=1)[:, 0]
    return path


def viterbi(log_probs: np.ndarray, tags: Sequence[str]) -> np.ndarray:
    """The most probable valid BIO tag sequence (int [T]) under per-token log probabilities [T, K]."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _viterbi_batch(log_probs[None], tags)[0]


def _spans_of(path: list[int], chosen: list[float], kinds: list[tuple[str, str]], offset: int) -> list[TokenSpan]:
    """The spans of one valid tag path; ``chosen``: each token's probability of its tag,
    ``kinds``: per tag id ("B" / "I" / "O", slot label)."""
    spans: list[TokenSpan] = []
    first, label, total = -1, "", 0.0
    for position, tag_id in enumerate(path):
        kind, slot = kinds[tag_id]
        if first >= 0 and not (kind == "I" and slot == label):
            spans.append(TokenSpan(offset + first, offset + position, label, total / (position - first)))
            first = -1
        if kind == "B":
            first, label, total = position, slot, 0.0
        if first >= 0:
            total += chosen[position]
    if first >= 0:
        spans.append(TokenSpan(offset + first, offset + len(path), label, total / (len(path) - first)))
    return spans


def decode(probabilities: np.ndarray, lengths, tags: Sequence[str]) -> list[list[TokenSpan]]:
    """Each row's spans from tag probabilities [S, T, K]: row s uses its tokens 1 .. lengths[s] - 2
    ([CLS] at 0 and [SEP] at lengths[s] - 1 are skipped; ``lengths`` counts them). Rows of one
    length are decoded together."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    log_probs = np.log(np.maximum(probabilities, np.float32(1e-30))).astype(np.float64)
    kinds = [("O", "") if tag == OUTSIDE else (tag[0], tag[len(BEGIN) :]) for tag in tags]
    out: list[list[TokenSpan]] = [[] for _ in range(len(lengths))]
    for length in np.unique(lengths):
        words = int(length) - 2
        if words <= 0:
            continue
        rows = np.flatnonzero(lengths == length)
        paths = _viterbi_batch(log_probs[rows, 1 : 1 + words], tags)
        chosen = np.take_along_axis(probabilities[rows, 1 : 1 + words], paths[:, :, None], axis=2)[:, :, 0]
        for row, path, scores in zip(rows.tolist(), paths.tolist(), chosen.tolist(), strict=True):
            out[row] = _spans_of(path, scores, kinds, offset=1)
    return out


def _word_character(character: str) -> bool:
    return character.isalnum()


def char_spans(token_spans: Sequence[TokenSpan], offsets, text: str) -> list[CharSpan]:
    """``token_spans`` as character spans of ``text`` (the tokens' offsets: start of the first,
    end of the last), widened to whole words where a span starts or ends inside one."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    spans: list[CharSpan] = []
    for span in token_spans:
        start, end = int(offsets[span.first, 0]), int(offsets[span.end - 1, 1])
        while 0 < start < len(text) and _word_character(text[start - 1]) and _word_character(text[start]):
            start -= 1
        while 0 < end < len(text) and _word_character(text[end - 1]) and _word_character(text[end]):
            end += 1
        if spans and start < spans[-1].end:  # widening met the previous span: keep them apart
            start = spans[-1].end
        if start < end:
            spans.append(CharSpan(start, end, span.label, text[start:end], span.score))
    return spans
