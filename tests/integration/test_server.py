"""Integration tests against one real embedded tritonserver (fixture ``triton``, conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from headroom import config
from headroom.client.inference import HeadroomError
from headroom.export.embeddings import RepositoryEmbedder
from headroom.repository.head_store import versions_of
from tritonclient.utils import InferenceServerException

from tests.conftest import DEMO_HEADS
from tests.polling import wait_for
from tests.reference import offline

pytestmark = pytest.mark.integration

PROBES = {
    "smart_home": ["turn on the kitchen lights", "what's the weather like tomorrow", "set a timer for ten minutes"],
    "knowledge": ["what is a computer", "who wrote hamlet", "what is the speed of light"],
    "lifestyle": ["what is your favorite food", "do you like football", "how much money do you have"],
    "smalltalk": ["hello there", "tell me a joke", "are you a robot"],
}


def raw_inputs(module, text=None, head=None):
    inputs = []
    for name, value in (("TEXT", text), ("HEAD", head)):
        if value is None:
            continue
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value if isinstance(value, bytes) else value.encode()]], dtype=object))
        inputs.append(tensor)
    return inputs


def test_repository_index_lists_system_models_and_heads_ready(triton):
    request = urllib.request.Request(
        f"{triton.http_url}/v2/repository/index", data=b"", method="POST", headers=triton.admin_headers()
    )
    with urllib.request.urlopen(request) as response:
        index = {entry["name"]: entry.get("state") for entry in json.load(response)}
    for name in (*config.SYSTEM_MODELS, *(f"head_{h}" for h in DEMO_HEADS)):
        assert index.get(name) == "READY", f"{name}: {index.get(name)}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classify_matches_offline_encoder_and_head(triton, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with triton.client(url) as client:
        for head, texts in PROBES.items():
            labels, expected = offline(triton.repository, head, texts)
            for text, probs in zip(texts, expected, strict=True):
                # One at a time: each request is a batch of one, exactly like the offline run.
                (result,) = client.classify([text], head)
                assert list(result.probabilities) == labels
                served = np.array(list(result.probabilities.values()))
                assert np.abs(served - probs).max() <= 1e-5, (head, text)
                assert result.label == labels[int(np.argmax(probs))]
                assert result.score == pytest.approx(float(probs.max()), abs=1e-5)


def _served_variant(repository: Path) -> str:
    return json.loads((config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE).read_text())["variant"]


def _pipeline_stats(url: str, headers: dict[str, str] | None = None) -> tuple[int, int]:
    stats = triton_http.InferenceServerClient(url.split("://")[1]).get_inference_statistics("pipeline", headers=headers)
    entry = stats["model_stats"][0]
    return entry["inference_count"], entry["execution_count"]


def test_mixed_tenant_concurrent_requests_come_back_from_the_right_head(triton):
    texts, heads = [], []
    for round_ in range(8):
        for head, probes in PROBES.items():
            for text in probes:
                texts.append(f"{text}" if round_ == 0 else f"{text} (take {round_})")
                heads.append(head)
    assert len(texts) >= 64 and len(set(heads)) >= 3
    expected = {
        h: offline(triton.repository, h, [t for t, hh in zip(texts, heads, strict=True) if hh == h]) for h in PROBES
    }
    key = triton.admin_headers()  # statistics are part of the protected control plane
    before = _pipeline_stats(triton.http_url, key)
    with triton.client(triton.grpc_url, concurrency=64) as client:
        results = client.classify(texts, heads, batch_size=1)  # one text per request
    # Triton updates statistics just after sending responses: poll briefly for the last ones.
    after = wait_for(
        lambda: _pipeline_stats(triton.http_url, key),
        10,
        until=lambda after: after[0] - before[0] >= len(texts),
        fail=False,
    )
    position = dict.fromkeys(PROBES, 0)
    # fp32 and int8-static answers do not depend on batch-mates; dynamic int8's scales do (docs/benchmarks.md).
    tolerance = 1e-4 if _served_variant(triton.repository) in config.BATCH_INDEPENDENT_VARIANTS else 0.35
    for text, head, result in zip(texts, heads, results, strict=True):
        labels, probs = expected[head]
        row = probs[position[head]]
        position[head] += 1
        assert result.head == head and result.text == text
        assert list(result.probabilities) == labels  # answered by this head, not another
        assert np.abs(np.array(list(result.probabilities.values())) - row).max() <= tolerance
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] > 2 * tolerance:
            assert result.label == labels[int(np.argmax(row))]
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(texts)
    assert executions < inferences, "requests of different tenants were never batched together"


def test_bad_requests_fail_alone_with_clear_errors(triton):
    good = [(text, head) for head, probes in PROBES.items() for text in probes]
    bad = {
        ("hello", "no_such_head"): ("404", "head 'no_such_head' is not loaded"),
        ("hello", "encoder"): ("400", "'encoder' is a system model, not a head"),
        ("hello", "pipeline"): ("400", "'pipeline' is a system model, not a head"),
        ("hello", "../encoder"): ("400", "invalid head name"),
        ("hello", "Smart_Home"): ("400", "invalid head name"),
        ("", "smart_home"): ("400", "TEXT is empty"),
        ("   \n\t", "smart_home"): ("400", "TEXT is empty"),
    }
    requests = good[:6] + list(bad) + good[6:]
    with triton.client(triton.http_url, concurrency=len(requests)) as client:
        texts, heads = [t for t, _ in requests], [h for _, h in requests]
        results = client.classify(texts, heads, return_errors=True, batch_size=1)  # one text per request
    for (text, head), result in zip(requests, results, strict=True):
        if (text, head) in bad:
            status, message = bad[(text, head)]
            assert isinstance(result, HeadroomError), (text, head)
            assert str(result.status) == status and message in str(result), (status, str(result))
        else:
            assert not isinstance(result, Exception), (text, head, result)
            assert result.label in result.probabilities


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_missing_input_and_invalid_utf8_fail_alone(triton, module):
    url = (triton.http_url if module is triton_http else triton.grpc_url).split("://")[1]
    results = {}

    def send(key, inputs):
        # One client per thread: tritonclient.http is gevent-based and not thread-safe.
        try:
            results[key] = module.InferenceServerClient(url).infer("pipeline", inputs)
        except InferenceServerException as exc:
            results[key] = exc

    cases = {
        "good": raw_inputs(module, "lock the front door", "smart_home"),
        "no_head": raw_inputs(module, "lock the front door", None),
        "no_text": raw_inputs(module, None, "smart_home"),
        "bad_utf8": raw_inputs(module, b"\xff\xfe lights", "smart_home"),
        "good2": raw_inputs(module, "turn off the lights", "smart_home"),
    }
    threads = [threading.Thread(target=send, args=item) for item in cases.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["good"].as_numpy("LABEL")[0, 0] == b"lock_door"
    assert results["good2"].as_numpy("LABEL")[0, 0] == b"lights_off"
    assert "missing required input(s) ['HEAD']" in results["no_head"].message()
    assert "missing required input(s) ['TEXT']" in results["no_text"].message()
    assert "not valid UTF-8" in results["bad_utf8"].message()
    client = module.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()


def test_embed_returns_the_served_encoders_embeddings(triton):
    texts = ["hello world", "turn on the lights in the living room please"]
    with triton.client() as client:
        served = client.embed(texts)
    # Grouped as the server groups them (dynamic int8's activation scales depend on the batch).
    expected = RepositoryEmbedder(triton.repository)(texts)
    assert served.shape == (2, config.EMBEDDING_DIM)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-4)


def _write_tenant(path: Path, intents: list[str]) -> Path:
    lines = (config.DEMO_DATA_DIR / "smart_home.jsonl").read_text(encoding="utf-8").splitlines()
    chosen = [line for line in lines if json.loads(line)["label"] in intents]
    path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return path


def test_onboard_classify_offboard_then_restart(triton, tmp_path):
    acme = _write_tenant(tmp_path / "acme.jsonl", ["lights_on", "lock_door", "weather_query"])
    keeper = _write_tenant(tmp_path / "keeper.csv.jsonl", ["play_music", "stop_music"])
    with triton.client() as client:
        result = triton.onboarding(client).onboard("acme", acme)
        assert result.version == 1 and result.metrics["classes"] == 3
        (answer,) = client.classify(["please lock the back door"], "acme")
        assert answer.label == "lock_door" and set(answer.probabilities) == {"lights_on", "lock_door", "weather_query"}
        triton.onboarding(client).onboard("keeper", keeper)
        (kept_before,) = client.classify(["play some jazz"], "keeper")
        states = {h.name: h.state for h in client.list_heads()}
        assert states["acme"] == "READY" and states["keeper"] == "READY"

        archived = triton.onboarding(client).offboard("acme")
        assert archived is not None and (archived / "1" / "model.onnx").exists()
        assert not (triton.repository / "head_acme").exists()
        with pytest.raises(HeadroomError, match="head 'acme' is not loaded") as failure:
            client.classify(["please lock the back door"], "acme")
        assert failure.value.status == "404"

    failed = triton.restart()
    assert failed == []
    with triton.client(triton.grpc_url) as client:
        (kept_after,) = client.classify(["play some jazz"], "keeper")
        assert kept_after.label == kept_before.label
        assert kept_after.probabilities == pytest.approx(kept_before.probabilities, abs=1e-5)
        with pytest.raises(HeadroomError, match="head 'acme' is not loaded"):
            client.classify(["please lock the back door"], "acme")
        assert "acme" not in {h.name for h in client.list_heads()}


def test_new_version_replaces_the_old_without_failing_requests(triton, tmp_path):
    v1 = _write_tenant(tmp_path / "roll_v1.jsonl", ["lights_on", "lights_off"])
    v2 = _write_tenant(tmp_path / "roll_v2.jsonl", ["lights_on", "lights_off", "set_temperature"])
    errors: list[Exception] = []
    seen: list[frozenset] = []
    stop = threading.Event()
    with triton.client() as client:
        triton.onboarding(client).onboard("roll", v1)

        def traffic() -> None:
            with triton.client() as own:
                while not stop.is_set():
                    for result in own.classify(["switch the lights on", "make it warmer"], "roll", return_errors=True):
                        if isinstance(result, Exception):
                            errors.append(result)
                        else:
                            seen.append(frozenset(result.probabilities))

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            result = triton.onboarding(client).onboard("roll", v2)
        finally:
            stop.set()
            worker.join()
        assert result.version == 2
        (answer,) = client.classify(["make it warmer in here"], "roll")
    assert errors == []
    assert answer.label == "set_temperature"
    assert set(seen) <= {
        frozenset({"lights_on", "lights_off"}),
        frozenset({"lights_on", "lights_off", "set_temperature"}),
    }
    assert versions_of(triton.repository / "head_roll") == [2]


def test_cli_classify_is_a_smoke_test(triton):
    command = [
        sys.executable,
        "-m",
        "headroom.client.cli",
        "classify",
        "--url",
        triton.grpc_url,
        "--head",
        "smart_home",
        "turn on the lights",
        "lock the door",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["lights_on", "lock_door"]
    command[-4:] = ["--head", "nobody", "hello"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.PROJECT_ROOT)
    assert done.returncode == 1
    assert "head 'nobody' is not loaded" in done.stderr


def test_head_trained_for_another_encoder_is_refused(triton):
    from headroom.export.heads import train_head
    from headroom.export.tenants import write_head

    from tests.unit.test_heads import dataset, fake_embedder

    head = train_head(dataset(), fake_embedder())
    write_head("stale", head, "sha256:" + "0" * 64, repository=triton.repository, state_dir=triton.state_dir)
    triton_http.InferenceServerClient(triton.http_url.split("://")[1]).load_model(
        "head_stale", headers=triton.admin_headers()
    )
    with triton.client() as client:
        results = client.classify(["alpha", "turn on the lights"], ["stale", "smart_home"], return_errors=True)
    assert isinstance(results[0], HeadroomError)
    assert results[0].status == "503" and "was trained against encoder sha256:0000" in str(results[0])
    assert results[1].label == "lights_on"


def test_many_rows_of_one_unknown_head_in_a_batch_fail_alone(triton):
    """Regression: one shared error object for several responses crashed tritonserver."""
    texts = [f"request {i}" for i in range(48)]
    heads = ["no_such_head" if i % 2 else "smart_home" for i in range(48)]
    with triton.client(triton.grpc_url, concurrency=48) as client:
        for _ in range(3):
            results = client.classify(texts, heads, return_errors=True, batch_size=1)
            for head, result in zip(heads, results, strict=True):
                if head == "no_such_head":
                    assert isinstance(result, HeadroomError) and "head 'no_such_head' is not loaded" in str(result)
                else:
                    assert not isinstance(result, Exception), result
    assert triton.server.process.poll() is None
