"""Heads in an S3 model repository: the head store of a cluster (docs/cluster.md).

The layout is the local one (``head_<name>/config.pbtxt``, ``head_<name>/<version>/model.onnx``,
``labels.txt``, ``head.json``) under the repository's prefix. S3 has no rename, so a version is
written object by object under its own prefix and becomes *complete* only when its ``COMPLETE``
marker, written last, exists; readers (the executor, the reconciler, Triton loads with an
explicit version list) take complete versions only, so no replica ever loads half a head. Taking
a version away deletes its marker first, so it stops being complete before its files go.

Offboarded heads and withdrawn versions are copied under the archive prefix (the repository's
prefix with ``.archive`` appended: outside the repository, where Triton never looks) before they
are deleted. One writer per head name at a time: onboarding holds ``headroom.repository.locks``
on its host; run cluster onboardings from one host (or one at a time per name).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from headroom import config
from headroom.head_format import VERSION_COMPLETE_FILE, SlotFiles
from headroom.model_config import CONFIG_FILE
from headroom.naming import head_model_name, head_name_of
from headroom.repository.head_store import StoredHead, registration_config, version_files
from headroom.s3 import S3Location, list_keys

#: Appended to the repository's prefix for the archive (``repo`` -> ``repo.archive``).
ARCHIVE_SUFFIX = ".archive"
#: Never uploaded: bytecode the stub writes, editor and OS leftovers.
SKIPPED_PARTS = ("__pycache__", ".DS_Store")


class S3StoreError(RuntimeError):
    """The S3 repository cannot be used: unreachable, credentials refused, not a headroom repository."""


def describe_s3_error(exc: Exception, location: S3Location) -> str:
    """A message naming what to fix for a failed S3 call (credentials, endpoint, bucket)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = location.url
    if isinstance(exc, NoCredentialsError):
        return f"{where}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, EndpointConnectionError):
        return f"{where}: cannot reach the S3 endpoint {location.endpoint or '(AWS)'}: {exc}"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403", "InvalidClientTokenId"):
            return f"{where}: S3 refused the credentials ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        if code in ("NoSuchBucket", "404"):
            return f"{where}: bucket {location.bucket!r} does not exist"
        return f"{where}: S3 error {code}: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"


def _version_of(key: str) -> tuple[int, str] | None:
    """(version, file) of ``<version>/<file>``, None for other keys (config.pbtxt...)."""
    version, _, rest = key.partition("/")
    if not rest or not (version.isascii() and version.isdigit()):
        return None
    return int(version), rest


class S3HeadStore:
    """The heads of ``s3://host:port/bucket/path``; the interface of ``LocalHeadStore``."""

    #: Loads must name the versions to load: a version folder may exist before it is complete.
    atomic = False

    def __init__(self, location: S3Location | str, client=None) -> None:
        self.location = S3Location.parse(location) if isinstance(location, str) else location
        self.archive = S3Location(
            self.location.bucket, (self.location.prefix or "repo") + ARCHIVE_SUFFIX, self.location.endpoint
        )
        self._client = client or self.location.client()

    @property
    def url(self) -> str:
        return self.location.url

    # --- reading ---------------------------------------------------------------------------
    def check(self, require_repository: bool = True) -> None:
        """Reachable, credentials accepted and (``require_repository``) a headroom repository;
        S3StoreError naming what to fix otherwise."""
        try:
            keys = set(self._list_top())
        except Exception as exc:  # botocore's errors and the sockets'
            raise S3StoreError(describe_s3_error(exc, self.location)) from exc
        if not require_repository:
            return
        missing = [name for name in config.SYSTEM_MODELS if name not in keys]
        if missing:
            raise S3StoreError(
                f"{self.url} holds no {', '.join(missing)}: publish the repository first "
                "(`headroom publish --to s3://...`)"
            )

    def _list_top(self) -> list[str]:
        prefix = self.location.key() + "/" if self.location.prefix else ""
        names = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix, Delimiter="/"):
            names.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", ()))
        return names

    def _get(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()

    def _put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data)

    def read_encoder_info(self) -> dict:
        """The served encoder's ``encoder.json`` (fingerprint, variant, dimensions)."""
        key = self.location.key(config.ENCODER_MODEL, config.ENCODER_VERSION, config.ENCODER_INFO_FILE)
        try:
            return json.loads(self._get(key))
        except Exception as exc:
            raise FileNotFoundError(f"{describe_s3_error(exc, self.location)} (reading {key})") from exc

    def _head_keys(self, name: str) -> list[str]:
        return list_keys(self._client, self.location, head_model_name(name))

    def versions(self, name: str) -> list[int]:
        """Every version of head ``name`` with any object, complete or not, ascending."""
        return sorted({parsed[0] for key in self._head_keys(name) if (parsed := _version_of(key))})

    def complete_versions(self, name: str) -> list[int]:
        """Versions of head ``name`` whose marker exists, ascending."""
        parsed = (_version_of(key) for key in self._head_keys(name))
        return sorted({p[0] for p in parsed if p is not None and p[1] == VERSION_COMPLETE_FILE})

    def complete_heads(self) -> dict[str, list[int]]:
        """Every head with at least one complete version -> its complete versions, ascending.

        One listing of the whole repository (a page per thousand objects): what a reconciling
        replica compares with what it has loaded.
        """
        heads: dict[str, list[int]] = {}
        for key in list_keys(self._client, self.location):
            model, _, rest = key.partition("/")
            name = head_name_of(model)
            parsed = _version_of(rest)
            if name is not None and parsed is not None and parsed[1] == VERSION_COMPLETE_FILE:
                heads.setdefault(name, []).append(parsed[0])
        return {name: sorted(versions) for name, versions in sorted(heads.items())}

    # --- writing ---------------------------------------------------------------------------
    def _write_version(self, name: str, version: int, files: dict[str, bytes]) -> None:
        model = head_model_name(name)
        for file_name, content in files.items():
            self._put(self.location.key(model, str(version), file_name), content)

    def _mark_complete(self, name: str, version: int) -> None:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._put(self.location.key(head_model_name(name), str(version), VERSION_COMPLETE_FILE), created.encode())

    def write_head_model(
        self, name: str, model_bytes: bytes, labels: list[str], info: dict, slots: SlotFiles | None = None
    ) -> StoredHead:
        """Write head ``name`` as version 1 (with its registration ``config.pbtxt``) or as the
        version after every one it has (complete or not); complete once the marker is written."""
        model = head_model_name(name)
        existing = self.versions(name)
        version = (existing or [0])[-1] + 1
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        full_info = {"name": name, "version": version, "labels": list(labels), "created_at": created, **info}
        try:
            self._write_version(name, version, version_files(model_bytes, labels, full_info, slots))
            if not existing:
                self._put(self.location.key(model, CONFIG_FILE), registration_config(name).encode("utf-8"))
            self._mark_complete(name, version)
        except BaseException:
            self._delete_version(name, version)
            raise
        return StoredHead(name=name, model_name=model, version=version, path=self.location.key(model))

    # --- taking away (archive, then delete) ---------------------------------------------------
    def _archive_prefix(self, model: str, suffix: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return self.archive.key(f"{model}{suffix}.{stamp}.{uuid.uuid4().hex[:8]}")

    def _move(self, keys: list[str], below: str, target_prefix: str) -> None:
        """Copy ``keys`` (relative to the repository prefix, all under ``below``) to the archive,
        then delete them: the marker first, so what is being moved is never complete meanwhile."""
        bucket = self.location.bucket
        ordered = sorted(keys, key=lambda k: not k.endswith("/" + VERSION_COMPLETE_FILE))
        for key in ordered:
            relative = key[len(below) :].lstrip("/")
            source = {"Bucket": bucket, "Key": self.location.key(key)}
            self._client.copy_object(Bucket=bucket, Key=f"{target_prefix}/{relative}", CopySource=source)
        for key in ordered:
            self._client.delete_object(Bucket=bucket, Key=self.location.key(key))

    def _delete_version(self, name: str, version: int) -> None:
        model = head_model_name(name)
        keys = [f"{model}/{k}" for k in self._head_keys(name) if (p := _version_of(k)) and p[0] == version]
        for key in sorted(keys, key=lambda k: not k.endswith("/" + VERSION_COMPLETE_FILE)):
            self._client.delete_object(Bucket=self.location.bucket, Key=self.location.key(key))

    def archive_version(self, name: str, version: int, suffix: str = "") -> str | None:
        """Move one version into the archive; its archive prefix, None when it was not there."""
        model = head_model_name(name)
        below = f"{model}/{version}"
        keys = [f"{model}/{k}" for k in self._head_keys(name) if (p := _version_of(k)) and p[0] == version]
        if not keys:
            return None
        target = self._archive_prefix(model, f".v{version}{suffix}")
        self._move(keys, below, target)
        return f"s3://{self.archive.bucket}/{target}"

    def archive_old_versions(self, name: str, keep: int) -> list[str]:
        """Move the versions older than ``keep`` into the archive (newer ones stay)."""
        return [moved for v in self.versions(name) if v < keep if (moved := self.archive_version(name, v))]

    def archive_head(self, name: str, suffix: str = "") -> str | None:
        """Move a head's every object into the archive; None when it was not there."""
        model = head_model_name(name)
        keys = [f"{model}/{k}" for k in self._head_keys(name)]
        if not keys:
            return None
        target = self._archive_prefix(model, suffix)
        # Versions first (markers first), config.pbtxt last: Triton never sees a head without it.
        self._move(sorted(keys, key=lambda k: k.endswith("/" + CONFIG_FILE)), model, target)
        return f"s3://{self.archive.bucket}/{target}"

    # --- publishing a local repository --------------------------------------------------------
    def publish(self, repository: Path, progress: Callable[[str], None] | None = None) -> int:
        """Upload a local model repository (system models and heads); returns the files written.

        Each head version's marker is written after its files; bytecode is skipped. Existing
        objects of the same names are replaced; nothing else is deleted.
        """
        repository = Path(repository)
        written = 0
        for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(
                p for p in model_dir.rglob("*") if p.is_file() and not any(s in p.parts for s in SKIPPED_PARTS)
            )
            versions = set()
            for path in files:
                relative = path.relative_to(repository).as_posix()
                self._put(self.location.key(relative), path.read_bytes())
                written += 1
                parsed = _version_of(path.relative_to(model_dir).as_posix())
                if parsed is not None and head_name_of(model_dir.name) is not None:
                    versions.add(parsed[0])
            for version in sorted(versions):
                if not (model_dir / str(version) / VERSION_COMPLETE_FILE).exists():
                    self._mark_complete(model_dir.name[len(config.HEAD_MODEL_PREFIX) :], version)
                    written += 1
            if progress is not None:
                progress(model_dir.name)
        return written
