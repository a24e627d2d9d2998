"""tritonserver's environment: the allocator, the libraries and ``PATH``.

- jemalloc preloaded where installed (Debian: ``libjemalloc2``); without it, glibc's malloc
  limited to ``Settings.malloc_arena_max`` arenas (``MALLOC_ARENA_MAX``): each model load with
  10,000 models loaded passes through ~100 MiB of short-lived allocations, and glibc keeps the
  peak of every arena a load ran in (up to 8 per core);
- ``LD_LIBRARY_PATH`` with Python's LIBDIR and the wheel's ``nvidia_pytriton.libs``;
- ``PATH`` with this virtualenv's ``bin/`` first: the stub runs Python in isolated mode
  (``PYTHONPATH`` is ignored) and finds its packages through ``python3`` on ``PATH``;
  otherwise it would import the interpreter's global numpy 2 and outputs silently break.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from headroom import config
from headroom.server.backend_dir import wheel_dir
from headroom.server.errors import ServerError


def find_jemalloc(setting: str = "auto") -> str | None:
    """The jemalloc library to preload into tritonserver, or None (setting ``off``, or not found).

    Without it, ``server_environment`` limits glibc's arenas instead (``glibc_malloc_settings``).
    """
    if setting.lower() == "off":
        return None
    if setting.lower() != "auto":
        if not Path(setting).is_file():
            raise ServerError(f"HEADROOM_JEMALLOC={setting!r}: no such file (use auto, off or a path)")
        return setting
    return next((str(path) for path in map(Path, config.JEMALLOC_PATHS) if path.is_file()), None)


def glibc_malloc_settings(arena_max: int = config.DEFAULT_MALLOC_ARENA_MAX) -> dict[str, str]:
    """glibc malloc variables for a tritonserver without jemalloc: at most ``arena_max`` arenas.

    With thousands of models loaded, every ``load_model`` allocates and frees ~100 MiB (at 10,000
    models) on threads that glibc gives arenas of their own, and glibc keeps each arena's peak:
    with its default (8 arenas per core) 20 loads over gRPC at 10,000 heads took tritonserver from
    15 to 34 arena heaps and 1.7 GB more; with one arena the transient is reused and 50 loads left
    30-35 MiB. ``arena_max`` 0: glibc's default.
    """
    return {"MALLOC_ARENA_MAX": str(arena_max)} if arena_max > 0 else {}


def server_environment(base: dict[str, str] | None = None, settings: config.Settings | None = None) -> dict[str, str]:
    """tritonserver's environment: ``base`` (default ``os.environ``) with the allocator, library
    and ``PATH`` settings above (``settings``: jemalloc and arena choices, default ``Settings()``)."""
    settings = settings or config.Settings()
    env = dict(os.environ if base is None else base)
    jemalloc = find_jemalloc(settings.jemalloc)
    if jemalloc:
        env["LD_PRELOAD"] = os.pathsep.join(p for p in (jemalloc, env.get("LD_PRELOAD", "")) if p)
    else:
        for name, value in glibc_malloc_settings(settings.malloc_arena_max).items():
            env.setdefault(name, value)  # the operator's own MALLOC_* settings win
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = str(wheel_dir("pytriton").parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, libs, env.get("LD_LIBRARY_PATH", "")) if p)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join((venv_bin, env.get("PATH", "")))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.pop("PYTHONPATH", None)
    return env
