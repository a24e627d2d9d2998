"""Integration tests of the dense head design through the real server (fixture ``triton``).

220 synthetic heads (linear heads of 2-12 classes, stacked in the executor, and small MLP heads
that run as their own ONNX Runtime sessions) are registered next to the demo heads and loaded
through Triton's model-control API; the module offboards them again at the end.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from headroom import config
from headroom.client.inference import HeadroomError
from headroom.client.metrics import read_metrics
from headroom.export.encoder import read_encoder_info
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from headroom.repository import head_store

from tests import onnx_heads
from tests.conftest import DEMO_HEADS
from tests.polling import wait_for

pytestmark = pytest.mark.integration

LINEAR_HEADS = 212
MLP_HEADS = 8
DIM = config.EMBEDDING_DIM


def linear_head(seed: int) -> tuple[bytes, list[str]]:
    """A stacked head of 2-12 classes; labels unique to it, so a cross-routed answer shows."""
    classes = int(np.random.default_rng(seed).integers(2, 13))
    return onnx_heads.linear_head(classes, seed, prefix=f"s{seed}-c")


def mlp_head(seed: int) -> tuple[bytes, list[str]]:
    """A head the executor runs as its own session, 2-5 classes, labels unique to it."""
    classes = int(np.random.default_rng(seed).integers(2, 6))
    return onnx_heads.graph_head(classes, seed, hidden=32, prefix=f"m{seed}-c")


class Synthetic:
    """The synthetic heads of this module: name -> (model bytes, labels) of the serving version."""

    def __init__(self, triton) -> None:
        self.triton = triton
        self.heads: dict[str, tuple[bytes, list[str]]] = {}
        self.fingerprint = read_encoder_info(triton.repository)["fingerprint"]
        self.control = triton_http.InferenceServerClient(triton.http_url.split("://")[1])

    def write(self, name: str, model_bytes: bytes, labels: list[str]) -> head_store.StoredHead:
        info = {"encoder_fingerprint": self.fingerprint, "metrics": {}, "trained_from": "tests/test_dense_heads.py"}
        stored = head_store.write_head_model(
            name, model_bytes, labels, info, self.triton.repository, self.triton.state_dir
        )
        self.heads[name] = (model_bytes, labels)
        return stored

    def load(self, name: str) -> None:
        self.control.load_model(f"head_{name}", headers=self.triton.admin_headers())

    def unload(self, name: str) -> None:
        self.control.unload_model(f"head_{name}", headers=self.triton.admin_headers())


@pytest.fixture(scope="module")
def synthetic(triton):
    heads = Synthetic(triton)
    names = [f"dense-{i:03d}" for i in range(LINEAR_HEADS)] + [f"mlp-{i}" for i in range(MLP_HEADS)]
    for index, name in enumerate(names):
        heads.write(name, *(linear_head(index) if name.startswith("dense") else mlp_head(index)))
    heads.log_offset = triton.log_file.stat().st_size
    started = time.perf_counter()
    for name in names:
        heads.load(name)
    heads.load_seconds = time.perf_counter() - started
    yield heads
    with triton.client() as client:
        for name in list(heads.heads):
            if client.is_head_ready(name) or (triton.repository / f"head_{name}").exists():
                try:
                    triton.onboarding(client).offboard(name)
                except HeadroomError:
                    head_store.archive_head(name, triton.repository, triton.state_dir)
    heads.control.close()  # an open keep-alive connection would hold up the server's shutdown


def run_alone(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def unit_rows(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metric(triton, name: str) -> float:
    value = read_metrics(triton.server.address.host, triton.server.address.metrics_port, timeout_s=5).value(name)
    assert value is not None, f"metric {name} not exported"
    return value


def test_200_heads_register_without_processes(triton, synthetic):
    """Registration models cost no stub process: the server has as many as before the heads."""
    import psutil

    stubs = [p for p in psutil.Process(triton.server.process.pid).children(recursive=True)]
    assert len(synthetic.heads) >= 200
    assert len(stubs) < 20, f"{len(stubs)} child processes for {len(synthetic.heads)} heads"
    with triton.client() as client:
        ready = {h.name for h in client.list_heads() if h.state == "READY"}
    assert set(synthetic.heads) <= ready and set(DEMO_HEADS) <= ready
    assert synthetic.load_seconds / len(synthetic.heads) < 1.0
    # Loading the ensembles never reloaded their step (nothing was written into its folder).
    log = triton.log_file.read_bytes()[synthetic.log_offset :].decode(errors="replace")
    assert "loading: executor" not in log, "loading heads reloaded the executor"


def test_direct_head_calls_equal_each_onnx_file_run_alone(triton, synthetic):
    """head_<name> called directly (parameter 'head'), all heads at once: executor == ONNX alone."""
    client = triton_grpc.InferenceServerClient(triton.grpc_url.split("://")[1])
    names = list(synthetic.heads)
    inputs = {name: unit_rows(3, seed) for seed, name in enumerate(names)}
    results: dict[str, object] = {}
    done = threading.Semaphore(0)

    def callback(name):
        def record(result, error):
            results[name] = error if error is not None else result.as_numpy(HEAD_OUTPUT)
            done.release()

        return record

    for name in names:
        tensor = triton_grpc.InferInput(HEAD_INPUT, [3, DIM], "FP32")
        tensor.set_data_from_numpy(inputs[name])
        client.async_infer(f"head_{name}", [tensor], callback(name), parameters={"head": name})
    for _ in names:
        assert done.acquire(timeout=60)
    client.close()
    worst = 0.0
    for name in names:
        model_bytes, labels = synthetic.heads[name]
        served = results[name]
        assert isinstance(served, np.ndarray), f"{name}: {served}"
        expected = run_alone(model_bytes, inputs[name])
        assert served.shape == (3, len(labels))
        worst = max(worst, float(np.abs(served - expected).max()))
    assert worst <= 1e-5, worst


def test_mixed_batches_through_the_pipeline_over_200_heads(triton, synthetic):
    """Every request routed to its own head, answers equal to the head run alone on the embedding."""
    rng = np.random.default_rng(7)
    names = list(synthetic.heads)
    texts = [f"request {i}: please look at order number {rng.integers(1000, 9999)}" for i in range(600)]
    heads = [names[i] for i in rng.integers(0, len(names), size=len(texts))]
    with triton.client(triton.grpc_url, concurrency=64) as client:
        embeddings = np.concatenate([client.embed([text]) for text in texts[:1]] + [client.embed(texts[1:])])
        results = client.classify(texts, heads)
    worst = 0.0
    for row, (head, result) in enumerate(zip(heads, results, strict=True)):
        model_bytes, labels = synthetic.heads[head]
        expected = run_alone(model_bytes, embeddings[row : row + 1])[0]
        assert result.head == head and list(result.probabilities) == labels  # its own head's classes
        worst = max(worst, float(np.abs(np.array(list(result.probabilities.values())) - expected).max()))
    # The embedding of a text in a batch and alone differ by float rounding (fp32, int8-static); int8 by more.
    variant = read_encoder_info(triton.repository)["variant"]
    assert worst <= (1e-4 if variant in config.BATCH_INDEPENDENT_VARIANTS else 0.35), worst


def _classify_one(triton, text: str, head: str):
    with triton.client() as client:
        return client.classify([text], head, return_errors=True)[0]


def test_unload_and_load_switch_a_head_off_and_on(triton, synthetic):
    name = "dense-005"
    assert not isinstance(_classify_one(triton, "hello", name), HeadroomError)
    synthetic.unload(name)
    result = wait_for(
        lambda: _classify_one(triton, "hello", name),
        5,
        interval_s=0.02,
        message="still answered after unload",
        until=lambda result: isinstance(result, HeadroomError),
    )
    assert result.status in ("404", "NOT_FOUND") and f"head '{name}' is not loaded" in str(result)
    # The other heads never noticed.
    other = _classify_one(triton, "hello", "dense-006")
    assert not isinstance(other, HeadroomError) and list(other.probabilities) == synthetic.heads["dense-006"][1]
    synthetic.load(name)
    answer = _classify_one(triton, "hello", name)  # at once: loading is what switches it on
    assert not isinstance(answer, HeadroomError) and list(answer.probabilities) == synthetic.heads[name][1]


def test_rollover_switches_weights_when_the_new_version_is_ready(triton, synthetic):
    name = "dense-010"
    old_labels = synthetic.heads[name][1]
    assert list(_classify_one(triton, "hello", name).probabilities) == old_labels
    new_bytes, new_labels = mlp_head(999)  # another kind and class count: unmistakable
    stored = synthetic.write(name, new_bytes, new_labels)
    assert stored.version == 2
    # Written but not loaded: version 1 keeps answering.
    assert list(_classify_one(triton, "hello", name).probabilities) == old_labels
    synthetic.load(name)
    assert list(_classify_one(triton, "hello", name).probabilities) == new_labels
    head_store.archive_old_versions(name, keep=2, repository=triton.repository, state_dir=triton.state_dir)
    assert list(_classify_one(triton, "hello", name).probabilities) == new_labels


def test_offboarding_frees_resident_weights_and_fails_at_once(triton, synthetic):
    name = "dense-020"
    model_bytes, labels = synthetic.heads[name]
    resident = _classify_one(triton, "hello", name)  # now resident
    assert not isinstance(resident, HeadroomError) and list(resident.probabilities) == labels
    before = metric(triton, "headroom_resident_head_bytes")
    head_bytes = len(labels) * DIM * 4 + len(labels) * 4
    with triton.client() as client:
        triton.onboarding(client).offboard(name)
    result = _classify_one(triton, "hello", name)
    assert isinstance(result, HeadroomError) and f"head '{name}' is not loaded" in str(result)

    def freed() -> bool:
        if metric(triton, "headroom_resident_head_bytes") <= before - head_bytes:
            return True
        # The sweeper frees it within sweep_interval_s; the gauge is published with the next batch.
        _classify_one(triton, "hello", "dense-021")
        return False

    wait_for(freed, 10, interval_s=0.1, fail=False)
    assert metric(triton, "headroom_resident_head_bytes") <= before - head_bytes
    del synthetic.heads[name]


def test_stacked_arrays_stay_within_a_quarter_of_the_weights_they_hold(triton, synthetic):
    """Every synthetic head resident: the executor's arrays (``headroom_head_bank_bytes``) hold at
    most ``BANK_GROWTH`` (1.25) times the stacked weights in them (``headroom_stacked_head_bytes``)."""
    names = list(synthetic.heads)
    with triton.client(triton.grpc_url, concurrency=32) as client:
        results = client.classify([f"text {i}" for i in range(len(names))], names, return_errors=True)
    assert not [r for r in results if isinstance(r, HeadroomError)]
    for name, result in zip(names, results, strict=True):  # each answered by its own head
        assert result.head == name and list(result.probabilities) == synthetic.heads[name][1], name
    stacked, allocated = metric(triton, "headroom_stacked_head_bytes"), metric(triton, "headroom_head_bank_bytes")
    # Stacked heads' labels start with "s" (``linear_head``); dense-010 became an MLP head on rollover.
    linear = [labels for _, labels in synthetic.heads.values() if labels[0].startswith("s")]
    assert stacked >= sum(len(labels) * (DIM + 1) * 4 for labels in linear)
    assert stacked <= allocated <= 1.25 * stacked


def test_the_server_runs_with_jemalloc_or_a_bounded_number_of_glibc_arenas(triton):
    """What ``server_environment`` gave the running server (docs/dense-heads.md, docs/operations.md)."""
    pid = triton.server.process.pid
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
        jemalloc = "libjemalloc" in handle.read()
    with open(f"/proc/{pid}/environ", "rb") as handle:
        environ = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    if not jemalloc:
        expected = os.environ.get("MALLOC_ARENA_MAX", str(config.DEFAULT_MALLOC_ARENA_MAX))
        assert config.DEFAULT_MALLOC_ARENA_MAX <= 0 or environ.get(b"MALLOC_ARENA_MAX") == expected.encode()


def test_without_jemalloc_the_launcher_limits_glibc_arenas(monkeypatch):
    """Unit test of ``server_environment``: one arena unless the operator set MALLOC_ARENA_MAX."""
    from headroom.server import environment

    monkeypatch.setattr(environment, "find_jemalloc", lambda setting="auto": None)
    env = environment.server_environment({"PATH": "/usr/bin"})
    assert env["MALLOC_ARENA_MAX"] == str(config.DEFAULT_MALLOC_ARENA_MAX) and "LD_PRELOAD" not in env
    assert environment.server_environment({"MALLOC_ARENA_MAX": "4"})["MALLOC_ARENA_MAX"] == "4"
    assert environment.glibc_malloc_settings(0) == {}
    monkeypatch.setattr(environment, "find_jemalloc", lambda setting="auto": "/opt/lib/libjemalloc.so.2")
    env = environment.server_environment({"PATH": "/usr/bin"})
    assert env["LD_PRELOAD"] == "/opt/lib/libjemalloc.so.2" and "MALLOC_ARENA_MAX" not in env


def test_a_head_file_that_cannot_run_fails_only_its_rows(triton, synthetic):
    """The executor's own guard (onboarding refuses such files before they get here)."""
    synthetic.write("broken", b"this is not an onnx file", ["a", "b"])
    synthetic.load("broken")
    requests = [("hello", "broken")] + [("hello", name) for name in ("dense-030", "mlp-1", *DEMO_HEADS)] * 4
    expected = {name: synthetic.heads[name][1] for name in ("dense-030", "mlp-1")}
    expected |= {head: list(_classify_one(triton, "hello", head).probabilities) for head in DEMO_HEADS}
    with triton.client(triton.grpc_url, concurrency=32) as client:
        results = client.classify([t for t, _ in requests], [h for _, h in requests], return_errors=True)
    broken, others = results[0], results[1:]
    assert isinstance(broken, HeadroomError) and "UNAVAILABLE" in str(broken.status)
    assert "not an ONNX model" in str(broken)
    assert not any(isinstance(result, HeadroomError) for result in others)
    for (_, head), result in zip(requests[1:], others, strict=True):  # each answered by its own head
        assert result.head == head and list(result.probabilities) == expected[head], head


def test_executor_runs_a_batch_with_one_call(triton, synthetic):
    """The pipeline calls the executor once per batch, not once per head."""
    headers = triton.admin_headers()
    stats_client = triton_http.InferenceServerClient(triton.http_url.split("://")[1])

    def counts(model: str) -> tuple[int, int]:
        entry = stats_client.get_inference_statistics(model, headers=headers)["model_stats"][0]
        return entry["inference_count"], entry["execution_count"]

    names = [n for n in synthetic.heads if n.startswith("dense")][:64]
    pipeline_before, executor_before = counts("pipeline"), counts("executor")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: _classify_many(triton, synthetic, names, seed=i), range(4)))
    time.sleep(0.5)
    pipeline_after, executor_after = counts("pipeline"), counts("executor")
    stats_client.close()
    pipeline_batches = pipeline_after[1] - pipeline_before[1]
    executor_calls = executor_after[1] - executor_before[1]
    assert pipeline_after[0] - pipeline_before[0] == 4 * len(names)
    assert pipeline_batches < 4 * len(names)
    assert executor_calls <= pipeline_batches


def _classify_many(triton, synthetic, names: list[str], seed: int) -> None:
    with triton.client(triton.grpc_url, concurrency=32) as client:
        results = client.classify([f"text {seed}-{i}" for i in range(len(names))], names, return_errors=True)
    failed = [r for r in results if isinstance(r, HeadroomError)]
    assert not failed, failed[:3]
    for name, result in zip(names, results, strict=True):  # each answered by its own head
        assert result.head == name and list(result.probabilities) == synthetic.heads[name][1], name
