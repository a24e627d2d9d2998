"""What the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel needs on disk before it starts.

- a backend directory with *copies* (Triton refuses symlinks) of ``libtriton_python.so``,
  ``triton_python_backend_utils.py`` and the stub built for the running Python, plus our
  Python-based ``onnxruntime`` backend (``backends/onnxruntime/model.py``);
- the Python models' bytecode compiled before the start (``precompile_models``): a
  ``__pycache__`` written inside a model folder later makes Triton treat the model as changed
  and reload it, and the isolated stub ignores ``PYTHONDONTWRITEBYTECODE``.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import sys
import threading
from pathlib import Path

from headroom import config
from headroom.server.errors import ServerError

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"
ORT_BACKEND_SOURCE = config.PROJECT_ROOT / "backends" / "onnxruntime" / "model.py"


def wheel_dir(package: str) -> Path:
    """The folder of an installed package (``ServerError`` when it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"package {package!r} is not installed: run `make install`")
    return Path(list(spec.submodule_search_locations)[0])


def triton_dir() -> Path:
    """``pytriton/tritonserver`` inside the installed wheel."""
    return wheel_dir("pytriton") / "tritonserver"


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.exists() and not target.is_symlink():
        if source.stat().st_size == target.stat().st_size and source.read_bytes() == target.read_bytes():
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: the test fixture and `make serve` may prepare the folder at once.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.copy2(source, tmp)
    tmp.replace(target)


def prepare_backend_dir(destination: Path) -> Path:
    """Lay out Triton's ``--backend-directory`` with real copies of every file it loads."""
    wheel = triton_dir()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / python_version / STUB_NAME
    if not stub.exists():
        raise ServerError(f"the Triton wheel has no Python backend stub for Python {python_version} ({stub})")
    python_dir = destination / "python"
    for name in PYTHON_BACKEND_FILES:
        _copy_if_changed(wheel / "backends" / "python" / name, python_dir / name)
    _copy_if_changed(stub, python_dir / STUB_NAME)
    (python_dir / STUB_NAME).chmod(0o755)
    _copy_if_changed(ORT_BACKEND_SOURCE, destination / "onnxruntime" / "model.py")
    return destination


def precompile_models(repository: Path) -> int:
    """Write the ``__pycache__`` of every Python model now, before Triton starts.

    The stub runs Python in isolated mode, so ``PYTHONDONTWRITEBYTECODE`` never reaches it: at its
    first start it would write ``__pycache__`` into the model's folder, Triton would then count
    the model as changed, and the first head loaded afterwards (an ensemble into ``executor``)
    would reload the executor and every head with it. Compiled here, nothing changes later.
    Returns how many files were (re)compiled.
    """
    compiled = 0
    for source in sorted(repository.glob("*/[0-9]*/*.py")):
        cached = Path(importlib.util.cache_from_source(str(source)))
        if cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime:
            continue
        py_compile.compile(str(source), cfile=str(cached), doraise=True)
        compiled += 1
    return compiled
