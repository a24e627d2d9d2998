"""The head naming rule, shared by onboarding, the launcher and the clients.

A tenant's head is called by its *name* (``smart_home``) and lives in Triton as the model
``head_<name>`` (``head_smart_home``). A name is 1-48 characters of lower-case ASCII letters,
digits, ``_`` and ``-``, starting with a letter or digit, and not one of the system models' names (``encoder``,
``tokenizer``, ``embed``, ``pipeline``). Because the pipeline only ever adds
the ``head_`` prefix to a name that matches this rule, ``HEAD`` can never reach ``encoder``,
``pipeline`` or any other non-head model. The executor enforces the very same rule on every
row it runs: ``head_name_problem`` is the server-side form (a message, not an exception), and the
executor imports it from here.
"""

from __future__ import annotations

import re
from pathlib import Path

from headroom.config import HEAD_MODEL_PREFIX, SYSTEM_MODELS

HEAD_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
#: Names refused even though they match the pattern, so nobody mistakes a head for these.
#: ``tokenizer`` was a system model until the ``embed`` model took over tokenization; it stays
#: refused, so no name that was refused before becomes valid.
RESERVED_HEAD_NAMES = frozenset({*SYSTEM_MODELS, "tokenizer"})
_HEAD_NAME = re.compile(HEAD_NAME_PATTERN)
#: Longest piece of a refused name echoed in the executor's error (gRPC carries messages in 8 KiB metadata).
SHOWN_NAME_CHARS = 64


class InvalidHeadName(ValueError):
    """A head name that breaks the naming rule."""


def validate_head_name(name: str) -> str:
    """Return ``name`` unchanged, or raise ``InvalidHeadName`` saying what the rule is."""
    if not isinstance(name, str) or not _HEAD_NAME.fullmatch(name):
        raise InvalidHeadName(
            f"invalid head name {name!r}: use 1-48 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    if name in RESERVED_HEAD_NAMES:
        raise InvalidHeadName(f"{name!r} is a system model, not a head name")
    return name


def head_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a head, or None when it can: the executor's form of the rule, the
    message a row naming it fails with (INVALID_ARG)."""
    if not isinstance(name, str) or not _HEAD_NAME.fullmatch(name):
        shown = repr(name)
        if isinstance(name, str) and len(name) > SHOWN_NAME_CHARS:
            shown = f"{name[:SHOWN_NAME_CHARS]!r}... ({len(name)} characters)"
        return (
            f"invalid head name {shown}: names are 1-48 characters of a-z, 0-9, '_' and '-' "
            "starting with a letter or digit"
        )
    if name in RESERVED_HEAD_NAMES:
        return f"'{name}' is a system model, not a head"
    return None


def head_model_name(name: str) -> str:
    """Triton model name of head ``name`` (``smart_home`` -> ``head_smart_home``)."""
    return HEAD_MODEL_PREFIX + validate_head_name(name)


def head_name_of(model_name: str) -> str | None:
    """Head name of a Triton model name, or None when the model is not a head."""
    if not model_name.startswith(HEAD_MODEL_PREFIX):
        return None
    name = model_name[len(HEAD_MODEL_PREFIX) :]
    return name if head_name_problem(name) is None else None


def head_models_in(repository: Path) -> list[str]:
    """Triton model names of all heads present in a model repository folder, sorted."""
    if not repository.is_dir():
        return []
    return sorted(
        entry.name
        for entry in repository.iterdir()
        if entry.is_dir() and head_name_of(entry.name) and (entry / "config.pbtxt").exists()
    )
