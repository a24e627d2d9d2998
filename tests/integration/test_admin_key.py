"""The protected control plane (docs/security.md): the admin key, and Triton enforcing it.

Unit tests cover where the key comes from; integration tests run against the session's real
tritonserver (conftest.py), which starts with the key, over HTTP and gRPC alike.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from headroom import config
from headroom.admin_key import (
    AdminKeyError,
    admin_headers,
    ensure_admin_key,
    fingerprint,
    load_admin_key,
)
from headroom.client.inference import HeadroomError
from headroom.server.cli import serve_admin_key
from headroom.server.launcher import build_command, restriction_args
from tritonclient.utils import InferenceServerException

KEY = "k" * 20 + "-env"
FILE_KEY = "f" * 20 + "_file"
HTTP_REFUSED = "403"
#: Triton 2.51 answers a restricted gRPC call without the key with UNAVAILABLE (not PERMISSION_DENIED).
GRPC_REFUSED = "StatusCode.UNAVAILABLE"


# --- where the key comes from ---------------------------------------------------------------
def test_environment_wins_over_the_file(tmp_path):
    key_file = tmp_path / "admin.key"
    key_file.write_text(FILE_KEY + "\n")
    assert load_admin_key(key_file, {config.ADMIN_KEY_ENV: KEY}) == KEY
    assert load_admin_key(key_file, {config.ADMIN_KEY_ENV: ""}) == FILE_KEY  # empty = unset
    assert load_admin_key(key_file, {}) == FILE_KEY
    assert load_admin_key(tmp_path / "missing.key", {}) is None


def test_malformed_keys_are_refused_without_echoing_them(tmp_path):
    for bad in ("short", "has space in the middle!", "a:b=c," * 4, "x" * 300):
        with pytest.raises(AdminKeyError) as caught:
            load_admin_key(tmp_path / "none", {config.ADMIN_KEY_ENV: bad})
        assert config.ADMIN_KEY_ENV in str(caught.value) and bad not in str(caught.value)
    key_file = tmp_path / "admin.key"
    key_file.write_text("not a key\n")
    with pytest.raises(AdminKeyError, match="admin.key is malformed"):
        load_admin_key(key_file, {})


def test_ensure_creates_the_key_once_with_mode_0600(tmp_path):
    key_file = tmp_path / "state" / "admin.key"
    first = ensure_admin_key(key_file, {})
    assert first.created and first.path == key_file and len(first.key) >= 40
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first.key
    again = ensure_admin_key(key_file, {})
    assert again == (first.key, key_file, False)
    assert [p.name for p in key_file.parent.iterdir()] == ["admin.key"]  # no temporary file left


def test_ensure_uses_the_environment_and_writes_nothing(tmp_path):
    key_file = tmp_path / "admin.key"
    assert ensure_admin_key(key_file, {config.ADMIN_KEY_ENV: KEY}) == (KEY, None, False)
    assert not key_file.exists()


def test_serve_announces_a_created_key_without_printing_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(config.ADMIN_KEY_ENV, raising=False)
    monkeypatch.delenv(config.ADMIN_KEY_FILE_ENV, raising=False)
    key = serve_admin_key(tmp_path / "admin.key")
    out = capsys.readouterr().out
    assert f"admin key: created {tmp_path / 'admin.key'}" in out and "header admin-key" in out
    assert key not in out
    assert serve_admin_key(tmp_path / "admin.key") == key
    assert "admin key: in " in capsys.readouterr().out


def test_restriction_flags_and_headers():
    assert fingerprint(KEY).startswith("sha256:") and KEY not in fingerprint(KEY)
    groups = "model-repository,model-config,shared-memory,statistics,trace,logging"
    assert restriction_args(KEY) == [
        f"--http-restricted-api={groups}:admin-key={KEY}",
        f"--grpc-restricted-protocol={groups}:admin-key={KEY}",
    ]
    command = build_command(config.ServerAddress(), Path("/r"), Path("/b"), ["pipeline"])
    assert not [arg for arg in command if "restricted" in arg]
    assert admin_headers(KEY, "http") == {"admin-key": KEY}
    assert admin_headers(KEY, "grpc") == {"triton-grpc-protocol-admin-key": KEY}
    assert admin_headers(None, "http") is None and admin_headers("", "grpc") is None


# --- the real server ------------------------------------------------------------------------
GUARDED = "admin_probe"
PROBE_CONFIG = f"""name: "{GUARDED}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN", data_type: TYPE_FP32, dims: [ 1 ] }} ]
output [ {{ name: "OUT", data_type: TYPE_FP32, dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""
PROBE_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests
        ]
"""


@pytest.fixture(scope="module")
def guarded(triton):
    """A tiny model in the repository, not loaded: what load/unload are tried on (not a head, so
    nothing else in the session depends on it)."""
    target = triton.repository / GUARDED
    (target / "1").mkdir(parents=True)
    (target / "config.pbtxt").write_text(PROBE_CONFIG)
    (target / "1" / "model.py").write_text(PROBE_MODEL)
    yield GUARDED
    raw = triton_http.InferenceServerClient(triton.http_url.split("://")[1])
    try:  # leave the session's server as it was
        raw.unload_model(GUARDED, headers=triton.admin_headers())
    finally:
        raw.close()
        shutil.rmtree(target)


def _raw_clients(triton, protocol: str):
    if protocol == "http":
        return triton_http.InferenceServerClient(triton.http_url.split("://")[1]), HTTP_REFUSED
    return triton_grpc.InferenceServerClient(triton.grpc_url.split("://")[1]), GRPC_REFUSED


def _refused(call, expected_status: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert str(caught.value.status()) == expected_status
    assert "is restricted, expecting header" in caught.value.message()
    return caught.value


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_unload_index_need_the_key(triton, guarded, protocol):
    raw, refused = _raw_clients(triton, protocol)
    good = triton.admin_headers(protocol)
    wrong = admin_headers("w" * 43, protocol)
    try:
        for headers in (None, wrong):
            _refused(lambda h=headers: raw.get_model_repository_index(headers=h), refused)
            _refused(lambda h=headers: raw.load_model(guarded, headers=h), refused)
        assert not raw.is_model_ready(guarded), "a refused load loaded the model"

        raw.load_model(guarded, headers=good)
        assert raw.is_model_ready(guarded)
        index = raw.get_model_repository_index(headers=good)
        names = {m["name"] for m in index} if protocol == "http" else {m.name for m in index.models}
        assert {guarded, config.PIPELINE_MODEL} <= names

        for headers in (None, wrong):
            _refused(lambda h=headers: raw.unload_model(guarded, headers=h), refused)
        assert raw.is_model_ready(guarded), "a refused unload unloaded the model"
        raw.unload_model(guarded, headers=good)
        assert not raw.is_model_ready(guarded)
    finally:
        raw.close()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_other_operator_apis_need_the_key(triton, protocol):
    raw, refused = _raw_clients(triton, protocol)
    model = config.PIPELINE_MODEL
    calls = {
        "model-config": lambda h: raw.get_model_config(model, headers=h),
        "statistics": lambda h: raw.get_inference_statistics(headers=h),
        "shared-memory": lambda h: raw.get_system_shared_memory_status(headers=h),
        "trace": lambda h: raw.get_trace_settings(headers=h),
        "logging": lambda h: raw.get_log_settings(headers=h),
    }
    assert set(calls) == set(config.RESTRICTED_APIS) - {"model-repository"}
    try:
        for call in calls.values():
            _refused(lambda c=call: c(None), refused)
            call(triton.admin_headers(protocol))  # accepted with the key
    finally:
        raw.close()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_health_and_metadata_stay_open(triton, protocol):
    raw, _ = _raw_clients(triton, protocol)
    try:
        assert raw.is_server_live() and raw.is_model_ready(config.PIPELINE_MODEL)
        metadata = raw.get_server_metadata()
        assert (metadata["version"] if protocol == "http" else metadata.version).startswith("2.")
        model = raw.get_model_metadata(config.PIPELINE_MODEL)
        assert (model["name"] if protocol == "http" else model.name) == config.PIPELINE_MODEL
    finally:
        raw.close()
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with triton.client(url, admin_key="") as client:
        assert client.classify(["turn on the lights"], "smart_home")[0].label == "lights_on"
        assert client.is_head_ready("smart_home")


@pytest.mark.integration
def test_plain_http_without_the_header_is_refused_with_403(triton):
    request = urllib.request.Request(f"{triton.http_url}/v2/repository/index", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403
    assert "expecting header 'admin-key'" in caught.value.read().decode()
    with urllib.request.urlopen(f"{triton.http_url}/v2/health/live", timeout=10) as response:
        assert response.status == 200


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_reports_a_missing_or_wrong_key_clearly(triton, guarded, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    expected = HTTP_REFUSED if protocol == "http" else GRPC_REFUSED
    for key, which in (("", "missing"), ("w" * 43, "wrong")):
        with triton.client(url, admin_key=key) as client:
            with pytest.raises(HeadroomError) as caught:
                client.list_heads()
            assert caught.value.status == expected
            assert f"the server refused the repository index: admin key {which}" in str(caught.value)
            assert config.ADMIN_KEY_ENV in str(caught.value)
            with pytest.raises(HeadroomError, match=f"refused load of {guarded}: admin key {which}"):
                client.load_model(guarded)
            with pytest.raises(HeadroomError, match=f"refused unload of head_smart_home: admin key {which}"):
                triton.onboarding(client).offboard("smart_home")
            assert client.is_head_ready("smart_home")
    with triton.client(url) as client:  # the fixture's key
        assert {"smart_home", "knowledge"} <= {h.name for h in client.list_heads() if h.state == "READY"}


@pytest.mark.integration
def test_a_broken_key_file_does_not_stop_inference(triton, tmp_path, monkeypatch):
    monkeypatch.delenv(config.ADMIN_KEY_ENV, raising=False)
    key_file = tmp_path / "admin.key"
    key_file.write_text("not a key\n")
    monkeypatch.setenv(config.ADMIN_KEY_FILE_ENV, str(key_file))
    with triton.client(admin_key=None) as client:  # None: read the (broken) file
        assert client.classify(["turn on the lights"], "smart_home")[0].label == "lights_on"
        with pytest.raises(HeadroomError, match="admin key missing .*admin.key is malformed"):
            client.list_heads()


@pytest.mark.integration
def test_cli_reads_the_key_from_the_environment_or_a_file(triton, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != config.ADMIN_KEY_ENV}
    env[config.ADMIN_KEY_FILE_ENV] = str(tmp_path / "absent.key")  # not the developer's own key file
    command = [sys.executable, "-m", "headroom.client.cli", "list", "--url", triton.grpc_url]

    def run(*extra: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=config.PROJECT_ROOT,
            env={**env, **more_env},
        )

    refused = run()
    assert refused.returncode == 1 and "admin key missing" in refused.stderr, refused.stderr
    allowed = run(**{config.ADMIN_KEY_ENV: triton.admin_key})
    assert allowed.returncode == 0 and "smart_home" in allowed.stdout, allowed.stderr
    key_file = tmp_path / "admin.key"
    key_file.write_text(triton.admin_key + "\n")
    key_file.chmod(0o600)
    allowed = run("--admin-key-file", str(key_file))
    assert allowed.returncode == 0 and "smart_home" in allowed.stdout, allowed.stderr
    assert triton.admin_key not in allowed.stdout + allowed.stderr


@pytest.mark.integration
def test_the_key_is_not_in_the_server_log(triton):
    assert triton.admin_key not in triton.log_file.read_text(errors="replace")
