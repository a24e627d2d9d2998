"""Which version of a head serves now: the newest version whose registration model is READY.

Loading and unloading ``head_<name>`` through Triton's model control is what switches a tenant
on and off, so every head the executor runs is first resolved here. Asking Triton
(``is_model_ready``, tens of microseconds) for every head of every batch would cost more than
running the heads, so an answer is reused for ``ttl_s``; it is looked up again at once when the
head's folder changes (a version added, the head offboarded: one ``stat``), when a newer version
on disk is waiting to become READY, and when the caller reports a failure (``forget``).

Pure Python: the readiness check is passed in (``pb_utils.is_model_ready`` in the executor).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from headroom.executor.head_files import HeadFiles


@dataclass(frozen=True)
class ServedVersion:
    version: int
    stamp: object  # the folder's stamp when resolved (HeadFiles.stamp)
    newest_on_disk: int
    checked_at: float


class ServedVersions:
    def __init__(
        self,
        files: HeadFiles,
        is_ready: Callable[[str, str], bool],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = files
        self._is_ready = is_ready
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, ServedVersion] = {}

    def resolve(self, head: str) -> int | None:
        """The version to run for ``head``, or None when no version of it is READY."""
        stamp = self._files.stamp(head)
        if stamp is None:
            self._cache.pop(head, None)
            return None
        now = self._clock()
        cached = self._cache.get(head)
        if cached is not None and cached.stamp == stamp and now - cached.checked_at < self._ttl_s:
            if cached.newest_on_disk == cached.version:
                return cached.version
            # A newer version is on disk: switch the moment it is READY (the old one serves till then).
            if not self._is_ready(self._files.model_name(head), str(cached.newest_on_disk)):
                return cached.version
        model = self._files.model_name(head)
        versions = self._files.versions(head)
        for attempt in range(2):
            for version in versions:
                if self._is_ready(model, str(version)):
                    self._cache[head] = ServedVersion(version, stamp, versions[0], now)
                    return version
            # A store whose listings are cached (S3) may not list yet the version Triton serves:
            # list again, once, before answering "not loaded".
            fresh = self._files.refresh(head) if attempt == 0 else None
            if not fresh or fresh == versions:
                break
            versions = fresh
        self._cache.pop(head, None)
        return None

    def forget(self, head: str) -> None:
        """Drop the cached answer (the head failed or went away): the next resolve asks Triton."""
        self._cache.pop(head, None)

    def cached_heads(self) -> list[str]:
        return list(self._cache)
