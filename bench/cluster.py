"""Replicas behind the router: what users meet with a cluster (router overhead, throughput,
convergence) and a capacity note computed from those figures.

One run, on loopback: SeaweedFS (a real S3 server) holds the repository (system models, the demo
heads and ``SYNTHETIC_TENANTS`` synthetic linear heads, so tenant affinity has tenants to spread);
``cluster.local.LocalCluster`` starts Triton replicas on it, each reconciling its heads with the
store, behind HAProxy (``cluster.router``). In this order:

1. **Router overhead**: sequential single-text ``pipeline`` requests through ``HeadroomClient``
   (texts of real length, Zipf tenants, the ``x-tenant`` header as the client sends it) to
   replica-1 directly and through a second ``HAProxyRouter`` that has only replica-1 behind it,
   so both paths reach the same server. Each text goes all four ways (direct and routed, HTTP and
   gRPC) one right after the other, the order rotating, so drift and noise hit every path alike.
   p50/p99 of each path and their difference, and the median of the per-text differences.
2. **Throughput**: closed loop over gRPC, ``CONCURRENCY`` requests in flight of
   ``TEXTS_PER_REQUEST`` texts of one Zipf tenant each (with its ``x-tenant`` header), to replica-1
   directly and through that one-replica router (alternating, ``rounds`` times), then through the
   cluster's router with 2 and 3 replicas behind it (each added and put behind the router first),
   then replica-1 directly again. Requests and texts per second, every failed request (warm-up
   included), the router's share per replica (HAProxy's counters), and the CPU the replicas and
   haproxy used per request. **The replicas share this machine's cores**: more replicas here
   cannot scale; these runs show what the router costs and that it loses no request.
3. **Convergence**: seconds from a replica's start to serving every head (``add_replicas``),
   per-replica load seconds of an onboarding across 3 replicas (``Onboarding.onboard_model`` of a
   ready-made linear head), and seconds from ``offboard`` until every replica refuses the head.
4. **Capacity, on paper**: the single-replica figures per core, tenants per replica (cited from
   the dense-heads results, never invented), and an *extrapolation* to N replicas on N machines.

    python -m bench.cluster [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from headroom import config
from headroom.client.inference import HeadroomClient, HeadroomError
from headroom.client.traffic import MIX_SIZE, TrafficMix, real_text_mix, zipf_weights
from headroom.cluster.local import LocalCluster
from headroom.cluster.router import GRPC_BACKEND, HTTP_BACKEND, HAProxyRouter, Replica
from headroom.cluster.seaweedfs import SeaweedFS
from headroom.export.demo import DEMO_TENANTS
from headroom.export.encoder import read_encoder_info
from headroom.repository.head_store import copy_repository

from bench import synthetic_heads
from bench.common import (
    RESULTS_DIR,
    SOURCE_REPOSITORY,
    free_ports,
    length_distribution,
    log,
    machine_info,
    pipeline_request,
    pyplot,
    save_figure,
    server_cpu_seconds,
    settings,
    setup_logging,
    write_report,
)

#: Synthetic tenants published beside the four demo heads: with four tenants (Zipf), tenant
#: affinity would put half the traffic on one replica whatever the replica count.
SYNTHETIC_TENANTS = 16
#: Requests in flight in the closed loop, and texts per request (one tenant per request, so the
#: client sends ``x-tenant`` and the router can keep the tenant on one replica).
CONCURRENCY = 32
TEXTS_PER_REQUEST = 4
MAX_REPLICAS = 3
#: Sequential requests per path before the measured ones (connections, the executor's caches).
WARMUP_REQUESTS = 30
#: How a replica refuses a head that is not loaded: HTTP 404, gRPC NOT_FOUND.
NOT_FOUND = ("404", "StatusCode.NOT_FOUND")
NEWCOMER = "cluster_newcomer"
#: Where the tenants-per-replica figure comes from when this checkout has no dense-heads report.
DENSE_HEADS_DOC = "docs/dense-heads.md"
MICROSECONDS = 1e6


@dataclass(frozen=True)
class Plan:
    overhead_requests: int = 1500  # per path and protocol
    overhead_max_s: float = 150.0  # at most this long for the overhead step, whatever the count
    load_s: float = 10.0  # measuring window of each throughput point
    warmup_s: float = 2.0
    rounds: int = 2  # direct / one-replica-router alternations
    mix_size: int = MIX_SIZE


FULL = Plan()
QUICK = Plan(overhead_requests=300, overhead_max_s=45.0, load_s=3.0, warmup_s=1.0, rounds=1, mix_size=300)


# --- repository ------------------------------------------------------------------------------
def local_repository(target: Path) -> tuple[list[str], str]:
    """The checkout's system models and demo heads (nothing onboarded by hand) plus the synthetic
    tenants, in ``target``; the tenants and the encoder's fingerprint."""
    demo = {f"{config.HEAD_MODEL_PREFIX}{name}" for name in DEMO_TENANTS}
    missing = [name for name in (*config.SYSTEM_MODELS, *sorted(demo)) if not (SOURCE_REPOSITORY / name).is_dir()]
    if missing or not (config.encoder_version_dir(SOURCE_REPOSITORY) / "model.onnx").exists():
        raise SystemExit(f"{SOURCE_REPOSITORY} lacks {missing or 'the encoder'}: run `make heads` first")

    copy_repository(SOURCE_REPOSITORY, target, DEMO_TENANTS)
    fingerprint = read_encoder_info(target)["fingerprint"]
    synthetic = synthetic_heads.plan_heads(f"tenant_{i:02d}" for i in range(SYNTHETIC_TENANTS))
    synthetic_heads.write_heads(target, synthetic, fingerprint)
    return [*DEMO_TENANTS, *(head.name for head in synthetic)], fingerprint


# --- 1. router overhead ----------------------------------------------------------------------
def _percentiles(samples_s: list[float]) -> dict:
    values = np.asarray(samples_s) * MICROSECONDS
    return {"p50_us": round(float(np.percentile(values, 50)), 1), "p99_us": round(float(np.percentile(values, 99)), 1)}


def router_overhead(
    direct: config.ServerAddress,
    router: HAProxyRouter,
    tenants: list[str],
    texts: list[str],
    count: int,
    max_s: float = float("inf"),
) -> dict:
    """``count`` single-text requests on each path (direct, router) of each protocol: every text
    goes all four ways in turn, the order rotating, so drift hits every path alike. Stops sooner
    after ``max_s`` (a loaded machine answers slowly; the run must stay minutes long)."""
    mix = TrafficMix(tenants, texts, failure_share=0.0, seed=1)
    urls = {
        ("http", "direct"): direct.http_url,
        ("http", "router"): router.http_url,
        ("grpc", "direct"): direct.grpc_url,
        ("grpc", "router"): router.grpc_url,
    }
    paths = list(urls)
    latencies: dict[tuple[str, str], list[float]] = {path: [] for path in paths}
    failed = dict.fromkeys(paths, 0)
    clients = {path: HeadroomClient(url, admin_key="", timeout_s=60) for path, url in urls.items()}
    deadline = time.perf_counter() + max_s
    try:
        for index in range(WARMUP_REQUESTS + count):
            if time.perf_counter() > deadline and index > WARMUP_REQUESTS:
                log.info("router overhead: stopped after %d requests per path (%.0f s)", index - WARMUP_REQUESTS, max_s)
                break
            request = mix.next()
            # Rotate the start and flip the direction: each path is first, last, before and after
            # every other path equally often.
            order = paths[index % 4 :] + paths[: index % 4]
            for path in order if (index // 4) % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                (answer,) = clients[path].classify([request.text], request.head, return_errors=True)
                seconds = time.perf_counter() - started
                if index >= WARMUP_REQUESTS:
                    latencies[path].append(seconds)
                    failed[path] += isinstance(answer, HeadroomError)
    finally:
        for client in clients.values():
            client.close()
    report = {}
    for protocol in ("http", "grpc"):
        direct_s, router_s = latencies[protocol, "direct"], latencies[protocol, "router"]
        result = {
            "direct": {**_percentiles(direct_s), "failed": failed[protocol, "direct"]},
            "router": {**_percentiles(router_s), "failed": failed[protocol, "router"]},
        }
        # The same text both ways, moments apart: the difference per text, whatever its length.
        paired = np.subtract(router_s, direct_s) * MICROSECONDS
        report[protocol] = {
            "requests_per_path": len(direct_s),
            **result,
            "router_minus_direct_p50_us": round(result["router"]["p50_us"] - result["direct"]["p50_us"], 1),
            "router_minus_direct_p99_us": round(result["router"]["p99_us"] - result["direct"]["p99_us"], 1),
            "median_paired_difference_us": round(float(np.median(paired)), 1),
            "router_over_direct_p50": round(result["router"]["p50_us"] / result["direct"]["p50_us"], 3),
            "router_over_direct_p99": round(result["router"]["p99_us"] / result["direct"]["p99_us"], 3),
        }
    return report


def warm_up(
    address: config.ServerAddress, tenants: list[str], texts: list[str], requests: int = WARMUP_REQUESTS
) -> None:
    """Requests of every length class to a replica that just started (ONNX Runtime's first runs
    of new shapes are slow), so a throughput point measures it warm."""
    lengths = sorted(texts, key=len)
    rng = random.Random(2)
    with HeadroomClient(address.grpc_url, admin_key="", timeout_s=60, concurrency=4) as client:
        for index in range(requests):
            text = lengths[index * (len(lengths) - 1) // max(1, requests - 1)]
            client.classify([text] * TEXTS_PER_REQUEST, rng.choice(tenants))


# --- 2. throughput ---------------------------------------------------------------------------
def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (replicas: their stubs too)."""
    return sum(server_cpu_seconds(pid) for pid in pids)


def _router_pids(router: HAProxyRouter) -> list[int]:
    """haproxy's master; ``server_cpu_seconds`` adds its workers (children)."""
    return [router.process.pid] if router.process is not None else []


def _backend_requests(router: HAProxyRouter) -> dict[str, int]:
    """Requests HAProxy sent to each replica of the gRPC backend so far (``stot`` of ``show stat``)."""
    lines = router.command("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    counts = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == GRPC_BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
            counts[row["svname"]] = int(row.get("stot") or 0)
    return counts


async def _closed_loop(
    grpc_url: str, tenants: list[str], texts: list[str], plan: Plan, cpu_pids: dict[str, list[int]], seed: int
) -> dict:
    """``CONCURRENCY`` workers back to back; completions inside the window count for throughput,
    every request sent (warm-up included) counts for failures."""
    import tritonclient.grpc as grpc_module
    import tritonclient.grpc.aio as grpc_aio

    mix = TrafficMix(tenants, texts, failure_share=0.0, seed=seed)
    rng = random.Random(seed)
    client = grpc_aio.InferenceServerClient(grpc_url.split("://")[-1])
    sent = failed = ok_in_window = 0
    first_error: str | None = None
    latencies: list[float] = []
    cpu: dict[str, float] = {}
    started = time.perf_counter()
    measure_from = started + plan.warmup_s
    stop_at = measure_from + plan.load_s
    client_cpu_started = time.process_time()

    async def worker() -> None:
        nonlocal sent, failed, ok_in_window, first_error
        while time.perf_counter() < stop_at:
            tenant = mix.next().head
            rows = [rng.choice(texts) for _ in range(TEXTS_PER_REQUEST)]
            inputs = pipeline_request(grpc_module, rows, [tenant] * len(rows))
            t0 = time.perf_counter()
            try:
                await client.infer(config.PIPELINE_MODEL, inputs, headers={config.TENANT_HEADER: tenant})
                error = None
            except Exception as exc:  # tritonclient raises InferenceServerException
                error = str(exc)
            t1 = time.perf_counter()
            sent += 1
            if error is not None:
                failed += 1
                first_error = first_error or error
            elif measure_from <= t0 and t1 <= stop_at:
                ok_in_window += 1
                latencies.append(t1 - t0)

    async def cpu_probe() -> None:
        # CPU seconds inside the window: the replicas' (tritonserver + stubs) and haproxy's.
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        first = {name: _cpu_seconds(pids) for name, pids in cpu_pids.items()}
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu.update({name: _cpu_seconds(pids) - first[name] for name, pids in cpu_pids.items()})

    try:
        await asyncio.gather(cpu_probe(), *(worker() for _ in range(CONCURRENCY)))
    finally:
        await client.close()
    wall = time.perf_counter() - started
    per_request_ms = {
        f"{name}_cpu_ms_per_request": round(1000 * s / ok_in_window, 3) if ok_in_window else None
        for name, s in cpu.items()
    }
    return {
        "requests_per_s": round(ok_in_window / plan.load_s, 1),
        "texts_per_s": round(ok_in_window * TEXTS_PER_REQUEST / plan.load_s, 1),
        "sent": sent,
        "failed": failed,
        "first_error": first_error,
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2) if latencies else None,
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2) if latencies else None,
        **per_request_ms,
        # The load generator runs on the same cores as the replicas and the router.
        "client_cpu_share": round((time.process_time() - client_cpu_started) / (wall * (os.cpu_count() or 1)), 3),
    }


def load_point(
    label: str,
    grpc_url: str,
    tenants: list[str],
    texts: list[str],
    plan: Plan,
    replica_pids: list[int],
    router: HAProxyRouter | None,
    seed: int,
) -> dict:
    pids = {"replicas": replica_pids, **({"router": _router_pids(router)} if router is not None else {})}
    before = _backend_requests(router) if router is not None else {}
    result = asyncio.run(_closed_loop(grpc_url, tenants, texts, plan, pids, seed))
    if router is not None:
        after = _backend_requests(router)
        result["router_requests_by_replica"] = {name: after[name] - before.get(name, 0) for name in after}
    log.info(
        "%s: %.0f requests/s, %.0f texts/s, %d failed of %d, p50 %.1f ms",
        label,
        result["requests_per_s"],
        result["texts_per_s"],
        result["failed"],
        result["sent"],
        result["p50_ms"] or 0,
    )
    return {"point": label, **result}


def wait_routed(router: HAProxyRouter, names: list[str], timeout_s: float = 30.0) -> float:
    """Seconds until HAProxy counts every replica of ``names`` UP in both backends."""
    started = time.perf_counter()
    wanted = {f"{backend}/{name}" for backend in (HTTP_BACKEND, GRPC_BACKEND) for name in names}
    while True:
        try:
            states = router.server_states()
            if all(states.get(key, "").startswith("UP") for key in wanted):
                return time.perf_counter() - started
        except OSError:  # the new worker after a reload has not bound its stats socket yet
            pass
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"replicas {names} not UP behind the router within {timeout_s:.0f} s")
        time.sleep(0.1)


# --- 3. convergence --------------------------------------------------------------------------
def refuses(client: HeadroomClient, head: str, text: str) -> bool:
    (answer,) = client.classify([text], head, return_errors=True)
    return isinstance(answer, HeadroomError) and answer.status in NOT_FOUND


def onboard_and_offboard(cluster: LocalCluster, fingerprint: str, text: str) -> dict:
    """Onboard a ready-made head across every replica, check each serves it, offboard it and
    time until every replica refuses it."""
    head = synthetic_heads.SyntheticHead(NEWCOMER, 5, "linear")
    model = synthetic_heads.head_model(head, fingerprint).SerializeToString()
    names = {cluster.replicas[name].address.http_url: name for name in cluster.replicas}
    router = cluster.client(None, "http", timeout_s=60)
    replicas = {name: cluster.client(name, timeout_s=60) for name in cluster.replicas}
    try:
        onboarding = cluster.onboarding(router, list(replicas.values()))
        result = onboarding.onboard_model(NEWCOMER, model, head.labels)
        served = {
            name: sorted(client.classify([text], NEWCOMER)[0].probabilities) == sorted(head.labels)
            for name, client in replicas.items()
        }
        started = time.perf_counter()
        onboarding.offboard(NEWCOMER)
        offboard_call_s = time.perf_counter() - started
        while not all(refuses(client, NEWCOMER, text) for client in replicas.values()):
            if time.perf_counter() - started > 90:
                raise RuntimeError(f"{NEWCOMER} still served somewhere 90 s after offboard")
            time.sleep(0.05)
        refused_s = time.perf_counter() - started
        through_router = refuses(router, NEWCOMER, text)
    finally:
        router.close()
        for client in replicas.values():
            client.close()
    return {
        "replicas": len(replicas),
        "onboard_total_s": round(result.seconds_total, 3),
        "onboard_load_s_by_replica": {names.get(url, url): round(s, 3) for url, s in result.replicas.items()},
        "onboard_slowest_load_s": round(max(result.replicas.values()), 3) if result.replicas else None,
        "onboard_first_answer_s": round(result.seconds_to_first_answer, 3),
        "onboard_missed": result.missed,
        "served_by_every_replica": all(served.values()),
        "offboard_call_s": round(offboard_call_s, 3),
        "offboard_refused_everywhere_s": round(refused_s, 3),
        "offboard_refused_through_router": through_router,
    }


# --- 4. capacity -----------------------------------------------------------------------------
def tenants_per_replica() -> dict:
    """The dense-heads figure: from this checkout's report when there is one, else the document."""
    report = RESULTS_DIR / "dense_heads.json"
    if report.exists():
        data = json.loads(report.read_text())
        memory = data.get("memory", {})
        return {
            "source": str(report),
            "heads_on_one_server": data.get("heads"),
            "registered_kib_per_head": memory.get("registered_kib_per_head"),
            "all_resident_kib_per_head": memory.get("all_resident_kib_per_head"),
        }
    return {
        "source": DENSE_HEADS_DOC,
        "note": "bench/results/dense_heads.json absent in this checkout; figure as the document states it",
        "heads_on_one_server": 10000,
        "registered_kib_per_head": 26,
        "all_resident_kib_per_head": 50,
    }


def affinity(points: list[dict], tenants: int) -> dict:
    """How evenly tenant affinity spread the load: the busiest replica's share of the routed
    requests with the most replicas, and the hottest tenant's Zipf share (a floor on the busiest
    replica's share however many replicas, since one tenant's requests all reach one replica)."""
    routed = [p for p in points if len(p.get("router_requests_by_replica", {})) > 1]
    counts = routed[-1]["router_requests_by_replica"] if routed else {}
    total = sum(counts.values())
    busiest = max(counts.values()) / total if total else None
    hottest = float(zipf_weights(tenants)[0])
    return {
        "replicas": len(counts),
        "busiest_replica_share": round(busiest, 3) if busiest else None,
        "even_share": round(1 / len(counts), 3) if counts else None,
        "hottest_tenant_share": round(hottest, 3),
        # The busiest replica saturates first: the cluster serves at most single / share.
        "cluster_over_single_at_most_measured": round(1 / busiest, 2) if busiest else None,
        "cluster_over_single_at_most_any_n": round(1 / hottest, 2),
    }


def capacity(direct: list[dict], routed_one: list[dict], overhead: dict, cores: int, spread: dict) -> dict:
    single_requests = statistics.median(p["requests_per_s"] for p in direct)
    single_texts = statistics.median(p["texts_per_s"] for p in direct)
    # Per round: the router's throughput over the direct run next to it (same minutes of this machine).
    pairs = [(d["texts_per_s"], r["texts_per_s"]) for d, r in zip(direct, routed_one, strict=True) if d["texts_per_s"]]
    ratio = statistics.median(r / d for d, r in pairs) if pairs else float("nan")
    router_ms = [p.get("router_cpu_ms_per_request") for p in routed_one if p.get("router_cpu_ms_per_request")]
    router_ms_per_request = statistics.median(router_ms) if router_ms else None
    return {
        "basis": "single replica, directly, closed loop on this machine (median of the direct rounds before any "
        "other replica started); the load generator shared the same cores",
        "texts_per_request": TEXTS_PER_REQUEST,
        "single_replica_requests_per_s": single_requests,
        "single_replica_texts_per_s": single_texts,
        "cores": cores,
        "requests_per_s_per_core": round(single_requests / cores, 1),
        "texts_per_s_per_core": round(single_texts / cores, 1),
        "router_over_direct_throughput": round(ratio, 3),
        "router_latency_added_p50_us": {p: overhead[p]["router_minus_direct_p50_us"] for p in overhead},
        "router_cpu_ms_per_request": router_ms_per_request,
        # What one core given to haproxy alone would route at that CPU cost per request: the ceiling
        # of one router core (the cost includes its health checks, so at low rates it is high).
        "router_requests_per_s_per_core": round(1000 / router_ms_per_request) if router_ms_per_request else None,
        "tenants_per_replica": tenants_per_replica(),
        "affinity": spread,
        "extrapolation": {
            "label": "EXTRAPOLATION, not measured: N replicas on N machines of this size (each as the single "
            "replica here) behind one router, N x single-replica texts/s x the measured router/direct ratio "
            "(at most 1), as long as N x requests/s stays below the router's requests/s per core times its cores "
            "and the load spreads evenly (see affinity: with tenant affinity the busiest replica bounds it)",
            **{
                f"{n}_replicas_texts_per_s": round(n * single_texts * (min(ratio, 1.0) if pairs else 1.0))
                for n in (1, 2, 4, 8, 16)
            },
        },
    }


def stop_cluster(cluster: LocalCluster) -> None:
    """The router, then every replica at once (each drains on its own; one after another would
    add tens of seconds to a run)."""
    cluster.router.stop()
    with ThreadPoolExecutor(max_workers=len(cluster.replicas) or 1) as pool:
        for future in [pool.submit(server.stop) for server in cluster.replicas.values()]:
            try:
                future.result()
            except Exception as exc:  # keep stopping the others
                log.warning("stopping a replica failed: %s", exc)


# --- the run ---------------------------------------------------------------------------------
def run(plan: Plan = FULL) -> dict:
    started = time.perf_counter()
    texts = real_text_mix(size=plan.mix_size)
    load_before = os.getloadavg()
    report: dict = {"plan": asdict(plan), "concurrency": CONCURRENCY, "texts_per_request": TEXTS_PER_REQUEST}
    with tempfile.TemporaryDirectory(prefix="headroom-bench-cluster-") as tmp:
        root = Path(tmp)
        s3 = SeaweedFS(root / "s3")
        cluster: LocalCluster | None = None
        solo: HAProxyRouter | None = None
        try:
            s3.start()
            tenants, fingerprint = local_repository(root / "model_repository")
            url = s3.url("cluster")
            from headroom.repository.s3_store import S3HeadStore

            S3HeadStore(url, client=s3.client()).publish(root / "model_repository")
            cluster = LocalCluster(url, root / "cluster", secrets.token_urlsafe(32), s3.environment(), settings())
            cluster.add_replicas(1)
            first = cluster.replicas["replica-1"]
            # A router of its own with only replica-1 behind it: both paths reach the same server.
            solo = HAProxyRouter(root / "solo-router", *free_ports(2))
            solo.start([Replica.of("replica-1", first.address)])
            wait_routed(solo, ["replica-1"])
            cluster.start_router()
            wait_routed(cluster.router, ["replica-1"])

            log.info("1/3 router overhead: %d sequential requests per path and protocol", plan.overhead_requests)
            warm_up(first.address, tenants, texts)
            report["overhead"] = router_overhead(
                first.address, solo, tenants, texts, plan.overhead_requests, plan.overhead_max_s
            )

            log.info("2/3 throughput (replicas share this machine's %d cores: no scaling expected)", os.cpu_count())
            pids = [first.process.pid]
            points, direct, routed_one = [], [], []
            for index in range(plan.rounds):
                # Alternate which goes first, so drift over the minutes favours neither.
                pair = [("direct, 1 replica", first.address.grpc_url, None), ("router, 1 replica", solo.grpc_url, solo)]
                for label, grpc_url, router in pair if index % 2 == 0 else pair[::-1]:
                    point = load_point(label, grpc_url, tenants, texts, plan, pids, router, seed=index)
                    (direct if router is None else routed_one).append(point)
                    points.append(point)
            for count in range(2, MAX_REPLICAS + 1):
                (name,) = cluster.add_replicas(1)
                warm_up(cluster.replicas[name].address, tenants, texts)
                cluster.update_router()
                wait_routed(cluster.router, list(cluster.replicas))
                pids.append(cluster.replicas[name].process.pid)
                label = f"router, {count} replicas"
                points.append(load_point(label, cluster.router.grpc_url, tenants, texts, plan, pids, cluster.router, 7))
            points.append(
                load_point(
                    f"direct again, {MAX_REPLICAS} running",
                    first.address.grpc_url,
                    tenants,
                    texts,
                    plan,
                    pids,
                    None,
                    8,
                )
            )
            report["throughput"] = points

            log.info("3/3 convergence")
            report["convergence"] = {
                "replica_serves_every_head_s": {n: round(s[0], 2) for n, s in cluster.start_seconds.items()},
                "heads_in_repository": len(tenants),
                **onboard_and_offboard(cluster, fingerprint, texts[0]),
            }
            spread = affinity(points, len(tenants))
            report["capacity"] = capacity(direct, routed_one, report["overhead"], os.cpu_count() or 1, spread)
        finally:
            if solo is not None:
                solo.stop()
            if cluster is not None:
                stop_cluster(cluster)
            s3.stop()
    report["texts"] = length_distribution(texts)
    load_after = os.getloadavg()
    report["load_average"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]}
    report["note"] = (
        f"All replicas, haproxy, SeaweedFS and the load generator share this machine's {os.cpu_count()} cores: "
        "the multi-replica runs show the router's cost and that it loses no request, not scaling."
    )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


def plot(report: dict) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels, direct, routed = [], [], []
    for protocol, data in report["overhead"].items():
        for q in ("p50_us", "p99_us"):
            labels.append(f"{protocol} {q[:3]}")
            direct.append(data["direct"][q] / 1000)
            routed.append(data["router"][q] / 1000)
    xs = np.arange(len(labels))
    left.bar(xs - 0.2, direct, width=0.4, label="direct to replica-1")
    left.bar(xs + 0.2, routed, width=0.4, label="through the router (replica-1 only)")
    left.set_xticks(xs, labels)
    left.set_ylabel("latency (ms), sequential single-text requests")
    left.set_title("Router overhead")
    left.legend(fontsize=8)
    points = report["throughput"]
    right.bar(range(len(points)), [p["texts_per_s"] for p in points])
    right.set_xticks(range(len(points)), [p["point"].replace(", ", "\n") for p in points], fontsize=7)
    right.set_ylabel("texts / s")
    right.set_title(f"Closed loop, {CONCURRENCY} in flight (replicas share {report['machine']['cores']} cores)")
    save_figure(figure, "cluster")


def print_figures(report: dict) -> None:
    print(report["note"])
    print(
        f"load average before/after (1, 5, 15 min): {report['load_average']['before']} / "
        f"{report['load_average']['after']}"
    )
    print("router overhead, sequential single-text requests (microseconds):")
    for protocol, data in report["overhead"].items():
        d, r = data["direct"], data["router"]
        print(
            f"  {protocol}: direct p50 {d['p50_us']:.0f} p99 {d['p99_us']:.0f}; router p50 {r['p50_us']:.0f} "
            f"p99 {r['p99_us']:.0f}; +{data['router_minus_direct_p50_us']:.0f} at p50, "
            f"+{data['router_minus_direct_p99_us']:.0f} at p99 (median per-text difference "
            f"{data['median_paired_difference_us']:.0f}); failed {d['failed']}/{r['failed']} of "
            f"{data['requests_per_path']} each"
        )
    print(f"throughput, closed loop, {CONCURRENCY} in flight, {TEXTS_PER_REQUEST} texts of one tenant per request:")
    for p in report["throughput"]:
        share = p.get("router_requests_by_replica")
        print(
            f"  {p['point']}: {p['requests_per_s']:.0f} requests/s, {p['texts_per_s']:.0f} texts/s, "
            f"failed {p['failed']} of {p['sent']}, p50 {p['p50_ms']} ms"
            + (f", router CPU {p['router_cpu_ms_per_request']} ms/request" if "router_cpu_ms_per_request" in p else "")
            + (f", by replica {share}" if share else "")
        )
    c = report["convergence"]
    print(
        f"convergence: serves every head ({c['heads_in_repository']} heads) after start "
        f"{c['replica_serves_every_head_s']} s; "
        f"onboarding across {c['replicas']} replicas {c['onboard_total_s']} s (load by replica "
        f"{c['onboard_load_s_by_replica']}, missed {len(c['onboard_missed'])}); offboard refused everywhere "
        f"after {c['offboard_refused_everywhere_s']} s"
    )
    cap = report["capacity"]
    tenants = cap["tenants_per_replica"]
    print(
        f"capacity: single replica {cap['single_replica_requests_per_s']:.0f} requests/s, "
        f"{cap['single_replica_texts_per_s']:.0f} texts/s on {cap['cores']} cores = "
        f"{cap['texts_per_s_per_core']:.0f} texts/s per core; router/direct throughput "
        f"{cap['router_over_direct_throughput']}; router CPU {cap['router_cpu_ms_per_request']} ms/request "
        f"(~{cap['router_requests_per_s_per_core']} requests/s per haproxy core); tenants per replica: "
        f"{tenants['heads_on_one_server']} heads on one server ({tenants['source']})"
    )
    extrapolation = {k: v for k, v in cap["extrapolation"].items() if k != "label"}
    print(f"  {cap['extrapolation']['label']}: {extrapolation}")
    spread = cap["affinity"]
    print(
        f"  tenant affinity: busiest of {spread['replicas']} replicas took {spread['busiest_replica_share']} of the "
        f"routed requests (even: {spread['even_share']}); hottest tenant's share {spread['hottest_tenant_share']}, "
        f"so with affinity a cluster serves at most {spread['cluster_over_single_at_most_any_n']}x one replica "
        f"whatever N ({spread['cluster_over_single_at_most_measured']}x with the spread measured here)"
    )


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(figure, measured, target) rows for ``bench.run_all``'s summary table."""
    overhead, points, c = report["overhead"], report["throughput"], report["convergence"]
    cap = report["capacity"]
    added = {n: s for n, s in c["replica_serves_every_head_s"].items() if n != "replica-1"}
    failed = sum(p["failed"] for p in points)
    return [
        (
            "router overhead, sequential single-text requests through HAProxy to the same replica, "
            "p50 / p99 added (HTTP; gRPC)",
            "; ".join(
                f"{o['router_minus_direct_p50_us']:+.0f} / {o['router_minus_direct_p99_us']:+.0f} µs"
                for o in (overhead["http"], overhead["grpc"])
            )
            + f" (direct p50 {overhead['http']['direct']['p50_us'] / 1000:.1f} ms HTTP)",
            "",
        ),
        (
            f"throughput through the router / direct, 1 replica ({TEXTS_PER_REQUEST} texts per request, "
            f"{CONCURRENCY} in flight); failed requests, every point up to {MAX_REPLICAS} replicas on the same cores",
            f"{cap['router_over_direct_throughput']:.2f} ({cap['single_replica_texts_per_s']:.0f} texts/s direct); "
            f"{failed} of {sum(p['sent'] for p in points)} failed",
            "0 failed",
        ),
        (
            f"added replica serves every head ({c['heads_in_repository']} heads, S3); onboarding across "
            f"{c['replicas']} replicas, slowest load; offboarded head refused everywhere",
            f"{', '.join(f'{s:.1f}' for s in added.values())} s; {c['onboard_slowest_load_s']:.2f} s; "
            f"{c['offboard_refused_everywhere_s']:.2f} s",
            "",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter runs (about 2 minutes)")
    parser.add_argument("--requests", type=int, help=f"sequential requests per path (default {FULL.overhead_requests})")
    parser.add_argument("--seconds", type=float, help=f"measuring window per throughput point (default {FULL.load_s})")
    args = parser.parse_args(argv)
    setup_logging()
    plan = QUICK if args.quick else FULL
    if args.requests:
        plan = Plan(**{**asdict(plan), "overhead_requests": args.requests})
    if args.seconds:
        plan = Plan(**{**asdict(plan), "load_s": args.seconds})
    report = run(plan)
    report["machine"] = machine_info()
    write_report("cluster", report)
    plot(report)
    print_figures(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
