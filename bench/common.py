"""What every benchmark shares: machine facts, reports, server set-up, memory, and load generation.

Benchmarks are not tests: they print figures and write ``bench/results/<name>.json`` (+ PNG).
Timings are only compared as ratios measured in the same run; this machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from headroom import config
from headroom.server.launcher import free_address, free_ports  # noqa: F401  (re-exported for the benchmarks)

log = logging.getLogger("bench")

RESULTS_DIR = Path(os.environ.get("HEADROOM_BENCH_RESULTS", config.PROJECT_ROOT / "bench" / "results"))
TRITON_VERSION = "2.51.0"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


# --- machine and reports ---------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    versions = {}
    for package in ("onnxruntime", "numpy", "tritonclient", "nvidia-pytriton", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "tritonserver": TRITON_VERSION,
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_report(name: str, data: dict, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **data}, indent=2) + "\n")
    log.info("wrote %s", path)
    return path


def save_figure(figure, name: str, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    log.info("wrote %s", path)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- servers ---------------------------------------------------------------------------------
#: Where the benchmarks take the system models from, and the demo heads already trained for them:
#: the checkout's own repository (its code, never a server's state).
SOURCE_REPOSITORY = config.DEFAULT_MODEL_REPOSITORY


def settings() -> config.Settings:
    """The environment's settings, read when a benchmark starts (never at import)."""
    return config.Settings.from_env()


def system_repository(destination: Path, variant: str, models: tuple[str, ...] = config.SYSTEM_MODELS) -> Path:
    """A model repository with the system ``models`` and the ``variant`` encoder, no heads."""
    from headroom.export.encoder import export_all, install_encoder

    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in models:
        shutil.copytree(
            SOURCE_REPOSITORY / name,
            destination / name,
            ignore=shutil.ignore_patterns("__pycache__", "model.onnx", "*.json"),
        )
    build_dir = settings().build_dir
    export_all(build_dir)
    install_encoder(variant, destination, build_dir)
    return destination


def demo_head_dirs(repository: Path, state_dir: Path) -> list[Path]:
    """The demo heads for this repository's encoder; returns their folders.

    Heads of the project's repository trained for the same encoder are copied, others trained.
    """
    from headroom.export.demo import DEMO_TENANTS
    from headroom.export.encoder import read_encoder_info
    from headroom.export.tenants import build_demo_heads
    from headroom.repository.head_store import read_head_info

    fingerprint = read_encoder_info(repository)["fingerprint"]
    for name in DEMO_TENANTS:
        source = SOURCE_REPOSITORY / f"{config.HEAD_MODEL_PREFIX}{name}"
        target = repository / source.name
        try:
            current = read_head_info(name, SOURCE_REPOSITORY)["encoder_fingerprint"] == fingerprint
        except FileNotFoundError:
            current = False
        if current and not target.exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))

    names = [name for name, _ in build_demo_heads(repository, state_dir, settings().build_dir)]
    return [repository / f"{config.HEAD_MODEL_PREFIX}{name}" for name in names]


def clone_head(source: Path, repository: Path, name: str, config_text: Callable[[str], str] | None = None) -> Path:
    """Copy a head's version folders under a new name (same weights: for memory and throughput runs).

    ``config_text(name)`` writes its ``config.pbtxt``: the registration model of
    ``export.head_store`` by default (the issue-2 baseline passes its per-head model config).
    """
    from headroom.repository.head_store import registration_config

    model = f"{config.HEAD_MODEL_PREFIX}{name}"
    target = repository / model
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "config.pbtxt"))
    (target / "config.pbtxt").write_text((config_text or registration_config)(name), encoding="utf-8")
    return target


def ready_head_models(http_url: str, admin_key: str = "") -> list[str]:
    """Head models (``head_<name>``) READY in the server's repository index, through the client's
    ``HeadroomClient.list_heads`` (``admin_key``: "" sends none, as for the benchmarks' own servers)."""
    from headroom.client.inference import HeadroomClient

    with HeadroomClient(http_url, admin_key=admin_key, timeout_s=120.0) as client:
        return [head.model_name for head in client.list_heads() if head.state == "READY"]


def scrape_metrics(metrics_port: int, prefix: str = "headroom_", host: str = "localhost") -> dict[str, float]:
    """Prometheus samples on Triton's metrics port whose name starts with ``prefix`` (labels dropped;
    the sum when several samples share a name)."""
    from headroom.client.metrics import read_metrics

    return read_metrics(host, metrics_port).totals(prefix)


# --- memory ----------------------------------------------------------------------------------
def server_pss_bytes(pid: int) -> int:
    """Proportional set size of ``tritonserver`` plus every process it started (Python stubs)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def server_pss_by_model(pid: int) -> dict[str, int]:
    """PSS of ``tritonserver`` (key ``tritonserver``) and of its stub processes by model name
    (a stub's command line ends with its instance name ``<model>_<group>_<index>`` and kind)."""
    import psutil

    root = psutil.Process(pid)
    sizes: dict[str, int] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            pss = process.memory_full_info().pss
            args = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if process.pid == pid:
            name = "tritonserver"
        elif len(args) >= 2 and args[-2].count("_") >= 2:
            name = args[-2].rsplit("_", 2)[0]
        else:
            name = "other"
        sizes[name] = sizes.get(name, 0) + pss
    return sizes


def server_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``tritonserver`` and its live stub processes."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system
    return total


def settle_pss(pid: int, seconds: float = 2.0) -> int:
    """PSS after letting allocators settle; the minimum of a few readings."""
    readings = []
    deadline = time.monotonic() + seconds
    while True:
        readings.append(server_pss_bytes(pid))
        if time.monotonic() >= deadline:
            return min(readings[-3:])
        time.sleep(0.5)


# --- load ------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    seconds: float
    ok: int = 0
    expected_failures: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    first_error: str | None = None
    #: CPU the load generator itself used, as a share of all cores: on this small machine the
    #: client competes with the server for the same cores.
    client_cpu_share: float | None = None
    #: Open loop only: arrivals not sent because ``concurrency`` requests were already waiting.
    dropped_arrivals: int = 0
    #: CPU seconds the server used inside the measuring window (``run_load(server_pid=...)``):
    #: per request, a figure that other work on a shared machine disturbs far less than throughput.
    server_cpu_s: float | None = None

    @property
    def throughput(self) -> float:
        return (self.ok + self.expected_failures) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(self.latencies_ms, q))

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("latencies_ms")
        data["throughput_per_s"] = round(self.throughput, 1)
        for q in (50, 95, 99):
            value = self.percentile(q)
            data[f"p{q}_ms"] = None if value is None else round(value, 2)
        data["mean_ms"] = round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else None
        answered = self.ok + self.expected_failures
        data["server_cpu_ms_per_request"] = (
            round(1000 * self.server_cpu_s / answered, 3) if self.server_cpu_s is not None and answered else None
        )
        return data


def pipeline_request(grpc_module, text: str | list[str], head: str | list[str]) -> list:
    """Inputs of one ``pipeline`` request: one text and head, or lists of them (one row each)."""
    from headroom.client.inference import bytes_input

    texts = [text] if isinstance(text, str) else text
    heads = [head] if isinstance(head, str) else head
    return [bytes_input(grpc_module, "TEXT", texts), bytes_input(grpc_module, "HEAD", heads)]


async def _drive(
    grpc_url: str,
    next_request: Callable[[], tuple[str, list, bool]],
    duration_s: float,
    concurrency: int,
    rate_per_s: float | None,
    warmup_s: float,
    server_pid: int | None = None,
) -> LoadResult:
    """Closed loop (``concurrency`` workers back to back) or open loop (Poisson at ``rate_per_s``)."""
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(grpc_url.split("://")[-1])
    result = LoadResult(seconds=duration_s)
    cpu_started = time.process_time()
    started = time.perf_counter()
    measure_from = started + warmup_s
    stop_at = measure_from + duration_s

    async def one() -> None:
        model, inputs, expect_failure = next_request()
        t0 = time.perf_counter()
        try:
            await client.infer(model, inputs)
            failed, message = False, None
        except Exception as exc:  # tritonclient raises InferenceServerException
            failed, message = True, str(exc)
        t1 = time.perf_counter()
        # Closed loop: count what completes inside the window (throughput). Open loop: count every
        # request that *started* inside it, however late it ends, so the slow tail is not trimmed.
        if t0 < measure_from or (t1 > stop_at if rate_per_s is None else t0 >= stop_at):
            return
        if failed and expect_failure and "is not loaded" in (message or ""):
            result.expected_failures += 1
        elif failed or expect_failure:
            result.errors += 1
            result.first_error = result.first_error or (message or "unexpected success")
        else:
            result.ok += 1
        result.latencies_ms.append((t1 - t0) * 1000)

    async def server_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        first = server_cpu_seconds(server_pid)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        result.server_cpu_s = server_cpu_seconds(server_pid) - first

    cpu_probe = asyncio.create_task(server_cpu()) if server_pid is not None else None
    try:
        if rate_per_s is None:

            async def worker() -> None:
                while time.perf_counter() < stop_at:
                    await one()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            pending: set[asyncio.Task] = set()
            rng = random.Random(0)
            next_at = time.perf_counter()
            while next_at < stop_at:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) < concurrency:
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif next_at >= measure_from:
                    result.dropped_arrivals += 1
                next_at += rng.expovariate(rate_per_s)
            if pending:
                await asyncio.gather(*pending)
        if cpu_probe is not None:
            await cpu_probe
    finally:
        if cpu_probe is not None and not cpu_probe.done():
            cpu_probe.cancel()
        await client.close()
    wall = time.perf_counter() - started
    result.client_cpu_share = round((time.process_time() - cpu_started) / (wall * (os.cpu_count() or 1)), 3)
    return result


def run_load(
    grpc_url: str,
    next_request: Callable[[], tuple[str, list, bool]],
    duration_s: float,
    concurrency: int = 32,
    rate_per_s: float | None = None,
    warmup_s: float = 1.0,
    server_pid: int | None = None,
) -> LoadResult:
    """``server_pid``: also measure the server's CPU time inside the window (``server_cpu_s``)."""
    return asyncio.run(_drive(grpc_url, next_request, duration_s, concurrency, rate_per_s, warmup_s, server_pid))


def pipeline_traffic(
    heads: list[str], texts: list[str], failure_share: float = 0.0, seed: int = 0, texts_per_request: int = 1
):
    """``next_request`` for ``run_load``: Zipf tenants through ``pipeline``.

    With ``texts_per_request`` > 1 each request carries that many rows, each its own draw (text and
    head) of the mix, as a client sending unsorted batches would.
    """
    import tritonclient.grpc as grpc_module
    from headroom.client.traffic import TrafficMix

    mix = TrafficMix(heads, texts, failure_share=failure_share, seed=seed)

    def next_request() -> tuple[str, list, bool]:
        if texts_per_request == 1:
            request = mix.next()
            inputs = pipeline_request(grpc_module, request.text, request.head)
            return config.PIPELINE_MODEL, inputs, request.expect_failure
        rows = mix.batch(texts_per_request)
        inputs = pipeline_request(grpc_module, [r.text for r in rows], [r.head for r in rows])
        return config.PIPELINE_MODEL, inputs, any(r.expect_failure for r in rows)

    return next_request


def embed_traffic(texts: list[str], texts_per_request: int, seed: int = 0):
    """``next_request`` for ``run_load``: ``embed`` requests of ``texts_per_request`` random texts."""
    import tritonclient.grpc as grpc_module
    from headroom.client.inference import bytes_input

    rng = random.Random(seed)

    def next_request() -> tuple[str, list, bool]:
        chosen = [rng.choice(texts) for _ in range(texts_per_request)]
        return config.EMBED_MODEL, [bytes_input(grpc_module, "TEXT", chosen)], False

    return next_request


def token_lengths(texts: list[str]) -> np.ndarray:
    """Tokens of each text as the served encoder sees them ([CLS] and [SEP] included, truncated)."""
    from headroom.export.encoder import model_source_dir
    from headroom.text_tokenizer import TextTokenizer

    tokenizer = TextTokenizer(model_source_dir() / "tokenizer.json", max_length=config.MAX_SEQ_LEN_TOKENS)
    return tokenizer.encode(texts).lengths


def length_distribution(texts: list[str]) -> dict:
    """Tokens per text: p50/p90/p99/max/mean, and how many were cut at the truncation length."""
    lengths = token_lengths(texts)
    return {
        "texts": len(texts),
        "distinct": len(set(texts)),
        **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)},
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 1),
        "truncated": int((lengths >= config.MAX_SEQ_LEN_TOKENS).sum()),
    }


def texts_of_token_length(max_tokens: int, min_tokens: int, limit: int = 512) -> list[str]:
    """Demo texts whose token count ([CLS]/[SEP] included) lies in [min_tokens, max_tokens]."""
    from headroom.client.traffic import demo_texts

    texts = list(dict.fromkeys(demo_texts(build_dir=settings().build_dir)))
    lengths = token_lengths(texts)
    chosen = [text for text, length in zip(texts, lengths, strict=True) if min_tokens <= length <= max_tokens]
    if not chosen:
        raise RuntimeError(f"no demo text has {min_tokens}-{max_tokens} tokens")
    return chosen[:limit]
