"""Bad requests fail alone, clearly (issue 5 §1), against the one real tritonserver of the session.

``test_bad_request_fails_alone_in_a_batch_of_good_ones`` sends each case of a matrix of bad inputs
(empty, blank, huge or non-UTF-8 ``TEXT``; wrong shapes and types; missing inputs; ``HEAD`` naming
an unknown or offboarded head, a system model, a path, a name that breaks the naming rule; odd
request options; malformed HTTP bodies) over HTTP and gRPC **together with** 16 good requests for
the four demo heads, so that Triton's dynamic batcher puts them into the same ``pipeline`` batch.
The bad request must get the fitting code (HTTP 400 / gRPC INVALID_ARGUMENT, 404 / NOT_FOUND) and
a message naming the problem; every good batch-mate must get the answer it gets when sent alone
(labels, and ``PROBS`` to 1e-5 with the fp32 encoder); the server must stay live. A text blank to
the tokenizer (control or format characters only) is refused like an empty one; a refusal message
stays short (a 10,000-character name is not echoed whole).

``test_fuzzed_text_and_head_are_answered_or_refused_never_lost`` sends thousands of requests whose
``TEXT`` and ``HEAD`` come from hypothesis (any unicode text, raw bytes, real and made-up head
names) in small concurrent gRPC batches, next to two anchor requests with known answers. Every
request gets exactly one answer; a valid head with a non-blank UTF-8 text is answered with that
head's labels (no cross-routing); anything else is refused with INVALID_ARGUMENT or NOT_FOUND and
a message. ``HEADROOM_FUZZ_EXAMPLES`` (default 250 batches of 8 fuzzed requests) sets the length
of the run: ``HEADROOM_FUZZ_EXAMPLES=20000 pytest -s tests/test_bad_inputs.py -k fuzz`` is a soak.
Examples are random per run and kept in no example database (hypothesis only caches unicode
tables under the git-ignored ``.hypothesis/``); a failure prints the ``@reproduce_failure`` blob
that replays it.

Batching is checked with Triton's Prometheus counters of ``pipeline`` (``nv_inference_count``
against ``nv_inference_exec_count``); the metrics port needs no admin key.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from headroom import config
from headroom.naming import HEAD_NAME_PATTERN, RESERVED_HEAD_NAMES, InvalidHeadName, validate_head_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from tests.conftest import DEMO_HEADS

pytestmark = pytest.mark.integration

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
#: A head this module onboards and offboards again (never a demo head: other tests use those).
OFFBOARDED_HEAD = "bad-inputs-offboarded"
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


# --- what a case expects ------------------------------------------------------------------------
@dataclass(frozen=True)
class Refused:
    """The request fails with ``http`` (and the matching gRPC code) and a message holding ``words``."""

    http: str
    words: tuple[str, ...]

    def status(self, protocol: str) -> str:
        return self.http if protocol == "http" else GRPC_CODES[self.http]


def invalid(*words: str) -> Refused:
    """HTTP 400 / gRPC INVALID_ARGUMENT."""
    return Refused("400", words)


def not_found(*words: str) -> Refused:
    """HTTP 404 / gRPC NOT_FOUND."""
    return Refused("404", words)


@dataclass(frozen=True)
class Answered:
    """The request is answered by ``head`` (its labels); with ``same_as``, exactly like that text alone.

    ``same_as`` is a text, or a function of the served repository that returns one.
    """

    head: str
    same_as: str | Callable[[Path], str] | None = None


class ContractGap(AssertionError):
    """The pipeline falls short of the contract: a bad request answered instead of refused, or
    refused with a message too long to be clear (or to cross gRPC's 8 KiB metadata limit)."""


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


def _json_body(text: object = "hello", head: object = "smart_home", shape: list[int] | None = None) -> bytes:
    """A KServe v2 JSON request with TEXT and HEAD as JSON ``data`` (no binary extension)."""
    shape = shape or [1, 1]
    inputs = [
        {"name": "TEXT", "shape": shape, "datatype": "BYTES", "data": text if isinstance(text, list) else [text]},
        {"name": "HEAD", "shape": shape, "datatype": "BYTES", "data": head if isinstance(head, list) else [head]},
    ]
    return json.dumps({"inputs": inputs}).encode("utf-8")


# --- the matrix ---------------------------------------------------------------------------------
def _long_text() -> str:
    """100 000 characters: ~300 tokens about lights, then weather until the end (cut by truncation)."""
    text = "turn on the kitchen lights " * 60
    text += "what will the weather be like tomorrow " * ((100_000 - len(text)) // 39 + 1)
    return text[:100_000]


LONG_TEXT = _long_text()


def _tokenizer(repository: Path) -> Tokenizer:
    """The served encoder's tokenizer, without padding or truncation."""
    tokenizer = Tokenizer.from_file(str(config.encoder_version_dir(repository) / config.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def truncated_long_text(repository: Path) -> str:
    """The part of ``LONG_TEXT`` that survives truncation at ``MAX_SEQ_LEN_TOKENS`` ([CLS], [SEP] included)."""
    encoding = _tokenizer(repository).encode(LONG_TEXT)
    kept = config.MAX_SEQ_LEN_TOKENS - 2
    assert len(encoding.ids) > config.MAX_SEQ_LEN_TOKENS and not encoding.tokens[kept + 1].startswith("##")
    return LONG_TEXT[: encoding.offsets[kept][1]]


@dataclass(frozen=True)
class Case:
    """One bad (or odd) request.

    ``inputs`` builds tritonclient inputs for the HTTP or gRPC module, ``options`` extra ``infer``
    arguments; ``raw_json`` is sent as is to ``/v2/models/pipeline/infer`` instead (HTTP only).
    """

    id: str
    expect: Refused | Answered
    inputs: Callable[[ModuleType], list] | None = None
    options: Callable[[ModuleType], dict] = field(default=lambda m: {})
    raw_json: bytes | None = None
    protocols: tuple[str, ...] = ("http", "grpc")
    needs_offboarded_head: bool = False


def _max_batch_size(model: str) -> int:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = (config.DEFAULT_MODEL_REPOSITORY / model / "config.pbtxt").read_text(encoding="utf-8")
    return text_format.Parse(text, model_config_pb2.ModelConfig()).max_batch_size


PIPELINE_MAX_BATCH = _max_batch_size(MODEL)
INVALID_NAME = "invalid head name"
TEXT_SHAPE = "unexpected shape for input 'TEXT'"

CASES: tuple[Case, ...] = (
    # TEXT: empty, blank, huge, odd characters
    Case("text-empty", invalid("TEXT is empty"), pair("", "smart_home")),
    Case("text-spaces", invalid("TEXT is empty"), pair("     ", "knowledge")),
    Case("text-tabs-newlines", invalid("TEXT is empty"), pair("\t\n\r\n\t \x0b\x0c", "smart_home")),
    Case("text-unicode-spaces", invalid("TEXT is empty"), pair("\u00a0\u3000\u2003\u2028\u205f\u1680", "lifestyle")),
    Case("text-100k-chars-truncated", Answered("smart_home", truncated_long_text), pair(LONG_TEXT, "smart_home")),
    Case("text-nul-inside", Answered("smart_home", "turn on the lights"), pair("turn on\x00 the lights", "smart_home")),
    Case("text-only-emoji", Answered("smalltalk"), pair("\U0001f600\U0001f389\U0001f525", "smalltalk")),
    Case("text-only-nul", invalid("TEXT is empty"), pair("\x00\x00\x00", "smart_home")),
    Case(
        "text-only-control",
        invalid("TEXT is empty"),
        pair("\x01\x02\x07\x1b", "knowledge"),
    ),
    Case(
        "text-only-zero-width",
        invalid("TEXT is empty"),
        pair("\u200b\u200d\ufeff", "lifestyle"),
    ),
    # TEXT: not UTF-8
    Case("text-invalid-utf8", invalid("input 'TEXT' is not valid UTF-8"), pair(b"\xff\xfe lights", "smart_home")),
    Case("text-utf8-surrogate", invalid("input 'TEXT' is not valid UTF-8"), pair(b"\xed\xa0\x80", "smart_home")),
    Case("text-utf8-cut-short", invalid("input 'TEXT' is not valid UTF-8"), pair(b"lights \xe2\x82", "knowledge")),
    Case("text-utf8-overlong", invalid("input 'TEXT' is not valid UTF-8"), pair(b"\xc0\xaf", "smalltalk")),
    # TEXT: shape, type, presence
    Case(
        "text-two-strings",
        invalid(TEXT_SHAPE, "[1,2]"),
        lambda m: [strings(m, "TEXT", [["a", "b"]]), strings(m, "HEAD", [["smart_home"]])],
    ),
    Case(
        "text-one-dim",
        invalid("unexpected shape for input", "[1]"),
        lambda m: [strings(m, "TEXT", ["hello"]), strings(m, "HEAD", ["smart_home"])],
    ),
    Case(
        "text-three-dims",
        invalid(TEXT_SHAPE, "[1,1,1]"),
        lambda m: [strings(m, "TEXT", [[["hello"]]]), strings(m, "HEAD", [["smart_home"]])],
    ),
    Case(
        "text-batch-2-head-batch-1",
        invalid("input 'TEXT' batch size does not match other inputs"),
        lambda m: [strings(m, "TEXT", [["hello"], ["hi"]]), strings(m, "HEAD", [["smart_home"]])],
    ),
    # Several rows in one request are answered per row (tests/test_multi_text.py); one bad row
    # fails its request, named.
    Case(
        "two-rows-second-empty",
        invalid("row 1: TEXT is empty"),
        lambda m: [strings(m, "TEXT", [["hello"], [""]]), strings(m, "HEAD", [["smart_home"], ["smalltalk"]])],
    ),
    Case(
        "two-rows-second-head-unknown",
        not_found("row 1: head 'no_such_head' is not loaded"),
        lambda m: [strings(m, "TEXT", [["hello"], ["hi"]]), strings(m, "HEAD", [["smart_home"], ["no_such_head"]])],
    ),
    Case(
        "empty-batch",
        invalid("expected 1 string elements", "got 0"),
        lambda m: [strings(m, "TEXT", []), strings(m, "HEAD", [])],
    ),
    Case(
        "text-fp32",
        invalid("input 'TEXT' data-type is 'FP32'", "expects 'BYTES'"),
        lambda m: [strings(m, "TEXT", [[1.0]], "FP32"), strings(m, "HEAD", [["smart_home"]])],
    ),
    Case(
        "text-int32",
        invalid("input 'TEXT' data-type is 'INT32'", "expects 'BYTES'"),
        lambda m: [strings(m, "TEXT", [[7]], "INT32"), strings(m, "HEAD", [["smart_home"]])],
    ),
    Case(
        "head-int32",
        invalid("input 'HEAD' data-type is 'INT32'", "expects 'BYTES'"),
        lambda m: [strings(m, "TEXT", [["hello"]]), strings(m, "HEAD", [[1]], "INT32")],
    ),
    Case(
        "head-two-strings",
        invalid("unexpected shape for input 'HEAD'", "[1,2]"),
        lambda m: [strings(m, "TEXT", [["hello"]]), strings(m, "HEAD", [["smart_home", "knowledge"]])],
    ),
    Case(
        "text-missing",
        invalid("missing required input(s) ['TEXT']"),
        lambda m: [strings(m, "HEAD", [["smart_home"]])],
    ),
    Case(
        "head-missing",
        invalid("missing required input(s) ['HEAD']"),
        lambda m: [strings(m, "TEXT", [["hello"]])],
    ),
    Case("no-inputs", invalid("missing required input(s) ['TEXT','HEAD']"), lambda m: []),
    Case(
        "extra-input",
        invalid("expected 2 inputs but got 3", "'FOO'"),
        lambda m: [*pair("hello", "smart_home")(m), strings(m, "FOO", [["x"]])],
    ),
    Case(
        "text-twice",
        invalid("input 'TEXT' already exists in request"),
        lambda m: [*pair("hello", "smart_home")(m), strings(m, "TEXT", [["again"]])],
    ),
    # HEAD: unknown or unloaded heads
    Case("head-unknown", not_found("head 'no_such_head' is not loaded"), pair("hello", "no_such_head")),
    Case(
        "head-offboarded",
        not_found(f"head '{OFFBOARDED_HEAD}' is not loaded"),
        pair("turn on the lights", OFFBOARDED_HEAD),
        needs_offboarded_head=True,
    ),
    Case("head-model-name", not_found("head 'head_smart_home' is not loaded"), pair("hello", "head_smart_home")),
    Case("head-48-chars", not_found(f"head '{'a' * 48}' is not loaded"), pair("hello", "a" * 48)),
    # HEAD: system models
    *(
        Case(f"head-system-{name}", invalid(f"'{name}' is a system model, not a head"), pair("hello", name))
        for name in ("encoder", "tokenizer", "embed", "pipeline")
    ),
    Case(
        "head-executor",
        invalid("'executor' is a system model, not a head")
        if "executor" in RESERVED_HEAD_NAMES
        else not_found("head 'executor' is not loaded"),
        pair("hello", "executor"),
    ),
    # HEAD: names that break the naming rule
    Case("head-empty", invalid(INVALID_NAME, "''"), pair("hello", "")),
    Case("head-dotdot", invalid(INVALID_NAME, "'../x'"), pair("hello", "../x")),
    Case("head-absolute-path", invalid(INVALID_NAME, "'/etc/passwd'"), pair("hello", "/etc/passwd")),
    Case("head-traversal", invalid(INVALID_NAME, "smart_home/../encoder"), pair("hello", "smart_home/../encoder")),
    Case("head-49-chars", invalid(INVALID_NAME, "1-48 characters"), pair("hello", "a" * 49)),
    Case("head-10000-chars", invalid(INVALID_NAME), pair("hello", "b" * 10_000)),
    Case("head-1000-emoji", invalid(INVALID_NAME), pair("hello", "\U0001f3e0" * 1000)),
    Case("head-accent", invalid(INVALID_NAME, "'smárt'"), pair("hello", "smárt")),
    Case("head-emoji", invalid(INVALID_NAME, "\U0001f3e0"), pair("hello", "\U0001f3e0")),
    Case(
        "head-fullwidth",
        invalid(INVALID_NAME),
        pair("hello", "\uff53\uff4d\uff41\uff52\uff54_\uff48\uff4f\uff4d\uff45"),
    ),
    Case("head-cyrillic-a", invalid(INVALID_NAME), pair("hello", "sm\u0430rt_home")),
    Case("head-upper-case", invalid(INVALID_NAME, "'SMART_HOME'"), pair("hello", "SMART_HOME")),
    Case("head-inner-space", invalid(INVALID_NAME, "'smart home'"), pair("hello", "smart home")),
    Case("head-leading-space", invalid(INVALID_NAME), pair("hello", " smart_home")),
    Case("head-trailing-newline", invalid(INVALID_NAME, "'smart_home\\n'"), pair("hello", "smart_home\n")),
    Case("head-nul", invalid(INVALID_NAME, "\\x00"), pair("hello", "smart_home\x00")),
    Case("head-leading-dash", invalid(INVALID_NAME), pair("hello", "-smart_home")),
    Case("head-invalid-utf8", invalid("input 'HEAD' is not valid UTF-8"), pair("hello", b"smart_\xff")),
    # request options a client could send
    Case(
        "unexpected-parameter",
        Answered("smart_home", "lock the front door"),
        pair("lock the front door", "smart_home"),
        options=lambda m: {"parameters": {"tenant": "acme", "debug": True}},
    ),
    Case(
        "parameter-head-names-another-head",
        Answered("smart_home", "lock the front door"),
        pair("lock the front door", "smart_home"),
        options=lambda m: {"parameters": {"head": "knowledge"}},
    ),
    Case(
        "unknown-output",
        invalid("unexpected inference output 'FOO'"),
        pair("hello", "smart_home"),
        options=lambda m: {"outputs": [m.InferRequestedOutput("FOO")]},
    ),
    Case(
        "unknown-model-version",
        not_found("'pipeline' version 2 is not found"),
        pair("hello", "smart_home"),
        options=lambda m: {"model_version": "2"},
    ),
    # raw KServe v2 JSON over HTTP
    Case(
        "json-head-with-nul-escape",
        invalid(INVALID_NAME, "\\x00"),
        raw_json=_json_body("hello", "smart_home\u0000"),
        protocols=("http",),
    ),
    Case(
        "json-more-strings-than-shape",
        invalid("unexpected number of string elements 2 for inference input 'TEXT'"),
        raw_json=_json_body(["a", "b"], "smart_home"),
        protocols=("http",),
    ),
    Case(
        "json-batch-over-max",
        invalid(f"batch-size must be <= {PIPELINE_MAX_BATCH}"),
        raw_json=_json_body(
            ["hello"] * (PIPELINE_MAX_BATCH + 1),
            ["smart_home"] * (PIPELINE_MAX_BATCH + 1),
            shape=[PIPELINE_MAX_BATCH + 1, 1],
        ),
        protocols=("http",),
    ),
    # Triton's HTTP front end answers 500 to bodies it cannot parse; the pipeline never sees them.
    Case(
        "json-malformed",
        Refused("500", ("failed to parse the request JSON",)),
        raw_json=b'{"inputs": [{"name": "TEXT",',
        protocols=("http",),
    ),
    Case(
        "json-number-as-text",
        Refused("500", ("Unable to parse JSON bytes array",)),
        raw_json=_json_body(12345, "smart_home"),
        protocols=("http",),
    ),
)

MATRIX = [pytest.param(case, protocol, id=f"{case.id}-{protocol}") for case in CASES for protocol in case.protocols]
#: Observed outcome of each matrix run (id -> status or "answered"), printed after the matrix.
OBSERVED: dict[str, str] = {}
#: Per burst: (requests the pipeline inferred, batches it executed).
BURSTS: list[tuple[int, int]] = []


# --- fixtures and helpers -----------------------------------------------------------------------
def _address(url: str) -> str:
    return url.split("://", 1)[1]


def _pipeline_counters(triton) -> tuple[int, int]:
    """``pipeline``'s (inferences, executions) so far, from the Prometheus metrics endpoint."""
    url = f"http://{triton.server.address.host}:{triton.server.address.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    counts = {"nv_inference_count": 0, "nv_inference_exec_count": 0}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in counts and f'model="{MODEL}"' in rest:
            counts[name] += int(float(rest.rsplit(" ", 1)[1]))
    return counts["nv_inference_count"], counts["nv_inference_exec_count"]


def _served_variant(repository: Path) -> str:
    return json.loads((config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE).read_text())["variant"]


@pytest.fixture(scope="module")
def tolerance(triton) -> float:
    """How far a batched answer may differ from the same text alone (README "Choosing the encoder")."""
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


@pytest.fixture(scope="module")
def matrix_start(triton, alone) -> tuple[int, int]:
    """``pipeline``'s counters before the matrix's first burst."""
    return _pipeline_counters(triton)


@pytest.fixture(scope="module")
def offboarded_head(triton) -> str:
    """A head onboarded (and answered) here, then offboarded."""
    with triton.client() as client:
        triton.onboarding(client).onboard(OFFBOARDED_HEAD, config.DEMO_DATA_DIR / "smart_home.jsonl")
        (answer,) = client.classify(["turn on the lights"], OFFBOARDED_HEAD)
        assert answer.label == "lights_on"
        triton.onboarding(client).offboard(OFFBOARDED_HEAD)
    return OFFBOARDED_HEAD


def _post_json(http_url: str, body: bytes) -> Outcome:
    request = urllib.request.Request(
        f"{http_url}/v2/models/{MODEL}/infer", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_S) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = json.loads(raw).get("error", "")
        except ValueError:
            message = raw.decode("utf-8", "replace")
        return Refusal(str(exc.code), message)
    outputs = {o["name"]: o["data"] for o in payload["outputs"]}
    return Answer(outputs["LABEL"][0], float(outputs["SCORE"][0]), tuple(outputs["LABELS"]), np.array(outputs["PROBS"]))


def _send(triton, case: Case, protocol: str) -> Outcome:
    """Send ``case`` once over ``protocol`` and wait for its outcome."""
    if case.raw_json is not None:
        return _post_json(triton.http_url, case.raw_json)
    module = triton_http if protocol == "http" else triton_grpc
    url = triton.http_url if protocol == "http" else triton.grpc_url
    # Its own client: tritonclient.http is gevent-based and this runs on a thread of its own.
    client = module.InferenceServerClient(_address(url))
    try:
        return _answer(client.infer(MODEL, case.inputs(module), **case.options(module)))
    except InferenceServerException as exc:
        return _refusal(exc)
    finally:
        client.close()


def _burst(triton, grpc_client, send_bad: Callable[[], Outcome]) -> tuple[list[list[Outcome]], Outcome]:
    """The 16 good requests (gRPC, asynchronous) with the bad one sent in their midst.

    Returns each good request's outcomes (exactly one expected) and the bad request's outcome.
    """
    good: list[list[Outcome]] = [[] for _ in GOOD_REQUESTS]
    arrived = threading.Semaphore(0)

    def done(index: int, result, error) -> None:
        good[index].append(_refusal(error) if error is not None else _answer(result))
        arrived.release()

    bad: list = []

    def run_bad() -> None:
        try:
            bad.append(send_bad())
        except Exception as exc:  # a client-side failure is reported, not swallowed
            bad.append(exc)

    worker = threading.Thread(target=run_bad)
    before = _pipeline_counters(triton)
    half = len(GOOD_REQUESTS) // 2
    for index, (head, text) in enumerate(GOOD_REQUESTS):
        if index == half:
            worker.start()
        grpc_client.async_infer(
            MODEL, pair(text, head)(triton_grpc), partial(done, index), client_timeout=RESPONSE_TIMEOUT_S
        )
    for _ in GOOD_REQUESTS:
        assert arrived.acquire(timeout=RESPONSE_TIMEOUT_S + 5), "a good request got no answer"
    worker.join(RESPONSE_TIMEOUT_S + 5)
    assert bad, "the bad request got no answer"
    # Triton counts a batch just after sending its responses: wait for the good ones' batches.
    deadline = time.monotonic() + 5
    while (after := _pipeline_counters(triton))[0] - before[0] < len(GOOD_REQUESTS) and time.monotonic() < deadline:
        time.sleep(0.02)
    BURSTS.append((after[0] - before[0], after[1] - before[1]))
    return good, bad[0]


def _assert_same_answer(got: Outcome, want: Answer, tolerance: float, what: str) -> None:
    assert isinstance(got, Answer), f"{what}: expected an answer, got {got}"
    assert got.labels == want.labels, f"{what}: answered by another head ({got.labels} != {want.labels})"
    difference = float(np.abs(got.probs - want.probs).max())
    assert difference <= tolerance, f"{what}: PROBS differ from the same request alone by {difference}"
    top2 = np.sort(want.probs)[-2:]
    if top2[1] - top2[0] > 2 * tolerance:
        assert got.label == want.label, f"{what}: label {got.label!r} != {want.label!r}"
    assert got.score == pytest.approx(float(got.probs.max()), abs=1e-6)


def _describe(outcome: Outcome) -> str:
    return "answered" if isinstance(outcome, Answer) else outcome.status


# --- the matrix ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "protocol"), MATRIX)
def test_bad_request_fails_alone_in_a_batch_of_good_ones(
    triton, grpc_client, alone, head_labels, matrix_start, tolerance, request, case: Case, protocol: str
):
    if case.needs_offboarded_head:
        request.getfixturevalue("offboarded_head")
    good, bad = _burst(triton, grpc_client, lambda: _send(triton, case, protocol))

    # Every batch-mate is answered exactly once, as it is alone.
    for (head, text), outcomes in zip(GOOD_REQUESTS, good, strict=True):
        assert len(outcomes) == 1, (head, text, outcomes)
        _assert_same_answer(outcomes[0], alone(head, text), tolerance, f"good request {head}/{text!r}")
    assert triton.server.process.poll() is None, "tritonserver exited"
    assert not isinstance(bad, Exception), f"the bad request failed in the client: {bad!r}"
    OBSERVED[f"{case.id}-{protocol}"] = _describe(bad)

    expect = case.expect
    if isinstance(expect, Answered):
        assert isinstance(bad, Answer), f"expected an answer from {expect.head}, got {bad}"
        assert bad.labels == head_labels[expect.head], f"answered by another head: {bad.labels}"
        assert bad.label == bad.labels[int(np.argmax(bad.probs))]
        if expect.same_as is not None:
            same_as = expect.same_as if isinstance(expect.same_as, str) else expect.same_as(triton.repository)
            _assert_same_answer(bad, alone(expect.head, same_as), tolerance, f"{case.id} vs {same_as[:40]!r}...")
        return
    if isinstance(bad, Answer):
        raise ContractGap(f"{case.id}: answered ({bad.label!r} of {bad.labels}) instead of refused with {expect}")
    if bad.status == "StatusCode.RESOURCE_EXHAUSTED" or len(bad.message) > MAX_MESSAGE_CHARS:
        raise ContractGap(f"{case.id}: {bad.status} with a {len(bad.message)}-character message {bad.message[:160]!r}")
    assert bad.status == expect.status(protocol), f"{case.id}: {bad.status} {bad.message!r}"
    for word in expect.words:
        assert word in bad.message, f"{case.id}: {word!r} not in {bad.message!r}"


def test_server_is_healthy_and_batched_after_the_matrix(triton, grpc_client, alone, matrix_start, tolerance):
    """Runs after the matrix (file order): live, pipeline READY, answering, and requests were batched."""
    base = triton.http_url
    for path in ("/v2/health/live", f"/v2/models/{MODEL}/ready"):
        with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
            assert response.status == 200, path
    assert grpc_client.is_server_live() and grpc_client.is_model_ready(MODEL)
    head, text = GOOD_REQUESTS[0]
    _assert_same_answer(_infer_alone(grpc_client, head, text), alone(head, text), tolerance, "after the matrix")

    inferences, executions = (a - b for a, b in zip(_pipeline_counters(triton), matrix_start, strict=True))
    batched = sum(1 for inferred, executed in BURSTS if executed < inferred)
    print(
        f"\nbad-input matrix: {len(OBSERVED)} cases run, {batched}/{len(BURSTS)} bursts batched; "
        f"pipeline inferred {inferences} requests in {executions} executions"
    )
    for case_id, observed in OBSERVED.items():
        print(f"  {case_id:45s} {observed}")
    if BURSTS:  # the matrix ran (it does unless deselected)
        assert executions < inferences, "bad and good requests were never batched together"
        assert batched >= len(BURSTS) // 2, f"only {batched} of {len(BURSTS)} bursts were batched"


# --- fuzzing ------------------------------------------------------------------------------------
FUZZ_EXAMPLES = int(os.environ.get("HEADROOM_FUZZ_EXAMPLES", "250"))
FUZZ_BATCH = 8
#: Counts of the fuzz run (requests sent, outcomes), reported at its end.
FUZZ_COUNTS: Counter[str] = Counter()

_characters = st.characters(exclude_categories=("Cs",))
fuzz_texts = st.one_of(
    st.text(_characters, max_size=64),
    st.binary(max_size=64),
    st.sampled_from(
        ["", " ", "\t\n", "\u3000", "\x00", "\u200b", "\U0001f600", "turn on the lights", "who wrote hamlet"]
    ),
    st.text(_characters, min_size=300, max_size=1500),
)
fuzz_heads = st.one_of(
    st.sampled_from(DEMO_HEADS),
    st.sampled_from(DEMO_HEADS),
    st.from_regex(HEAD_NAME_PATTERN, fullmatch=True),
    st.text(_characters, max_size=60),
    st.binary(max_size=60),
    st.sampled_from(
        [
            *sorted(RESERVED_HEAD_NAMES),
            "executor",
            "head_smart_home",
            "SMART_HOME",
            "smart_home\n",
            "../x",
            "",
            "a" * 49,
        ]
    ),
)
fuzz_batches = st.lists(st.tuples(fuzz_texts, fuzz_heads), min_size=FUZZ_BATCH, max_size=FUZZ_BATCH)
anchors = st.lists(st.sampled_from(range(len(GOOD_REQUESTS))), min_size=2, max_size=2)


@dataclass(frozen=True)
class Acceptable:
    """What one fuzzed request may get: an answer from ``head``, or a refusal in ``refusals``.

    ``anything``: a valid name of a head that other tests onboarded (not the demo heads').
    """

    head: str | None = None
    refusals: tuple[tuple[str, str], ...] = ()  # (HTTP code, words)
    anything: bool = False


def _acceptable(text: bytes, head: bytes, repository: Path, tokenizer: Tokenizer) -> Acceptable:
    """Every outcome the contract allows for (TEXT, HEAD); several problems: any one of them."""
    problems: list[tuple[str, str]] = []
    try:
        decoded_text: str | None = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded_text = None
        problems.append(("400", "input 'TEXT' is not valid UTF-8"))
    if decoded_text is not None and not any(
        not special for special in tokenizer.encode(decoded_text).special_tokens_mask
    ):
        # Empty, whitespace, or blank to the tokenizer (control or format characters only).
        problems.append(("400", "TEXT is empty"))
    try:
        name: str | None = head.decode("utf-8")
    except UnicodeDecodeError:
        name = None
        problems.append(("400", "input 'HEAD' is not valid UTF-8"))
    answering = None
    if name is not None:
        try:
            validate_head_name(name)
        except InvalidHeadName:
            problems.append(("400", "is a system model" if name in RESERVED_HEAD_NAMES else INVALID_NAME))
        else:
            if name in DEMO_HEADS:
                answering = name
            elif (repository / f"{config.HEAD_MODEL_PREFIX}{name}").exists():
                return Acceptable(anything=True)
            else:
                problems.append(("404", f"head '{name}' is not loaded"))
    if problems:
        return Acceptable(refusals=tuple(problems))
    assert decoded_text is not None and answering is not None
    return Acceptable(head=answering)


def _check_fuzzed(outcome: Outcome, acceptable: Acceptable, labels: dict[str, tuple[str, ...]], what: str) -> str:
    """Assert ``outcome`` is acceptable; returns its kind for the counts."""
    if acceptable.anything:
        return "other-tests-head"
    if isinstance(outcome, Answer):
        assert acceptable.head is not None, f"{what}: answered {outcome.label!r}, wanted one of {acceptable.refusals}"
        assert outcome.labels == labels[acceptable.head], f"{what}: cross-routed, LABELS {outcome.labels}"
        assert outcome.label == outcome.labels[int(np.argmax(outcome.probs))], what
        assert abs(float(outcome.probs.sum()) - 1.0) < 1e-4 and outcome.score == pytest.approx(outcome.probs.max())
        return "answered"
    assert len(outcome.message) <= MAX_MESSAGE_CHARS, f"{what}: a {len(outcome.message)}-character message"
    for code, words in acceptable.refusals:
        if outcome.status == GRPC_CODES[code] and words in outcome.message:
            return f"refused-{outcome.status.removeprefix('StatusCode.')}"
    raise AssertionError(f"{what}: got {outcome}, wanted {acceptable}")


@pytest.fixture(scope="module")
def served_tokenizer(triton) -> Tokenizer:
    return _tokenizer(triton.repository)


@pytest.mark.timeout(max(600, FUZZ_EXAMPLES * 2))
def test_fuzzed_text_and_head_are_answered_or_refused_never_lost(
    triton, grpc_client, alone, head_labels, served_tokenizer, tolerance
):
    started = time.perf_counter()
    counters_before = _pipeline_counters(triton)

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=fuzz_batches, anchor_rows=anchors)
    def one_batch(batch: list[tuple[str | bytes, str | bytes]], anchor_rows: list[int]) -> None:
        requests = [(_value(text), _value(head)) for text, head in batch]
        anchored = [GOOD_REQUESTS[row] for row in anchor_rows]
        # Anchors (known answers) in the middle and at the end of the batch.
        sent = requests[: FUZZ_BATCH // 2] + [(t.encode(), h.encode()) for h, t in anchored[:1]]
        sent += requests[FUZZ_BATCH // 2 :] + [(t.encode(), h.encode()) for h, t in anchored[1:]]
        outcomes: list[list[Outcome]] = [[] for _ in sent]
        arrived = threading.Semaphore(0)

        def done(index: int, result, error) -> None:
            outcomes[index].append(_refusal(error) if error is not None else _answer(result))
            arrived.release()

        for index, (text, head) in enumerate(sent):
            grpc_client.async_infer(
                MODEL, pair(text, head)(triton_grpc), partial(done, index), client_timeout=RESPONSE_TIMEOUT_S
            )
        for _ in sent:
            assert arrived.acquire(timeout=RESPONSE_TIMEOUT_S + 5), "a request got no answer (lost)"
        FUZZ_COUNTS["requests"] += len(sent)
        FUZZ_COUNTS["fuzzed"] += len(requests)
        FUZZ_COUNTS["batches"] += 1
        anchor_positions = {FUZZ_BATCH // 2: anchored[0], len(sent) - 1: anchored[1]}
        fuzzed = iter(requests)
        for index, got in enumerate(outcomes):
            assert len(got) == 1, f"request {index} got {len(got)} answers"
            if index in anchor_positions:
                head, text = anchor_positions[index]
                _assert_same_answer(got[0], alone(head, text), tolerance, f"anchor {head}/{text!r}")
                continue
            text, head = next(fuzzed)
            acceptable = _acceptable(text, head, triton.repository, served_tokenizer)
            FUZZ_COUNTS[_check_fuzzed(got[0], acceptable, head_labels, f"TEXT={text[:80]!r} HEAD={head[:80]!r}")] += 1
        assert triton.server.process.poll() is None, "tritonserver exited"
        assert grpc_client.is_server_live(), "tritonserver is not live"

    one_batch()
    inferences, executions = (a - b for a, b in zip(_pipeline_counters(triton), counters_before, strict=True))
    seconds = time.perf_counter() - started
    outcomes = ", ".join(f"{kind} {count}" for kind, count in sorted(FUZZ_COUNTS.items()))
    print(f"\nfuzz: {outcomes}; pipeline inferred {inferences} requests in {executions} executions; {seconds:.1f} s")
    assert grpc_client.is_model_ready(MODEL)
    assert FUZZ_COUNTS["fuzzed"] >= FUZZ_BATCH * min(FUZZ_EXAMPLES, 250) * 0.9
    assert executions < inferences, "fuzzed requests were never batched together"
