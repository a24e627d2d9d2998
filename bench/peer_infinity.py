"""Peer benchmark: the open-source embedding server infinity-emb serving the same all-MiniLM-L6-v2 weights.

This is what a user would pick instead of headroom's shared encoder. infinity runs from its own bench-only
virtualenv (``bench/setup_infinity_env.sh`` builds ``.venv-infinity``; override with ``INFINITY_VENV``) as a
subprocess with the torch engine on the CPU; this script runs with the project's ``.venv`` and

1. checks infinity's embeddings against sentence-transformers (min cosine over ~20 demo texts, must be >= 0.99);
2. measures saturated throughput (sentences/s) and per-request latency (p50/p95) over the OpenAI-compatible
   ``/embeddings`` endpoint with 1 and 32 texts per request, closed loop, after a warm-up.

The client (asyncio + aiohttp) runs on the same machine as the server, as in the other benchmarks. Requests
ask for ``encoding_format: base64``, which is what the OpenAI client sends by default.

    .venv/bin/python -m bench.peer_infinity [--duration 15] [--concurrency 32] \
        [--output bench/results/peer_infinity.json]

``run(duration_s, concurrency, texts)`` does the same for an orchestrator and returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import free_ports, machine_info

log = logging.getLogger("bench.peer_infinity")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-infinity"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "peer_infinity.json"
SETUP_SCRIPT = "bench/setup_infinity_env.sh"
MODEL_NAME = "all-MiniLM-L6-v2"
TEXTS_PER_REQUEST = (1, 32)
PARITY_TEXTS = 20
MIN_COSINE = 0.99
EMBEDDING_DIM = 384

_running: set[subprocess.Popen] = set()


# --- the infinity server ---------------------------------------------------------------------
def infinity_venv() -> Path:
    """The bench-only environment (env INFINITY_VENV, relative to the repository root)."""
    return (ROOT / os.environ.get("INFINITY_VENV", DEFAULT_VENV)).resolve()


def infinity_executable(venv: Path | None = None) -> Path:
    venv = venv or infinity_venv()
    executable = venv / "bin" / "infinity_emb"
    if not executable.exists():
        raise FileNotFoundError(
            f"{executable} is missing: the infinity-emb benchmark needs its own virtualenv; "
            f"run `{SETUP_SCRIPT}` first (it creates {venv}, about a minute)"
        )
    return executable


def infinity_versions(venv: Path | None = None) -> dict[str, str | None]:
    """Versions of the packages that matter, read inside the infinity venv."""
    python = (venv or infinity_venv()) / "bin" / "python"
    code = (
        "import importlib.metadata as m, json\n"
        "def v(p):\n"
        "    try:\n"
        "        return m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        "print(json.dumps({p: v(p) for p in ('infinity-emb', 'torch', 'sentence-transformers', 'transformers')}))"
    )
    output = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(output)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server's whole process group, SIGKILL it if it is still there after ``grace_s``."""
    _running.discard(process)
    if process.poll() is not None:
        return

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    signal_group(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("infinity did not stop within %.0f s: killing it", grace_s)
    except KeyboardInterrupt:  # a second Ctrl-C while waiting: do not leave it behind
        signal_group(signal.SIGKILL)
        process.wait()
        raise
    signal_group(signal.SIGKILL)  # also any child left in the group
    process.wait()


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_running):
        _stop_process(process, grace_s=5.0)


@dataclass
class InfinityServer:
    """``infinity_emb v2`` in its own process group; a context manager that always stops it."""

    model_dir: Path
    venv: Path | None = None
    batch_size: int = 32
    startup_timeout_s: float = 180.0
    log_path: Path | None = None
    port: int = 0
    command: list[str] = field(default_factory=list)
    startup_s: float | None = None
    _process: subprocess.Popen | None = None
    _own_log: bool = False
    _started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfinityServer:
        executable = infinity_executable(self.venv)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="infinity-", suffix=".log")
            os.close(handle)
            self.log_path, self._own_log = Path(name), True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1)[0]
        self.command = [
            str(executable),
            "v2",
            "--model-id",
            str(self.model_dir),
            "--served-model-name",
            MODEL_NAME,
            "--engine",
            "torch",
            "--device",
            "cpu",
            # The torch engine pools as the model's sentence-transformers config says (mean) and L2-normalises;
            # say mean anyway: infinity's ONNX engine would use CLS unless told.
            "--pooling-method",
            "mean",
            "--batch-size",
            str(self.batch_size),
            "--no-vector-disk-cache",  # no result cache: every request is computed
            "--log-level",
            "warning",  # no access-log line per request (Triton does not log requests either)
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("PYTHONPATH", None)  # the project's modules have nothing to do in infinity's venv
        env.pop("VIRTUAL_ENV", None)
        log.info("starting infinity on port %d (log: %s)", self.port, self.log_path)
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tempfile.gettempdir(),
                start_new_session=True,  # own process group: Ctrl-C reaches us, and we stop it and its children
            )
        _running.add(self._process)
        self._started_at = time.monotonic()
        return self

    def wait_ready(self) -> InfinityServer:
        """Poll ``/health`` until it answers 200; fail with the log tail if the server dies or times out."""
        assert self._process is not None, "start() first"
        deadline = self._started_at + self.startup_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"infinity exited with code {code} before it was ready; last lines of {self.log_path}:\n"
                    + _log_tail(self.log_path)
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"infinity was not ready after {self.startup_timeout_s:.0f} s; last lines of {self.log_path}:\n"
                    + _log_tail(self.log_path)
                )
            time.sleep(0.25)
        self.startup_s = time.monotonic() - self._started_at
        log.info("infinity ready in %.1f s", self.startup_s)
        return self

    def stop(self) -> None:
        if self._process is not None:
            _stop_process(self._process)
            log.info("infinity stopped (exit code %s)", self._process.returncode)
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> InfinityServer:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._own_log = self._own_log and exc_type is None  # keep the log when something failed
        self.stop()


# --- parity with sentence-transformers --------------------------------------------------------
def parity_texts(texts: list[str], count: int = PARITY_TEXTS) -> list[str]:
    """``count`` distinct texts spread over the whole list (so over every demo tenant)."""
    distinct = list(dict.fromkeys(texts))
    step = max(1, len(distinct) // count)
    return distinct[::step][:count]


def reference_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return np.asarray(
        model.encode(texts, batch_size=32, normalize_embeddings=False, show_progress_bar=False), dtype=np.float64
    )


def embed_float(url: str, texts: list[str]) -> np.ndarray:
    body = json.dumps({"model": MODEL_NAME, "input": texts, "encoding_format": "float"}).encode()
    request = urllib.request.Request(f"{url}/embeddings", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        data = json.loads(response.read())["data"]
    rows = sorted(data, key=lambda item: item["index"])
    return np.asarray([row["embedding"] for row in rows], dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- load ------------------------------------------------------------------------------------
async def _drive(
    url: str, texts: list[str], per_request: int, concurrency: int, duration_s: float, warmup_s: float
) -> dict:
    """Closed loop: ``concurrency`` clients send back to back; counts what completes inside the window."""
    import aiohttp

    counter = itertools.count()
    latencies_ms: list[float] = []
    completed = errors = 0
    first_error: str | None = None
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + duration_s

    def next_batch() -> list[str]:
        start = next(counter) * per_request
        return [texts[(start + j) % len(texts)] for j in range(per_request)]

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal completed, errors, first_error
        while time.perf_counter() < stop_at:
            batch = next_batch()
            payload = {"model": MODEL_NAME, "input": batch, "encoding_format": "base64"}
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/embeddings", json=payload) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
                data = json.loads(body)["data"]
                if len(data) != len(batch) or len(base64.b64decode(data[0]["embedding"])) != 4 * EMBEDDING_DIM:
                    raise RuntimeError(f"unexpected answer: {len(data)} embeddings for {len(batch)} texts")
                failed = False
            except Exception as exc:  # any failure is counted and reported; the run goes on
                failed, message = True, f"{type(exc).__name__}: {exc}"
            t1 = time.perf_counter()
            if not measure_from <= t1 <= stop_at:
                continue
            if failed:
                errors += 1
                first_error = first_error or message
            else:
                completed += 1
                latencies_ms.append((t1 - t0) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(latencies_ms, q)), 2) if latencies_ms else None

    return {
        "texts_per_request": per_request,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "requests": completed,
        "errors": errors,
        "first_error": first_error,
        "sentences_per_s": round(completed * per_request / duration_s, 1),
        "requests_per_s": round(completed / duration_s, 1),
        "p50_ms": percentile(50),
        "p95_ms": percentile(95),
        "p99_ms": percentile(99),
        "mean_ms": round(float(np.mean(latencies_ms)), 2) if latencies_ms else None,
    }


def measure(url: str, texts: list[str], per_request: int, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    return asyncio.run(_drive(url, texts, per_request, concurrency, duration_s, warmup_s))


# --- the benchmark ---------------------------------------------------------------------------
def run(
    duration_s: float,
    concurrency: int,
    texts: list[str],
    *,
    warmup_s: float = 3.0,
    batch_concurrency: int | None = None,
    texts_per_request: tuple[int, ...] = TEXTS_PER_REQUEST,
    server_batch_size: int = 32,
    venv: Path | None = None,
    startup_timeout_s: float = 180.0,
    log_path: Path | None = None,
) -> dict:
    """Start infinity, check it against sentence-transformers, measure each request size, stop it.

    ``concurrency`` clients send 1-text requests; requests of more texts use ``batch_concurrency`` clients
    (default ``max(2, concurrency // 8)``: enough to keep infinity's batch queue full without piling up).
    """
    from headroom.export.encoder import model_source_dir

    if not texts:
        raise ValueError("no texts to send")
    if batch_concurrency is None:
        batch_concurrency = max(2, concurrency // 8)
    venv = venv or infinity_venv()
    infinity_executable(venv)  # fail early, with the set-up hint
    model_dir = model_source_dir()
    sample = parity_texts(texts)

    with InfinityServer(
        model_dir, venv=venv, batch_size=server_batch_size, startup_timeout_s=startup_timeout_s, log_path=log_path
    ) as server:
        # sentence-transformers loads while infinity warms up.
        reference = reference_embeddings(model_dir, sample)
        server.wait_ready()
        served = embed_float(server.url, sample)
        if served.shape != reference.shape:
            raise RuntimeError(f"infinity returned embeddings of shape {served.shape}, expected {reference.shape}")
        similarity = cosines(served, reference)
        log.info("parity with sentence-transformers: min cosine %.6f over %d texts", similarity.min(), len(sample))
        modes = []
        for per_request in texts_per_request:
            clients = concurrency if per_request == 1 else batch_concurrency
            log.info(
                "measuring %d text(s)/request, %d clients, %.0f s (+%.0f s warm-up)",
                per_request,
                clients,
                duration_s,
                warmup_s,
            )
            row = measure(server.url, texts, per_request, clients, duration_s, warmup_s)
            log.info(
                "  %.1f sentences/s, p50 %s ms, p95 %s ms, %d errors",
                row["sentences_per_s"],
                row["p50_ms"],
                row["p95_ms"],
                row["errors"],
            )
            modes.append(row)
        command = [Path(server.command[0]).name, *server.command[1:]]
        startup_s = server.startup_s

    return {
        "peer": "infinity-emb",
        "engine": "torch",
        "device": "cpu",
        "model": MODEL_NAME,
        "model_dir": str(model_dir),
        "server_command": command,
        "server_batch_size": server_batch_size,
        "startup_s": round(startup_s, 1) if startup_s is not None else None,
        "versions": infinity_versions(venv),
        "encoding_format": "base64",
        "client": "asyncio + aiohttp on the same machine, closed loop",
        "distinct_texts": len(set(texts)),
        "parity": {
            "reference": "sentence-transformers (project venv)",
            "texts": len(sample),
            "min_cosine": round(float(similarity.min()), 6),
            "mean_cosine": round(float(similarity.mean()), 6),
            "threshold": MIN_COSINE,
            "ok": bool(similarity.min() >= MIN_COSINE),
        },
        "modes": modes,
    }


# --- report ----------------------------------------------------------------------------------
def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    labels = [f"{m['texts_per_request']} text{'s' if m['texts_per_request'] > 1 else ''}/request" for m in modes]
    x = np.arange(len(modes))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bars = left.bar(x, [m["sentences_per_s"] for m in modes], color="tab:orange")
    left.bar_label(bars, fmt="%.0f")
    left.set_xticks(x, labels)
    left.set_ylabel("sentences / s")
    left.set_title("throughput at saturation")
    width = 0.38
    for offset, key, color in ((-width / 2, "p50_ms", "tab:blue"), (width / 2, "p95_ms", "tab:red")):
        bars = right.bar(x + offset, [m[key] or 0 for m in modes], width, label=key.removesuffix("_ms"), color=color)
        right.bar_label(bars, fmt="%.0f")
    right.set_xticks(x, labels)
    right.set_ylabel("ms per request")
    right.set_title("latency (" + ", ".join(f"{m['concurrency']} clients" for m in modes) + ")")
    right.legend()
    machine = result.get("machine", {})
    versions = result.get("versions", {})
    figure.suptitle(
        f"infinity-emb {versions.get('infinity-emb')} (torch {versions.get('torch')}, CPU) serving {MODEL_NAME}"
        f" - {machine.get('cores')} cores, {machine.get('cpu')}",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def print_summary(result: dict) -> None:
    parity = result["parity"]
    print(
        f"infinity-emb {result['versions'].get('infinity-emb')}, torch {result['versions'].get('torch')}, "
        f"{result['machine']['cores']} cores ({result['machine']['cpu']}); ready in {result['startup_s']} s"
    )
    print(
        f"parity with sentence-transformers: min cosine {parity['min_cosine']:.6f} over {parity['texts']} texts"
        f" ({'ok' if parity['ok'] else 'BELOW ' + str(parity['threshold'])})"
    )
    print(
        f"{'texts/request':>13} {'clients':>7} {'sentences/s':>11} {'requests/s':>10} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'errors':>6}"
    )
    for m in result["modes"]:
        print(
            f"{m['texts_per_request']:>13} {m['concurrency']:>7} {m['sentences_per_s']:>11.1f} "
            f"{m['requests_per_s']:>10.1f} {m['p50_ms']!s:>8} {m['p95_ms']!s:>8} {m['errors']:>6}"
        )


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally/with blocks that stop the server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per request size")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending 1-text requests")
    parser.add_argument(
        "--batch-concurrency", type=int, default=None, help="clients sending 32-text requests (default: max(2, C/8))"
    )
    parser.add_argument("--server-batch-size", type=int, default=32, help="infinity's --batch-size")
    parser.add_argument(
        "--texts",
        choices=("mix", "short"),
        default="mix",
        help="texts of real length (default) or of 10-16 tokens, as bench.end_to_end sends them",
    )
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for infinity")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report (a PNG goes beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)

    from bench.end_to_end import text_sets

    output = args.output.resolve()
    try:
        result = run(
            args.duration,
            args.concurrency,
            text_sets()[args.texts],
            warmup_s=args.warmup,
            batch_concurrency=args.batch_concurrency,
            server_batch_size=args.server_batch_size,
            startup_timeout_s=args.startup_timeout,
            log_path=output.with_suffix(".server.log"),
        )
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; infinity stopped", file=sys.stderr)
        return 130
    result = {"benchmark": "peer_infinity", "machine": machine_info(), **result}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    chart = plot(result, output.with_suffix(".png"))
    print_summary(result)
    print(f"wrote {output} and {chart}")
    if not result["parity"]["ok"]:
        print(f"FAIL: min cosine {result['parity']['min_cosine']} < {MIN_COSINE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
