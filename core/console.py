"""What the ``headroom`` command shows while it works: a spinner on a terminal, a log line otherwise."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("headroom")


class status:  # noqa: N801 - used as a context manager, like rich's own ``status``
    """A spinner with a message on a terminal; a plain log line otherwise."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._context = None

    def __enter__(self) -> None:
        if sys.stderr.isatty():
            from rich.console import Console

            self._context = Console(stderr=True).status(self.message)
            self._context.__enter__()
        else:
            log.info("%s ...", self.message)

    def __exit__(self, *exc_info: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc_info)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
