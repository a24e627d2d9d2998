"""The executor's tensors: what a caller sends it, what comes back, encoded and read in one place.

Inputs: ``sentence_embedding`` (FP32 [B, D]) and, optionally, ``HEAD`` (BYTES [B, 1], the head
name of each row). Without ``HEAD`` the request parameter ``head`` names one head for all rows:
that is how a call to a registration model ``head_<name>`` (an ensemble whose one step is the
executor; Triton forwards the caller's request parameters to the step) reaches its head.

Outputs, per row: ``probabilities`` (FP32, padded with 0 to the widest head of the response),
``labels`` (BYTES, padded with ""), ``class_count`` (INT32), ``has_slots`` (BOOL: the head has
a token head; the pipeline learns from it which heads need token embeddings), ``error_code``
and ``error_message`` (BYTES: ``headroom.row_errors``' wire form, ``b""`` for an answered row).

A **token request** carries ``token_embeddings`` (FP32 [S, T, D], zeros past each text's end),
``token_count`` (INT32 [S, 1], tokens of each text, [CLS] and [SEP] included) and ``HEAD``
instead of ``sentence_embedding``: each row's tokens run through its head's token head and are
decoded into valid BIO spans (``headroom.bio_tags``). Outputs, per row: ``span_tokens`` (INT32
[S, M, 2], first token and end token, end exclusive, in the row's token positions),
``span_labels`` (BYTES [S, M]), ``span_scores`` (FP32 [S, M]), padded with -1 / "" / 0 to the
row with the most spans (M at least 1), ``span_count`` (INT32 [S, 1]), ``error_code`` and
``error_message``. A row whose head has no token head gets no spans.

``encode_outputs`` is what the executor sends, ``decode_outputs`` what the pipeline reads back;
``parse_request`` turns a request's inputs into rows. Pure numpy: no Triton import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from headroom.bio_tags import TokenSpan
from headroom.row_errors import INVALID_ARG, RowError, from_wire, to_wire

EMBEDDING_INPUT = "sentence_embedding"
HEAD_INPUT = "HEAD"
HEAD_PARAMETER = "head"
TOKEN_INPUT = "token_embeddings"
TOKEN_COUNT_INPUT = "token_count"
OUTPUTS = ("probabilities", "labels", "class_count", "has_slots", "error_code", "error_message")
TOKEN_OUTPUTS = ("span_tokens", "span_labels", "span_scores", "span_count", "error_code", "error_message")


@dataclass(frozen=True)
class HeadOutput:
    """One answered row: the head's probabilities and its label names in the same order."""

    probabilities: np.ndarray  # [classes], FP32
    labels: Sequence[bytes]  # [classes], UTF-8 label names
    has_slots: bool = False


@dataclass(frozen=True)
class Rows:
    """A request's rows: embeddings [B, D] and each row's head name (or the RowError of a name
    that cannot be read). ``per_row_errors``: the names came from ``HEAD``, so a failed row is
    reported in its own outputs; otherwise (one head named by the request parameter) the
    request fails as a whole."""

    embeddings: np.ndarray
    heads: list[str | RowError]
    per_row_errors: bool


def decode_head(value: object) -> str | RowError:
    """A ``HEAD`` value as a name, or the RowError of one that is not UTF-8."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return RowError(INVALID_ARG, "HEAD is not valid UTF-8")
    return str(value)


def parse_request(
    embeddings: np.ndarray | None, head_values: np.ndarray | None, parameters: str | None, dim: int
) -> Rows | RowError:
    """A request's rows from its inputs (None when absent) and its parameters (JSON), or the
    RowError that fails the whole request."""
    if embeddings is None:
        return RowError(INVALID_ARG, f"input '{EMBEDDING_INPUT}' is missing")
    embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, dim)
    if head_values is not None:
        values = np.asarray(head_values).reshape(-1)
        if values.size != embeddings.shape[0]:
            return RowError(INVALID_ARG, f"{values.size} head names for {embeddings.shape[0]} rows")
        return Rows(embeddings, [decode_head(value) for value in values], per_row_errors=True)
    try:
        head = json.loads(parameters or "{}").get(HEAD_PARAMETER)
    except (ValueError, AttributeError):
        head = None
    if not isinstance(head, str):
        return RowError(
            INVALID_ARG, f"no head named: send input '{HEAD_INPUT}' or the request parameter '{HEAD_PARAMETER}'"
        )
    return Rows(embeddings, [head] * embeddings.shape[0], per_row_errors=False)


def first_error(rows: Sequence[HeadOutput | RowError]) -> RowError | None:
    """The first failed row's error (what a request without ``HEAD`` fails with), or None."""
    return next((row for row in rows if isinstance(row, RowError)), None)


def encode_outputs(rows: Sequence[HeadOutput | RowError]) -> dict[str, np.ndarray]:
    """The executor's outputs for these rows, by name."""
    width = max((len(row.labels) for row in rows if isinstance(row, HeadOutput)), default=0)
    batch = len(rows)
    probabilities = np.zeros((batch, width), dtype=np.float32)
    labels = np.full((batch, width), b"", dtype=np.object_)
    counts = np.zeros((batch, 1), dtype=np.int32)
    has_slots = np.zeros((batch, 1), dtype=np.bool_)
    codes, messages = _error_arrays(rows)
    for index, row in enumerate(rows):
        if isinstance(row, RowError):
            continue
        classes = len(row.labels)
        probabilities[index, :classes] = row.probabilities
        labels[index, :classes] = row.labels
        counts[index, 0] = classes
        has_slots[index, 0] = row.has_slots
    return dict(zip(OUTPUTS, (probabilities, labels, counts, has_slots, codes, messages), strict=True))


def _error_arrays(rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
    codes = np.full((len(rows), 1), b"", dtype=np.object_)
    messages = np.full((len(rows), 1), b"", dtype=np.object_)
    for index, row in enumerate(rows):
        if isinstance(row, RowError):
            codes[index, 0], messages[index, 0] = to_wire(row)
    return codes, messages


def decode_outputs(outputs: Mapping[str, np.ndarray], count: int) -> list[HeadOutput | RowError]:
    """Each of ``count`` rows of the executor's outputs: its ``HeadOutput`` or ``RowError``."""
    codes, messages = outputs["error_code"].reshape(-1), outputs["error_message"].reshape(-1)
    classes = outputs["class_count"].reshape(-1)
    rows: list[HeadOutput | RowError] = []
    for row in range(count):
        error = from_wire(codes[row], messages[row])
        if error is not None:
            rows.append(error)
            continue
        width = int(classes[row])
        has_slots = bool(outputs["has_slots"].reshape(-1)[row]) if "has_slots" in outputs else False
        rows.append(HeadOutput(outputs["probabilities"][row, :width], outputs["labels"][row, :width], has_slots))
    return rows


# --- token requests --------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenRows:
    """A token request's rows: token embeddings [S, T, D], token counts [S] and head names."""

    token_embeddings: np.ndarray
    counts: np.ndarray
    heads: list[str | RowError]


def parse_token_request(
    token_embeddings: np.ndarray, counts: np.ndarray | None, head_values: np.ndarray | None, dim: int
) -> TokenRows | RowError:
    """A token request's rows, or the RowError that fails it as a whole."""
    token_embeddings = np.asarray(token_embeddings, dtype=np.float32)
    if token_embeddings.ndim != 3 or token_embeddings.shape[2] != dim:
        return RowError(
            INVALID_ARG, f"'{TOKEN_INPUT}' must be [rows, tokens, {dim}], got {list(token_embeddings.shape)}"
        )
    rows, tokens = token_embeddings.shape[:2]
    if counts is None or head_values is None:
        return RowError(INVALID_ARG, f"a token request needs '{TOKEN_COUNT_INPUT}' and '{HEAD_INPUT}'")
    counts = np.asarray(counts).reshape(-1).astype(np.int64)
    values = np.asarray(head_values).reshape(-1)
    if counts.size != rows or values.size != rows:
        return RowError(INVALID_ARG, f"{counts.size} token counts and {values.size} head names for {rows} rows")
    if rows and (counts.min() < 2 or counts.max() > tokens):
        return RowError(INVALID_ARG, f"token counts must lie in [2, {tokens}] ([CLS] and [SEP] included)")
    return TokenRows(token_embeddings, counts, [decode_head(value) for value in values])


def encode_token_outputs(rows: Sequence[Sequence[TokenSpan] | RowError]) -> dict[str, np.ndarray]:
    """The outputs of a token request: each row's spans (or its RowError), padded."""
    width = max([1, *(len(row) for row in rows if not isinstance(row, RowError))])
    batch = len(rows)
    positions = np.full((batch, width, 2), -1, dtype=np.int32)
    labels = np.full((batch, width), b"", dtype=np.object_)
    scores = np.zeros((batch, width), dtype=np.float32)
    counts = np.zeros((batch, 1), dtype=np.int32)
    codes, messages = _error_arrays(rows)
    for index, row in enumerate(rows):
        if isinstance(row, RowError):
            continue
        counts[index, 0] = len(row)
        for position, span in enumerate(row):
            positions[index, position] = (span.first, span.end)
            labels[index, position] = span.label.encode("utf-8")
            scores[index, position] = span.score
    return dict(zip(TOKEN_OUTPUTS, (positions, labels, scores, counts, codes, messages), strict=True))


def decode_token_outputs(outputs: Mapping[str, np.ndarray], count: int) -> list[list[TokenSpan] | RowError]:
    """Each of ``count`` rows of a token request's outputs: its spans or its RowError."""
    codes, messages = outputs["error_code"].reshape(-1), outputs["error_message"].reshape(-1)
    counts = outputs["span_count"].reshape(-1)
    rows: list[list[TokenSpan] | RowError] = []
    for row in range(count):
        error = from_wire(codes[row], messages[row])
        if error is not None:
            rows.append(error)
            continue
        spans = []
        for position in range(int(counts[row])):
            first, end = (int(v) for v in outputs["span_tokens"][row, position])
            label = outputs["span_labels"][row, position]
            label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
            spans.append(TokenSpan(first, end, label, float(outputs["span_scores"][row, position])))
        rows.append(spans)
    return rows
