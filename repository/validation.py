"""What a head must pass before onboarding writes it into the model repository.

A head's registration model is an ensemble into the shared executor: Triton loads it whatever
its version folder holds (it never reads ``model.onnx``), so refusing a bad head is onboarding's
job. ``check_head`` runs, before anything is written:

1. the labels: at least two, unique, none blank, none with surrounding whitespace, a line break
   or a control character (``labels.txt`` holds one per line);
2. the executor's own rules, ``headroom.head_format.parse_head`` (the executor imports the same
   function), so onboarding and the executor can never disagree: an ONNX model, one FP32 input
   [batch, 384], a linear head's class count equal to the labels';
3. the encoder it was trained for: the ``encoder_fingerprint`` argument, else the ONNX metadata
   ``encoder_fingerprint`` (what headroom's exported heads carry), must equal the served
   encoder's; when both are given they must agree; the metadata's ``labels``, when present, must
   equal the labels given;
4. a run in ONNX Runtime on random unit-length embeddings [2, 384]: the output must be
   [2, len(labels)], finite, in [0, 1], and each row must sum to 1 within 1e-3 (probabilities,
   not logits).

Every refusal is a ``HeadValidationError`` with a one-line reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from headroom import config
from headroom.head_format import (
    FINGERPRINT_KEY,
    LABELS_KEY,
    METRICS_KEY,
    HeadFileError,
    SlotFiles,
    parse_head,
    parse_token_head,
)


class HeadValidationError(ValueError):
    """A head onboarding refuses, with the reason in one line."""


@dataclass(frozen=True)
class CheckedHead:
    """A head that passed every check: what onboarding writes."""

    model_bytes: bytes
    labels: list[str]
    encoder_fingerprint: str
    #: "stacked" (one linear layer + softmax: the executor stacks it) or "session" (its own ONNX Runtime session).
    kind: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        """Training metrics from the ONNX metadata (headroom's exported heads), else {}."""
        try:
            value = json.loads(self.metadata.get(METRICS_KEY, "{}"))
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


# --- labels ------------------------------------------------------------------------------------
def check_labels(labels: Sequence[str]) -> list[str]:
    """The labels as a list, or ``HeadValidationError`` saying which one is unusable."""
    if isinstance(labels, (str, bytes)):
        raise HeadValidationError("labels must be a list of names (or a labels file), not one string")
    labels = list(labels)
    if len(labels) < 2:
        raise HeadValidationError(f"a head needs at least two labels, got {len(labels)}")
    for position, label in enumerate(labels, start=1):
        if not isinstance(label, str):
            raise HeadValidationError(f"label {position} is {type(label).__name__}, not text")
        if not label.strip():
            raise HeadValidationError(f"label {position} is blank")
        if any(not character.isprintable() for character in label):
            raise HeadValidationError(
                f"label {position} {label!r} contains a line break or control character (labels.txt holds one per line)"
            )
        if label != label.strip():
            raise HeadValidationError(f"label {position} {label!r} has leading or trailing whitespace")
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise HeadValidationError(f"labels must be unique; repeated: {duplicated}")
    return labels


def read_labels_file(path: str | Path) -> list[str]:
    """Labels from a file, one per line (the file may end with a newline; CRLF is accepted)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HeadValidationError(f"{path}: no such labels file") from None
    except UnicodeDecodeError:
        raise HeadValidationError(f"{path}: a labels file must be UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise HeadValidationError(f"{path}:{number}: line {number} is blank; the file holds one label per line")
    return check_labels(lines)


# --- the head file --------------------------------------------------------------------------------
def _metadata(model) -> dict[str, str]:
    """Metadata of a parsed ONNX model (``onnx.ModelProto``)."""
    return {entry.key: entry.value for entry in model.metadata_props}


def trained_for(metadata: dict[str, str], encoder_fingerprint: str | None) -> str:
    """The encoder fingerprint a head was trained for: the argument, else its ONNX metadata."""
    recorded = metadata.get(FINGERPRINT_KEY) or None
    if encoder_fingerprint is not None:
        encoder_fingerprint = encoder_fingerprint.strip()
        if not encoder_fingerprint:
            raise HeadValidationError("the encoder fingerprint given is empty")
        if recorded is not None and recorded != encoder_fingerprint:
            raise HeadValidationError(
                f"the head's ONNX metadata records encoder {recorded}, but {encoder_fingerprint} was given: "
                "they must agree"
            )
        return encoder_fingerprint
    if recorded is None:
        raise HeadValidationError(
            "the head does not say which encoder it was trained for: give it (--encoder-fingerprint "
            f"sha256:..., the served encoder's is in {config.ENCODER_MODEL}/1/{config.ENCODER_INFO_FILE}) "
            f"or record it in the ONNX metadata '{FINGERPRINT_KEY}'"
        )
    return recorded


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe_embeddings(rows: int = config.HEAD_PROBE_ROWS, dim: int = config.EMBEDDING_DIM) -> np.ndarray:
    """Random unit-length FP32 rows, like the encoder's normalised sentence embeddings."""
    x = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def check_outputs(probabilities: np.ndarray, rows: int, labels: Sequence[str]) -> None:
    """Refuse an output that is not [rows, len(labels)] probabilities."""
    if not isinstance(probabilities, np.ndarray) or probabilities.ndim != 2 or probabilities.shape[0] != rows:
        shape = list(getattr(probabilities, "shape", []))
        raise HeadValidationError(f"the head must output [batch, classes]; for a batch of {rows} it gave {shape}")
    if probabilities.shape[1] != len(labels):
        raise HeadValidationError(
            f"the head outputs {probabilities.shape[1]} classes but {len(labels)} labels were given"
        )
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise HeadValidationError(f"the head must output float probabilities, it outputs {probabilities.dtype}")
    if not np.isfinite(probabilities).all():
        raise HeadValidationError("the head's output is not finite (NaN or infinity) on unit-length embeddings")
    sums = probabilities.astype(np.float64).sum(axis=1)
    tolerance = config.HEAD_PROBABILITY_TOLERANCE
    if np.abs(sums - 1.0).max() > tolerance or probabilities.min() < -tolerance:
        shown = ", ".join(f"{s:.4g}" for s in sums)
        raise HeadValidationError(
            f"the head must output probabilities (each row in [0, 1], summing to 1 within {tolerance:g}); "
            f"its rows sum to {shown}: are these logits? end the graph with Softmax"
        )


def run_probe(model_bytes: bytes, labels: Sequence[str], dim: int = config.EMBEDDING_DIM) -> None:
    """Run the head in ONNX Runtime on ``probe_embeddings`` and check what it outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors come back as exceptions, no stderr noise
    x = probe_embeddings(config.HEAD_PROBE_ROWS, dim)
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise HeadValidationError(f"ONNX Runtime cannot load the head: {_one_line(exc)}") from exc
    try:
        probabilities = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as exc:
        raise HeadValidationError(
            f"ONNX Runtime cannot run the head on a batch [{len(x)}, {dim}]: {_one_line(exc)}"
        ) from exc
    check_outputs(probabilities, len(x), labels)


def check_head(
    model_bytes: bytes,
    labels: Sequence[str],
    served_fingerprint: str,
    encoder_fingerprint: str | None = None,
) -> CheckedHead:
    """Every check of the module docstring; the head as onboarding writes it, or ``HeadValidationError``."""
    labels = check_labels(labels)
    if not model_bytes:
        raise HeadValidationError("the head file is empty (0 bytes), not an ONNX model")
    try:
        parameters, model = parse_head(model_bytes, tuple(labels), config.EMBEDDING_DIM)
    except HeadFileError as exc:
        raise HeadValidationError(str(exc)) from exc
    metadata = _metadata(model)
    fingerprint = trained_for(metadata, encoder_fingerprint)
    if fingerprint != served_fingerprint:
        raise HeadValidationError(
            f"the head was trained against encoder {fingerprint}, but the server runs {served_fingerprint}: "
            "retrain it on the served encoder's embeddings"
        )
    if LABELS_KEY in metadata:
        try:
            recorded = json.loads(metadata[LABELS_KEY])
        except ValueError:
            recorded = None
        if isinstance(recorded, list) and recorded != labels:
            raise HeadValidationError(
                f"the labels given {labels} differ from those in the head's ONNX metadata {recorded}"
            )
    run_probe(model_bytes, labels)
    return CheckedHead(
        model_bytes=model_bytes,
        labels=labels,
        encoder_fingerprint=fingerprint,
        kind="stacked" if parameters is not None else "session",
        metadata=metadata,
    )


def check_slot_head(model_bytes: bytes, tags: Sequence[str], served_fingerprint: str) -> SlotFiles:
    """A token head (``slots.onnx``) and its BIO tag names, checked as the executor will load
    them and run once in ONNX Runtime on random unit-length tokens; ``HeadValidationError``."""
    import onnxruntime as ort

    tags = list(tags)
    if not model_bytes:
        raise HeadValidationError("the token head file is empty (0 bytes), not an ONNX model")
    try:
        _, model = parse_token_head(model_bytes, tags, config.EMBEDDING_DIM)
    except HeadFileError as exc:
        raise HeadValidationError(str(exc)) from exc
    fingerprint = _metadata(model).get(FINGERPRINT_KEY)
    if fingerprint is not None and fingerprint != served_fingerprint:
        raise HeadValidationError(
            f"the token head was trained against encoder {fingerprint}, but the server runs {served_fingerprint}"
        )
    rows, tokens = 2, 5
    x = probe_embeddings(rows * tokens).reshape(rows, tokens, config.EMBEDDING_DIM)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        probabilities = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise HeadValidationError(f"ONNX Runtime cannot run the token head: {_one_line(exc)}") from exc
    shape = list(getattr(probabilities, "shape", []))
    if shape != [rows, tokens, len(tags)]:
        raise HeadValidationError(f"the token head must output [batch, tokens, {len(tags)}]; it gave {shape}")
    check_outputs(probabilities.reshape(rows * tokens, len(tags)), rows * tokens, tags)
    return SlotFiles(model_bytes, tags)
