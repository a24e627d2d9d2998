"""Replicas behind a router on one S3 repository, end to end on loopback (issue 11 §5).

SeaweedFS, three embedded Triton replicas reading ``s3://127.0.0.1:<port>/...`` (each reconciling
its heads with it every second), HAProxy in front. Under load through HAProxy (HTTP and gRPC,
several tenants): onboard a tenant, roll one to a new version, offboard another, SIGKILL a
replica, onboard while it is down (it misses the load), restart it, add a fourth replica, roll
one (a graceful stop and a start).

- No failed request for any tenant that was not offboarded, through every event.
- The restarted and the added replica serve every head, each at its newest version, within
  ``CONVERGE_WITHIN_S`` of their start; the tenant onboarded while one was down included.
- The offboarded tenant is refused (NOT_FOUND) by every replica within ``CONVERGE_WITHIN_S``.
- The admin key guards every replica's control plane.

The figures (requests sent and failed per event, convergence times) are printed as JSON.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from headroom import config
from headroom.client.inference import HeadroomClient, HeadroomError
from headroom.cluster.local import LocalCluster

from tests.conftest import DEMO_HEADS, publish_demo_repository
from tests.onnx_heads import linear_head

pytestmark = pytest.mark.integration

RECONCILE_PERIOD_S = 1.0
#: A replica started (or restarted, or added) serves every head of the repository within this;
#: an offboarded head is refused everywhere within it.
CONVERGE_WITHIN_S = 90.0
#: Load generators through the router, per protocol.
WORKERS_PER_PROTOCOL = 2
TEXT = "please turn on the kitchen lights and play some music"
ROLLED, LEAVING, NEWCOMER, LATECOMER = "rolled", "leaving", "newcomer", "latecomer"
#: How a head that is not loaded is refused: HTTP 404, gRPC NOT_FOUND.
NOT_FOUND = ("404", "StatusCode.NOT_FOUND")


@dataclass
class Load:
    """Requests through the router, counted per event and tenant; failures kept with their error."""

    cluster: LocalCluster
    tenants: list[str]
    event: str = "start"
    sent: Counter = field(default_factory=Counter)
    failed: list[tuple[str, str, str, str]] = field(default_factory=list)  # event, protocol, tenant, error
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, protocol: str, offset: int) -> None:
        with self.cluster.client(None, protocol, timeout_s=30) as client:
            turn = offset
            while not self.stop.is_set():
                with self.lock:
                    tenant, event = self.tenants[turn % len(self.tenants)], self.event
                turn += 1
                (answer,) = client.classify([TEXT], tenant, return_errors=True)
                with self.lock:
                    self.sent[event, tenant] += 1
                    if isinstance(answer, HeadroomError):
                        self.failed.append((event, protocol, tenant, str(answer)))

    def add(self, tenant: str) -> None:
        with self.lock:
            self.tenants.append(tenant)

    def at(self, event: str) -> None:
        with self.lock:
            self.event = event


def onboard(onboarding, name: str, fingerprint: str, prefix: str):
    model_bytes, labels = linear_head(seed=len(prefix) + len(name), fingerprint=fingerprint, prefix=prefix)
    return onboarding.onboard_model(name, model_bytes, labels)


def serves_everything(client: HeadroomClient, wanted: dict[str, list[str]]) -> bool:
    """Whether the replica answers every head of ``wanted`` with that head's labels."""
    answers = client.classify([TEXT] * len(wanted), list(wanted), return_errors=True)
    return all(
        not isinstance(answer, HeadroomError) and sorted(answer.probabilities) == sorted(labels)
        for answer, labels in zip(answers, wanted.values(), strict=True)
    )


def refuses(client: HeadroomClient, head: str) -> bool:
    (answer,) = client.classify([TEXT], head, return_errors=True)
    return isinstance(answer, HeadroomError) and answer.status in NOT_FOUND


def wait_until(check, within_s: float, what: str) -> float:
    started = time.perf_counter()
    while not check():
        assert time.perf_counter() - started < within_s, f"{what} not within {within_s:.0f} s"
        time.sleep(0.2)
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def cluster(s3, built_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    url = publish_demo_repository(s3, built_repository, "cluster", root)
    admin_key = secrets.token_urlsafe(32)
    settings = config.Settings(reconcile_period_s=RECONCILE_PERIOD_S)
    local = LocalCluster(url, root, admin_key, environment=s3.environment(), settings=settings)
    try:
        local.add_replicas(3)
        local.start_router()
        yield local
    finally:
        local.stop()


def test_replicas_converge_under_load_with_no_failed_request(cluster: LocalCluster, s3):
    from headroom.repository.s3_store import S3HeadStore

    fingerprint = S3HeadStore(cluster.repository_url, client=s3.client()).read_encoder_info()["fingerprint"]
    figures: dict = {"replica_start_s": {n: round(s[0], 2) for n, s in cluster.start_seconds.items()}}
    router = cluster.client(None, "http", timeout_s=60)
    replica_clients = {name: cluster.client(name, timeout_s=60) for name in cluster.replicas}
    onboarding = cluster.onboarding(router, list(replica_clients.values()))
    try:
        for name, prefix in ((ROLLED, "r1-"), (LEAVING, "l1-")):
            onboard(onboarding, name, fingerprint, prefix)
        load = Load(cluster, [*DEMO_HEADS, ROLLED, LEAVING])
        workers = [
            threading.Thread(target=load.worker, args=(protocol, i), name=f"load-{protocol}-{i}")
            for protocol in ("http", "grpc")
            for i in range(WORKERS_PER_PROTOCOL)
        ]
        for worker in workers:
            worker.start()
        time.sleep(2)

        load.at("onboard")
        result = onboard(onboarding, NEWCOMER, fingerprint, "n1-")
        assert set(result.replicas) == {c.url for c in replica_clients.values()} and not result.missed
        figures["onboard_slowest_load_s"] = round(max(result.replicas.values()), 3)
        load.add(NEWCOMER)
        time.sleep(1)

        load.at("roll")
        result = onboard(onboarding, ROLLED, fingerprint, "r2-")
        assert result.version == 2 and not result.missed
        figures["roll_slowest_load_s"] = round(max(result.replicas.values()), 3)
        time.sleep(1)

        load.at("offboard")
        offboarded_at = time.perf_counter()
        onboarding.offboard(LEAVING)
        figures["offboard_refused_everywhere_s"] = round(
            wait_until(
                lambda: all(refuses(c, LEAVING) for c in replica_clients.values()),
                CONVERGE_WITHIN_S,
                "the offboarded head refused by every replica",
            )
            + (time.perf_counter() - offboarded_at),
            3,
        )
        with load.lock:
            load.tenants.remove(LEAVING)
        time.sleep(1)

        load.at("kill")
        cluster.kill("replica-2")
        time.sleep(3)

        load.at("onboard while a replica is down")
        down_url = replica_clients["replica-2"].url
        result = onboard(onboarding, LATECOMER, fingerprint, "late-")
        assert set(result.missed) == {down_url}, result.missed  # it converges by reconciling
        load.add(LATECOMER)
        time.sleep(1)

        wanted = {
            **{head: None for head in DEMO_HEADS},
            NEWCOMER: ["n1-0", "n1-1", "n1-2"],
            ROLLED: ["r2-0", "r2-1", "r2-2"],
            LATECOMER: ["late-0", "late-1", "late-2"],
        }
        with cluster.client("replica-1", timeout_s=60) as probe:  # the demo heads' labels, as served
            for head in DEMO_HEADS:
                wanted[head] = list(probe.classify([TEXT], head)[0].probabilities)

        load.at("restart")
        figures["restart_serves_every_head_s"] = round(cluster.restart("replica-2"), 2)
        with cluster.client("replica-2", timeout_s=60) as restarted:
            assert serves_everything(restarted, wanted), "the restarted replica lacks a head or a version"
            assert refuses(restarted, LEAVING)
        time.sleep(2)

        load.at("add a replica")
        (added,) = cluster.add_replicas(1)
        figures["added_serves_every_head_s"] = round(cluster.start_seconds[added][0], 2)
        cluster.update_router()
        with cluster.client(added, timeout_s=60) as fourth:
            assert serves_everything(fourth, wanted), "the added replica lacks a head or a version"
            assert refuses(fourth, LEAVING)
        time.sleep(2)

        # A rolled replica: drained in the router first (as a readiness probe and the preStop
        # sleep do in Kubernetes), so no request reaches it while it stops; then started again.
        load.at("roll a replica")
        figures["rolled_serves_every_head_s"] = round(cluster.roll("replica-3"), 2)
        time.sleep(3)
        load.at("end")
        load.stop.set()
        for worker in workers:
            worker.join(timeout=60)
    finally:
        router.close()
        for client in replica_clients.values():
            client.close()

    for name, seconds in figures.items():
        if name.endswith("_s") and isinstance(seconds, float):
            assert seconds < CONVERGE_WITHIN_S, f"{name}: {seconds} s"
    events = list(dict.fromkeys(event for event, _ in load.sent))  # in the order they happened
    figures["requests"] = {
        event: {
            "sent": sum(n for (e, _), n in load.sent.items() if e == event),
            "failed": sum(1 for e, *_ in load.failed if e == event),
        }
        for event in events
    }
    print(json.dumps(figures, indent=2))
    unexpected = [failure for failure in load.failed if failure[2] != LEAVING]
    assert not unexpected, f"{len(unexpected)} failed requests, first: {unexpected[:5]}"
    for event in ("onboard", "roll", "kill", "restart", "add a replica", "roll a replica"):
        assert figures["requests"].get(event, {}).get("sent", 0) > 0, f"no load during {event}"


def test_the_admin_key_guards_every_replicas_control_plane(cluster: LocalCluster):
    for name in cluster.replicas:
        with cluster.client(name, admin_key="") as keyless, pytest.raises(HeadroomError, match="admin key missing"):
            keyless.load_model(f"{config.HEAD_MODEL_PREFIX}smart_home")
        with cluster.client(name, admin_key="wrong-" + secrets.token_urlsafe(16)) as wrong:
            with pytest.raises(HeadroomError, match="admin key wrong"):
                wrong.unload_model(f"{config.HEAD_MODEL_PREFIX}smart_home")
        with cluster.client(name) as keyed:
            assert keyed.is_head_ready("smart_home")
