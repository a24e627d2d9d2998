"""The launcher's one exception."""

from __future__ import annotations


class ServerError(RuntimeError):
    """The server could not be prepared, did not start, or a model did not become ready."""
