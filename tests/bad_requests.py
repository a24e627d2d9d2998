"""Shared by the bad-input tests (tests/integration/test_bad_inputs.py, test_bad_input_fuzz.py):
the good requests every bad one is sent among, how a request is built and what it gets back,
``pipeline``'s batching counters, and the module-scoped fixtures both files use (import them into
the test module: pytest finds a fixture by its name there).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from headroom import config
from headroom.client.metrics import read_metrics
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from tests.conftest import DEMO_HEADS

MODEL = config.PIPELINE_MODEL
OUTPUTS = ("LABEL", "SCORE", "PROBS", "LABELS")
#: Good batch-mates of every bad request: four texts for each demo head, 16 requests.
GOOD_REQUESTS: tuple[tuple[str, str], ...] = tuple(
    (head, text)
    for head, texts in {
        "smart_home": ("turn on the kitchen lights", "lock the front door", "set a timer for ten minutes", "play jazz"),
        "knowledge": ("what is a computer", "who wrote hamlet", "what is the speed of light", "who was napoleon"),
        "lifestyle": ("what is your favorite food", "do you like football", "how much money do you have", "pizza"),
        "smalltalk": ("hello there", "tell me a joke", "are you a robot", "good morning, how are you"),
    }.items()
    for text in texts
)
#: A longer refusal message is not "clear"; gRPC carries it in trailing metadata (8 KiB client limit).
MAX_MESSAGE_CHARS = 1024
RESPONSE_TIMEOUT_S = 60.0
GRPC_CODES = {"400": "StatusCode.INVALID_ARGUMENT", "404": "StatusCode.NOT_FOUND"}


# --- what a request gets back ------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """A classification: winning label, its score, all probabilities and their label names."""

    label: str
    score: float
    labels: tuple[str, ...]
    probs: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Refusal:
    """An error response: Triton's status (``"400"`` over HTTP, ``"StatusCode.NOT_FOUND"`` over gRPC)."""

    status: str
    message: str


Outcome = Answer | Refusal


def _answer(result) -> Answer:
    """An ``Answer`` from a tritonclient (HTTP or gRPC) ``InferResult``."""
    labels = tuple(v.decode("utf-8") for v in result.as_numpy("LABELS").reshape(-1))
    return Answer(
        label=result.as_numpy("LABEL").reshape(-1)[0].decode("utf-8"),
        score=float(result.as_numpy("SCORE").reshape(-1)[0]),
        labels=labels,
        probs=result.as_numpy("PROBS").reshape(-1).astype(np.float64),
    )


def _refusal(exc: InferenceServerException) -> Refusal:
    return Refusal(str(exc.status()), exc.message() or "")


# --- inputs -------------------------------------------------------------------------------------
def _value(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def strings(module: ModuleType, name: str, values: list, datatype: str = "BYTES"):
    """An ``InferInput`` named ``name`` holding ``values`` (nested lists; str are sent as UTF-8)."""
    if datatype == "BYTES":
        array = np.array(_nested(values), dtype=np.object_)
    else:
        array = np.array(values, dtype={"FP32": np.float32, "INT32": np.int32}[datatype])
    if array.size == 0:
        array = array.reshape(0, 1)
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _nested(values):
    return [_nested(v) for v in values] if isinstance(values, list) else _value(values)


def pair(text: str | bytes, head: str | bytes) -> Callable[[ModuleType], list]:
    """Inputs of one well-formed request: TEXT [1,1] and HEAD [1,1]."""
    return lambda m: [strings(m, "TEXT", [[text]]), strings(m, "HEAD", [[head]])]


INVALID_NAME = "invalid head name"


def _tokenizer(repository: Path) -> Tokenizer:
    """The served encoder's tokenizer, without padding or truncation."""
    tokenizer = Tokenizer.from_file(str(config.encoder_version_dir(repository) / config.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


# --- fixtures and helpers -----------------------------------------------------------------------
def _address(url: str) -> str:
    return url.split("://", 1)[1]


def _pipeline_counters(triton) -> tuple[int, int]:
    """``pipeline``'s (inferences, executions) so far, from the Prometheus metrics endpoint."""
    page = read_metrics(triton.server.address.host, triton.server.address.metrics_port, timeout_s=10)
    return int(page.total("nv_inference_count", model=MODEL)), int(page.total("nv_inference_exec_count", model=MODEL))


def _served_variant(repository: Path) -> str:
    return json.loads((config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE).read_text())["variant"]


@pytest.fixture(scope="module")
def tolerance(triton) -> float:
    """How far a batched answer may differ from the same text alone (docs/benchmarks.md, "Choosing the encoder")."""
    return 1e-5 if _served_variant(triton.repository) in config.BATCH_INDEPENDENT_VARIANTS else 0.35


@pytest.fixture(scope="module")
def grpc_client(triton):
    client = triton_grpc.InferenceServerClient(_address(triton.grpc_url))
    yield client
    client.close()


def _infer_alone(client, head: str, text: str) -> Answer:
    result = client.infer(MODEL, pair(text, head)(triton_grpc), client_timeout=RESPONSE_TIMEOUT_S)
    return _answer(result)


@pytest.fixture(scope="module")
def alone(grpc_client) -> Callable[[str, str], Answer]:
    """The answer to (head, text) sent alone, one request at a time (cached)."""
    cache: dict[tuple[str, str], Answer] = {}

    def answer(head: str, text: str) -> Answer:
        if (head, text) not in cache:
            cache[(head, text)] = _infer_alone(grpc_client, head, text)
        return cache[(head, text)]

    for head, text in GOOD_REQUESTS:
        answer(head, text)
    return answer


@pytest.fixture(scope="module")
def head_labels(alone) -> dict[str, tuple[str, ...]]:
    """Each demo head's label names, in ``PROBS`` order."""
    labels = {head: alone(head, text).labels for head, text in GOOD_REQUESTS}
    assert len(set(labels.values())) == len(DEMO_HEADS), "demo heads must have distinct label sets"
    return labels


#: The module-scoped fixtures both test modules use, to bind there under the same names:
#: ``alone, grpc_client, head_labels, tolerance = bad_requests.FIXTURES``.
FIXTURES = (alone, grpc_client, head_labels, tolerance)


def _assert_same_answer(got: Outcome, want: Answer, tolerance: float, what: str) -> None:
    assert isinstance(got, Answer), f"{what}: expected an answer, got {got}"
    assert got.labels == want.labels, f"{what}: answered by another head ({got.labels} != {want.labels})"
    difference = float(np.abs(got.probs - want.probs).max())
    assert difference <= tolerance, f"{what}: PROBS differ from the same request alone by {difference}"
    top2 = np.sort(want.probs)[-2:]
    if top2[1] - top2[0] > 2 * tolerance:
        assert got.label == want.label, f"{what}: label {got.label!r} != {want.label!r}"
    assert got.score == pytest.approx(float(got.probs.max()), abs=1e-6)
