"""The locust load test (``client/locustfile.py``) and its runner (``bench/loadtest.py``).

Unit tests of how each request's outcome is judged and how the run is summarised, then one short
real run against the session's tritonserver: HTTP and gRPC users, expected failures included.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from headroom import config

PROJECT_ROOT = config.PROJECT_ROOT
LOADTEST = PROJECT_ROOT / "bench" / "loadtest.py"


@pytest.fixture(scope="module")
def locustfile():
    """``client/locustfile.py`` imported without locust's gevent monkey-patching of this process."""
    if "locust" not in sys.modules:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
            return importlib.import_module("headroom.client.locustfile")
    return importlib.import_module("headroom.client.locustfile")


@pytest.fixture(scope="module")
def loadtest():
    spec = importlib.util.spec_from_file_location("headroom_bench_loadtest", LOADTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- how one request is judged ------------------------------------------------------------------
NOT_LOADED = "head 'no_such_tenant' is not loaded (onboard it, or load model 'head_no_such_tenant')"


@pytest.mark.parametrize("status", ["404", "NOT_FOUND"])
def test_unknown_head_failing_with_not_found_is_a_success(locustfile, status):
    assert locustfile.judge(True, status, NOT_LOADED) is None
    assert locustfile.request_name(True) == "pipeline [expected failure]"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (None, ""),  # it succeeded
        ("400", NOT_LOADED),  # wrong code
        ("404", "some other not-found"),  # right code, wrong message
        ("UNAVAILABLE", "failed to connect to all addresses"),
    ],
)
def test_unknown_head_with_another_outcome_is_a_failure(locustfile, status, message):
    assert locustfile.judge(True, status, message)


def test_normal_requests_need_an_answer_with_a_label(locustfile):
    assert locustfile.request_name(False) == "pipeline"
    assert locustfile.judge(False, None, has_label=True) is None
    assert "LABEL" in locustfile.judge(False, None, has_label=False)
    assert locustfile.judge(False, "404", NOT_LOADED) == f"404: {NOT_LOADED}"
    assert locustfile.judge(False, "INVALID_ARG", "TEXT is empty", has_label=True)


def test_grpc_codes_are_normalised(locustfile):
    assert locustfile.normalise_status("StatusCode.NOT_FOUND") == "NOT_FOUND"
    assert locustfile.normalise_status("404") == "404"
    assert locustfile.normalise_status(None) == "ERROR"


def test_http_outcome(locustfile):
    answered = json.dumps({"outputs": [{"name": "SCORE", "data": [0.9]}, {"name": "LABEL", "data": ["lights_on"]}]})
    assert locustfile.http_outcome(200, answered) == (None, "", True)
    assert locustfile.http_outcome(200, json.dumps({"outputs": []})) == (None, "", False)
    assert locustfile.http_outcome(404, json.dumps({"error": NOT_LOADED})) == ("404", NOT_LOADED, False)
    assert locustfile.http_outcome(0, None, ConnectionRefusedError("refused")) == ("ERROR", "refused", False)


def test_ready_heads_from_the_repository_index(locustfile):
    from headroom.client.inference import HeadStatus

    heads = [  # HeadroomClient.list_heads leaves out models that are not heads (pipeline, head_encoder)
        HeadStatus("b", "head_b", "UNAVAILABLE", "1"),
        HeadStatus("a", "head_a", "UNAVAILABLE", "1"),
        HeadStatus("a", "head_a", "READY", "2"),
        HeadStatus("c", "head_c", "READY", ""),
    ]
    assert locustfile.ready_heads(heads) == ["a", "c"]


def test_infer_body_is_kserve_v2_bytes(locustfile):
    body = locustfile.infer_body("hello", "smart_home")
    assert body["inputs"] == [
        {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hello"]},
        {"name": "HEAD", "shape": [1, 1], "datatype": "BYTES", "data": ["smart_home"]},
    ]


# --- the runner ---------------------------------------------------------------------------------
def test_ports_are_derived_from_the_url(loadtest):
    own = loadtest.server_address("http://localhost:18000")
    assert (own.http_port, own.grpc_port, own.metrics_port) == (18000, 18001, 18002)
    configured = loadtest.server_address(f"http://localhost:{config.DEFAULT_HTTP_PORT}")
    assert (configured.grpc_port, configured.metrics_port) == (config.DEFAULT_GRPC_PORT, config.DEFAULT_METRICS_PORT)
    elsewhere = config.ServerAddress(http_port=9100, grpc_port=9200, metrics_port=9300)
    assert loadtest.server_address("http://localhost:9100", configured=elsewhere).grpc_port == 9200
    assert loadtest.server_address("http://h:5000", "grpc://h:6000").grpc_port == 6000


def test_summary_of_a_stats_csv(loadtest, tmp_path):
    columns = ["Type", "Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%"]
    rows = [
        ["POST", "pipeline", 100, 1, 10.0, 20, 40, 50],
        ["POST", "pipeline [expected failure]", 5, 0, 0.5, 10, 12, 12],
        ["grpc", "pipeline", 90, 0, 9.0, 18, 35, 45],
        ["grpc", "pipeline [expected failure]", 4, 1, 0.4, 9, 11, 11],
        ["", "Aggregated", 199, 2, 19.9, 19, 38, 48],
    ]
    stats = tmp_path / "stats.csv"
    with stats.open("w", newline="") as handle:
        csv.writer(handle).writerows([columns, *rows])
    summary = loadtest.summarise(stats)
    assert summary["total"] == {
        "requests": 199,
        "failures": 2,
        "expected_failures": 8,
        "expected_failures_missed": 1,
        "rps": 19.9,
        "p50_ms": 19.0,
        "p95_ms": 38.0,
        "p99_ms": 48.0,
    }
    assert summary["protocols"]["HTTP"]["requests"] == 105 and summary["protocols"]["HTTP"]["p95_ms"] == 40
    assert summary["protocols"]["gRPC"]["expected_failures"] == 3


# --- a real run ---------------------------------------------------------------------------------
def _stats_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
def test_load_test_against_the_server(triton, tmp_path):
    from headroom.export.home_assistant import home_assistant_split, write_split

    # A slot tenant in the mix (locust takes every loaded head): intents and entities under load.
    train, _ = write_split(home_assistant_split(train_per_intent=4, held_out_per_intent=1), tmp_path / "slots")
    with triton.client() as client:
        onboarding = triton.onboarding(client)
        onboarding.onboard("locust-slots", train)
        try:
            _run_load_test(triton, tmp_path)
        finally:
            onboarding.offboard("locust-slots")


def _run_load_test(triton, tmp_path):
    command = [
        sys.executable,
        str(LOADTEST),
        "--duration=5",
        "--users=4",
        "--spawn-rate=4",
        f"--url={triton.http_url}",
        f"--grpc-url={triton.grpc_url}",
        f"--results-dir={tmp_path}",
        "--failure-share=0.2",  # enough unknown-head requests in 5 s to be sure to see some
    ]
    # locust reads the heads from the repository index, which needs the admin key.
    env = dict(os.environ, HEADROOM_ADMIN_KEY=triton.admin_key)
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180, env=env)
    output = (run.stdout + run.stderr)[-4000:]
    died = triton.server.process.poll()
    if died is not None:
        triton.restart()  # leave a working server to the session's other tests
        pytest.fail(f"tritonserver died under load with exit code {died} (see {triton.log_file})\n{output}")
    assert run.returncode == 0, output
    assert "using the server at" in output, output  # it did not start a server of its own

    stats = tmp_path / "loadtest_stats.csv"
    assert stats.exists() and (tmp_path / "loadtest.html").exists(), output
    rows = {(row["Type"], row["Name"]): row for row in _stats_rows(stats)}
    for request_type in ("POST", "grpc"):  # HTTP users record the method, gRPC users "grpc"
        normal = rows[(request_type, "pipeline")]
        expected = rows[(request_type, "pipeline [expected failure]")]
        assert int(normal["Request Count"]) > 0 and int(normal["Failure Count"]) == 0, normal
        # Requests to the unknown head failed as they must, and were recorded as successes.
        assert int(expected["Request Count"]) > 0 and int(expected["Failure Count"]) == 0, expected
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0

    summary = json.loads((tmp_path / "loadtest_summary.json").read_text())
    assert summary["total"]["failures"] == 0 and summary["total"]["expected_failures"] > 0
    assert summary["total"]["requests"] == int(rows[("", "Aggregated")]["Request Count"])
    assert "unexpected failures 0" in run.stdout
