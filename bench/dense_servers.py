"""``bench.dense_heads``' settings and the server helpers its steps share: start-up timing,
warm-up traffic, one request per head, timed ``load_model`` calls, PSS and the allocator in use."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from headroom import config
from headroom.client.traffic import UNKNOWN_HEAD
from headroom.server.health import http_client as triton_http_client
from headroom.server.launcher import TritonServer

from bench.common import (
    RESULTS_DIR,
    free_address,
    log,
    pipeline_request,
    pipeline_traffic,
    run_load,
    server_pss_by_model,
    settle_pss,
)

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
        # Live with the system models READY and the metrics page up (every step reads gauges
        # there); a system model that failed to load raises at once rather than after the timeout.
        server.wait_ready(timeout_s=START_TIMEOUT_S)
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
    """A ``tritonclient.http`` client of ``server`` whose calls may take long (loads among thousands)."""
    return triton_http_client(server.address.http_url, timeout_s=600.0)


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
