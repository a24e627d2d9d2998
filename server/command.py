"""The ``tritonserver`` command line: repository, backends, ports, start-up models, admin key."""

from __future__ import annotations

from pathlib import Path

from headroom import config
from headroom.admin_key import validate as validate_admin_key
from headroom.naming import head_models_in
from headroom.server.backend_dir import triton_dir


def startup_models(repository: Path) -> list[str]:
    """System models first, then every head found in the repository."""
    return [*config.SYSTEM_MODELS, *head_models_in(repository)]


def restriction_args(admin_key: str) -> list[str]:
    """Triton's own flags that make ``config.RESTRICTED_APIS`` need the admin key, over HTTP
    (header ``admin-key``) and gRPC (metadata ``triton-grpc-protocol-admin-key``).

    The syntax is ``<api>,<api>:<header>=<value>`` (Triton 2.51's ``--help`` shows a comma before
    the header, which the binary rejects). Triton takes the key only as a flag, so it is visible
    in the process list (docs/security.md); never log the returned list.
    """
    key = validate_admin_key(admin_key, "the launcher")
    value = f"{','.join(config.RESTRICTED_APIS)}:{config.ADMIN_KEY_HEADER}={key}"
    return [f"--http-restricted-api={value}", f"--grpc-restricted-protocol={value}"]


def build_command(
    address: config.ServerAddress,
    repository: Path | str,
    backend_dir: Path,
    models: list[str],
    admin_key: str | None = None,
    log_verbose: int = 0,
) -> list[str]:
    """The ``tritonserver`` command line; with ``admin_key``, the control plane needs it."""
    command = [
        str(triton_dir() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=explicit",
        # Where the response-cache library lives in the wheel; used only with --cache-config.
        f"--cache-directory={triton_dir() / 'caches'}",
        # A head that fails to load must not keep the other tenants offline; the launcher
        # checks the system models itself and reports heads that did not come up.
        "--exit-on-error=false",
        "--strict-readiness=true",
        f"--http-port={address.http_port}",
        f"--grpc-port={address.grpc_port}",
        f"--metrics-port={address.metrics_port}",
        f"--log-verbose={log_verbose}",
    ]
    command += [f"--load-model={name}" for name in models]
    if admin_key is not None:
        command += restriction_args(admin_key)
    return command
