"""The executor's tensors: what a caller sends it, what comes back, encoded and read in one place.

Inputs: ``sentence_embedding`` (FP32 [B, D]) and, optionally, ``HEAD`` (BYTES [B, 1], the head
name of each row). Without ``HEAD`` the request parameter ``head`` names one head for all rows:
that is how a call to a registration model ``head_<name>`` (an ensemble whose one step is the
executor; Triton forwards the caller's request parameters to the step) reaches its head.

Outputs, per row: ``probabilities`` (FP32, padded with 0 to the widest head of the response),
``labels`` (BYTES, padded with ""), ``class_count`` (INT32), ``error_code`` and
``error_message`` (BYTES: ``headroom.row_errors``' wire form, ``b""`` for an answered row).

``encode_outputs`` is what the executor sends, ``decode_outputs`` what the pipeline reads back;
``parse_request`` turns a request's inputs into rows. Pure numpy: no Triton import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from headroom.row_errors import INVALID_ARG, RowError, from_wire, to_wire

EMBEDDING_INPUT = "sentence_embedding"
HEAD_INPUT = "HEAD"
HEAD_PARAMETER = "head"
OUTPUTS = ("probabilities", "labels", "class_count", "error_code", "error_message")


@dataclass(frozen=True)
class HeadOutput:
    """One answered row: the head's probabilities and its label names in the same order."""

    probabilities: np.ndarray  # [classes], FP32
    labels: Sequence[bytes]  # [classes], UTF-8 label names


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
    codes = np.full((batch, 1), b"", dtype=np.object_)
    messages = np.full((batch, 1), b"", dtype=np.object_)
    for index, row in enumerate(rows):
        if isinstance(row, RowError):
            codes[index, 0], messages[index, 0] = to_wire(row)
            continue
        classes = len(row.labels)
        probabilities[index, :classes] = row.probabilities
        labels[index, :classes] = row.labels
        counts[index, 0] = classes
    return dict(zip(OUTPUTS, (probabilities, labels, counts, codes, messages), strict=True))


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
        rows.append(HeadOutput(outputs["probabilities"][row, :width], outputs["labels"][row, :width]))
    return rows
