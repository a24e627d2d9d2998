"""``headroom serve``: run the embedded Triton server on the model repository until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from headroom import config
from headroom.console import display_path, status

log = logging.getLogger("headroom")

#: How often ``serve`` checks that tritonserver is still running.
ALIVE_CHECK_S = 0.5


def serve_admin_key(key_file: Path) -> str:
    """The key ``serve`` protects the control plane with (created on first run), and where it is."""
    from headroom.admin_key import ensure_admin_key, fingerprint

    admin = ensure_admin_key(key_file)
    if admin.path is None:
        where = f"from {config.ADMIN_KEY_ENV} ({fingerprint(admin.key)})"
    else:
        where = f"{'created' if admin.created else 'in'} {display_path(admin.path)}"
    print(
        f"admin key: {where} (send it as header {config.ADMIN_KEY_HEADER}, over gRPC as "
        f"{config.ADMIN_KEY_GRPC_HEADER}; the headroom CLI reads it from there)"
    )
    return admin.key


def cmd_serve(args: argparse.Namespace) -> int:
    from headroom.repository.head_store import clean_staging, upgrade_registrations
    from headroom.server.launcher import TritonServer

    settings: config.Settings = args.settings
    repository = config.repository_of(args.repository)
    address = config.ServerAddress(args.host, args.http_port, args.grpc_port, args.metrics_port)
    state_dir = config.state_dir_for(repository)
    cleaned = clean_staging(state_dir)
    if cleaned:
        log.info("removed %d unfinished onboarding(s) from %s", cleaned, state_dir / "staging")
    if isinstance(repository, Path):
        for name in upgrade_registrations(repository):
            log.info("head %s: registered with the shared executor (was its own ONNX Runtime model)", name)
    server = TritonServer(
        address,
        repository,
        admin_key=serve_admin_key(config.admin_key_file_for(state_dir)),
        state_dir=state_dir,
        settings=settings,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        with status("waiting for Triton to load the models"):
            failed = server.wait_ready(stop=stop)
        heads = [m for m in server.models if m.startswith(config.HEAD_MODEL_PREFIX) and m not in failed]
        print(
            f"headroom is serving {len(heads)} heads: HTTP {address.http_url}  gRPC {address.grpc_url}  "
            f"metrics http://{address.host}:{address.metrics_port}/metrics"
        )
        for name in failed:
            print(f"warning: {name} failed to load; see the server log above", file=sys.stderr)
        print("Ctrl-C to stop.")
        while not stop.wait(ALIVE_CHECK_S):
            if server.process is None or server.process.poll() is not None:
                print("error: tritonserver exited", file=sys.stderr)
                return 1
    finally:
        print("stopping tritonserver (in-flight requests finish first)...")
        server.stop()
    return 0


def add_parser(sub: argparse._SubParsersAction, settings: config.Settings) -> None:
    """Add ``serve`` to the ``headroom`` command's subcommands."""
    address = settings.address
    p = sub.add_parser("serve", help="run Triton with the model repository (Ctrl-C to stop)")
    p.add_argument(
        "--host", default=address.host, help="env HEADROOM_HOST: host name printed in URLs (default %(default)s)"
    )
    p.add_argument(
        "--http-port", type=int, default=address.http_port, help="env HEADROOM_HTTP_PORT (default %(default)s)"
    )
    p.add_argument(
        "--grpc-port", type=int, default=address.grpc_port, help="env HEADROOM_GRPC_PORT (default %(default)s)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=address.metrics_port, help="env HEADROOM_METRICS_PORT (default %(default)s)"
    )
    p.set_defaults(func=cmd_serve)
