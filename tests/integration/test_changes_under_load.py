"""Changes under load lose no request (issue 5 §4), against the session's server (fixture ``triton``).

A load generator (HTTP and gRPC threads, each with its own client) classifies continuously with
three demo heads and four heads of this module's own while the main thread onboards two new
heads (which then join the load), rolls ``roll-me`` to a version with other labels, and
offboards ``drop-me``. Every answer is recorded with its start and end time:

- heads that are not being offboarded: no failed request at all;
- ``roll-me``: version 1's labels until version 2 is READY, version 2's from then on, one switch;
- ``drop-me``: once ``offboard`` returned, every request fails at once (< 2 s) with NOT_FOUND
  "head 'drop-me' is not loaded", and the server stays up.

Demo heads are only read; this module's heads are offboarded at the end.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.http as triton_http
from headroom import config
from headroom.client.inference import HeadroomError
from headroom.repository.head_store import versions_of

from tests.polling import wait_for

pytestmark = pytest.mark.integration

LOADED_DEMO_HEADS = ("knowledge", "lifestyle", "smalltalk")
STEADY = ("steady-a", "steady-b")
ROLL, DROP = "roll-me", "drop-me"
NEW = ("new-one", "new-two")
OWN = (*STEADY, ROLL, DROP, *NEW)
INTENTS = {
    "steady-a": ["lights_on", "lights_off", "lock_door"],
    "steady-b": ["play_music", "stop_music"],
    ROLL: ["lights_on", "lights_off"],
    DROP: ["set_alarm", "timer_set"],
    "new-one": ["weather_query", "set_temperature"],
    "new-two": ["lock_door", "play_music", "weather_query"],
}
#: Version 2 of roll-me shares no label with version 1: each answer shows which version gave it.
ROLL_V2_INTENTS = ["play_music", "stop_music", "set_temperature"]
EXAMPLES_PER_INTENT = 12
TEXTS = (
    "turn on the lights in the hall",
    "what's the weather like tomorrow",
    "play something relaxing",
    "wake me up at seven",
    "who wrote hamlet",
    "do you like football",
    "hello there, how are you",
    "make it a bit warmer in here",
)
HTTP_THREADS = 2
GRPC_THREADS = 2
#: A refusal of the offboarded head must come back within this (no hang).
REFUSED_WITHIN_S = 2.0
#: Requests that started this long after offboard returned make up the "after" sample.
MIN_REFUSALS = 20
NOT_FOUND = {"404", "NOT_FOUND", "StatusCode.NOT_FOUND"}


@dataclass(frozen=True)
class Answer:
    head: str
    started: float
    ended: float
    labels: frozenset[str] | None  # None: the request failed
    status: str | None = None
    error: str = ""


class LoadGenerator:
    """Threads that classify continuously, each with its own client, cycling over ``heads``."""

    def __init__(self, triton, heads: list[str]) -> None:
        self.triton = triton
        self.heads = list(heads)
        self.answers: list[Answer] = []
        self.crashes: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        urls = [triton.http_url] * HTTP_THREADS + [triton.grpc_url] * GRPC_THREADS
        self._threads = [
            threading.Thread(target=self._run, args=(url, offset), name=f"load-{offset}", daemon=True)
            for offset, url in enumerate(urls)
        ]

    def add(self, head: str) -> None:
        with self._lock:
            self.heads.append(head)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread hangs"

    def count(self, head: str, since: float = 0.0) -> int:
        return sum(1 for a in list(self.answers) if a.head == head and a.started >= since)

    def wait_for(self, heads: list[str], count: int, since: float, timeout_s: float = 120) -> None:
        """Poll until every head got ``count`` requests that started after ``since``."""

        def counts() -> dict[str, int]:
            counted = {head: self.count(head, since) for head in heads}
            if any(n < count for n in counted.values()):
                assert not self.crashes, self.crashes
            return counted

        wait_for(
            counts,
            timeout_s,
            message=f"fewer than {count} requests per head",
            until=lambda counted: all(n >= count for n in counted.values()),
        )

    def _run(self, url: str, offset: int) -> None:
        try:
            with self.triton.client(url, concurrency=1, timeout_s=30) as client:
                step = offset
                while not self._stop.is_set():
                    with self._lock:
                        head = self.heads[step % len(self.heads)]
                    text = TEXTS[step % len(TEXTS)]
                    step += 1
                    started = time.monotonic()
                    (result,) = client.classify([text], head, return_errors=True)
                    ended = time.monotonic()
                    if isinstance(result, HeadroomError):
                        answer = Answer(head, started, ended, None, str(result.status), str(result))
                    else:
                        answer = Answer(head, started, ended, frozenset(result.probabilities))
                    self.answers.append(answer)
        except BaseException as exc:  # reported by the test
            self.crashes.append(exc)


class ReadinessWatch:
    """Polls one version of a model and records when Triton first reports it READY."""

    def __init__(self, triton, model: str, version: str) -> None:
        self.ready_at: float | None = None
        self._stop = threading.Event()
        address = triton.http_url.split("://")[1]
        self._thread = threading.Thread(target=self._run, args=(address, model, version), daemon=True)

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self, address: str, model: str, version: str) -> None:
        client = triton_http.InferenceServerClient(address)
        try:
            while not self._stop.is_set() and self.ready_at is None:
                if client.is_model_ready(model, version):
                    self.ready_at = time.monotonic()
                time.sleep(0.002)
        finally:
            client.close()


def training_file(path: Path, intents: list[str]) -> Path:
    lines: dict[str, list[str]] = {}
    for line in (config.DEMO_DATA_DIR / "smart_home.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            lines.setdefault(json.loads(line)["label"], []).append(line)
    chosen = [line for intent in intents for line in lines[intent][:EXAMPLES_PER_INTENT]]
    path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return path


def readiness_ttl_s(repository: Path) -> float:
    """The executor's readiness TTL (env override first, as the executor reads it)."""
    text = (repository / config.EXECUTOR_MODEL / "config.pbtxt").read_text(encoding="utf-8")
    match = re.search(r'key: "readiness_ttl_ms"\s*value: \{ string_value: "([0-9.]+)" \}', text)
    return float(os.environ.get("HEADROOM_READINESS_TTL_MS") or (match.group(1) if match else "200")) / 1000


def demo_labels(repository: Path, head: str) -> frozenset[str]:
    folder = repository / f"head_{head}"
    return frozenset((folder / str(versions_of(folder)[-1]) / "labels.txt").read_text(encoding="utf-8").split())


@pytest.fixture
def own_heads(triton):
    """This module's heads are offboarded at the end, whatever happened."""
    yield
    with triton.client() as client:
        for name in OWN:
            if (triton.repository / f"head_{name}").exists() or client.is_head_ready(name):
                triton.onboarding(client).offboard(name)


def test_onboard_roll_offboard_under_load_lose_no_request(triton, own_heads, tmp_path):
    expected = {head: demo_labels(triton.repository, head) for head in LOADED_DEMO_HEADS}
    expected |= {name: frozenset(intents) for name, intents in INTENTS.items()}
    v1, v2 = frozenset(INTENTS[ROLL]), frozenset(ROLL_V2_INTENTS)
    log_offset = triton.log_file.stat().st_size
    with triton.client() as control:
        for name in (*STEADY, ROLL, DROP):
            triton.onboarding(control).onboard(name, training_file(tmp_path / f"{name}.jsonl", INTENTS[name]))
        load = LoadGenerator(triton, [*LOADED_DEMO_HEADS, *STEADY, ROLL, DROP])
        load.start()
        try:
            load.wait_for(load.heads, 5, since=0.0)
            changes_began = time.monotonic()
            for name in NEW:
                triton.onboarding(control).onboard(name, training_file(tmp_path / f"{name}.jsonl", INTENTS[name]))
                load.add(name)
            roll_began = time.monotonic()
            with ReadinessWatch(triton, f"head_{ROLL}", "2") as watch:
                rolled = triton.onboarding(control).onboard(
                    ROLL, training_file(tmp_path / f"{ROLL}-v2.jsonl", ROLL_V2_INTENTS)
                )
            roll_returned = time.monotonic()
            assert rolled.version == 2 and watch.ready_at is not None
            drop_began = time.monotonic()
            triton.onboarding(control).offboard(DROP)
            drop_returned = time.monotonic()
            load.wait_for([DROP, ROLL, *NEW], MIN_REFUSALS, since=drop_returned)
            changes_ended = time.monotonic()
        finally:
            load.stop()
    assert not load.crashes, load.crashes
    answers = load.answers
    assert triton.server.process.poll() is None, "tritonserver died under the changes"

    # Heads that were not offboarded: not one failed request, each answered by its own head.
    kept = [a for a in answers if a.head != DROP]
    failed = [a for a in kept if a.labels is None]
    assert not failed, f"{len(failed)} requests to kept heads failed, e.g. {failed[:3]}"
    assert all(a.labels == expected[a.head] for a in kept if a.head != ROLL)

    # roll-me: version 1 until version 2 is READY, then version 2; one switch, never back.
    rolls = [a for a in answers if a.head == ROLL]
    assert {a.labels for a in rolls} <= {v1, v2}
    assert all(a.labels == v1 for a in rolls if a.ended < roll_began)
    first_v2_answered = min(a.ended for a in rolls if a.labels == v2)
    back_to_v1 = [a for a in rolls if a.labels == v1 and a.started > first_v2_answered]
    assert not back_to_v1, f"version 1 answered after version 2 had: {back_to_v1[:3]}"
    switch_by = watch.ready_at + readiness_ttl_s(triton.repository) + 0.05
    late_v1 = [a for a in rolls if a.labels == v1 and a.started > switch_by]
    assert not late_v1, f"version 1 answered {len(late_v1)} requests started after version 2 was READY"
    assert any(a.labels == v1 for a in rolls) and sum(a.labels == v2 for a in rolls) >= MIN_REFUSALS

    # drop-me: answered until the offboarding, refused at once and cleanly after it.
    drops = [a for a in answers if a.head == DROP]
    assert all(a.labels == expected[DROP] for a in drops if a.ended < drop_began)
    refusals = [a for a in drops if a.labels is None]
    for a in refusals:
        assert a.status in NOT_FOUND and f"head '{DROP}' is not loaded" in a.error, a
        assert a.ended - a.started < REFUSED_WITHIN_S, a
    after = [a for a in drops if a.started > drop_returned]
    assert len(after) >= MIN_REFUSALS and all(a.labels is None for a in after), after[:3]

    during = [a for a in answers if changes_began <= a.started <= changes_ended]
    unexpected = [a for a in during if a.labels is None and a.head != DROP]
    with triton.log_file.open("rb") as handle:
        handle.seek(log_offset)
        reloads = handle.read().decode("utf-8", "replace").count(f"loading: {config.EXECUTOR_MODEL}:")
    print(
        f"\nchanges under load: {len(during)} requests during {changes_ended - changes_began:.1f} s of changes "
        f"(onboard {len(NEW)}, roll, offboard; {len(answers)} in all, {HTTP_THREADS} HTTP + {GRPC_THREADS} gRPC "
        f"threads over {len(expected)} heads): {len(unexpected)} failed; {DROP}: {len(refusals)} refused "
        f"NOT_FOUND (max {max(a.ended - a.started for a in refusals) * 1000:.0f} ms); {ROLL}: "
        f"{sum(a.labels == v1 for a in rolls)} v1 / {sum(a.labels == v2 for a in rolls)} v2 answers, v2 READY "
        f"{watch.ready_at - roll_began:.2f} s after the roll began, onboard returned "
        f"{roll_returned - watch.ready_at:.2f} s later; executor reloads during the test: {reloads}"
    )
