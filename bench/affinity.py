"""Does the router's tenant affinity help residency? Head loads with and without it.

Three replicas on one S3 repository (``headroom.cluster.local.LocalCluster``) hold ``--heads``
heads, each replica's executor with a resident budget of ``--resident-heads`` heads' weights
(``HEADROOM_RESIDENT_HEAD_BYTES``). The same traffic (single-text requests, tenants drawn
uniformly, ``--concurrency`` in flight) goes through two routers in front of the same replicas:

- ``affinity``: ``balance hdr(x-tenant)`` on a consistent-hash ring (the default router): each
  replica sees about a third of the tenants;
- ``roundrobin``: every replica sees every tenant.

When a replica's share of the tenants fits its budget and all of them does not, affinity keeps
heads resident where round robin makes each replica evict and load them again (two S3 reads per
load). The figures are the executors' own counters (``headroom_head_loads_total``,
``headroom_head_evictions_total``), summed over the replicas, per 1,000 requests, beside each
phase's requests/s and latency. With the default budget (256 MiB, tens of thousands of 3-class
heads) affinity changes nothing until the tenants' heads outgrow a replica.

    python -m bench.affinity [--heads 48] [--resident-heads 20] [--requests 3000]
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from headroom.client.metrics import read_metrics
from headroom.cluster.local import LocalCluster
from headroom.cluster.router import HAProxyRouter
from headroom.cluster.seaweedfs import SeaweedFS
from headroom.repository.s3_store import S3HeadStore

from bench.common import free_ports, log, settings, setup_logging, system_repository, write_report
from bench.synthetic_heads import SyntheticHead, head_model

REPLICAS = 3
CLASSES = 3
#: Bytes of one head's weights in the executor (stacked FP32 weights and bias).
HEAD_BYTES = SyntheticHead("sized", CLASSES, "linear").resident_bytes
TEXT = "could you turn the kitchen lights down a little and start some quiet music"


def publish(s3: SeaweedFS, workdir: Path, heads: int) -> str:
    """The system models and ``heads`` synthetic 3-class heads (every tenant the same size) in
    the S3 server; its URL."""
    url = s3.url("affinity")
    store = S3HeadStore(url, client=s3.client())
    store.publish(system_repository(workdir / "model_repository", settings().encoder_variant))
    fingerprint = store.read_encoder_info()["fingerprint"]
    for index in range(heads):
        head = SyntheticHead(f"tenant-{index:03d}", CLASSES, "linear")
        model_bytes = head_model(head, fingerprint).SerializeToString()
        store.write_head_model(head.name, model_bytes, head.labels, {"encoder_fingerprint": fingerprint})
    return url


def head_counters(cluster: LocalCluster) -> dict[str, float]:
    totals = {"loads": 0.0, "evictions": 0.0}
    for server in cluster.replicas.values():
        page = read_metrics("127.0.0.1", server.address.metrics_port)
        totals["loads"] += page.total("headroom_head_loads_total")
        totals["evictions"] += page.total("headroom_head_evictions_total")
    return totals


def drive(cluster: LocalCluster, url: str, tenants: list[str], requests: int, concurrency: int, seed: int) -> dict:
    """``requests`` single-text requests through the router at ``url``; counters and latency."""
    from headroom.client.inference import HeadroomClient, HeadroomError

    rng = random.Random(seed)
    order = [rng.choice(tenants) for _ in range(requests)]
    latencies: list[float] = []
    failed = 0
    lock = threading.Lock()
    cursor = iter(order)

    def worker() -> None:
        nonlocal failed
        with HeadroomClient(url, timeout_s=60, admin_key="") as client:
            while True:
                with lock:
                    tenant = next(cursor, None)
                if tenant is None:
                    return
                started = time.perf_counter()
                (answer,) = client.classify([TEXT], tenant, return_errors=True)
                with lock:
                    latencies.append(time.perf_counter() - started)
                    failed += isinstance(answer, HeadroomError)

    before = head_counters(cluster)
    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - started
    after = head_counters(cluster)
    latencies.sort()
    per_thousand = 1000.0 / requests
    return {
        "requests": requests,
        "failed": failed,
        "requests_per_s": round(requests / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "head_loads_per_1000_requests": round((after["loads"] - before["loads"]) * per_thousand, 1),
        "evictions_per_1000_requests": round((after["evictions"] - before["evictions"]) * per_thousand, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=48)
    parser.add_argument("--resident-heads", type=int, default=20, help="each replica's resident budget, in heads")
    parser.add_argument("--requests", type=int, default=3000, help="per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="phases alternate: affinity, round robin, ...")
    args = parser.parse_args(argv)
    setup_logging()
    workdir = Path(tempfile.mkdtemp(prefix="headroom-affinity-"))
    s3 = SeaweedFS(workdir / "s3")
    cluster = None
    roundrobin = None
    try:
        s3.start()
        url = publish(s3, workdir, args.heads)
        budget = args.resident_heads * HEAD_BYTES
        environment = {**s3.environment(), "HEADROOM_RESIDENT_HEAD_BYTES": str(budget)}
        cluster = LocalCluster(url, workdir, secrets.token_urlsafe(32), environment=environment)
        log.info(
            "starting %d replicas with %d heads, resident budget %d B (%d heads)",
            REPLICAS,
            args.heads,
            budget,
            args.resident_heads,
        )
        cluster.add_replicas(REPLICAS)
        cluster.start_router()
        roundrobin = HAProxyRouter(workdir / "router-roundrobin", *free_ports(2), balance="roundrobin")
        roundrobin.start(cluster.router_replicas())
        tenants = [f"tenant-{index:03d}" for index in range(args.heads)]
        drive(cluster, cluster.router.http_url, tenants, min(500, args.requests), args.concurrency, seed=-1)  # warm-up
        phases: dict[str, list[dict]] = {"affinity": [], "roundrobin": []}
        for round_ in range(args.rounds):
            for name, router in (("affinity", cluster.router), ("roundrobin", roundrobin)):
                result = drive(cluster, router.http_url, tenants, args.requests, args.concurrency, seed=round_)
                log.info("round %d %s: %s", round_ + 1, name, result)
                phases[name].append(result)
    finally:
        if roundrobin is not None:
            roundrobin.stop()
        if cluster is not None:
            cluster.stop()
        s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(result[key] for result in phases[name])

    summary = {
        name: {
            key: median(name, key)
            for key in (
                "requests_per_s",
                "p50_ms",
                "p99_ms",
                "head_loads_per_1000_requests",
                "evictions_per_1000_requests",
            )
        }
        for name in phases
    }
    summary["throughput_ratio_affinity_over_roundrobin"] = round(
        summary["affinity"]["requests_per_s"] / summary["roundrobin"]["requests_per_s"], 3
    )
    print(
        f"{args.heads} heads, {REPLICAS} replicas, resident budget {args.resident_heads} heads each, "
        f"{args.requests} requests per phase"
    )
    for name in phases:
        row = summary[name]
        print(
            f"  {name:<10} head loads/1000 req {row['head_loads_per_1000_requests']:>7.1f}  evictions/1000 "
            f"{row['evictions_per_1000_requests']:>7.1f}  {row['requests_per_s']:>7.1f} req/s  "
            f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        )
    print(f"  throughput affinity / round robin: {summary['throughput_ratio_affinity_over_roundrobin']:.3f}")
    report = {"settings": vars(args), "head_bytes": HEAD_BYTES, "phases": phases, "summary": summary}
    write_report("affinity", report)
    return report


if __name__ == "__main__":
    main()
