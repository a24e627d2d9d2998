"""``headroom publish`` (a local repository into S3) and ``headroom reconcile`` (a replica's heads
in step with the repository), the cluster's commands (docs/cluster.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from headroom import config
from headroom.console import status

log = logging.getLogger("headroom")


def cmd_publish(args: argparse.Namespace) -> int:
    from headroom.repository.s3_store import S3HeadStore

    source = Path(args.repository)
    store = S3HeadStore(args.to)
    store.check(require_repository=False)  # credentials and bucket, before anything is written
    with status(f"publishing {source} to {store.url}"):
        written = store.publish(source, progress=lambda model: log.info("published %s", model))
    store.check()
    print(f"published {written} files of {source} to {store.url}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from headroom.admin_key import load_admin_key
    from headroom.cluster.reconciler import Reconciler
    from headroom.repository.head_store import open_head_store

    repository = config.repository_of(args.repository)
    store = open_head_store(repository, config.state_dir_for(repository))
    store.check()
    admin_key = load_admin_key(None)
    # A replica started without pipeline gets it once its heads are loaded (docs/cluster.md).
    reconciler = Reconciler(
        args.url, store, admin_key=admin_key, period_s=args.period_s, entry_model=config.PIPELINE_MODEL
    )
    if args.once:
        report = reconciler.once()
        print(
            f"{report.in_step} heads in step; loaded {len(report.loaded)}, unloaded {len(report.unloaded)}, "
            f"failed {len(report.failed)} ({report.seconds:.2f} s)"
        )
        return 1 if report.failed else 0
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"reconciling {args.url} with {store.url} every {args.period_s:g} s (Ctrl-C to stop)")
    reconciler.start()
    stop.wait()
    reconciler.stop()
    return 0


def add_parsers(sub: argparse._SubParsersAction, settings: config.Settings) -> None:
    """Add ``publish`` and ``reconcile`` to the ``headroom`` command's subcommands."""
    p = sub.add_parser(
        "publish",
        help="upload the model repository (system models and heads) into an S3 repository",
        description="publish --to s3://host:port/bucket/path (credentials from AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION); each head version is marked complete last",
    )
    p.add_argument("--to", required=True, help="s3://host:port/bucket/path")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "reconcile",
        help="keep a running replica's heads in step with the repository (load new, unload gone)",
        description="a sidecar for a replica whose repository is on S3; `headroom serve` on an S3 repository "
        "does the same itself",
    )
    p.add_argument(
        "--url", default=f"http://{settings.address.host}:{settings.address.http_port}", help="the replica's HTTP URL"
    )
    p.add_argument(
        "--period-s",
        type=float,
        default=settings.reconcile_period_s,
        help="seconds between passes (env HEADROOM_RECONCILE_PERIOD_S; default %(default)s)",
    )
    p.add_argument("--once", action="store_true", help="one pass, then exit (1 when a head failed to load)")
    p.set_defaults(func=cmd_reconcile)
