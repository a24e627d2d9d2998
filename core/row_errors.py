"""Why one row (one text and its head) got no answer: the codes, the error, and how it travels.

The executor answers a whole batch of rows in one response; a row it cannot answer carries its
failure in two outputs of that response: ``error_code`` (BYTES [B, 1], the code's *name*, ``b""``
for an answered row) and ``error_message`` (BYTES [B, 1], UTF-8). The pipeline reads them back
with ``from_wire`` and turns each into the ``TritonError`` its request fails with, through
``triton_error``: the one place a code name becomes a Triton status code.

Codes (the names of ``pb_utils.TritonError``'s codes, which clients see as gRPC status codes):

- ``INVALID_ARG``: the row names no valid head (naming rule, not UTF-8), or the request is malformed;
- ``NOT_FOUND``: no version of the head's registration model ``head_<name>`` is READY (never
  onboarded, offboarded, unloaded);
- ``UNAVAILABLE``: the head was trained against another encoder, or its file cannot serve;
- ``INTERNAL``: anything else (a head that failed to load for another reason).

Pure Python: the models pass ``triton_python_backend_utils`` in, so this module is imported by
the host and the models alike and tested without Triton.
"""

from __future__ import annotations

from typing import Any

INVALID_ARG = "INVALID_ARG"
NOT_FOUND = "NOT_FOUND"
UNAVAILABLE = "UNAVAILABLE"
INTERNAL = "INTERNAL"
#: Every code a row can fail with.
CODES = (INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL)
#: ``error_code`` of an answered row.
ANSWERED = b""


class RowError(Exception):
    """One row's failure: ``code`` (one of ``CODES``) and the message the client sees."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown row error code {code!r} (one of {', '.join(CODES)})")
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"RowError({self.code!r}, {self.message!r})"


def to_wire(error: RowError | None) -> tuple[bytes, bytes]:
    """(``error_code``, ``error_message``) of a row: ``(b"", b"")`` when it was answered."""
    if error is None:
        return ANSWERED, b""
    return error.code.encode("ascii"), error.message.encode("utf-8")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def from_wire(code: Any, message: Any) -> RowError | None:
    """The ``RowError`` of a row read back from ``error_code`` and ``error_message`` (bytes or
    str, as numpy hands them), or None when it was answered. An unknown code reads as INTERNAL."""
    name = _text(code)
    if not name:
        return None
    return RowError(name if name in CODES else INTERNAL, _text(message))


def triton_error(error: RowError, pb_utils: Any) -> Any:
    """A new ``pb_utils.TritonError`` for ``error``, with the Triton code of the same name.

    A new one each call: Triton frees a response's error with the response, so one TritonError
    must never be shared by two responses.
    """
    return pb_utils.TritonError(error.message, getattr(pb_utils.TritonError, error.code))
