"""Run the real ``tritonserver`` binary shipped by the ``nvidia-pytriton`` wheel.

The wheel carries Triton 2.51 with its Python backend but no C++ ONNX Runtime backend; this
module prepares what the binary needs and manages its process:

- a backend directory with *copies* (Triton refuses symlinks) of ``libtriton_python.so``,
  ``triton_python_backend_utils.py`` and the stub built for the running Python, plus our
  Python-based ``onnxruntime`` backend (``backends/onnxruntime/model.py``);
- ``LD_LIBRARY_PATH`` with Python's LIBDIR and the wheel's ``nvidia_pytriton.libs``;
- ``PATH`` with this virtualenv's ``bin/`` first: the stub runs Python in isolated mode
  (``PYTHONPATH`` is ignored) and finds its packages through ``python3`` on ``PATH``;
  otherwise it would import the interpreter's global numpy 2 and outputs silently break;
- the Python models' bytecode compiled before the start (``precompile_models``): a
  ``__pycache__`` written inside a model folder later makes Triton treat the model as changed
  and reload it, and the isolated stub ignores ``PYTHONDONTWRITEBYTECODE``;
- ``--model-control-mode=explicit`` with the system models and every head loaded at start-up;
- jemalloc preloaded where installed (Debian: ``libjemalloc2``); without it, glibc's malloc
  limited to ``Settings.malloc_arena_max`` arenas (``MALLOC_ARENA_MAX``): each model load with
  10,000 models loaded passes through ~100 MiB of short-lived allocations, and glibc keeps the
  peak of every arena a load ran in (up to 8 per core).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import py_compile
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from headroom import config
from headroom.admin_key import validate as validate_admin_key
from headroom.naming import head_models_in

log = logging.getLogger(__name__)

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"
ORT_BACKEND_SOURCE = config.PROJECT_ROOT / "backends" / "onnxruntime" / "model.py"
POLL_INTERVAL_S = 0.2
#: Models that call other models (BLS) for the requests they accept: ``stop`` unloads them first,
#: one after the other (the pipeline's requests call ``embed``, whose requests call the encoder).
DRAIN_FIRST = (config.PIPELINE_MODEL, config.EMBED_MODEL)
#: How long a stop leaves Triton after SIGTERM, even when draining used up its timeout.
SIGTERM_GRACE_S = 5.0
#: In the name of the shared-memory region a Python-backend stub gets on its command line.
SHM_REGION_MARK = "_backend_shm_region_"


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies, the kernel sends SIGTERM to Triton."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _process_group(pgid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process in process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        members.append((int(entry.name), [arg.decode("utf-8", "replace") for arg in argv if arg]))
    return members


def reap_process_group(pgid: int) -> int:
    """Kill what is left of a stopped server's process group and remove their shared memory.

    Python-backend stubs normally exit when tritonserver dies, but Triton 2.51's stub deadlocks
    when its parent dies while the stub waits for the parent's reply (a BLS call or a metric
    family being created): killed under traffic, tritonserver leaves such stubs running for good,
    each holding its model's memory and its ``/dev/shm`` region. Returns how many were killed.
    """
    leftovers = _process_group(pgid)
    for pid, _argv in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _pid, argv in leftovers:
        for region in (arg for arg in argv if SHM_REGION_MARK in arg and "/" not in arg):
            try:
                os.unlink(Path("/dev/shm") / region)
            except FileNotFoundError:
                pass
    if leftovers:
        log.warning("killed %d process(es) the stopped tritonserver left behind", len(leftovers))
    return len(leftovers)


class ServerError(RuntimeError):
    """The server could not be prepared, did not start, or a model did not become ready."""


def _wheel_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"package {package!r} is not installed: run `make install`")
    return Path(list(spec.submodule_search_locations)[0])


def triton_dir() -> Path:
    """``pytriton/tritonserver`` inside the installed wheel."""
    return _wheel_dir("pytriton") / "tritonserver"


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
    libs = str(_wheel_dir("pytriton").parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, libs, env.get("LD_LIBRARY_PATH", "")) if p)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join((venv_bin, env.get("PATH", "")))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.pop("PYTHONPATH", None)
    return env


def startup_models(repository: Path) -> list[str]:
    """System models first, then every head found in the repository."""
    return [*config.SYSTEM_MODELS, *head_models_in(repository)]


def restriction_args(admin_key: str) -> list[str]:
    """Triton's own flags that make ``config.RESTRICTED_APIS`` need the admin key, over HTTP
    (header ``admin-key``) and gRPC (metadata ``triton-grpc-protocol-admin-key``).

    The syntax is ``<api>,<api>:<header>=<value>`` (Triton 2.51's ``--help`` shows a comma before
    the header, which the binary rejects). Triton takes the key only as a flag, so it is visible
    in the process list (README "Security"); never log the returned list.
    """
    key = validate_admin_key(admin_key, "the launcher")
    value = f"{','.join(config.RESTRICTED_APIS)}:{config.ADMIN_KEY_HEADER}={key}"
    return [f"--http-restricted-api={value}", f"--grpc-restricted-protocol={value}"]


def build_command(
    address: config.ServerAddress,
    repository: Path,
    backend_dir: Path,
    models: list[str],
    admin_key: str | None = None,
    log_verbose: int = 0,
) -> list[str]:
    """The ``tritonserver`` command line; with ``admin_key``, the control plane needs it."""
    command = [
        str(triton_dir() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=explicit",
        # Where the response-cache library lives in the wheel; used only with --cache-config.
        f"--cache-directory={triton_dir() / 'caches'}",
        # A head that fails to load must not keep the other tenants offline; the launcher
        # checks the system models itself and reports heads that did not come up.
        "--exit-on-error=false",
        "--strict-readiness=true",
        f"--http-port={address.http_port}",
        f"--grpc-port={address.grpc_port}",
        f"--metrics-port={address.metrics_port}",
        f"--log-verbose={log_verbose}",
    ]
    command += [f"--load-model={name}" for name in models]
    if admin_key is not None:
        command += restriction_args(admin_key)
    return command


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on this host right now (tests and benchmarks run beside ``make serve``)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_address(host: str = "localhost") -> config.ServerAddress:
    """A server address on free HTTP, gRPC and metrics ports."""
    http_port, grpc_port, metrics_port = free_ports(3)
    return config.ServerAddress(host, http_port, grpc_port, metrics_port)


def http_status(url: str, method: str = "GET", timeout_s: float = 2.0) -> int | None:
    """Status of ``url``, or None when nothing answers (readiness polling)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


class TritonServer:
    """One ``tritonserver`` process: ``start()``, ``wait_ready()``, ``stop()`` (or ``with``)."""

    def __init__(
        self,
        address: config.ServerAddress,
        repository: Path,
        log_file: Path | None = None,
        models: list[str] | None = None,
        system_models: tuple[str, ...] = config.SYSTEM_MODELS,
        extra_args: tuple[str, ...] = (),
        admin_key: str | None = None,
        state_dir: Path | None = None,
        settings: config.Settings | None = None,
    ) -> None:
        """``models``: what to load at start-up (default: system models and every head found);
        ``system_models``: those that must be READY (benchmarks of other layouts pass their own);
        ``extra_args``: more ``tritonserver`` flags (e.g. ``--cache-config`` for tuning runs);
        ``admin_key``: required by the control plane (``config.RESTRICTED_APIS``) when set;
        None leaves it open (benchmarks that start their own server on free ports);
        ``state_dir``: where the backend directory is laid out (default: beside the repository);
        ``settings``: allocator, log level and timeouts (default ``Settings()``, no environment)."""
        self.address = address
        self.repository = Path(repository).resolve()
        self.state_dir = Path(state_dir) if state_dir is not None else config.state_dir_for(self.repository)
        self.settings = settings or config.Settings()
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.requested_models = models
        self.system_models = system_models
        self.extra_args = tuple(extra_args)
        self.admin_key = admin_key
        self.models: list[str] = []
        self._log_handle = None
        #: Set once ``wait_ready`` saw this process serve: only then does ``stop`` drain (a server
        #: that never came up may have found its ports taken by another one).
        self._served = False

    def start(self) -> None:
        if self.process is not None:
            raise ServerError("server already started")
        for name in self.system_models:
            if not (self.repository / name / "config.pbtxt").exists():
                raise ServerError(f"{self.repository / name} is missing: is this a headroom model repository?")
        backend_dir = prepare_backend_dir(self.state_dir / "backends")
        precompile_models(self.repository)
        if self.requested_models is not None:
            self.models = list(self.requested_models)
        else:
            self.models = startup_models(self.repository)
        command = [
            *build_command(
                self.address, self.repository, backend_dir, self.models, self.admin_key, self.settings.log_verbose
            ),
            *self.extra_args,
        ]
        log.info(
            "starting tritonserver with %d models, control plane %s",
            len(self.models),
            "open" if self.admin_key is None else "behind the admin key",
        )
        output = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("ab")
            output = self._log_handle
        try:
            self.process = subprocess.Popen(
                command,
                env=server_environment(settings=self.settings),
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                preexec_fn=_die_with_parent,
                # A process group of its own: ``stop`` ends the stubs a crashed server leaves
                # behind, and a terminal's Ctrl-C reaches only the launcher, which drains first.
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise ServerError(f"cannot start {command[0]}: {exc}") from exc

    def wait_ready(self, timeout_s: float | None = None, stop: threading.Event | None = None) -> list[str]:
        """Poll until the server is live and the system models are READY.

        Returns the heads that failed to load (they are reported, not fatal). Setting ``stop``
        (a signal handler does) abandons the wait with ``ServerError``. ``timeout_s`` defaults to
        ``settings.ready_timeout_s``.
        """
        timeout_s = self.settings.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        base = self.address.http_url
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                raise ServerError("start-up interrupted")
            self._check_alive()
            if (
                http_status(f"{base}/v2/health/live") == 200
                and all(http_status(f"{base}/v2/models/{name}/ready") == 200 for name in self.system_models)
                # Triton opens the metrics port after HTTP; callers read the executor's gauges there.
                and http_status(f"http://{self.address.host}:{self.address.metrics_port}/metrics") == 200
            ):
                # --load-model finishes every model before the endpoints come up, so the
                # other models that are not ready now failed to load.
                self._served = True
                return self._not_ready(self._ready_models())
            time.sleep(POLL_INTERVAL_S)
        raise ServerError(f"tritonserver did not become ready within {timeout_s:.0f} s{self._log_hint()}")

    def _ready_models(self) -> set[str] | None:
        """Names READY in the repository index (one call, however many heads), None if refused."""
        headers = {"Content-Type": "application/json"}
        if self.admin_key is not None:
            headers[config.ADMIN_KEY_HEADER] = self.admin_key
        request = urllib.request.Request(
            f"{self.address.http_url}/v2/repository/index", data=b'{"ready": true}', headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return {entry["name"] for entry in json.load(response) if entry.get("state") == "READY"}
        except (OSError, ValueError, KeyError):
            return None

    def _not_ready(self, ready: set[str] | None) -> list[str]:
        base = self.address.http_url
        if ready is None:  # index unavailable: ask model by model
            return [
                name
                for name in self.models
                if name not in self.system_models and http_status(f"{base}/v2/models/{name}/ready") != 200
            ]
        return [name for name in self.models if name not in self.system_models and name not in ready]

    def _check_alive(self) -> None:
        if self.process is None:
            raise ServerError("server not started")
        code = self.process.poll()
        if code is not None:
            raise ServerError(f"tritonserver exited with code {code} during start-up{self._log_hint()}")

    def _log_hint(self) -> str:
        return f" (see {self.log_file})" if self.log_file else " (see its log above)"

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Drain the BLS models (``drain``), SIGTERM (Triton drains the rest), SIGKILL after ``timeout_s``."""
        if self.process is None:
            return None
        timeout_s = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        if self.process.poll() is None:
            deadline = time.monotonic() + timeout_s
            if self._served:
                self.drain(timeout_s)
            self.process.send_signal(signal.SIGTERM)
            wait_s = max(deadline - time.monotonic(), SIGTERM_GRACE_S)
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0f s; killing it", timeout_s)
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        reap_process_group(self.process.pid)
        self._served = False
        self.process = None
        self._close_log()
        return code

    def drain(self, timeout_s: float | None = None) -> list[str]:
        """Unload the ``DRAIN_FIRST`` models in order, each once the requests it holds are answered.

        On SIGTERM Triton 2.51 waits for in-flight requests but at once refuses every new
        inference with "Server not ready", the calls a BLS model makes for a request it has
        already accepted included: each pipeline request still queued or running would fail.
        Unloading the pipeline through model control first refuses new requests to it (gRPC
        UNAVAILABLE / HTTP 400 "... has no available versions") while the ones it holds finish
        against models that still serve; then ``embed`` the same way, whose requests call the
        encoder. Returns the models drained; problems are logged (the SIGTERM that follows
        still stops the server).
        """
        timeout_s = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        drained = []
        for name in DRAIN_FIRST:
            if name not in self.models:
                continue
            try:
                self._control_post(f"/v2/repository/models/{name}/unload")
            except (OSError, ValueError) as exc:
                log.warning("could not unload %s before stopping: %s", name, exc)
                continue
            drained.append(name)
            if not self._wait_unloaded(name, deadline):
                log.warning("%s still held requests after %.0f s", name, timeout_s)
                break
        return drained

    def _wait_unloaded(self, name: str, deadline: float) -> bool:
        """Wait until ``name`` no longer holds requests (UNLOADING until its last is answered)."""
        while time.monotonic() < deadline:
            try:
                index = json.loads(self._control_post("/v2/repository/index"))
                state = {entry["name"]: entry.get("state") for entry in index}.get(name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("could not follow the drain: %s", exc)
                return False
            if state not in ("READY", "UNLOADING"):
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def _control_post(self, path: str) -> bytes:
        """POST to a control endpoint with the admin key; the body of the answer."""
        headers = {"Content-Type": "application/json"}
        if self.admin_key is not None:
            headers[config.ADMIN_KEY_HEADER] = self.admin_key
        request = urllib.request.Request(f"{self.address.http_url}{path}", data=b"", headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
