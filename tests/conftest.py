"""Shared fixtures: one real embedded tritonserver per test session, on a copy of the repository.

The copy keeps the developer's ``model_repository/`` untouched by onboarding tests; free ports
keep a running ``make serve`` undisturbed. Nothing here mocks Triton or ONNX Runtime.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from headroom import config
from headroom.server.launcher import TritonServer, free_address, triton_dir

# Unit tests import helper modules from model_repository/: never leave a __pycache__ there
# (Triton takes a changed model folder as a changed model).
sys.dont_write_bytecode = True

PROJECT_ROOT = config.PROJECT_ROOT
DEMO_HEADS = ("knowledge", "lifestyle", "smalltalk", "smart_home")


def copy_demo_repository(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with the system models and the demo heads only: a tenant the
    developer onboarded by hand in the checkout must not reach the tests' servers."""
    from headroom.repository.head_store import copy_repository

    copy_repository(source, target, DEMO_HEADS)


@pytest.fixture(scope="session", autouse=True)
def python_backend_utils_on_path() -> None:
    """Let unit tests import the Python models' helper modules (they import pb_utils)."""
    sys.path.insert(0, str(triton_dir() / "backends" / "python"))


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    """The environment's settings (``make test`` builds into the repository and build folder they name)."""
    return config.Settings.from_env()


@pytest.fixture(scope="session")
def built_repository(settings: config.Settings) -> Path:
    """The project's repository, checked to hold what `make heads` builds."""
    repository = settings.model_repository
    missing = [
        p
        for p in [config.encoder_version_dir(repository) / "model.onnx"]
        + [repository / f"{config.HEAD_MODEL_PREFIX}{h}" for h in DEMO_HEADS]
        if not p.exists()
    ]
    if missing:
        pytest.fail(f"{missing[0]} is missing: run the tests with `make test` (it builds the encoder and demo heads)")
    return repository


@dataclass
class ServerHandle:
    server: TritonServer
    repository: Path
    state_dir: Path
    log_file: Path
    #: The key the server's control plane needs (docs/security.md); ``client()`` sends it.
    admin_key: str | None = None

    @property
    def http_url(self) -> str:
        return self.server.address.http_url

    @property
    def grpc_url(self) -> str:
        return self.server.address.grpc_url

    def client(self, url: str | None = None, **kwargs):
        """A client of this server that sends the admin key (pass ``admin_key=""`` for none)."""
        from headroom.client.inference import HeadroomClient

        kwargs.setdefault("admin_key", self.admin_key)
        return HeadroomClient(url or self.http_url, **kwargs)

    def onboarding(self, client, **kwargs):
        """Onboarding into this server's repository (and state folder) through ``client``."""
        from headroom.client.onboarding import Onboarding

        return Onboarding(client, self.repository, self.state_dir, **kwargs)

    def admin_headers(self, protocol: str = "http") -> dict[str, str] | None:
        """Headers carrying the admin key, for raw ``tritonclient`` or urllib calls."""
        from headroom.admin_key import admin_headers

        return admin_headers(self.admin_key, protocol)

    def restart(self) -> list[str]:
        self.server.stop()
        self.server.start()
        return self.server.wait_ready()


@pytest.fixture(scope="session")
def triton(built_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served")
    repository = root / "model_repository"
    copy_demo_repository(built_repository, repository)
    address = free_address()
    log_file = root / "tritonserver.log"
    # Every integration test runs against a protected control plane, as `headroom serve` starts it.
    admin_key = secrets.token_urlsafe(32)
    server = TritonServer(address, repository, log_file=log_file, admin_key=admin_key, state_dir=root / "state")
    server.start()
    try:
        failed = server.wait_ready()
        assert not failed, f"heads failed to load: {failed} (see {log_file})"
        yield ServerHandle(server, repository, root / "state", log_file, admin_key)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server for the session: SeaweedFS (``weed mini``) on free ports, one bucket."""
    from headroom.cluster.seaweedfs import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def publish_demo_repository(s3, built_repository: Path, prefix: str, workdir: Path) -> str:
    """The system models and demo heads published under ``prefix`` of the S3 server; its URL."""
    from headroom.repository.s3_store import S3HeadStore

    local = workdir / "model_repository"
    copy_demo_repository(built_repository, local)
    S3HeadStore(s3.url(prefix), client=s3.client()).publish(local)
    return s3.url(prefix)
