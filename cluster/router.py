"""HAProxy in front of the replicas, for HTTP and gRPC: its configuration and its process.

One frontend per protocol: HTTP/1.1 to the replicas' HTTP ports, gRPC (HTTP/2, ``proto h2``) to
their gRPC ports. Both backends hash the ``x-tenant`` request header on a consistent-hash ring
(``balance hdr(x-tenant)``, ``hash-type consistent``): one tenant's HTTP and gRPC requests reach
the same replica, so its head stays resident there, and removing a replica moves only that
replica's share of tenants. The load on the ring is bounded (``hash-balance-factor``): a replica
holding more than 1.5 times the average of requests in flight passes the next ones on, so a few
hot tenants cannot overload one replica. Requests without the header are spread round-robin.

A replica counts only while ``pipeline`` is READY on it (``option httpchk``, every
``check_interval_ms``); a request whose connection fails, or that gets no answer because the
replica died under it, is retried on another replica (``retry-on conn-failure empty-response
response-timeout 503``, ``option redispatch``). Rolling a replica: ``drain`` it here first (no
new requests, in-flight ones finish), then stop it.

``HAProxyRouter`` runs ``haproxy`` in master-worker mode; ``reload`` (SIGUSR2) swaps in a new
configuration (a replica added or removed) while old workers finish their connections.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from headroom import config

TENANT_HEADER = config.TENANT_HEADER
HTTP_BACKEND = "replicas_http"
GRPC_BACKEND = "replicas_grpc"
DEFAULT_CHECK_INTERVAL_MS = 500
#: Bounded-load consistent hashing: no replica takes more than this percentage of the average
#: load (requests in flight); a hot tenant's overflow goes to the next replica on the ring, so
#: affinity cannot pile a Zipf head of tenants onto one replica (bench/cluster.py measured 62 %
#: of the requests on one of three replicas without it).
HASH_BALANCE_FACTOR = 150
#: One tenant's requests to one replica (requests without the header: round robin).
TENANT_AFFINITY = f"hdr({TENANT_HEADER})"
#: How long ``start`` waits for haproxy to accept connections.
START_TIMEOUT_S = 10.0
#: How long ``drain_and_wait`` waits for a drained replica's requests in flight to be answered.
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Replica:
    """One replica as the router sees it."""

    name: str
    host: str
    http_port: int
    grpc_port: int

    @classmethod
    def of(cls, name: str, address: config.ServerAddress, host: str = "127.0.0.1") -> Replica:
        return cls(name, host, address.http_port, address.grpc_port)


def haproxy_config(
    replicas: Sequence[Replica],
    http_port: int,
    grpc_port: int,
    stats_socket: Path,
    bind_host: str = "127.0.0.1",
    check_interval_ms: int = DEFAULT_CHECK_INTERVAL_MS,
    timeout_s: int = config.DEFAULT_CLIENT_TIMEOUT_S,
    balance: str = TENANT_AFFINITY,
) -> str:
    """The text of ``haproxy.cfg`` for ``replicas`` (``balance``: HAProxy's algorithm, tenant
    affinity by default; ``roundrobin`` to compare, ``bench/affinity.py``)."""
    ready = f"/v2/models/{config.PIPELINE_MODEL}/ready"
    checks = f"check inter {check_interval_ms}ms fall 2 rise 1"
    http_servers = "\n".join(f"    server {r.name} {r.host}:{r.http_port} {checks}" for r in replicas)
    # The gRPC servers are checked on their HTTP port, over HTTP/1.1 like the HTTP backend's.
    grpc_servers = "\n".join(
        f"    server {r.name} {r.host}:{r.grpc_port} proto h2 {checks} port {r.http_port} check-proto h1"
        for r in replicas
    )
    return f"""\
# Written by headroom.cluster.router: HTTP and gRPC to {len(replicas)} Triton replica(s).
global
    stats socket {stats_socket} mode 600 level admin
    # Seconds an old worker keeps its connections after a reload.
    hard-stop-after 30s

defaults
    mode http
    timeout connect 1s
    timeout client {timeout_s}s
    timeout server {timeout_s}s
    timeout http-keep-alive 10s
    # Retry a request whose connection failed or that got no answer (the replica died under
    # it) on another replica; inference requests change nothing, so a retry is safe.
    retries 3
    retry-on conn-failure empty-response response-timeout 503
    option redispatch 1

frontend http_in
    bind {bind_host}:{http_port}
    default_backend {HTTP_BACKEND}

frontend grpc_in
    bind {bind_host}:{grpc_port} proto h2
    default_backend {GRPC_BACKEND}

backend {HTTP_BACKEND}
    balance {balance}
    hash-type consistent
    hash-balance-factor {HASH_BALANCE_FACTOR}
    option httpchk GET {ready}
    http-check expect status 200
{http_servers}

backend {GRPC_BACKEND}
    balance {balance}
    hash-type consistent
    hash-balance-factor {HASH_BALANCE_FACTOR}
    option httpchk GET {ready}
    http-check expect status 200
{grpc_servers}
"""


class RouterError(RuntimeError):
    """haproxy is missing, refused its configuration, or did not come up."""


def find_haproxy() -> str:
    """The ``haproxy`` binary (Debian's package installs it in /usr/sbin)."""
    for folder in (*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / "haproxy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RouterError("haproxy is not installed (Debian: apt-get install haproxy; `make test` installs it)")


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class HAProxyRouter:
    """``haproxy -W`` on ``http_port`` and ``grpc_port`` in front of replicas (``start``,
    ``reload``, ``drain``, ``stop``); its files live in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        http_port: int,
        grpc_port: int,
        check_interval_ms: int = DEFAULT_CHECK_INTERVAL_MS,
        balance: str = TENANT_AFFINITY,
    ):
        self.workdir = Path(workdir)
        self.balance = balance
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.check_interval_ms = check_interval_ms
        self.config_file = self.workdir / "haproxy.cfg"
        self.stats_socket = self.workdir / "haproxy.sock"
        self.log_file = self.workdir / "haproxy.log"
        self.process: subprocess.Popen | None = None
        self.replicas: list[Replica] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def _write(self, replicas: Sequence[Replica]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = haproxy_config(
            replicas,
            self.http_port,
            self.grpc_port,
            self.stats_socket,
            check_interval_ms=self.check_interval_ms,
            balance=self.balance,
        )
        self.config_file.write_text(text)
        checked = subprocess.run(
            [find_haproxy(), "-c", "-q", "-f", str(self.config_file)], capture_output=True, text=True
        )
        if checked.returncode != 0:
            raise RouterError(f"haproxy refused {self.config_file}: {checked.stderr.strip() or checked.stdout.strip()}")
        self.replicas = list(replicas)

    def start(self, replicas: Sequence[Replica]) -> None:
        self._write(replicas)
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [find_haproxy(), "-W", "-db", "-f", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_accepts(self.http_port) and _accepts(self.grpc_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RouterError(f"haproxy did not come up (see {self.log_file})")
            time.sleep(0.05)

    def reload(self, replicas: Sequence[Replica]) -> None:
        """Serve ``replicas`` from now on: new workers take new connections, old ones finish theirs."""
        if self.process is None:
            raise RouterError("router not started")
        self._write(replicas)
        self.process.send_signal(signal.SIGUSR2)

    def command(self, line: str) -> str:
        """One command on haproxy's runtime API (the stats socket), its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def set_state(self, replica: str, state: str) -> None:
        """``ready``, ``drain`` (no new requests, in-flight ones finish) or ``maint``, both backends."""
        for backend in (HTTP_BACKEND, GRPC_BACKEND):
            answer = self.command(f"set server {backend}/{replica} state {state}").strip()
            if answer:
                raise RouterError(f"haproxy: set server {backend}/{replica} state {state}: {answer}")

    def drain(self, replica: str) -> None:
        self.set_state(replica, "drain")

    def _server_rows(self) -> list[dict[str, str]]:
        """One row of ``show stat`` per server of both backends."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return [row for row in rows if row.get("svname") not in ("FRONTEND", "BACKEND", None)]

    def server_states(self) -> dict[str, str]:
        """``backend/server`` -> UP, DOWN, DRAIN, MAINT... (``show stat``)."""
        return {f"{row['pxname']}/{row['svname']}": row.get("status", "") for row in self._server_rows()}

    def requests_in_flight(self, replica: str) -> int:
        """Requests the router has sent ``replica`` and not yet had answered, both backends."""
        return sum(int(row.get("scur") or 0) for row in self._server_rows() if row["svname"] == replica)

    def drain_and_wait(self, replica: str, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """``drain`` ``replica`` and wait until it holds no request; False if it still did at ``timeout_s``."""
        self.drain(replica)
        deadline = time.monotonic() + timeout_s
        while self.requests_in_flight(replica):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
