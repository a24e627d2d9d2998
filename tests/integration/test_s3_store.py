"""The S3 head store against a real S3 server (SeaweedFS): publishing, complete versions only,
archiving, and what a replica is told when S3 refuses it (issue 11 §1, §5).

No tritonserver runs here except where a start must be refused before it begins.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from headroom import config
from headroom.client.cli import main
from headroom.executor.s3_head_files import S3HeadFiles
from headroom.head_format import HEAD_INFO_FILE, LABELS_FILE, MODEL_FILE, VERSION_COMPLETE_FILE
from headroom.repository.s3_store import S3HeadStore, S3StoreError
from headroom.s3 import S3Location, list_keys
from headroom.server.launcher import ServerError, TritonServer, free_address

from tests.conftest import DEMO_HEADS, publish_demo_repository
from tests.onnx_heads import linear_head

pytestmark = pytest.mark.integration


@pytest.fixture
def store_url(s3, built_repository: Path, tmp_path: Path) -> str:
    """A fresh copy of the demo repository under a prefix of its own."""
    return publish_demo_repository(s3, built_repository, f"store-{secrets.token_hex(4)}", tmp_path)


def test_published_repository_holds_every_model_and_marks_each_head_version_complete(s3, store_url, built_repository):
    store = S3HeadStore(store_url, client=s3.client())
    store.check()
    assert store.complete_heads() == {name: [1] for name in DEMO_HEADS}
    keys = set(list_keys(s3.client(), S3Location.parse(store_url)))
    for model in config.SYSTEM_MODELS:
        assert f"{model}/config.pbtxt" in keys
    # Each model carries what it reads in its own folder (Triton copies each model of an S3
    # repository to a temporary folder of its own).
    assert {"embed/1/tokenizer.json", "pipeline/1/tokenizer.json", "executor/1/encoder.json"} <= keys
    assert not [key for key in keys if "__pycache__" in key]
    files = S3HeadFiles(S3Location.parse(store_url), client=s3.client())
    model_bytes, labels = files.read("smart_home", 1)
    local = built_repository / "head_smart_home" / "1"
    assert model_bytes == (local / MODEL_FILE).read_bytes()
    assert labels == (local / LABELS_FILE).read_text().split()
    assert store.read_encoder_info() == files_encoder_info(built_repository)


def files_encoder_info(repository: Path) -> dict:
    import json

    return json.loads((config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE).read_text())


def test_a_version_is_served_only_once_its_marker_is_written(s3, store_url):
    """A writer that died before the marker left a version no reader lists, reads or loads."""
    store = S3HeadStore(store_url, client=s3.client())
    location = S3Location.parse(store_url)
    client = s3.client()
    model_bytes, labels = linear_head(fingerprint=store.read_encoder_info()["fingerprint"])
    for name in (MODEL_FILE, LABELS_FILE, HEAD_INFO_FILE):  # version 2, half-written: no marker
        client.put_object(Bucket=location.bucket, Key=location.key("head_knowledge", "2", name), Body=b"partial")
    files = S3HeadFiles(location, client=client)
    assert store.complete_heads()["knowledge"] == [1]
    assert files.versions("knowledge") == [1] and files.refresh("knowledge") == [1]
    assert not files.has_version("knowledge", 2)

    # The next version takes the number after every version present, complete or not.
    stored = store.write_head_model("knowledge", model_bytes, labels, {"encoder_fingerprint": "x"})
    assert stored.version == 3
    assert store.complete_versions("knowledge") == [1, 3]
    assert files.refresh("knowledge") == [3, 1]
    assert files.read("knowledge", 3) == (model_bytes, labels)


def test_archiving_takes_versions_and_heads_out_of_the_repository_into_the_archive(s3, store_url):
    store = S3HeadStore(store_url, client=s3.client())
    model_bytes, labels = linear_head(fingerprint=store.read_encoder_info()["fingerprint"])
    store.write_head_model("lifestyle", model_bytes, labels, {})
    assert store.complete_versions("lifestyle") == [1, 2]
    assert len(store.archive_old_versions("lifestyle", keep=2)) == 1
    assert store.versions("lifestyle") == [2]

    new = store.write_head_model("fresh", model_bytes, labels, {})
    assert new.version == 1 and store.complete_heads()["fresh"] == [1]
    archived = store.archive_head("fresh")
    assert archived is not None and "fresh" not in store.complete_heads()
    assert not list_keys(s3.client(), S3Location.parse(store_url), "head_fresh")
    archive_keys = list_keys(s3.client(), store.archive)
    assert any(key.endswith(f"/1/{VERSION_COMPLETE_FILE}") and "head_fresh" in key for key in archive_keys)
    assert any(key.endswith("config.pbtxt") and "head_fresh" in key for key in archive_keys)
    assert store.archive_head("fresh") is None  # gone: nothing to archive


def test_a_wrong_secret_is_refused_at_start_with_a_clear_message(s3, store_url, tmp_path, capsys, monkeypatch):
    server = TritonServer(
        free_address(),
        store_url,
        log_file=tmp_path / "tritonserver.log",
        admin_key=secrets.token_urlsafe(32),
        state_dir=tmp_path / "state",
        environment=s3.environment(secret_key="not-the-secret"),
    )
    with pytest.raises(ServerError, match="S3 refused the credentials .*AWS_SECRET_ACCESS_KEY"):
        server.start()
    assert server.process is None  # refused before tritonserver started

    for name, value in s3.environment(secret_key="not-the-secret").items():
        monkeypatch.setenv(name, value)
    assert main(["publish", "--to", s3.url("elsewhere")]) == 1
    assert "S3 refused the credentials" in capsys.readouterr().err


def test_a_bucket_without_a_repository_is_refused_naming_the_fix(s3):
    store = S3HeadStore(s3.url(f"empty-{secrets.token_hex(4)}"), client=s3.client())
    store.check(require_repository=False)
    with pytest.raises(S3StoreError, match="publish the repository first"):
        store.check()
