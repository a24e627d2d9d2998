"""The cluster's pure parts: S3 URLs, replica lists, the router's configuration, load configs,
the per-tenant label bound."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from headroom.cluster.replicas import replica_urls
from headroom.cluster.router import Replica, haproxy_config
from headroom.executor.s3_head_files import complete_versions
from headroom.repository.head_store import registration_load_config
from headroom.s3 import S3Location
from headroom.tenant_metrics import OK, OTHER_HEAD, RequestOutcome, TenantLabels


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "endpoint"),
    [
        ("s3://127.0.0.1:8333/models/repo", "models", "repo", "http://127.0.0.1:8333"),
        ("s3://seaweedfs:8333/models/a/b/", "models", "a/b", "http://seaweedfs:8333"),
        ("s3://my-bucket/path", "my-bucket", "path", None),
        ("s3://https://s3.example.com:443/b/p", "b", "p", "https://s3.example.com:443"),
    ],
)
def test_s3_urls_parse_as_triton_writes_them(url, bucket, prefix, endpoint):
    location = S3Location.parse(url)
    assert (location.bucket, location.prefix, location.endpoint) == (bucket, prefix, endpoint)
    assert location.key("head_x", "1") == f"{prefix}/head_x/1"
    assert S3Location.parse(location.url) == location


@pytest.mark.parametrize("url", ["/models", "s3://", "http://host/bucket"])
def test_not_an_s3_url_is_refused(url):
    with pytest.raises(ValueError):
        S3Location.parse(url)


def test_only_versions_with_their_marker_are_complete():
    keys = ["1/model.onnx", "1/COMPLETE", "2/model.onnx", "3/COMPLETE", "config.pbtxt", "x/COMPLETE", "4/a/COMPLETE"]
    assert complete_versions(keys) == [3, 1]


def test_replicas_from_a_list_or_a_dns_name():
    assert replica_urls("") == []
    assert replica_urls("http://b:8000, http://a:8000,http://a:8000") == ["http://a:8000", "http://b:8000"]
    assert replica_urls("dns:localhost:8000") in (
        ["http://127.0.0.1:8000"],
        ["http://127.0.0.1:8000", "http://[::1]:8000"],
    )
    with pytest.raises(ValueError, match="scheme"):
        replica_urls("a:8000")
    with pytest.raises(ValueError, match="does not resolve"):
        replica_urls("dns:no-such-host.invalid:8000")


def test_a_load_names_exactly_the_versions_to_serve():
    loaded = json.loads(registration_load_config("acme", [3]))
    assert loaded["name"] == "head_acme" and loaded["platform"] == "ensemble"
    # protobuf JSON writes int64 as strings; Triton parses the config with protobuf too
    assert [int(v) for v in loaded["versionPolicy"]["specific"]["versions"]] == [3]
    assert loaded["ensembleScheduling"]["step"][0]["modelName"] == "executor"


@pytest.mark.skipif(
    shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(), reason="haproxy missing"
)
def test_the_router_config_is_valid_haproxy(tmp_path):
    replicas = [Replica("replica-1", "127.0.0.1", 20001, 20002), Replica("replica-2", "127.0.0.1", 20003, 20004)]
    text = haproxy_config(replicas, 20005, 20006, tmp_path / "haproxy.sock")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    checked = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "balance hdr(x-tenant)" in text and "hash-type consistent" in text
    assert text.count("check inter") == 4 and "proto h2" in text
    path.write_text(text.replace("balance hdr(x-tenant)", "balance nonsense"))
    assert subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True).returncode != 0


def test_only_answered_heads_get_labels_and_no_more_than_the_bound():
    labels = TenantLabels(max_heads=2)
    tally = labels.tally(
        [
            RequestOutcome(["a", "a", "made-up"], [OK, OK, "NOT_FOUND"]),
            RequestOutcome(["b"], [OK]),
            RequestOutcome(["c"], [OK]),  # over the bound
            RequestOutcome([None, "BAD NAME"], ["INVALID_ARG", "INVALID_ARG"]),
        ],
        seconds=0.5,
    )
    assert tally.rows == {
        ("a", OK): 2,
        (OTHER_HEAD, "NOT_FOUND"): 1,
        ("b", OK): 1,
        (OTHER_HEAD, OK): 1,
        (OTHER_HEAD, "INVALID_ARG"): 2,
    }
    assert tally.requests == {"a": 1, OTHER_HEAD: 3, "b": 1}
    assert tally.seconds["a"] == 0.5 and tally.seconds[OTHER_HEAD] == 1.5
    # a labelled head keeps its label for its failures too
    assert labels.tally([RequestOutcome(["a"], ["UNAVAILABLE"])], 0.1).rows == {("a", "UNAVAILABLE"): 1}
