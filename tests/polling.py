"""The tests' one polling helper: wait for a condition instead of hand-written deadline loops."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    message: str = "condition not met",
    *,
    until: Callable[[T], object] = bool,
    ignoring: tuple[type[BaseException], ...] = (),
    fail: bool = True,
) -> T:
    """Call ``condition`` every ``interval_s`` until ``until(value)`` holds (by default: the value is
    truthy) and return that value. It is called once more at the deadline, so a slow machine still
    gets its last look.

    On timeout, raise ``AssertionError`` with ``message`` and the last value (or the last exception
    among ``ignoring``, which are retried, not raised); with ``fail=False`` return the last value
    instead, for a wait whose caller asserts on what it got. Any other exception (an assertion
    inside ``condition`` included) propagates at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        expired = time.monotonic() >= deadline
        try:
            value = condition()
        except ignoring as exc:
            if expired:
                raise AssertionError(f"{message} within {timeout_s} s; last error: {exc!r}") from exc
        else:
            if until(value):
                return value
            if expired:
                if not fail:
                    return value
                raise AssertionError(f"{message} within {timeout_s} s; last value: {value!r}")
        time.sleep(interval_s)
