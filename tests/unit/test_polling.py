"""tests/polling.wait_for: the value it returns, what it raises on timeout, what it retries."""

from __future__ import annotations

import pytest

from tests.polling import wait_for


def test_returns_the_first_truthy_value() -> None:
    values = iter([0, None, [], "ready"])
    assert wait_for(lambda: next(values), 5, interval_s=0) == "ready"


def test_until_decides_and_the_value_is_returned() -> None:
    values = iter([[1, 2], [1], []])
    assert wait_for(lambda: next(values), 5, interval_s=0, until=lambda alive: not alive) == []


def test_timeout_raises_with_the_message_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"never ready within 0.05 s; last value: 7"):
        wait_for(lambda: 7, 0.05, interval_s=0.01, message="never ready", until=lambda value: value > 7)


def test_fail_false_returns_the_last_value_on_timeout() -> None:
    calls = []
    assert (
        wait_for(lambda: calls.append(1) or len(calls), 0.05, interval_s=0.01, until=lambda n: n > 10**6, fail=False)
        > 1
    )


def test_ignored_exceptions_are_retried_and_reported_on_timeout() -> None:
    attempts = iter([OSError("refused"), OSError("refused"), "up"])

    def connect() -> str:
        attempt = next(attempts)
        if isinstance(attempt, Exception):
            raise attempt
        return attempt

    assert wait_for(connect, 5, interval_s=0, ignoring=(OSError,)) == "up"

    def refuse() -> None:
        raise OSError("refused")

    with pytest.raises(AssertionError, match=r"no server within 0.05 s; last error: OSError\('refused'\)"):
        wait_for(refuse, 0.05, interval_s=0.01, message="no server", ignoring=(OSError,))


def test_other_exceptions_propagate_at_once() -> None:
    def crash() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        wait_for(crash, 5, ignoring=(OSError,))
