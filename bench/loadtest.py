"""Load test of a headroom server with locust (``client/locustfile.py``): ``make loadtest``.

    .venv/bin/python bench/loadtest.py                          # 60 s, 16 users, spawn rate 8
    .venv/bin/python bench/loadtest.py --duration 20 --url http://localhost:18000
    LOADTEST_DURATION=300 LOADTEST_USERS=64 .venv/bin/python bench/loadtest.py

If a headroom server answers at ``--url`` (``GET /v2/health/ready`` is 200 and model ``pipeline`` is
ready), the test runs against it. Otherwise this script starts one itself (``headroom.server.launcher``) on the
URL's HTTP port, with gRPC and metrics on the configured ports (or, when the URL's port is not the
configured one, on the next two ports: ``--url http://localhost:18000`` -> 18000/18001/18002), and
stops it at the end; its log goes to ``<results-dir>/loadtest_tritonserver.log``.

Locust runs headless in a subprocess, half the users over HTTP and half over gRPC (``--protocol``),
and writes ``loadtest_stats.csv`` (and the other CSVs) and ``loadtest.html`` into ``--results-dir``
(default ``bench/results/``). This script then prints a summary (requests per protocol, unexpected
and expected failures, requests/s, p50/p95/p99 latency), writes it to ``loadtest_summary.json``, and
exits 1 when any request failed unexpectedly (or none were made).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

from headroom import config
from headroom.client.inference import default_http_url
from headroom.client.traffic import EXPECTED_FAILURE_SHARE
from headroom.server import health

log = logging.getLogger("loadtest")

PROJECT_ROOT = config.PROJECT_ROOT
LOCUSTFILE = PROJECT_ROOT / "client" / "locustfile.py"
DEFAULT_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
CSV_PREFIX = "loadtest"
PIPELINE_NAME = config.PIPELINE_MODEL
EXPECTED_FAILURE_NAME = f"{config.PIPELINE_MODEL} [expected failure]"  # as client/locustfile.py names them
USER_CLASSES = {"http": ["HttpPipelineUser"], "grpc": ["GrpcPipelineUser"], "both": []}
#: locust's stats "Type" column: FastHttpUser records the HTTP method, the gRPC user "grpc".
PROTOCOL_OF_TYPE = {"POST": "HTTP", "grpc": "gRPC"}


def _env_number(name: str, default: float, kind: type = int):
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise SystemExit(f"environment variable {name} must be a number, got {raw!r}") from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load-test a headroom server with locust (HTTP and gRPC users, Zipf tenant traffic).",
        epilog="Starts its own server when none answers at --url. Results: CSV, HTML report, summary JSON.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=_env_number("LOADTEST_DURATION", 60, float),
        help="seconds of load (env LOADTEST_DURATION, default 60)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=_env_number("LOADTEST_USERS", 16),
        help="concurrent locust users, split evenly between HTTP and gRPC (env LOADTEST_USERS, default 16)",
    )
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=_env_number("LOADTEST_SPAWN_RATE", 8, float),
        help="users started per second (env LOADTEST_SPAWN_RATE, default 8)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="HTTP endpoint of the server (default: HEADROOM_URL if it is http://, else the configured host and port)",
    )
    parser.add_argument(
        "--grpc-url",
        default=None,
        help="gRPC endpoint (default: HEADROOM_GRPC_URL, else --url's host with the configured gRPC port, "
        "or --url's port + 1 when --url does not use the configured HTTP port)",
    )
    parser.add_argument(
        "--protocol", choices=sorted(USER_CLASSES), default="both", help="which user classes run (default: both)"
    )
    parser.add_argument(
        "--failure-share",
        type=float,
        default=EXPECTED_FAILURE_SHARE,
        help=f"share of requests to an unknown head, which must fail (default {EXPECTED_FAILURE_SHARE})",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="where the CSVs, HTML report and summary go (default bench/results/)",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=config.Settings.from_env().model_repository,
        help="model repository of the server started when none answers (default: the configured one)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.users < 1 or args.spawn_rate <= 0:
        parser.error("--duration and --spawn-rate must be positive, --users at least 1")
    if not 0 <= args.failure_share < 1:
        parser.error("--failure-share must be in [0, 1)")
    return args


# --- the server -------------------------------------------------------------------------------
def server_address(
    http_url: str, grpc_url: str | None = None, configured: config.ServerAddress | None = None
) -> config.ServerAddress:
    """Ports of the server at ``http_url``: gRPC from ``grpc_url`` when given; otherwise the
    ``configured`` gRPC and metrics ports (default: the default ports) when the URL uses the
    configured HTTP port, else the URL's port + 1 and + 2."""
    configured = configured or config.ServerAddress()
    parsed = urllib.parse.urlsplit(http_url)
    if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
        raise SystemExit(f"--url must look like http://host:port, got {http_url!r}")
    http_port = parsed.port
    if http_port == configured.http_port:
        grpc_port, metrics_port = configured.grpc_port, configured.metrics_port
    else:
        grpc_port, metrics_port = http_port + 1, http_port + 2
    if grpc_url:
        grpc = urllib.parse.urlsplit(grpc_url)
        if grpc.scheme != "grpc" or not grpc.port:
            raise SystemExit(f"--grpc-url must look like grpc://host:port, got {grpc_url!r}")
        grpc_port = grpc.port
    return config.ServerAddress(parsed.hostname, http_port, grpc_port, metrics_port)


def server_answers(http_url: str) -> bool:
    """True when a ready headroom server answers; SystemExit when something else holds the port."""
    # Liveness, then the pipeline's readiness: /v2/health/ready turns false for the whole server
    # when any one head failed to load (strict readiness), which must not stop a load test.
    if not health.answers(http_url):
        return False
    live = health.is_live(http_url)
    if live and health.is_model_ready(http_url, PIPELINE_NAME):
        return True
    raise SystemExit(
        f"{http_url} answers ({'live' if live else 'not live'}) but is not a ready headroom server "
        f"(model {PIPELINE_NAME!r} not ready): wait for it, or choose another --url"
    )


# --- locust ------------------------------------------------------------------------------------
def locust_command(args: argparse.Namespace, http_url: str, grpc_url: str, csv_prefix: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        f"{args.spawn_rate:g}",
        "-t",
        f"{max(1, round(args.duration))}s",
        "--host",
        http_url,
        "--grpc-url",
        grpc_url,
        "--failure-share",
        f"{args.failure_share:g}",
        "--csv",
        str(csv_prefix),
        "--html",
        str(csv_prefix.with_suffix(".html")),
        "--only-summary",
        *USER_CLASSES[args.protocol],
    ]


def run_locust(args: argparse.Namespace, http_url: str, grpc_url: str) -> int:
    csv_prefix = args.results_dir / CSV_PREFIX
    command = locust_command(args, http_url, grpc_url, csv_prefix)
    env = dict(os.environ, HEADROOM_URL=http_url, HEADROOM_GRPC_URL=grpc_url, PYTHONDONTWRITEBYTECODE="1")
    log.info(
        "locust: %d users (%s), spawn rate %g/s, %g s against %s and %s",
        args.users,
        args.protocol,
        args.spawn_rate,
        args.duration,
        http_url,
        grpc_url,
    )
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, check=False).returncode


# --- the summary -------------------------------------------------------------------------------
def _number(row: dict, column: str) -> float:
    value = row.get(column, "")
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0  # locust writes "N/A" for percentiles of rows without requests


def summarise(stats_csv: Path) -> dict:
    """Figures of a locust ``*_stats.csv``: per protocol and in total."""
    with stats_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    summary: dict = {"protocols": {}, "total": {}}
    total = {"requests": 0, "failures": 0, "expected_failures": 0, "expected_failures_missed": 0}
    for row in rows:
        if row["Name"] == "Aggregated":
            total["rps"] = _number(row, "Requests/s")
            total["p50_ms"] = _number(row, "50%")
            total["p95_ms"] = _number(row, "95%")
            total["p99_ms"] = _number(row, "99%")
            continue
        protocol = PROTOCOL_OF_TYPE.get(row["Type"], row["Type"])
        entry = summary["protocols"].setdefault(
            protocol, {"requests": 0, "failures": 0, "expected_failures": 0, "expected_failures_missed": 0}
        )
        requests = int(_number(row, "Request Count"))
        failures = int(_number(row, "Failure Count"))
        entry["requests"] += requests
        entry["failures"] += failures
        if row["Name"] == EXPECTED_FAILURE_NAME:
            entry["expected_failures"] += requests - failures
            entry["expected_failures_missed"] += failures
        elif row["Name"] == PIPELINE_NAME:
            entry.update(
                rps=_number(row, "Requests/s"),
                p50_ms=_number(row, "50%"),
                p95_ms=_number(row, "95%"),
                p99_ms=_number(row, "99%"),
            )
    for entry in summary["protocols"].values():
        for key in ("requests", "failures", "expected_failures", "expected_failures_missed"):
            total[key] += entry[key]
    summary["total"] = total
    return summary


def format_summary(summary: dict, args: argparse.Namespace, http_url: str, grpc_url: str) -> str:
    total = summary["total"]
    lines = [
        f"load test: {args.duration:g} s, {args.users} users ({args.protocol}), {http_url} + {grpc_url}",
        f"  requests  {total['requests']}  ({total.get('rps', 0):.1f}/s)   "
        f"unexpected failures {total['failures']}   "
        f"expected failures {total['expected_failures']} (recorded as successes)",
        f"  {'':6} {'requests':>9} {'failures':>9} {'expected':>9} {'req/s':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}   (latency of normal requests)",
    ]
    for protocol, entry in sorted(summary["protocols"].items()):
        lines.append(
            f"  {protocol:6} {entry['requests']:9d} {entry['failures']:9d} {entry['expected_failures']:9d} "
            f"{entry.get('rps', 0):8.1f} {entry.get('p50_ms', 0):7.0f} {entry.get('p95_ms', 0):7.0f} "
            f"{entry.get('p99_ms', 0):7.0f}"
        )
    lines.append(
        f"  {'all':6} {total['requests']:9d} {total['failures']:9d} {total['expected_failures']:9d} "
        f"{total.get('rps', 0):8.1f} {total.get('p50_ms', 0):7.0f} {total.get('p95_ms', 0):7.0f} "
        f"{total.get('p99_ms', 0):7.0f}   (all requests)"
    )
    lines.append(f"  report: {args.results_dir / CSV_PREFIX}.html, {args.results_dir / CSV_PREFIX}_stats.csv")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.results_dir = args.results_dir.resolve()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    http_url = (args.url or default_http_url()).rstrip("/")
    settings = config.Settings.from_env()
    address = server_address(http_url, args.grpc_url or os.environ.get("HEADROOM_GRPC_URL"), settings.address)
    grpc_url = f"grpc://{address.host}:{address.grpc_port}"
    stats_csv = args.results_dir / f"{CSV_PREFIX}_stats.csv"
    stats_csv.unlink(missing_ok=True)  # never summarise a previous run's figures

    own_server = None  # the server this script started, if any
    with ExitStack() as stack:
        if server_answers(http_url):
            log.info("using the server at %s", http_url)
        else:
            from headroom.server.launcher import TritonServer

            log_file = args.results_dir / f"{CSV_PREFIX}_tritonserver.log"
            log.info(
                "no server at %s: starting one (HTTP %d, gRPC %d, metrics %d; log %s)",
                http_url,
                address.http_port,
                address.grpc_port,
                address.metrics_port,
                log_file,
            )
            own_server = stack.enter_context(TritonServer(address, args.repository, log_file=log_file))
            log.info("server ready: %s", ", ".join(own_server.models))
        code = run_locust(args, http_url, grpc_url)
        server_alive = health.is_live(http_url)
        if not server_alive:
            process = own_server.process if own_server is not None else None
            exit_code = process.poll() if process is not None else None
            log.error(
                "the server no longer answers after the load test%s",
                f" (tritonserver exited with code {exit_code}, log {own_server.log_file})"
                if exit_code is not None
                else "",
            )

    if not stats_csv.exists():
        log.error("locust exited with code %d and wrote no %s", code, stats_csv)
        return code or 1
    summary = summarise(stats_csv)
    summary.update(
        duration_s=args.duration,
        users=args.users,
        protocol=args.protocol,
        failure_share=args.failure_share,
        http_url=http_url,
        grpc_url=grpc_url,
        locust_exit_code=code,
        server_alive_after=server_alive,
    )
    (args.results_dir / f"{CSV_PREFIX}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary, args, http_url, grpc_url))
    total = summary["total"]
    if not server_alive:
        return 1
    if total["failures"]:
        log.error("%d requests failed unexpectedly: see %s_failures.csv", total["failures"], CSV_PREFIX)
        return 1
    if not total["requests"]:
        log.error("no requests were made: see locust's output above")
        return 1
    if code != 0:
        log.error("locust exited with code %d", code)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
