"""Fuzzed requests to the one real tritonserver of the session (issue 5 §1).

``test_fuzzed_text_and_head_are_answered_or_refused_never_lost`` sends thousands of requests whose
``TEXT`` and ``HEAD`` come from hypothesis (any unicode text, raw bytes, real and made-up head
names) in small concurrent gRPC batches, next to two anchor requests with known answers. Every
request gets exactly one answer; a valid head with a non-blank UTF-8 text is answered with that
head's labels (no cross-routing); anything else is refused with INVALID_ARGUMENT or NOT_FOUND and
a message. ``HEADROOM_FUZZ_EXAMPLES`` (default 250 batches of 8 fuzzed requests) sets the length
of the run: ``HEADROOM_FUZZ_EXAMPLES=20000 pytest -s tests/integration/test_bad_input_fuzz.py`` is a soak.
Examples are random per run and kept in no example database (hypothesis only caches unicode
tables under the git-ignored ``.hypothesis/``); a failure prints the ``@reproduce_failure`` blob
that replays it. The bad-request matrix is in ``test_bad_inputs.py``, the helpers both use in
``tests/bad_requests.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from headroom import config
from headroom.naming import HEAD_NAME_PATTERN, RESERVED_HEAD_NAMES, InvalidHeadName, validate_head_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

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
    _answer,
    _assert_same_answer,
    _pipeline_counters,
    _refusal,
    _tokenizer,
    _value,
    pair,
)
from tests.conftest import DEMO_HEADS

pytestmark = pytest.mark.integration

# The shared module-scoped fixtures: pytest finds a fixture by its name in the test module.
alone, grpc_client, head_labels, tolerance = bad_requests.FIXTURES


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
