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

Batching is checked with Triton's Prometheus counters of ``pipeline`` (``nv_inference_count``
against ``nv_inference_exec_count``); the metrics port needs no admin key.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
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
from headroom.naming import RESERVED_HEAD_NAMES
from tritonclient.utils import InferenceServerException

from tests import bad_requests
from tests.bad_requests import (
    GOOD_REQUESTS,
    GRPC_CODES,
    INVALID_NAME,
    MAX_MESSAGE_CHARS,
    MODEL,
    RESPONSE_TIMEOUT_S,
    Answer,
    Outcome,
    Refusal,
    _address,
    _answer,
    _assert_same_answer,
    _infer_alone,
    _pipeline_counters,
    _refusal,
    _tokenizer,
    pair,
    strings,
)
from tests.polling import wait_for

pytestmark = pytest.mark.integration

# The shared module-scoped fixtures: pytest finds a fixture by its name in the test module.
alone, grpc_client, head_labels, tolerance = bad_requests.FIXTURES

#: A head this module onboards and offboards again (never a demo head: other tests use those).
OFFBOARDED_HEAD = "bad-inputs-offboarded"


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
    after = wait_for(
        lambda: _pipeline_counters(triton),
        5,
        interval_s=0.02,
        until=lambda after: after[0] - before[0] >= len(GOOD_REQUESTS),
        fail=False,
    )
    BURSTS.append((after[0] - before[0], after[1] - before[1]))
    return good, bad[0]


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
