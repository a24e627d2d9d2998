"""The executor's read-only view of a head store on S3: ``HeadFiles`` for ``s3://`` repositories.

The same layout as on disk (``head_<name>/<version>/model.onnx``, ``labels.txt``, ``head.json``)
under the repository's prefix, with one rule more: S3 has no atomic rename, so a version counts
only once its ``COMPLETE`` marker exists (onboarding writes it last). A half-written version is
never listed, read or resolved.

Listing a head's versions is one S3 request, so each head's listing is reused for
``listing_ttl_s``: ``ServedVersions`` asks for the stamp of every head of every batch. Triton's
readiness of ``head_<name>`` still decides which version serves; the listing only says which
versions exist. Pure Python and boto3, no Triton import.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError
from headroom.config import HEAD_MODEL_PREFIX, S3_LISTING_TTL_S
from headroom.head_format import (
    HEAD_INFO_FILE,
    LABELS_FILE,
    MODEL_FILE,
    SLOTS_MODEL_FILE,
    TAGS_FILE,
    VERSION_COMPLETE_FILE,
    SlotFiles,
)
from headroom.s3 import S3Location, list_keys


def complete_versions(keys: list[str]) -> list[int]:
    """Version numbers whose ``<version>/COMPLETE`` marker is among ``keys`` (relative to the
    model's prefix), newest first."""
    versions = []
    for key in keys:
        version, _, rest = key.partition("/")
        if rest == VERSION_COMPLETE_FILE and version.isascii() and version.isdigit():
            versions.append(int(version))
    return sorted(versions, reverse=True)


class S3HeadFiles:
    """``HeadFiles`` over ``s3://host:port/bucket/path`` (credentials from ``AWS_*``)."""

    def __init__(
        self,
        location: S3Location,
        listing_ttl_s: float = S3_LISTING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        client=None,
    ) -> None:
        self.location = location
        self.repository = location.url
        self._client = client or location.client()
        self._ttl_s = listing_ttl_s
        self._clock = clock
        # head -> (listed at, complete versions newest first); the sweeper thread reads it too.
        self._listings: dict[str, tuple[float, tuple[int, ...]]] = {}
        self._lock = threading.Lock()

    def model_name(self, head: str) -> str:
        return HEAD_MODEL_PREFIX + head

    def _versions(self, head: str, fresh: bool = False) -> tuple[int, ...] | None:
        """Complete versions (newest first), None when the listing failed; cached for the TTL
        unless ``fresh``."""
        now = self._clock()
        with self._lock:
            cached = self._listings.get(head)
        if not fresh and cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        try:
            keys = list_keys(self._client, self.location, self.model_name(head))
        except (BotoCoreError, ClientError):
            return cached[1] if cached is not None else None  # S3 unreachable: keep the last answer
        versions = tuple(complete_versions(keys))
        with self._lock:
            self._listings[head] = (now, versions)
        return versions

    def stamp(self, head: str) -> tuple[int, ...] | None:
        """Changes whenever a complete version is added or removed; None once the head is gone."""
        versions = self._versions(head)
        return versions or None

    def versions(self, head: str) -> list[int]:
        return list(self._versions(head) or ())

    def refresh(self, head: str) -> list[int]:
        """List the head's versions now, past the cache (a version Triton serves may be newer)."""
        return list(self._versions(head, fresh=True) or ())

    def has_version(self, head: str, version: int) -> bool:
        return version in (self._versions(head) or ())

    def _get(self, head: str, version: int, name: str) -> bytes:
        key = self.location.key(self.model_name(head), str(version), name)
        try:
            return self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.location.bucket}/{key} is missing") from exc
            raise OSError(f"s3://{self.location.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise OSError(f"s3://{self.location.bucket}/{key}: {exc}") from exc

    def read(self, head: str, version: int) -> tuple[bytes, list[str]]:
        """The head file and its labels (OSError when missing or unreachable)."""
        model_bytes = self._get(head, version, MODEL_FILE)
        text = self._get(head, version, LABELS_FILE).decode("utf-8")
        return model_bytes, [line for line in text.split("\n") if line.strip()]

    def read_slots(self, head: str, version: int) -> SlotFiles | None:
        """The version's token head and its tags, or None for a head without slots."""
        try:
            model_bytes = self._get(head, version, SLOTS_MODEL_FILE)
        except FileNotFoundError:
            return None
        text = self._get(head, version, TAGS_FILE).decode("utf-8")
        return SlotFiles(model_bytes, [line for line in text.split("\n") if line.strip()])

    def trained_for(self, head: str, version: int) -> str | None:
        try:
            info = json.loads(self._get(head, version, HEAD_INFO_FILE))
        except (OSError, ValueError):
            return None
        value = info.get("encoder_fingerprint") if isinstance(info, dict) else None
        return value if isinstance(value, str) else None
