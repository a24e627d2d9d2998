"""One onboarding or offboarding of a head name at a time, across processes.

``head_lock`` holds an exclusive ``flock`` on ``<state dir>/locks/<name>.lock`` (on the
repository's filesystem, like everything under the state dir); the kernel releases it when its
holder finishes or dies.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headroom import config
from headroom.naming import validate_head_name

#: How often a waiter tries the lock again.
LOCK_POLL_S = 0.02


class HeadBusy(RuntimeError):
    """Another process kept a head's lock longer than the timeout."""


def lock_path(name: str, state_dir: Path) -> Path:
    return state_dir / "locks" / f"{validate_head_name(name)}.lock"


@contextmanager
def head_lock(name: str, state_dir: Path, timeout_s: float = config.DEFAULT_HEAD_LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold head ``name``'s exclusive lock (any process on this host); ``HeadBusy`` after ``timeout_s``.

    ``flock`` locks belong to an open file, so two holders in one process exclude each other as
    well, and the kernel releases a lock whose holder died. Lock files are never deleted: deleting
    one would let a newcomer lock a fresh file while a waiter still locks the old one.
    """
    path = lock_path(name, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise HeadBusy(
                        f"head {name!r} is being onboarded or offboarded elsewhere: {path} stayed locked "
                        f"for {timeout_s:g} s (HEADROOM_HEAD_LOCK_TIMEOUT_S)"
                    ) from None
                time.sleep(LOCK_POLL_S)
        yield path
    finally:
        os.close(fd)  # releases the lock
