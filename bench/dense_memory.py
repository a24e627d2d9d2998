"""``bench.dense_heads`` steps 1-3: zero heads; N heads registered at start-up (answers, loads,
onboarding, offboarding, every head resident); every head loaded through the API."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from headroom import config
from headroom.client.inference import HeadroomClient, HeadroomError
from headroom.client.metrics import metrics_page_bytes
from headroom.client.onboarding import Onboarding
from headroom.client.traffic import UNKNOWN_HEAD
from headroom.server.launcher import TritonServer

from bench.common import (
    log,
    ready_head_models,
    scrape_metrics,
    settle_pss,
)
from bench.dense_servers import (
    MIB,
    SWEEP_WAIT_S,
    Settings,
    allocator_text,
    executor_loads,
    pss_by_model_mib,
    server_allocator,
    start_server,
    stats_ms,
    timed_loads,
    touch_heads,
    warm_and_measure_pss,
)
from bench.synthetic_heads import SyntheticHead, head_model, reference_probabilities, write_heads


# --- step 1: zero heads ----------------------------------------------------------------------
def zero_heads(repository: Path, texts: list[str], settings: Settings) -> dict:
    server, start_s = start_server(repository, list(config.SYSTEM_MODELS), "zero")
    try:
        allocator = server_allocator(server)
        pss = warm_and_measure_pss(server, texts, settings)
        by_model = pss_by_model_mib(server)
    finally:
        server.stop()
    log.info("zero heads (%s): start %.1f s, PSS %.0f MiB %s", allocator_text(allocator), start_s, pss / MIB, by_model)
    return {
        "start_s": round(start_s, 2),
        "pss_mib": round(pss / MIB, 1),
        "pss_by_model_mib": by_model,
        "allocator": allocator,
    }


# --- step 2: N heads registered at start-up --------------------------------------------------
def check_answers(server: TritonServer, heads: list[SyntheticHead], texts: list[str]) -> dict:
    """Each head's pipeline answers against ``reference_probabilities`` on the served embeddings."""
    sample = texts[:4]
    worst = 0.0
    with HeadroomClient(server.address.grpc_url, admin_key="") as client:
        embeddings = client.embed(sample)
        for head in heads:
            results = client.classify(sample, head.name)
            got = np.array([[result.probabilities[label] for label in head.labels] for result in results])
            worst = max(worst, float(np.abs(got - reference_probabilities(head, embeddings)).max()))
    return {
        "heads_checked": len(heads),
        "mlp_heads_checked": sum(head.kind == "mlp" for head in heads),
        "max_abs_diff": worst,
    }


def onboard_heads(
    server: TritonServer, repository: Path, state_dir: Path, heads: list[SyntheticHead], fingerprint: str
) -> list[dict]:
    """Onboard ready-made heads one at a time as ``headroom onboard --onnx`` does
    (``Onboarding.onboard_model``: checks, atomic write, ``load_model``, a verified first
    answer through ``pipeline``)."""
    rows = []
    with HeadroomClient(server.address.grpc_url, admin_key="") as client:
        onboarding = Onboarding(client, repository, state_dir)
        for head in heads:
            result = onboarding.onboard_model(head.name, head_model(head, fingerprint).SerializeToString(), head.labels)
            rows.append(
                {
                    "head": head.name,
                    "onboard_ms": round(result.seconds_total * 1000, 1),
                    "load_to_first_answer_ms": round(result.seconds_to_first_answer * 1000, 1),
                }
            )
    return rows


def offboard_one(server: TritonServer, repository: Path, state_dir: Path, head: SyntheticHead, text: str) -> dict:
    """Offboard a resident head: NOT_FOUND right after, resident bytes freed (executor metrics)."""
    port = server.address.metrics_port
    with HeadroomClient(server.address.grpc_url, admin_key="") as client:
        onboarding = Onboarding(client, repository, state_dir)
        client.classify([text], head.name)  # resident now
        before = scrape_metrics(port)
        started = time.perf_counter()
        onboarding.offboard(head.name)
        offboarded = time.perf_counter()
        answer = client.classify([text], head.name, return_errors=True)[0]
        answered = time.perf_counter()
        after, freed_after_s = before, None
        while time.perf_counter() - offboarded < SWEEP_WAIT_S:
            # The executor publishes its metrics when it runs a batch (its sweeper thread frees
            # the weights but stays off the Triton API), so each reading follows one request.
            client.classify([text], UNKNOWN_HEAD, return_errors=True)
            after = scrape_metrics(port)
            if before["headroom_resident_head_bytes"] - after["headroom_resident_head_bytes"] >= head.resident_bytes:
                freed_after_s = time.perf_counter() - offboarded
                break
            time.sleep(0.1)
    failed = isinstance(answer, HeadroomError)
    return {
        "head": head.name,
        "head_resident_bytes": head.resident_bytes,
        "offboard_s": round(offboarded - started, 3),
        "request_after": {
            "failed": failed,
            "status": answer.status if failed else None,
            "message": str(answer) if failed else None,
            "ms": round((answered - offboarded) * 1000, 1),
            "not_loaded": failed and "is not loaded" in str(answer),
        },
        "resident_heads": [before["headroom_resident_heads"], after["headroom_resident_heads"]],
        "resident_bytes": [before["headroom_resident_head_bytes"], after["headroom_resident_head_bytes"]],
        "freed_bytes": before["headroom_resident_head_bytes"] - after["headroom_resident_head_bytes"],
        "freed_after_s": None if freed_after_s is None else round(freed_after_s, 2),
    }


def dense_server(
    repository: Path,
    state_dir: Path,
    heads: list[SyntheticHead],
    api_heads: list[SyntheticHead],
    onboard: list[SyntheticHead],
    fingerprint: str,
    texts: list[str],
    settings: Settings,
) -> dict:
    models = [*config.SYSTEM_MODELS, *(head.model_name for head in heads)]
    server, start_s = start_server(repository, models, "dense")
    try:
        indexed_at = time.perf_counter()
        ready = set(ready_head_models(server.address.http_url))
        index_s = start_s + time.perf_counter() - indexed_at
        missing = [head.model_name for head in heads if head.model_name not in ready]
        log.info(
            "%d heads at start-up: live in %.1f s, %d READY in the index (%d missing)",
            len(heads),
            start_s,
            len(ready),
            len(missing),
        )
        if missing:
            raise RuntimeError(f"{len(missing)} heads not READY after start-up, e.g. {missing[:5]}")
        startup = {
            "bulk_start_s": round(start_s, 2),
            "index_checked_s": round(index_s, 2),
            "ready_heads": len(ready),
            "metrics_page_bytes": metrics_page_bytes(server.address.host, server.address.metrics_port),
            "allocator": server_allocator(server),
        }
        pss = warm_and_measure_pss(server, texts, settings)
        registered_by_model = pss_by_model_mib(server)
        log.info("PSS with %d registered heads: %.0f MiB %s", len(heads), pss / MIB, registered_by_model)

        rng = np.random.default_rng(1)
        linear = [head for head in heads if head.kind == "linear"]
        picked = rng.choice(len(linear), min(8, len(linear)), replace=False)
        sample = [head for head in heads if head.kind == "mlp"] + [linear[int(i)] for i in picked]
        answers = check_answers(server, sample, texts)
        log.info(
            "answers of %d heads (%d non-linear) against numpy: max |diff| %.1e",
            answers["heads_checked"],
            answers["mlp_heads_checked"],
            answers["max_abs_diff"],
        )

        loads_before = executor_loads(server)
        write_heads(repository, api_heads, fingerprint)
        load_times, _ = timed_loads(server, [head.model_name for head in api_heads])
        api_loads = {
            "loaded_before": len(heads),
            "load_ms": stats_ms(load_times),
            "first_load_ms": round(load_times[0] * 1000, 1) if load_times else None,
            "executor_reloaded": executor_loads(server) > loads_before,
        }
        log.info(
            "load_model with %d loaded: p50 %s ms, p95 %s ms (executor reloaded: %s)",
            len(heads),
            api_loads["load_ms"].get("p50"),
            api_loads["load_ms"].get("p95"),
            api_loads["executor_reloaded"],
        )

        rows = onboard_heads(server, repository, state_dir, onboard, fingerprint)
        onboarding = {
            "loaded_before": len(heads) + len(api_heads),
            "load_to_first_answer_ms": stats_ms([r["load_to_first_answer_ms"] / 1000 for r in rows]),
            "onboard_ms": stats_ms([r["onboard_ms"] / 1000 for r in rows]),
            "rows": rows,
        }
        log.info(
            "onboarding with %d loaded: load-to-first-answer p50 %s ms, p95 %s ms (whole onboarding p50 %s ms)",
            onboarding["loaded_before"],
            onboarding["load_to_first_answer_ms"].get("p50"),
            onboarding["load_to_first_answer_ms"].get("p95"),
            onboarding["onboard_ms"].get("p50"),
        )

        offboarding = offboard_one(server, repository, state_dir, onboard[-1], texts[0])
        log.info(
            "offboarded %s: resident bytes %d -> %d (head %d B) after %s s; request right after: %s in %.1f ms",
            offboarding["head"],
            *offboarding["resident_bytes"],
            offboarding["head_resident_bytes"],
            offboarding["freed_after_s"],
            offboarding["request_after"]["status"],
            offboarding["request_after"]["ms"],
        )

        everyone = [head.name for head in heads + api_heads + onboard[:-1]]
        touch_s = touch_heads(server, everyone, texts)
        metrics = scrape_metrics(server.address.metrics_port)
        resident_pss = settle_pss(server.process.pid, max(2.0, settings.warmup_s))
        all_resident = {
            "heads": len(everyone),
            "touch_s": round(touch_s, 1),
            "pss_mib": round(resident_pss / MIB, 1),
            "pss_by_model_mib": pss_by_model_mib(server),
            "resident_heads": metrics.get("headroom_resident_heads"),
            "resident_head_bytes": metrics.get("headroom_resident_head_bytes"),
            "evictions": metrics.get("headroom_head_evictions_total"),
            # The executor's stacked arrays (allocated) and the linear heads' weights in them.
            "head_bank_bytes": metrics.get("headroom_head_bank_bytes"),
            "stacked_head_bytes": metrics.get("headroom_stacked_head_bytes"),
        }
        if all_resident["head_bank_bytes"] is not None and all_resident["stacked_head_bytes"]:
            all_resident["bank_to_weights"] = round(
                all_resident["head_bank_bytes"] / all_resident["stacked_head_bytes"], 3
            )
        log.info(
            "all %d heads answered once (%.0f s): %s resident, %.1f MiB of weights in %.1f MiB of arrays, PSS %.0f MiB",
            len(everyone),
            touch_s,
            all_resident["resident_heads"],
            (all_resident["resident_head_bytes"] or 0) / MIB,
            (all_resident["head_bank_bytes"] or 0) / MIB,
            resident_pss / MIB,
        )
        startup["executor_loads"] = executor_loads(server)
    finally:
        server.stop()
    return {
        "startup": startup,
        "pss_mib": round(pss / MIB, 1),
        "pss_by_model_mib": registered_by_model,
        "answers": answers,
        "api_loads": api_loads,
        "onboarding": onboarding,
        "offboarding": offboarding,
        "all_resident": all_resident,
    }


# --- step 3: every head through the API ------------------------------------------------------
def through_api(repository: Path, heads: list[SyntheticHead], texts: list[str], settings: Settings) -> dict:
    server, start_s = start_server(repository, list(config.SYSTEM_MODELS), "through_api")
    try:
        started = time.perf_counter()
        every = max(1, len(heads) // 20)
        times, checkpoints = timed_loads(server, [head.model_name for head in heads], every, "through the API")
        bulk_s = time.perf_counter() - started
        ready = len(ready_head_models(server.address.http_url))
        pss = warm_and_measure_pss(server, texts, settings)
    finally:
        server.stop()
    log.info("%d heads through the API one at a time: %.0f s, PSS %.0f MiB", len(heads), bulk_s, pss / MIB)
    return {
        "heads": len(heads),
        "bulk_s": round(bulk_s, 1),
        "ready_heads": ready,
        "load_ms": stats_ms(times),
        "last_tenth_load_ms": stats_ms(times[-max(1, len(times) // 10) :]),
        "checkpoints": checkpoints,
        "pss_mib": round(pss / MIB, 1),
    }
