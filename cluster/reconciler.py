"""Keep one replica's loaded heads in step with the head store: ``Reconciler``.

Every replica holds every head (dense heads make that cheap), so any replica answers any tenant.
A replica that starts loads what the store holds; while it runs, the reconciler compares, every
``period_s``, what Triton has READY with the store's *complete* versions, loads the newest
complete version of each head that is not READY at it, and unloads heads that left the store.
Onboarding calls every replica itself (``headroom.client.onboarding``); the reconciler is how a
replica that missed that call (down, restarted, added later) converges. No cluster protocol:
the store is the single source of truth, Triton's model control the only lever.

A replica is READY for a router only once ``pipeline`` is (the health checks ask for it), so a
replica starts with ``encoder``, ``embed`` and ``executor`` only and the first pass that
succeeds loads ``entry_model`` (``pipeline``) after the heads: a router never sends a request to
a replica that has not loaded every head yet. Later passes leave it alone (a stop unloads it to
drain).

Order matters: the repository index is read *before* the store is listed. A head written and
loaded between the two reads is then absent from the index, not missing from the listing, so it
is never unloaded for a listing that predates it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from headroom import config
from headroom.client.inference import HeadroomClient, HeadroomError
from headroom.naming import head_model_name
from headroom.repository.head_store import registration_load_config

log = logging.getLogger(__name__)

#: A head version whose load failed is tried again after this long, not every period.
RETRY_FAILED_AFTER_S = 30.0


@dataclass
class ReconcileReport:
    """What one pass did: heads loaded (name -> version), unloaded, failed (name -> error)."""

    loaded: dict[str, int] = field(default_factory=dict)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Heads of the store READY at their newest complete version after the pass.
    in_step: int = 0
    seconds: float = 0.0


class Reconciler:
    """Reconciles the replica at ``url`` with ``store`` (a ``LocalHeadStore`` or ``S3HeadStore``)."""

    def __init__(
        self,
        url: str,
        store,
        admin_key: str | None = None,
        period_s: float = config.DEFAULT_RECONCILE_PERIOD_S,
        timeout_s: float = config.DEFAULT_LOAD_TIMEOUT_S,
        entry_model: str | None = None,
    ) -> None:
        """``entry_model``: loaded after the heads by the first pass (``pipeline`` for a replica
        that started without it)."""
        self.url = url
        self.store = store
        self.admin_key = admin_key
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.entry_model = entry_model
        self._entry_loaded = entry_model is None
        self.passes = 0
        self.last_report: ReconcileReport | None = None
        self._failed_at: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ready_versions(self, client: HeadroomClient) -> dict[str, set[int]]:
        ready: dict[str, set[int]] = {}
        for head in client.list_heads():
            if head.state == "READY" and head.version.isdigit():
                ready.setdefault(head.name, set()).add(int(head.version))
        return ready

    def once(self) -> ReconcileReport:
        """One pass. Raises ``HeadroomError`` when the replica cannot be asked, and what the store
        raises when it cannot be listed; loads and unloads that fail are reported, not raised."""
        started = time.perf_counter()
        report = ReconcileReport()
        with HeadroomClient(self.url, admin_key=self.admin_key, timeout_s=self.timeout_s) as client:
            ready = self._ready_versions(client)  # first: see the module's docstring
            wanted = {name: versions[-1] for name, versions in self.store.complete_heads().items()}
            for name, version in wanted.items():
                if version in ready.get(name, ()):
                    report.in_step += 1
                    continue
                failed_at = self._failed_at.get((name, version))
                if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_AFTER_S:
                    report.failed[name] = "failed to load earlier; tried again later"
                    continue
                override = None if self.store.atomic else registration_load_config(name, [version])
                try:
                    client.load_model(head_model_name(name), config=override)
                except HeadroomError as exc:
                    self._failed_at[(name, version)] = time.monotonic()
                    report.failed[name] = str(exc)
                    continue
                self._failed_at.pop((name, version), None)
                report.loaded[name] = version
                report.in_step += 1
            for name in sorted(set(ready) - set(wanted)):
                try:
                    client.unload_model(head_model_name(name))
                except HeadroomError as exc:
                    report.failed[name] = str(exc)
                    continue
                report.unloaded.append(name)
            if not self._entry_loaded and not client.is_model_ready(self.entry_model):
                client.load_model(self.entry_model)  # raises: the next pass tries again
            self._entry_loaded = True
        report.seconds = time.perf_counter() - started
        self.passes += 1
        self.last_report = report
        if report.loaded or report.unloaded or report.failed:
            log.info(
                "reconciled %s with %s: loaded %d, unloaded %d, failed %d (%.2f s)%s",
                self.url,
                self.store.url,
                len(report.loaded),
                len(report.unloaded),
                len(report.failed),
                report.seconds,
                "".join(f"\n  {name}: {error}" for name, error in report.failed.items()),
            )
        return report

    def run(self) -> None:
        """Pass after pass, ``period_s`` apart, until ``stop``; errors are logged, never fatal."""
        failing = None
        while not self._stop.is_set():
            try:
                self.once()
            except Exception as exc:  # the replica restarting, S3 unreachable: try again next period
                if str(exc) != failing:  # once per distinct problem, not every period
                    log.warning(
                        "reconciling %s with %s failed (trying every %g s): %s",
                        self.url,
                        self.store.url,
                        self.period_s,
                        exc,
                    )
                failing = str(exc)
            else:
                if failing is not None:
                    log.info("reconciling %s with %s works again", self.url, self.store.url)
                failing = None
            self._stop.wait(self.period_s)

    def start(self) -> None:
        """Run ``run`` in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"reconcile-{self.url}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
