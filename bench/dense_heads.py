"""Benchmark 7, dense heads (issue 4): 10,000 heads on one server, control calls among them, and
throughput with 1,000 of them against a single head and against issue 2's per-head models.

Heads are synthetic (``bench.synthetic_heads``): random linear heads of 2-20 classes, written in
onboarding's layout with the served encoder's fingerprint, and every 1,000th a non-linear
Gemm-Relu-Gemm-Softmax head that the executor runs as its own ONNX Runtime session. Server
memory is the PSS of ``tritonserver`` plus its stub processes, read after the same warm-up
traffic (requests naming an unknown head: tokenizer, encoder, pipeline and executor all run).
The report names the allocator each server ran with (``allocator``: jemalloc or another
preloaded library, else glibc with its ``MALLOC_*`` settings), read from the running process.

1. zero heads: start-up time and PSS, the baseline of every memory figure;
2. N heads registered at start-up: bulk start time, every head READY in the repository index,
   PSS delta per head; the non-linear heads' and a few linear heads' answers against offline
   numpy; ``load_model`` of further heads one at a time (per-load time with N loaded);
   onboarding with N loaded (``Onboarding.onboard_model``: checks, atomic write,
   ``load_model``, a verified first answer through ``pipeline``); offboarding one
   (``Onboarding.offboard``): the executor's ``headroom_resident_head_bytes`` must drop by
   that head's weights, and a request right after must fail with NOT_FOUND "is not loaded";
   then every head answered once (all resident), PSS, and the executor's stacked arrays
   (``headroom_head_bank_bytes``) against the weights they hold (``headroom_stacked_head_bytes``);
3. ``--through-api``: a fresh server loads all N heads one ``load_model`` at a time (about
   20 minutes at 10,000 on this machine): bulk time, per-load time as N grows, PSS;
4. throughput: a server with T heads (1,000) and, beside it, issue 2's design
   (``bench.baselines.per_head_models``: one stub process per head) with B heads loaded one at a
   time; the same texts as Zipf traffic over T heads, over B heads and to one head, each design,
   alternated ``--rounds`` times so drift on this shared machine shows.

    python -m bench.dense_heads [--heads 10000] [--throughput-heads 1000] [--baseline-heads 64]
                                [--through-api] [--skip-throughput] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from headroom import config
from headroom.client.inference import HeadroomClient, HeadroomError
from headroom.client.onboarding import Onboarding
from headroom.client.traffic import UNKNOWN_HEAD
from headroom.export.encoder import read_encoder_info
from headroom.server.launcher import ServerError, TritonServer, http_status

from bench.baselines import per_head_models
from bench.common import (
    RESULTS_DIR,
    free_address,
    log,
    pipeline_request,
    pipeline_traffic,
    pyplot,
    ready_heads,
    repository_index,
    run_load,
    save_figure,
    scrape_metrics,
    server_pss_by_model,
    settle_pss,
    setup_logging,
    system_repository,
    texts_of_token_length,
    write_report,
)
from bench.common import (
    settings as common_settings,
)
from bench.synthetic_heads import SyntheticHead, head_model, plan_heads, reference_probabilities, write_heads

MIB = 1 << 20
KIB = 1 << 10
CONCURRENCY = 128
#: How long to wait for a server with thousands of models to come up.
START_TIMEOUT_S = 1800
#: How long after offboarding the executor's sweep (every 1 s) may take to free the weights.
SWEEP_WAIT_S = 10.0


@dataclass(frozen=True)
class Settings:
    heads: int = 10_000
    api_loads: int = 30
    onboardings: int = 20
    throughput_heads: int = 1_000
    baseline_heads: int = 64
    seconds: float = 6.0
    rounds: int = 6
    warmup_s: float = 3.0
    mlp_every: int = 1_000
    through_api: bool = False
    #: Step 4; ``--skip-throughput`` leaves it out (memory and control figures only).
    throughput: bool = True
    variant: str = config.DEFAULT_ENCODER_VARIANT


QUICK = Settings(
    heads=200,
    api_loads=3,
    onboardings=3,
    throughput_heads=50,
    baseline_heads=3,
    seconds=2.0,
    rounds=1,
    warmup_s=1.0,
    mlp_every=100,
)


def stats_ms(seconds: list[float]) -> dict:
    values = np.array(seconds, dtype=float) * 1000
    if not len(values):
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "mean": round(float(values.mean()), 1),
        "max": round(float(values.max()), 1),
    }


# --- servers ---------------------------------------------------------------------------------
def start_server(
    repository: Path, models: list[str], name: str, system_models: tuple[str, ...] = config.SYSTEM_MODELS
) -> tuple[TritonServer, float]:
    """Start Triton with ``models``; returns it and the seconds until it was live with the system
    models READY and its metrics page up. ``--load-model`` loads every listed model before the
    endpoints come up, so that is the bulk load time. Log: ``bench/results/dense_heads.<name>.log``."""
    log_file = RESULTS_DIR / f"dense_heads.{name}.log"
    log_file.unlink(missing_ok=True)
    server = TritonServer(free_address(), repository, log_file=log_file, models=models, system_models=system_models)
    started = time.perf_counter()
    server.start()
    try:
        base = server.address.http_url
        while not (
            http_status(f"{base}/v2/health/live") == 200
            and all(http_status(f"{base}/v2/models/{model}/ready") == 200 for model in system_models)
            # Triton opens the metrics port tens of ms after HTTP; every step reads gauges there.
            and http_status(f"http://localhost:{server.address.metrics_port}/metrics") == 200
        ):
            if server.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {server.process.returncode} (see {log_file})")
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise ServerError(f"tritonserver not live within {START_TIMEOUT_S} s (see {log_file})")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server, time.perf_counter() - started


def executor_loads(server: TritonServer) -> int:
    """How often this server has loaded ``executor`` (1 unless something made Triton reload it)."""
    if server.log_file is None or not server.log_file.exists():
        return 0
    with server.log_file.open("rb") as handle:
        return sum(1 for line in handle if b'"loading: executor:' in line)


def http_client(server: TritonServer):
    import tritonclient.http as http

    return http.InferenceServerClient(
        f"localhost:{server.address.http_port}", network_timeout=600.0, connection_timeout=600.0
    )


def warm_and_measure_pss(server: TritonServer, texts: list[str], settings: Settings) -> int:
    """PSS after ``warmup_s`` of saturating requests naming an unknown head (every system model runs,
    with the batch sizes of the throughput runs, so the encoder's arena has grown as far)."""
    traffic = pipeline_traffic([UNKNOWN_HEAD], texts, failure_share=1.0)
    result = run_load(
        server.address.grpc_url, traffic, duration_s=settings.warmup_s, concurrency=CONCURRENCY, warmup_s=0.0
    )
    if result.errors:
        raise RuntimeError(f"warm-up failed: {result.first_error}")
    return settle_pss(server.process.pid, max(2.0, settings.warmup_s))


async def _touch(grpc_url: str, names: list[str], texts: list[str], concurrency: int) -> list[tuple[str, str]]:
    import tritonclient.grpc as grpc_module
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(grpc_url.split("://")[-1])
    work = iter(enumerate(names))
    errors: list[tuple[str, str]] = []

    async def worker() -> None:
        for index, name in work:
            try:
                inputs = pipeline_request(grpc_module, texts[index % len(texts)], name)
                await client.infer(config.PIPELINE_MODEL, inputs)
            except Exception as exc:  # tritonclient raises InferenceServerException
                errors.append((name, str(exc)))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return errors


def touch_heads(server: TritonServer, names: list[str], texts: list[str], concurrency: int = 64) -> float:
    """One request per head (each becomes resident in the executor); returns the seconds taken."""
    started = time.perf_counter()
    errors = asyncio.run(_touch(server.address.grpc_url, names, texts, concurrency))
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(names)} heads did not answer, first: {errors[0]}")
    return time.perf_counter() - started


def timed_loads(server: TritonServer, models: list[str], every: int = 0, label: str = "") -> tuple[list[float], list]:
    """``load_model`` of each model, one at a time; seconds per load (and a checkpoint every ``every``)."""
    client = http_client(server)
    times, checkpoints = [], []
    try:
        for count, model in enumerate(models, start=1):
            started = time.perf_counter()
            client.load_model(model)
            times.append(time.perf_counter() - started)
            if every and (count % every == 0 or count == len(models)):
                recent = stats_ms(times[-every:])
                checkpoints.append({"loaded": count, "recent_load_ms": recent})
                log.info("%s: %d loaded, recent load p50 %.0f ms", label, count, recent["p50"])
    finally:
        client.close()
    return times, checkpoints


def pss_by_model_mib(server: TritonServer) -> dict[str, float]:
    return {name: round(size / MIB, 1) for name, size in sorted(server_pss_by_model(server.process.pid).items())}


#: Preloaded allocators recognised in a server's memory map, by the name of their library.
PRELOADED_ALLOCATORS = ("jemalloc", "mimalloc", "tcmalloc")


def server_allocator(server: TritonServer) -> dict:
    """The allocator the running ``tritonserver`` uses: a preloaded library found in its memory
    map, else glibc's malloc; with the allocator variables of its environment (``MALLOC_*``,
    ``GLIBC_TUNABLES``, ``LD_PRELOAD``)."""
    pid = server.process.pid
    libraries = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    settings = {}
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = item.decode("utf-8", "replace").partition("=")
        if name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", "LD_PRELOAD"):
            settings[name] = value
    for allocator in PRELOADED_ALLOCATORS:
        library = next((path for path in sorted(libraries) if f"lib{allocator}" in Path(path).name), None)
        if library is not None:
            return {"allocator": allocator, "library": library, "settings": settings}
    return {"allocator": "glibc", "library": None, "settings": settings}


def allocator_text(allocator: dict) -> str:
    """``glibc (MALLOC_ARENA_MAX=1)``, ``jemalloc``: for logs and the summary table."""
    settings = [f"{name}={value}" for name, value in allocator["settings"].items() if name != "LD_PRELOAD"]
    return allocator["allocator"] + (f" ({', '.join(settings)})" if settings else "")


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
        index = repository_index(server.address.http_url)
        ready = set(ready_heads(index))
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
            "metrics_page_bytes": _metrics_page_size(server),
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


def _metrics_page_size(server: TritonServer) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://localhost:{server.address.metrics_port}/metrics", timeout=60) as response:
        return len(response.read())


# --- step 3: every head through the API ------------------------------------------------------
def through_api(repository: Path, heads: list[SyntheticHead], texts: list[str], settings: Settings) -> dict:
    server, start_s = start_server(repository, list(config.SYSTEM_MODELS), "through_api")
    try:
        started = time.perf_counter()
        every = max(1, len(heads) // 20)
        times, checkpoints = timed_loads(server, [head.model_name for head in heads], every, "through the API")
        bulk_s = time.perf_counter() - started
        ready = len(ready_heads(repository_index(server.address.http_url)))
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


# --- step 4: throughput ----------------------------------------------------------------------
def throughput(
    repository: Path,
    workdir: Path,
    heads: list[SyntheticHead],
    fingerprint: str,
    texts: list[str],
    settings: Settings,
) -> dict:
    many = heads[: settings.throughput_heads]
    few = many[: settings.baseline_heads]
    names_many, names_few = [h.name for h in many], [h.name for h in few]
    baseline_repo = per_head_models.lay_out_repository(workdir / "per_head_models_repo", settings.variant)
    write_heads(baseline_repo, few, fingerprint, config_text=per_head_models.head_config)
    with contextlib.ExitStack() as stack:
        ours, ours_start_s = start_server(
            repository, [*config.SYSTEM_MODELS, *(h.model_name for h in many)], "throughput"
        )
        stack.callback(ours.stop)
        theirs, theirs_start_s = start_server(
            baseline_repo, list(per_head_models.SYSTEM_MODELS), "per_head_models", per_head_models.SYSTEM_MODELS
        )
        stack.callback(theirs.stop)
        theirs_empty = warm_and_measure_pss(theirs, texts, settings)
        load_times, _ = timed_loads(theirs, [h.model_name for h in few], max(1, len(few) // 4), "per-head models")
        touch_heads(theirs, names_few, texts, concurrency=8)
        theirs_loaded = settle_pss(theirs.process.pid, max(2.0, settings.warmup_s))
        baseline_memory = {
            "heads": len(few),
            "pss_without_heads_mib": round(theirs_empty / MIB, 1),
            "pss_mib": round(theirs_loaded / MIB, 1),
            "mib_per_head": round((theirs_loaded - theirs_empty) / MIB / max(1, len(few)), 1),
            "load_ms": stats_ms(load_times),
        }
        log.info(
            "per-head models: %d heads loaded one at a time (p50 %s ms each), %.1f MiB per head",
            len(few),
            baseline_memory["load_ms"].get("p50"),
            baseline_memory["mib_per_head"],
        )
        touch_heads(ours, names_many, texts)

        def traffic(names: list[str]) -> Callable:
            return lambda: pipeline_traffic(names, texts, seed=0)

        plan = {
            "many": ("headroom", f"Zipf over {len(many)} heads", ours, traffic(names_many)),
            "one": ("headroom", "one head", ours, traffic(names_many[:1])),
            "few": ("headroom", f"Zipf over {len(few)} heads", ours, traffic(names_few)),
            "baseline_few": ("per-head models", f"Zipf over {len(few)} heads", theirs, traffic(names_few)),
            "baseline_one": ("per-head models", "one head", theirs, traffic(names_few[:1])),
        }
        for _, _, server, make in plan.values():
            run_load(server.address.grpc_url, make(), duration_s=min(2.0, settings.seconds), concurrency=CONCURRENCY)
        runs = []
        for round_index in range(settings.rounds):
            # Forward, then backward: each pair compared is measured side by side, in both orders.
            order = list(plan) if round_index % 2 == 0 else list(reversed(plan))
            for key in order:
                design, load, server, make = plan[key]
                result = run_load(
                    server.address.grpc_url,
                    make(),
                    duration_s=settings.seconds,
                    concurrency=CONCURRENCY,
                    server_pid=server.process.pid,
                )
                summary = result.summary()
                runs.append({"round": round_index + 1, "run": key, "design": design, "traffic": load, **summary})
                log.info(
                    "round %d, %s, %s: %.0f requests/s, %.2f server CPU ms per request (%d errors)",
                    round_index + 1,
                    design,
                    load,
                    result.throughput,
                    summary["server_cpu_ms_per_request"] or 0.0,
                    result.errors,
                )
        executor_reloaded = executor_loads(ours) > 1

    def rate(key: str, round_index: int | None = None) -> float:
        return statistics.fmean(
            r["throughput_per_s"] for r in runs if r["run"] == key and round_index in (None, r["round"])
        )

    def cpu(key: str, round_index: int) -> float:
        return next(r["server_cpu_ms_per_request"] for r in runs if r["run"] == key and r["round"] == round_index)

    def ratio(numerator: str, denominator: str) -> dict:
        """Throughput of ``numerator`` over ``denominator``: measured, and as implied by the server
        CPU each request took (the machine's cores are the bottleneck; other work on them moves
        throughput far more than CPU per request)."""
        rounds = range(1, settings.rounds + 1)
        per_round = [rate(numerator, i) / rate(denominator, i) for i in rounds]
        by_cpu = [cpu(denominator, i) / cpu(numerator, i) for i in rounds]
        return {
            "median_of_rounds": round(statistics.median(per_round), 3),
            "per_round": [round(value, 3) for value in per_round],
            "of_means": round(rate(numerator) / rate(denominator), 3),
            "by_server_cpu_median": round(statistics.median(by_cpu), 3),
            "by_server_cpu_per_round": [round(value, 3) for value in by_cpu],
        }

    return {
        "throughput_heads": len(many),
        "baseline_heads": len(few),
        "concurrency": CONCURRENCY,
        "seconds": settings.seconds,
        "rounds": settings.rounds,
        "start_s": {"headroom": round(ours_start_s, 2), "per_head_models": round(theirs_start_s, 2)},
        "per_head_models_memory": baseline_memory,
        "requests_per_s": {
            f"{design}, {load}": round(statistics.median(rate(key, i) for i in range(1, settings.rounds + 1)), 1)
            for key, (design, load, _, _) in plan.items()
        },
        "requests_per_s_mean": {f"{design}, {load}": round(rate(key), 1) for key, (design, load, _, _) in plan.items()},
        "server_cpu_ms_per_request": {
            f"{design}, {load}": round(
                statistics.median(cpu(key, i) for i in range(1, settings.rounds + 1)),
                3,
            )
            for key, (design, load, _, _) in plan.items()
        },
        "many_to_one": ratio("many", "one"),
        "headroom_to_per_head_models": ratio("few", "baseline_few"),
        "per_head_models_few_to_one": ratio("baseline_few", "baseline_one"),
        "executor_reloaded": executor_reloaded,
        "runs": runs,
        "errors": sum(r["errors"] for r in runs),
    }


# --- the whole benchmark ---------------------------------------------------------------------
def run_throughput_only(settings: Settings = Settings()) -> dict:
    """Step 4 alone (the ``throughput`` part of ``run``'s report), e.g. to measure it again."""
    import tempfile

    texts = texts_of_token_length(16, 10)
    with tempfile.TemporaryDirectory(prefix="headroom-dense-") as tmp:
        workdir = Path(tmp)
        repository = system_repository(workdir / "repo", settings.variant)
        fingerprint = read_encoder_info(repository)["fingerprint"]
        heads = plan_heads([f"d{i:05d}" for i in range(settings.heads)], settings.mlp_every)
        write_heads(repository, heads[: settings.throughput_heads], fingerprint)
        return throughput(repository, workdir, heads, fingerprint, texts, settings)


def merge_throughput(rates: dict, results_dir: Path = RESULTS_DIR) -> dict:
    """The last full report with its throughput part replaced by ``rates`` (measured separately)."""
    previous = json.loads((results_dir / "dense_heads.json").read_text())
    report = {key: value for key, value in previous.items() if key not in ("benchmark", "machine")}
    report["throughput"] = rates
    report["measured"] = {
        "throughput": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "everything else": previous.get("measured", {}).get("everything else", previous["machine"]["date"]),
    }
    return report


def run(settings: Settings = Settings()) -> dict:
    import tempfile

    started = time.perf_counter()
    texts = texts_of_token_length(16, 10)
    with tempfile.TemporaryDirectory(prefix="headroom-dense-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        repository = system_repository(workdir / "repo", settings.variant)
        fingerprint = read_encoder_info(repository)["fingerprint"]

        log.info("1/4 zero heads")
        zero = zero_heads(repository, texts, settings)

        heads = plan_heads([f"d{i:05d}" for i in range(settings.heads)], settings.mlp_every)
        api_heads = plan_heads([f"api{i:03d}" for i in range(settings.api_loads)], seed=1)
        onboard = plan_heads([f"onb{i:03d}" for i in range(max(1, settings.onboardings))], seed=2)
        log.info("writing %d synthetic heads (%d non-linear)", len(heads), sum(h.kind == "mlp" for h in heads))
        write_started = time.perf_counter()
        write_heads(repository, heads, fingerprint)
        write_s = time.perf_counter() - write_started
        log.info("wrote %d heads in %.1f s", len(heads), write_s)

        log.info("2/4 %d heads registered at start-up", len(heads))
        dense = dense_server(repository, state_dir, heads, api_heads, onboard, fingerprint, texts, settings)

        api = None
        if settings.through_api:
            log.info("3/4 %d heads loaded through the API one at a time", len(heads))
            api = through_api(repository, heads, texts, settings)
        else:
            log.info("3/4 skipped: loading every head through the API (--through-api)")

        rates = None
        if settings.throughput:
            log.info("4/4 throughput: %d heads, one head, issue 2's per-head models", settings.throughput_heads)
            rates = throughput(repository, workdir, heads, fingerprint, texts, settings)
        else:
            log.info("4/4 skipped: throughput (--skip-throughput)")

    registered_delta = dense["pss_mib"] - zero["pss_mib"]
    resident_delta = dense["all_resident"]["pss_mib"] - zero["pss_mib"]
    memory = {
        "zero_heads_pss_mib": zero["pss_mib"],
        "registered_pss_mib": dense["pss_mib"],
        "registered_delta_mib": round(registered_delta, 1),
        "registered_kib_per_head": round(registered_delta * KIB / len(heads), 1),
        "all_resident_pss_mib": dense["all_resident"]["pss_mib"],
        "all_resident_delta_mib": round(resident_delta, 1),
        "all_resident_kib_per_head": round(resident_delta * KIB / dense["all_resident"]["heads"], 1),
        # tritonserver alone (no stubs) at each step, and the executor's stub.
        "tritonserver_mib": {
            "zero_heads": zero["pss_by_model_mib"].get("tritonserver"),
            "registered": dense["pss_by_model_mib"].get("tritonserver"),
            "all_resident": dense["all_resident"]["pss_by_model_mib"].get("tritonserver"),
        },
        "executor_mib": {
            "zero_heads": zero["pss_by_model_mib"].get(config.EXECUTOR_MODEL),
            "all_resident": dense["all_resident"]["pss_by_model_mib"].get(config.EXECUTOR_MODEL),
        },
    }
    if api is not None:
        memory["through_api_delta_mib"] = round(api["pss_mib"] - zero["pss_mib"], 1)
        memory["through_api_kib_per_head"] = round((api["pss_mib"] - zero["pss_mib"]) * KIB / len(heads), 1)
    return {
        "settings": dataclasses.asdict(settings),
        "allocator": dense["startup"]["allocator"],
        "heads": len(heads),
        "mlp_heads": sum(h.kind == "mlp" for h in heads),
        "write_s": round(write_s, 1),
        "zero_heads": zero,
        "memory": memory,
        **dense,
        "through_api": api,
        "throughput": rates,
        "elapsed_min": round((time.perf_counter() - started) / 60, 1),
    }


def plot(report: dict, results_dir: Path = RESULTS_DIR) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    heads, memory = report["heads"], report["memory"]
    left.plot(
        [0, heads],
        [memory["zero_heads_pss_mib"], memory["registered_pss_mib"]],
        marker="o",
        label=f"headroom, registered at start-up ({memory['registered_kib_per_head']:.0f} KiB/head)",
    )
    left.plot(
        [0, report["all_resident"]["heads"]],
        [memory["zero_heads_pss_mib"], memory["all_resident_pss_mib"]],
        marker="^",
        label=f"headroom, every head resident ({memory['all_resident_kib_per_head']:.0f} KiB/head)",
    )
    if report.get("through_api"):
        left.plot(
            [0, heads],
            [memory["zero_heads_pss_mib"], report["through_api"]["pss_mib"]],
            marker="s",
            label=f"headroom, loaded through the API ({memory['through_api_kib_per_head']:.0f} KiB/head)",
        )
    if report.get("throughput"):
        _plot_baseline_memory(left, report["throughput"]["per_head_models_memory"], heads)
    left.set_yscale("log")
    left.set_xlabel("heads")
    left.set_ylabel("server PSS (MiB, log scale)")
    left.set_title(f"Memory against heads ({allocator_text(report['allocator'])})")
    left.legend(fontsize=7)
    if report.get("throughput"):
        _plot_throughput(right, report["throughput"])
    else:
        right.set_axis_off()
        right.text(0.5, 0.5, "throughput not measured (--skip-throughput)", ha="center", va="center")
    save_figure(figure, "dense_heads", results_dir)


def _plot_baseline_memory(left, baseline: dict, heads: int) -> None:
    left.plot(
        [0, baseline["heads"]],
        [baseline["pss_without_heads_mib"], baseline["pss_mib"]],
        marker="x",
        color="grey",
        label=f"issue 2, one model per head (measured, {baseline['mib_per_head']:.0f} MiB/head)",
    )
    left.plot(
        [baseline["heads"], heads],
        [baseline["pss_mib"], baseline["pss_without_heads_mib"] + baseline["mib_per_head"] * heads],
        linestyle="--",
        color="grey",
        label="issue 2, extrapolated",
    )


def _plot_throughput(right, throughput_report: dict) -> None:
    rates = throughput_report["requests_per_s"]
    labels = list(rates)
    colors = ["tab:blue" if label.startswith("headroom") else "grey" for label in labels]
    spread = [[], []]  # distance of the slowest and fastest round from the median
    for label in labels:
        rounds = [r["throughput_per_s"] for r in throughput_report["runs"] if f"{r['design']}, {r['traffic']}" == label]
        spread[0].append(rates[label] - min(rounds))
        spread[1].append(max(rounds) - rates[label])
    right.barh(range(len(labels)), [rates[label] for label in labels], xerr=spread, capsize=3, color=colors)
    right.set_yticks(range(len(labels)), [label.replace(", ", "\n") for label in labels], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("requests / s (≤16-token texts)")
    right.set_title(f"Throughput, same texts: median and range of {throughput_report['rounds']} round(s)")


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(figure, measured, target) rows for ``bench.run_all``'s summary table."""
    n = report["heads"]
    memory, startup = report["memory"], report["startup"]
    loads, onboarding, off = report["api_loads"], report["onboarding"], report["offboarding"]
    rates = report["throughput"]
    resident = report["all_resident"]
    triton = memory.get("tritonserver_mib", {})
    rows = [
        ("allocator of tritonserver and its stubs", allocator_text(report["allocator"]), ""),
        (
            f"{n} heads registered at start-up: bulk load / all READY (repository index)",
            f"{startup['bulk_start_s']:.1f} s / {startup['ready_heads']} READY",
            "",
        ),
        (
            f"server memory per registered head, {n} heads (PSS over the zero-head server)",
            f"{memory['registered_kib_per_head']:.1f} KiB ({memory['registered_delta_mib']:.0f} MiB in all)",
            "≤ 100 KiB",
        ),
        (
            f"... with every head resident in the executor ({resident['heads']} heads)",
            f"{memory['all_resident_kib_per_head']:.1f} KiB ({memory['all_resident_delta_mib']:.0f} MiB in all)",
            "≤ 64 KiB",
        ),
        (
            "tritonserver alone (no stubs): zero heads / registered / every head resident",
            f"{triton.get('zero_heads')} / {triton.get('registered')} / {triton.get('all_resident')} MiB",
            "",
        ),
        (
            "executor: stacked arrays allocated / weights they hold",
            f"{(resident.get('head_bank_bytes') or 0) / MIB:.1f} / "
            f"{(resident.get('stacked_head_bytes') or 0) / MIB:.1f} MiB ({resident.get('bank_to_weights')}×)",
            "≤ 1.25×",
        ),
        (
            f"load_model of one head with {loads['loaded_before']} loaded, p50 / p95",
            f"{loads['load_ms']['p50']:.0f} / {loads['load_ms']['p95']:.0f} ms",
            "",
        ),
        (
            f"onboarding with {onboarding['loaded_before']} loaded: load-to-first-answer p50 / p95",
            f"{onboarding['load_to_first_answer_ms']['p50']:.0f} / {onboarding['load_to_first_answer_ms']['p95']:.0f}"
            f" ms (whole onboarding p50 {onboarding['onboard_ms']['p50']:.0f} ms)",
            "",
        ),
        (
            "offboarding: resident weights freed / request right after",
            f"{off['freed_bytes']:.0f} of {off['head_resident_bytes']} B after {off['freed_after_s']} s / "
            f"{off['request_after']['status']} in {off['request_after']['ms']:.0f} ms",
            "freed; NOT_FOUND at once",
        ),
    ]
    if rates:
        rows += [
            (
                f"throughput, Zipf over {rates['throughput_heads']} heads / one head",
                f"{rates['many_to_one']['median_of_rounds']:.2f} (median of {rates['rounds']} rounds; "
                f"{rates['many_to_one']['by_server_cpu_median']:.2f} by server CPU per request)",
                "≥ 0.9",
            ),
            (
                f"throughput, headroom / issue 2's per-head models ({rates['baseline_heads']} Zipf heads)",
                f"{rates['headroom_to_per_head_models']['median_of_rounds']:.2f}× (median of {rates['rounds']} rounds; "
                f"{rates['headroom_to_per_head_models']['by_server_cpu_median']:.2f}× by server CPU per request)",
                "",
            ),
        ]
    if report.get("through_api"):
        api = report["through_api"]
        rows.insert(
            2,
            (
                f"{n} heads through the API one at a time: bulk / per load at the end p50",
                f"{api['bulk_s'] / 60:.1f} min / {api['last_tenth_load_ms']['p50']:.0f} ms",
                "",
            ),
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    parser.add_argument("--quick", action="store_true", help="small counts (seconds-long smoke run)")
    parser.add_argument("--heads", type=int, help=f"heads registered at start-up (default {defaults.heads})")
    parser.add_argument("--api-loads", type=int, help=f"heads loaded one by one (default {defaults.api_loads})")
    parser.add_argument("--onboardings", type=int, help=f"heads onboarded after (default {defaults.onboardings})")
    parser.add_argument(
        "--throughput-heads", type=int, help=f"heads of the Zipf traffic (default {defaults.throughput_heads})"
    )
    parser.add_argument(
        "--baseline-heads", type=int, help=f"heads of issue 2's per-head models (default {defaults.baseline_heads})"
    )
    parser.add_argument("--seconds", type=float, help=f"per throughput run (default {defaults.seconds})")
    parser.add_argument("--rounds", type=int, help=f"alternations of the throughput runs (default {defaults.rounds})")
    parser.add_argument("--through-api", action="store_true", help="also load every head one at a time (long)")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="leave out step 4 (memory and control figures only)"
    )
    parser.add_argument(
        "--only-throughput",
        action="store_true",
        help="measure step 4 again and replace it in the last report (bench/results/dense_heads.json)",
    )
    parser.add_argument("--variant", choices=config.ENCODER_VARIANTS, default=common_settings().encoder_variant)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else defaults
    overrides = {
        key: value
        for key, value in {
            "heads": args.heads,
            "api_loads": args.api_loads,
            "onboardings": args.onboardings,
            "throughput_heads": args.throughput_heads,
            "baseline_heads": args.baseline_heads,
            "seconds": args.seconds,
            "rounds": args.rounds,
        }.items()
        if value is not None
    }
    settings = dataclasses.replace(
        settings,
        **overrides,
        through_api=args.through_api,
        throughput=not args.skip_throughput,
        variant=args.variant,
    )
    if args.only_throughput and args.skip_throughput:
        parser.error("--only-throughput and --skip-throughput exclude each other")
    setup_logging()
    if args.only_throughput:
        report = merge_throughput(run_throughput_only(settings))
    else:
        report = run(settings)
    write_report("dense_heads", report)
    plot(report)
    for figure, measured, target in summary_rows(report):
        print(f"{figure}: {measured}" + (f"  (target {target})" if target else ""))
    if report["throughput"]:
        print(json.dumps(report["throughput"]["requests_per_s"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
