"""The admin key guarding Triton's control plane (load, unload, repository index, ...).

Triton checks it itself (``--http-restricted-api`` / ``--grpc-restricted-protocol``, see
``headroom.server.launcher.restriction_args``); this module only finds, creates and formats it. The key
comes from ``HEADROOM_ADMIN_KEY`` if set, else from the key file (``<state dir>/admin.key``,
env ``HEADROOM_ADMIN_KEY_FILE``), which ``headroom serve`` creates on first run. A key is never
logged or printed: ``fingerprint`` names one without revealing it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path
from typing import NamedTuple

from headroom import config

log = logging.getLogger(__name__)

#: Characters that travel unchanged in a header and in Triton's ``<api>:<header>=<value>`` flag.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")


class AdminKeyError(ValueError):
    """An admin key that is malformed, or a key file that cannot be read or written."""


class AdminKey(NamedTuple):
    """A key and where it came from: ``path`` is None when it came from the environment."""

    key: str
    path: Path | None
    created: bool


def fingerprint(key: str) -> str:
    """A short, non-reversible name for ``key`` (for messages; never log the key itself)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def validate(key: str, source: str) -> str:
    """``key`` stripped of surrounding whitespace, or ``AdminKeyError`` naming ``source``."""
    key = key.strip()
    if not KEY_PATTERN.fullmatch(key):
        raise AdminKeyError(
            f"the admin key from {source} is malformed: it must be 16-256 characters of "
            "A-Z a-z 0-9 . _ ~ + / - (a new one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return key


def _read_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminKeyError(f"cannot read the admin key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("admin key file %s is accessible to other users (mode %o): chmod 600 it", path, mode & 0o777)
    return validate(text, str(path))


def load_admin_key(key_file: Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The admin key: ``HEADROOM_ADMIN_KEY`` when set and non-empty, else the content of
    ``key_file`` when given and present (``Settings.admin_key_file``), else of the file that
    ``HEADROOM_ADMIN_KEY_FILE`` names, else None. The environment is read when called."""
    environ = os.environ if environ is None else environ
    value = environ.get(config.ADMIN_KEY_ENV, "")
    if value.strip():
        return validate(value, config.ADMIN_KEY_ENV)
    if key_file is None:
        named = environ.get(config.ADMIN_KEY_FILE_ENV, "")
        if not named:
            return None
        key_file = Path(named)
    path = Path(key_file)
    return _read_file(path) if path.is_file() else None


def _write_new(path: Path, key: str) -> bool:
    """Write ``key`` to ``path`` with mode 0600, atomically, unless ``path`` exists (False then)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces: whoever creates the file first wins, and a reader never
        # sees a half-written key.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def ensure_admin_key(key_file: Path, environ: dict[str, str] | None = None) -> AdminKey:
    """The key from the environment or the key file; a new random one written to the key file
    (mode 0600) when there is neither."""
    environ = os.environ if environ is None else environ
    path = Path(key_file)
    existing = load_admin_key(path, environ)
    if existing is not None:
        from_env = bool(environ.get(config.ADMIN_KEY_ENV, "").strip())
        return AdminKey(existing, None if from_env else path, False)
    key = secrets.token_urlsafe(32)
    try:
        created = _write_new(path, key)
    except OSError as exc:
        raise AdminKeyError(f"cannot write the admin key file {path}: {exc}") from exc
    if not created:  # another process created it meanwhile: use theirs
        return AdminKey(_read_file(path), path, False)
    log.info("created admin key %s in %s", fingerprint(key), path)
    return AdminKey(key, path, True)


def admin_headers(key: str | None, protocol: str) -> dict[str, str] | None:
    """Request headers that carry ``key`` for ``protocol`` ("http" or "grpc"); None without a key."""
    if not key:
        return None
    name = config.ADMIN_KEY_GRPC_HEADER if protocol == "grpc" else config.ADMIN_KEY_HEADER
    return {name: key}
