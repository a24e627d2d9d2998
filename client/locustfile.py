"""Locust load test of headroom's ``pipeline`` model, over HTTP and gRPC at once.

    .venv/bin/locust -f client/locustfile.py --headless -u 16 -r 8 -t 60s --host http://localhost:8000
    .venv/bin/locust -f client/locustfile.py ... GrpcPipelineUser       # one protocol only
    make loadtest                                                       # bench/loadtest.py: runs this

Two user classes of equal weight, each sending requests back to back (no think time):

- ``HttpPipelineUser``: locust's ``FastHttpUser`` posting Triton's KServe v2 JSON to
  ``/v2/models/pipeline/infer`` (TEXT and HEAD as BYTES [1, 1]); locust's stats type ``POST``;
- ``GrpcPipelineUser``: one ``tritonclient.grpc`` client per user (gRPC made cooperative with
  gevent), each call reported to locust's ``request`` event; stats type ``grpc``.

Traffic is ``client.traffic.TrafficMix``: Zipf-popular tenants over every head the server reports
READY in its repository index (read once per process when the test starts), texts of real length
drawn uniformly from ``client.traffic.real_text_mix`` (utterances, sentences, paragraphs), and
a share of requests (2 % by default) naming a head that does not exist. Those must fail with
NOT_FOUND / 404 "... is not loaded", and that failure is recorded as a *success* under the name
``pipeline [expected failure]``; if one succeeds, or fails otherwise, it is a failure there. Normal
requests are named ``pipeline`` and fail on any error or on a response without a LABEL.

Where to send traffic: ``--host`` or ``HEADROOM_URL`` (``http://host:port``: HTTP users and head
discovery); ``--grpc-url`` or ``HEADROOM_GRPC_URL`` (``grpc://host:port``, default: the configured
host and gRPC port of ``headroom.config``). ``--failure-share`` (``HEADROOM_LOADTEST_FAILURE_SHARE``)
sets the share of unknown-head requests. With ``--csv``, the stats and failures CSVs are rewritten
with the final figures when locust quits (its periodic writer misses the last second).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import gevent
from gevent import monkey
from headroom import config
from headroom.admin_key import load_admin_key
from headroom.client.inference import (
    ENTITY_OUTPUTS,
    HeadroomClient,
    HeadroomError,
    HeadStatus,
    bytes_input,
    default_http_url,
    message_of,
    parse_url,
    status_of,
)
from headroom.client.traffic import EXPECTED_FAILURE_SHARE, TrafficMix, real_text_mix
from headroom.naming import head_name_problem
from locust import FastHttpUser, User, constant, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

if monkey.is_module_patched("socket"):
    # Under locust (gevent-patched), grpcio must run in gevent mode, or each blocking call would
    # stall every user of the process. Must happen before any channel is created.
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()

log = logging.getLogger(__name__)

PIPELINE_NAME = config.PIPELINE_MODEL
EXPECTED_FAILURE_NAME = f"{config.PIPELINE_MODEL} [expected failure]"
INFER_PATH = f"/v2/models/{config.PIPELINE_MODEL}/infer"
#: The entities come back only for heads with slots; every loaded head is in the mix, slot heads too.
OUTPUTS = ("LABEL", "SCORE", "PROBS", "LABELS", *ENTITY_OUTPUTS)
#: How Triton reports an unknown head: HTTP status or gRPC code (``StatusCode.`` stripped), message.
NOT_FOUND_STATUSES = frozenset({"404", "NOT_FOUND"})
NOT_LOADED_TEXT = "is not loaded"
FAILURE_SHARE_ENV = "HEADROOM_LOADTEST_FAILURE_SHARE"
GRPC_URL_ENV = "HEADROOM_GRPC_URL"
MAX_MESSAGE_CHARS = 300


def default_grpc_url() -> str:
    """``HEADROOM_GRPC_URL``, else ``HEADROOM_URL`` when it is a gRPC URL, else the configured gRPC port."""
    for url in (os.environ.get(GRPC_URL_ENV, ""), os.environ.get("HEADROOM_URL", "")):
        if url.startswith("grpc://"):
            return url.rstrip("/")
    return config.Settings.from_env().address.grpc_url


# --- the outcome of one request (pure logic, unit-tested) ---------------------------------------
def request_name(expect_failure: bool) -> str:
    return EXPECTED_FAILURE_NAME if expect_failure else PIPELINE_NAME


def normalise_status(status: object) -> str:
    """``404`` / ``StatusCode.NOT_FOUND`` / None -> ``"404"`` / ``"NOT_FOUND"`` / ``"ERROR"``."""
    text = "" if status is None else str(status)
    return text.removeprefix("StatusCode.") or "ERROR"


def judge(expect_failure: bool, status: str | None, message: str = "", has_label: bool = False) -> str | None:
    """Why this outcome is a failure, or None when it is what the request should get.

    ``status`` is None when the server answered the request, else the HTTP status (``"404"``) or
    gRPC code (``"NOT_FOUND"``) of its error, with ``message``. A request to an unknown head must
    fail with NOT_FOUND and "is not loaded"; any other request must succeed with a LABEL.
    """
    message = message[:MAX_MESSAGE_CHARS]
    if expect_failure:
        if status is None:
            return "request to an unknown head succeeded (expected NOT_FOUND, 'is not loaded')"
        if status in NOT_FOUND_STATUSES and NOT_LOADED_TEXT in message:
            return None
        return f"request to an unknown head: expected NOT_FOUND 'is not loaded', got {status}: {message}"
    if status is not None:
        return f"{status}: {message}"
    if not has_label:
        return "response without a LABEL"
    return None


def ready_heads(heads: Iterable[HeadStatus]) -> list[str]:
    """Names of the heads (``HeadroomClient.list_heads``) that are READY, sorted, each once."""
    return sorted({head.name for head in heads if head.state == "READY"})


def discover_heads(http_url: str, timeout_s: float = 10.0) -> list[str]:
    """Ask the server (its repository index, through ``HeadroomClient.list_heads``) which heads are loaded.

    The index is part of the protected control plane: the admin key (``HEADROOM_ADMIN_KEY`` or
    the key file, docs/security.md) is sent when there is one.
    """
    admin_key = load_admin_key(config.Settings.from_env().admin_key_file) or ""
    with HeadroomClient(http_url.rstrip("/"), concurrency=1, timeout_s=timeout_s, admin_key=admin_key) as client:
        return ready_heads(client.list_heads())


class LoadTestFailure(Exception):
    """What locust records for a request whose outcome was wrong (grouped by its message)."""


# --- traffic shared by every user of this process -----------------------------------------------
@dataclass
class _Traffic:
    heads: list[str]
    texts: list[str]
    failure_share: float


_traffic: _Traffic | None = None
_traffic_lock = threading.Lock()
_environment = None  # locust's Environment, kept by the ``init`` listener for ``quit``


def _failure_share(environment) -> float:
    options = getattr(environment, "parsed_options", None)
    share = getattr(options, "failure_share", None)
    if share is None:
        share = float(os.environ.get(FAILURE_SHARE_ENV, EXPECTED_FAILURE_SHARE))
    return share


def _http_url(environment) -> str:
    return (environment.host or default_http_url()).rstrip("/")


def _grpc_url(environment) -> str:
    options = getattr(environment, "parsed_options", None)
    return getattr(options, "grpc_url", None) or default_grpc_url()


def traffic(environment, refresh: bool = False) -> _Traffic:
    """Heads, texts and failure share of this locust run, discovered once per process."""
    global _traffic
    with _traffic_lock:
        if _traffic is None or refresh:
            url = _http_url(environment)
            try:
                heads = discover_heads(url)
            except (OSError, HeadroomError) as exc:
                raise RuntimeError(f"cannot read the repository index of {url}: {exc}") from exc
            if not heads:
                raise RuntimeError(f"{url} reports no READY head (models head_<name>)")
            share = _failure_share(environment)
            _traffic = _Traffic(heads, real_text_mix(), share)
            log.info(
                "traffic: %d heads (%s), %d texts, %.1f %% to an unknown head",
                len(heads),
                ", ".join(heads),
                len(_traffic.texts),
                100 * share,
            )
        return _traffic


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("headroom")
    group.add_argument(
        "--grpc-url",
        default=default_grpc_url(),
        env_var=GRPC_URL_ENV,
        help="gRPC endpoint of the headroom server for GrpcPipelineUser (grpc://host:port)",
    )
    group.add_argument(
        "--failure-share",
        type=float,
        default=EXPECTED_FAILURE_SHARE,
        env_var=FAILURE_SHARE_ENV,
        help="share of requests to an unknown head, which must fail with NOT_FOUND",
    )


@events.init.add_listener
def _remember_environment(environment, **_kwargs) -> None:
    global _environment
    _environment = environment


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # workers discover the heads themselves
    try:
        traffic(environment, refresh=True)
        log.info("HTTP %s, gRPC %s", _http_url(environment), _grpc_url(environment))
    except Exception as exc:
        log.error("load test cannot start: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)


@events.quit.add_listener
def _write_final_csv(**_kwargs) -> None:
    """Rewrite the ``--csv`` stats with the final figures.

    Locust writes its CSVs once a second while the test runs and not again at the end, so they
    miss the last second (locust issues #1806, #2299); the console table and HTML report have it.
    ``quit`` fires once the users have stopped, just before locust closes those files.
    """
    environment = _environment
    prefix = getattr(getattr(environment, "parsed_options", None), "csv_prefix", None)
    if environment is None or not prefix or isinstance(environment.runner, WorkerRunner):
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv)):
        with open(f"{prefix}_{suffix}.csv", "w", newline="", encoding="utf-8") as handle:
            write(csv.writer(handle))


class _PipelineUserMixin:
    """Draws the next request from this user's own TrafficMix (random state per user)."""

    environment: object

    def _start_traffic(self) -> None:
        shared = traffic(self.environment)
        self.mix = TrafficMix(shared.heads, shared.texts, failure_share=shared.failure_share)


# --- HTTP: KServe v2 JSON through locust's FastHttpUser -----------------------------------------
def infer_body(text: str, head: str) -> dict:
    """KServe v2 inference request for ``pipeline``: one text, one head name (BYTES [1, 1])."""
    return {
        "inputs": [
            {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]},
            {"name": "HEAD", "shape": [1, 1], "datatype": "BYTES", "data": [head]},
        ],
        "outputs": [{"name": name} for name in OUTPUTS],
    }


def http_outcome(status_code: int, body: str | None, transport_error: object = None) -> tuple[str | None, str, bool]:
    """(status or None, error message, has LABEL) of one HTTP response."""
    if not status_code:  # no HTTP response at all: connection refused, reset, timeout
        return "ERROR", str(transport_error or "no response"), False
    try:
        payload = json.loads(body or "")
    except ValueError:
        payload = None
    if status_code != 200:
        message = payload.get("error", "") if isinstance(payload, dict) else (body or "")
        return str(status_code), str(message), False
    outputs = payload.get("outputs", []) if isinstance(payload, dict) else []
    label = next((o.get("data") for o in outputs if isinstance(o, dict) and o.get("name") == "LABEL"), None)
    return None, "", bool(label) and bool(label[0])


class HttpPipelineUser(_PipelineUserMixin, FastHttpUser):
    """Classifies one text per request over HTTP (KServe v2 JSON)."""

    host = default_http_url()
    wait_time = constant(0)
    network_timeout = float(config.DEFAULT_CLIENT_TIMEOUT_S)
    connection_timeout = float(config.DEFAULT_CLIENT_TIMEOUT_S)

    def on_start(self) -> None:
        self._start_traffic()

    @task
    def classify(self) -> None:
        request = self.mix.next()
        with self.client.post(
            INFER_PATH,
            json=infer_body(request.text, request.head),
            # the router's tenant affinity (headroom.cluster.router), as HeadroomClient sends it
            headers=tenant_headers(request.head),
            name=request_name(request.expect_failure),
            catch_response=True,
        ) as response:
            status, message, has_label = http_outcome(
                response.status_code, response.text, getattr(response, "error", None)
            )
            failure = judge(request.expect_failure, status, message, has_label)
            if failure is None:
                response.success()
            else:
                response.failure(failure)


def tenant_headers(head: object) -> dict[str, str]:
    """``x-tenant`` for the router's tenant affinity; none for the bad-request mix's malformed
    names (a header cannot carry them, and the server must see them as sent)."""
    if isinstance(head, str) and head_name_problem(head) is None:
        return {config.TENANT_HEADER: head}
    return {}


# --- gRPC: tritonclient.grpc, timed here and reported to locust -----------------------------------
class GrpcPipelineUser(_PipelineUserMixin, User):
    """Classifies one text per request over gRPC (tritonclient, one client per user)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._start_traffic()
        self.grpc_url = _grpc_url(self.environment)
        protocol, address = parse_url(self.grpc_url)
        if protocol != "grpc":
            raise ValueError(f"--grpc-url must be grpc://host:port, got {self.grpc_url!r}")
        self.client = grpcclient.InferenceServerClient(address)
        self._outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _input(self, name: str, value: str):
        return bytes_input(self._grpc, name, [value])

    @task
    def classify(self) -> None:
        request = self.mix.next()
        inputs = [self._input("TEXT", request.text), self._input("HEAD", request.head)]
        status: str | None = None
        message = ""
        has_label = False
        length = 0
        started = time.perf_counter()
        try:
            result = self.client.infer(
                PIPELINE_NAME,
                inputs,
                outputs=self._outputs,
                client_timeout=config.DEFAULT_CLIENT_TIMEOUT_S,
                headers=tenant_headers(request.head),
            )
        except Exception as exc:  # InferenceServerException, or a client-side error
            elapsed_ms = (time.perf_counter() - started) * 1000
            status = normalise_status(status_of(exc))
            message = message_of(exc)
        else:
            elapsed_ms = (time.perf_counter() - started) * 1000
            label = result.as_numpy("LABEL")
            has_label = label is not None and label.size > 0 and bool(label.reshape(-1)[0])
            length = result.get_response().ByteSize()
        failure = judge(request.expect_failure, status, message or "", has_label)
        self.environment.events.request.fire(
            request_type="grpc",
            name=request_name(request.expect_failure),
            response_time=elapsed_ms,
            response_length=length,
            exception=None if failure is None else LoadTestFailure(failure),
            context={},
        )
