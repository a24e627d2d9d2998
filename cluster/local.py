"""A cluster on one host: Triton replicas on one S3 repository behind the HAProxy router.

What the cluster tests and ``bench/cluster.py`` run, and a way to try the topology without
Kubernetes: every replica is an embedded ``TritonServer`` on free ports reading the same
``s3://`` repository (each reconciling its heads with it), the router is ``HAProxyRouter``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from headroom import config
from headroom.client.inference import HeadroomClient
from headroom.client.onboarding import Onboarding
from headroom.cluster.router import HAProxyRouter, Replica
from headroom.server.launcher import TritonServer, free_address, free_ports

log = logging.getLogger(__name__)


class LocalCluster:
    """Replicas named ``replica-1``, ``replica-2``... and the router in front of them."""

    def __init__(
        self,
        repository_url: str,
        workdir: Path,
        admin_key: str,
        environment: dict[str, str] | None = None,
        settings: config.Settings | None = None,
        check_interval_ms: int = 300,
    ) -> None:
        self.repository_url = repository_url
        self.workdir = Path(workdir)
        self.admin_key = admin_key
        self.environment = dict(environment or {})
        self.settings = settings or config.Settings()
        self.replicas: dict[str, TritonServer] = {}
        http_port, grpc_port = free_ports(2)
        self.router = HAProxyRouter(self.workdir / "router", http_port, grpc_port, check_interval_ms=check_interval_ms)
        #: Seconds from ``start`` to READY with every head loaded, per start of each replica.
        self.start_seconds: dict[str, list[float]] = {}

    def _server(self, name: str) -> TritonServer:
        return TritonServer(
            free_address("127.0.0.1"),
            self.repository_url,
            log_file=self.workdir / name / "tritonserver.log",
            admin_key=self.admin_key,
            state_dir=self.workdir / name / "state",
            settings=self.settings,
            environment=self.environment,
        )

    def add_replicas(self, count: int) -> list[str]:
        """Start ``count`` more replicas at once and wait until each serves; their names."""
        names = [f"replica-{len(self.replicas) + i + 1}" for i in range(count)]
        started = {}
        for name in names:
            self.replicas[name] = self._server(name)
            started[name] = time.perf_counter()
            self.replicas[name].start()
        for name in names:
            self._wait(name, started[name])
        return names

    def _wait(self, name: str, started: float) -> None:
        failed = self.replicas[name].wait_ready()
        if failed:
            raise RuntimeError(f"{name}: heads failed to load: {failed}")
        self.start_seconds.setdefault(name, []).append(time.perf_counter() - started)

    def router_replicas(self) -> list[Replica]:
        return [Replica.of(name, server.address) for name, server in self.replicas.items()]

    def start_router(self) -> None:
        self.router.start(self.router_replicas())

    def update_router(self) -> None:
        """The router serves the current replicas from now on (a reload)."""
        self.router.reload(self.router_replicas())

    def kill(self, name: str) -> None:
        """SIGKILL a replica's tritonserver (a crash: nothing drains)."""
        server = self.replicas[name]
        server.process.kill()
        server.process.wait()

    def restart(self, name: str) -> float:
        """Start a stopped or killed replica again on its ports; seconds until it served every head."""
        server = self.replicas[name]
        server.stop()  # reaps what the killed server left (stubs, its process group)
        started = time.perf_counter()
        server.start()
        self._wait(name, started)
        return self.start_seconds[name][-1]

    def roll(self, name: str) -> float:
        """Roll a replica as an orchestrator would: out of the router (its requests in flight
        answered), stopped, started again, back in once it serves; seconds until it served."""
        if not self.router.drain_and_wait(name):
            log.warning("%s still held requests when it was stopped", name)
        seconds = self.restart(name)
        self.router.set_state(name, "ready")
        return seconds

    def client(self, name: str | None = None, protocol: str = "http", **kwargs) -> HeadroomClient:
        """A client of one replica, or of the router (``name`` None)."""
        kwargs.setdefault("admin_key", self.admin_key)
        if name is None:
            url = self.router.grpc_url if protocol == "grpc" else self.router.http_url
        else:
            address = self.replicas[name].address
            url = address.grpc_url if protocol == "grpc" else address.http_url
        return HeadroomClient(url, **kwargs)

    def onboarding(self, router_client: HeadroomClient, replica_clients: list[HeadroomClient]) -> Onboarding:
        """Onboarding into the S3 repository, loading on every replica, verified through the router."""
        from headroom.repository.s3_store import S3HeadStore
        from headroom.s3 import S3Location

        location = S3Location.parse(self.repository_url)
        store = S3HeadStore(location, client=location.client(environ=self.environment))
        return Onboarding(
            router_client, self.repository_url, self.workdir / "onboarding", replicas=replica_clients, store=store
        )

    def stop(self) -> None:
        self.router.stop()
        for server in self.replicas.values():
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                log.warning("stopping a replica failed: %s", exc)
