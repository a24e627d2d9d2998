"""Run the real ``tritonserver`` binary shipped by the ``nvidia-pytriton`` wheel: ``TritonServer``.

The wheel carries Triton 2.51 with its Python backend but no C++ ONNX Runtime backend. The jobs
around the process live beside this module, each in its own:

- ``backend_dir``: the backend directory of real copies, and the models' bytecode compiled first;
- ``environment``: jemalloc or a limited glibc malloc, ``LD_LIBRARY_PATH``, ``PATH``;
- ``command``: the command line (``--model-control-mode=explicit``, the system models and every
  head loaded at start-up, the admin key's restrictions);
- ``processes``: the process group tied to the launcher and reaped after a stop;
- ``health``: readiness and model control through ``tritonclient.http``;
- ``ports``: free ports for servers beside ``make serve``.

On an S3 repository (``s3://host:port/bucket/path``, docs/cluster.md) the launcher checks the
bucket and the credentials before Triton starts, loads only the system models, tells the executor
where the head store is, and keeps the heads in step with the store (``headroom.cluster.reconciler``).

This module starts, waits for, drains and stops the process, and re-exports what callers import
from here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from headroom import config
from headroom.s3 import is_s3_url
from headroom.server import health
from headroom.server.backend_dir import precompile_models, prepare_backend_dir, triton_dir
from headroom.server.command import build_command, restriction_args, startup_models
from headroom.server.environment import find_jemalloc, glibc_malloc_settings, server_environment
from headroom.server.errors import ServerError
from headroom.server.ports import free_address, free_ports, ports_in_use
from headroom.server.processes import die_with_parent, reap_process_group, unlink_orphaned_regions

__all__ = [
    "ServerError",
    "TritonServer",
    "build_command",
    "find_jemalloc",
    "free_address",
    "free_ports",
    "glibc_malloc_settings",
    "precompile_models",
    "prepare_backend_dir",
    "reap_process_group",
    "restriction_args",
    "server_environment",
    "startup_models",
    "triton_dir",
]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
#: Models that call other models (BLS) for the requests they accept: ``stop`` unloads them first,
#: one after the other (the pipeline's requests call ``embed``, whose requests call the encoder).
DRAIN_FIRST = (config.PIPELINE_MODEL, config.EMBED_MODEL)
#: How much of the server's log a start-up failure quotes.
LOG_TAIL_LINES = 25
LOG_TAIL_BYTES = 16384
#: How long a stop leaves Triton after SIGTERM, even when draining used up its timeout.
SIGTERM_GRACE_S = 5.0


class TritonServer:
    """One ``tritonserver`` process: ``start()``, ``wait_ready()``, ``stop()`` (or ``with``)."""

    def __init__(
        self,
        address: config.ServerAddress,
        repository: Path | str,
        log_file: Path | None = None,
        models: list[str] | None = None,
        system_models: tuple[str, ...] = config.SYSTEM_MODELS,
        extra_args: tuple[str, ...] = (),
        admin_key: str | None = None,
        state_dir: Path | None = None,
        settings: config.Settings | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        """``models``: what to load at start-up (default: system models and every head found);
        ``system_models``: those that must be READY (benchmarks of other layouts pass their own);
        ``extra_args``: more ``tritonserver`` flags (e.g. ``--cache-config`` for tuning runs);
        ``admin_key``: required by the control plane (``config.RESTRICTED_APIS``) when set;
        None leaves it open (benchmarks that start their own server on free ports);
        ``state_dir``: where the backend directory is laid out (default: beside the repository);
        ``settings``: allocator, log level and timeouts (default ``Settings()``, no environment).
        ``repository``: a folder, or an ``s3://`` URL (then ``state_dir`` is required);
        ``environment``: variables set for tritonserver (and this launcher's S3 calls) over the
        process's own, e.g. one replica's ``AWS_*`` credentials."""
        self.address = address
        self.on_s3 = is_s3_url(str(repository))
        self.repository: Path | str = str(repository) if self.on_s3 else Path(repository).resolve()
        if state_dir is None and self.on_s3:
            raise ServerError("a server on an S3 repository needs a state_dir (its backends live there)")
        self.state_dir = Path(state_dir) if state_dir is not None else config.state_dir_for(self.repository, environ={})
        self.settings = settings or config.Settings()
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.requested_models = models
        self.system_models = system_models
        self.extra_args = tuple(extra_args)
        self.admin_key = admin_key
        self.environment = dict(environment or {})
        self.models: list[str] = []
        self._log_handle = None
        #: Set once ``wait_ready`` saw this process serve: only then does ``stop`` drain (a server
        #: that never came up may have found its ports taken by another one).
        self._served = False
        #: Keeps the heads in step with an S3 repository once the server is ready.
        self.reconciler = None
        self._store = None
        self._started_at = time.time()

    def _check_repository(self) -> None:
        if self.on_s3:
            from headroom.repository.s3_store import S3HeadStore, S3StoreError

            try:
                self._store = S3HeadStore(self.repository, client=self._s3_client())
                self._store.check()
            except (S3StoreError, ValueError) as exc:
                raise ServerError(f"cannot serve the S3 repository: {exc}") from exc
            return
        for name in self.system_models:
            if not (self.repository / name / "config.pbtxt").exists():
                raise ServerError(f"{self.repository / name} is missing: is this a headroom model repository?")

    def _s3_client(self):
        """A boto3 client with this server's credentials (``environment`` over the process's)."""
        from headroom.s3 import S3Location

        return S3Location.parse(str(self.repository)).client(environ={**os.environ, **self.environment})

    def start(self) -> None:
        if self.process is not None:
            raise ServerError("server already started")
        self._check_repository()
        taken = ports_in_use(self.address)
        if taken:
            ports = ", ".join(map(str, taken))
            raise ServerError(f"port(s) {ports} of the server at {self.address.http_url} are in use by another process")
        backend_dir = prepare_backend_dir(self.state_dir / "backends")
        if self.requested_models is not None:
            self.models = list(self.requested_models)
        elif self.on_s3:
            # The reconciler loads the heads, then the pipeline: READY means serving every head.
            self.models = [name for name in config.SYSTEM_MODELS if name != config.PIPELINE_MODEL]
        else:
            self.models = startup_models(self.repository)
        if not self.on_s3:
            precompile_models(self.repository)
        environment = {**server_environment(settings=self.settings), **self.environment}
        if self.on_s3:
            environment[config.HEAD_STORE_ENV] = str(self.repository)
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
        self._started_at = time.time() - 1.0  # ctime has a coarser clock on some filesystems
        try:
            self.process = subprocess.Popen(
                command,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                preexec_fn=die_with_parent,
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
        with health.http_client(self.address.http_url) as client:
            while time.monotonic() < deadline:
                if stop is not None and stop.is_set():
                    raise ServerError("start-up interrupted")
                self._check_alive()
                # Triton opens the metrics port after HTTP; callers read the executor's gauges there.
                first = [name for name in self.system_models if name in self.models]
                self._check_system_models_loaded(first, client)
                if health.server_up(self.address, first, client):
                    self._served = True
                    if self.on_s3:
                        failed = self._reconcile_first()
                        if not health.is_model_ready(self.address.http_url, config.PIPELINE_MODEL, client):
                            raise ServerError(f"{config.PIPELINE_MODEL} did not load{self._log_hint()}")
                        return failed
                    # --load-model finishes every model before the endpoints come up, so the
                    # other models that are not ready now failed to load.
                    return self._not_ready(self._ready_models(), client)
                time.sleep(POLL_INTERVAL_S)
        raise ServerError(f"tritonserver did not become ready within {timeout_s:.0f} s{self._log_hint()}")

    def _check_system_models_loaded(self, names: list[str], client) -> None:
        """Once Triton is live it has finished every ``--load-model``: a system model that is
        not READY then failed, and waiting longer would not change it (ServerError now)."""
        if not health.is_live(self.address.http_url, client):
            return
        try:
            index = health.repository_index(self.address.http_url, self.admin_key, timeout_s=10)
        except Exception:  # tritonclient raises InferenceServerException, sockets OSError
            return
        failed = [e for e in index if e.get("name") in names and e.get("state") == "UNAVAILABLE"]
        if failed:
            reasons = "; ".join(f"{e['name']}: {e.get('reason') or 'failed to load'}" for e in failed)
            raise ServerError(f"system model(s) failed to load: {reasons}{self._log_hint()}")

    def _reconcile_first(self) -> list[str]:
        """Load what the S3 repository holds (one reconcile pass), then keep reconciling;
        returns the heads that failed to load."""
        from headroom.cluster.reconciler import Reconciler

        self.reconciler = Reconciler(
            self.address.http_url,
            self._store,
            admin_key=self.admin_key or "",
            period_s=self.settings.reconcile_period_s,
            entry_model=config.PIPELINE_MODEL,
        )
        report = self.reconciler.once()
        self.models = [*self.models, config.PIPELINE_MODEL, *(config.HEAD_MODEL_PREFIX + n for n in report.loaded)]
        self.reconciler.start()
        return [config.HEAD_MODEL_PREFIX + name for name in report.failed]

    def _ready_models(self) -> set[str] | None:
        """Names READY in the repository index (one call, however many heads), None if refused."""
        try:
            return health.ready_models(self.address.http_url, self.admin_key)
        except Exception:  # tritonclient raises InferenceServerException, sockets OSError
            return None

    def _not_ready(self, ready: set[str] | None, client=None) -> list[str]:
        base = self.address.http_url
        if ready is None:  # index unavailable: ask model by model
            return [
                name
                for name in self.models
                if name not in self.system_models and not health.is_model_ready(base, name, client)
            ]
        return [name for name in self.models if name not in self.system_models and name not in ready]

    def _check_alive(self) -> None:
        if self.process is None:
            raise ServerError("server not started")
        code = self.process.poll()
        if code is not None:
            raise ServerError(f"tritonserver exited with code {code} during start-up{self._log_hint()}")

    def _log_hint(self) -> str:
        """Where the log is, with its last lines when it is a file (what CI shows of a failure)."""
        if not self.log_file:
            return " (see its log above)"
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, 2) - LOG_TAIL_BYTES))
                tail = handle.read().decode("utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            tail = []
        if not tail:
            return f" (see {self.log_file})"
        return f" (see {self.log_file}; its last lines:\n" + "\n".join(tail) + ")"

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Drain the BLS models (``drain``), SIGTERM (Triton drains the rest), SIGKILL after ``timeout_s``."""
        if self.reconciler is not None:
            self.reconciler.stop()
            self.reconciler = None
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
        unlink_orphaned_regions(self._started_at)
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
                health.unload_model(self.address.http_url, name, self.admin_key)
            except Exception as exc:  # tritonclient raises InferenceServerException, sockets OSError
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
                state = health.model_states(self.address.http_url, self.admin_key, timeout_s=10).get(name)
            except Exception as exc:  # tritonclient raises InferenceServerException, sockets OSError
                log.warning("could not follow the drain: %s", exc)
                return False
            if state not in ("READY", "UNLOADING"):
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

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
