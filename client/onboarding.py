"""Onboarding through Triton's model-control API: the write-load-verify-archive transaction.

    client = HeadroomClient("grpc://localhost:8001")
    onboarding = Onboarding(client, repository=Path("model_repository"), state_dir=Path(".headroom"))
    onboarding.onboard("acme", "acme.jsonl")                  # train, check, write atomically, load, verify
    onboarding.onboard_model("acme", "head.onnx", "labels.txt")  # a ready-made ONNX head: check, write, load, verify
    onboarding.offboard("acme")                               # unload, archive its files

It writes into the model repository's head store: the folder on the server's host (or wherever
it is mounted), or the S3 repository a cluster's replicas share (``headroom.repository.s3_store``).
With ``replicas``, each load and unload goes to every replica at once and the first answer is
verified through ``client`` (the router); a replica that missed the call converges by
reconciling (``headroom.cluster.reconciler``), and the result says which replicas answered.

The data flows one way: the training file is read and embedded through
the server (``HeadroomClient.embed``), the head is trained and exported (``headroom.export``),
checked as the executor will read it (``headroom.repository.validation``), written atomically
(``headroom.repository.head_store``), loaded (``HeadroomClient.load_model``), verified with one
answer through ``pipeline``, and older versions archived. What fails after the write is taken
back out. A bad name, training file or head is refused before anything is written
(``HeadRefused``, ``DatasetError``, ``InvalidHeadName``), and the head name's lock
(``headroom.repository.locks``) is held from the write to the archive, so onboardings of one name
from several processes run one after the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from headroom import config
from headroom.client.inference import HeadroomClient, HeadroomError
from headroom.export.datasets import load_labelled_file
from headroom.export.heads import exported_head
from headroom.export.slot_heads import exported_slot_head, train_slot_head
from headroom.export.tenants import train_from_file
from headroom.head_format import SlotFiles
from headroom.naming import head_model_name
from headroom.repository import validation
from headroom.repository.head_store import head_info, open_head_store, registration_load_config
from headroom.repository.locks import HeadBusy, head_lock
from headroom.repository.validation import HeadValidationError, read_labels_file

log = logging.getLogger(__name__)

#: How often ``offboard`` asks whether an unloaded head is still READY.
UNLOAD_POLL_S = 0.05


class HeadRefused(HeadroomError):
    """A head onboarding refused before writing anything (bad file, labels or encoder)."""


@dataclass(frozen=True)
class OnboardResult:
    name: str
    version: int
    metrics: dict
    seconds_total: float
    #: Embedding the training texts through the server plus fitting (0 for a ready-made head).
    seconds_training: float
    #: From ``load_model`` to the verified first answer through ``pipeline`` (load + first use).
    seconds_to_first_answer: float = 0.0
    #: Where the time went, in seconds, in order: ``reading`` (the training file), ``embedding``,
    #: ``fitting`` (hold-out fit and final fit), ``checking`` (the head's checks), ``writing``
    #: (atomic write), ``loading`` (``load_model``), ``first_answer`` (the verifying request).
    timings: dict[str, float] = field(default_factory=dict)
    #: Replica URL -> seconds its load took, for every replica that loaded the new version.
    replicas: dict[str, float] = field(default_factory=dict)
    #: Replica URL -> why its load failed (it converges by reconciling).
    missed: dict[str, str] = field(default_factory=dict)


def _report(enabled: bool, step: str, seconds: float) -> None:
    if enabled:
        log.info("%s (%.2f s)", step, seconds)


class Onboarding:
    """Onboards and offboards heads of one model repository, served by ``client``'s server
    (or by ``replicas``, with ``client`` the router in front of them)."""

    def __init__(
        self,
        client: HeadroomClient,
        repository: Path,
        state_dir: Path,
        lock_timeout_s: float = config.DEFAULT_HEAD_LOCK_TIMEOUT_S,
        load_timeout_s: float = config.DEFAULT_LOAD_TIMEOUT_S,
        regularisation_c: float = config.DEFAULT_HEAD_REGULARISATION_C,
        replicas: Sequence[HeadroomClient] | None = None,
        store=None,
    ) -> None:
        """``repository``: a folder, or an ``s3://host:port/bucket/path`` string; ``state_dir``:
        staging, archive (local repositories) and the per-head locks; ``store``: the repository's
        head store when already open (e.g. an ``S3HeadStore`` with credentials of its own)."""
        self.client = client
        self.store = store or open_head_store(repository, Path(state_dir))
        self.repository = repository if isinstance(repository, str) and "://" in repository else Path(repository)
        self.state_dir = Path(state_dir)
        self.replicas = list(replicas) if replicas else [client]
        self._last_loads: tuple[dict[str, float], dict[str, str]] = ({}, {})
        self._pool: ThreadPoolExecutor | None = None
        self.lock_timeout_s = lock_timeout_s
        self.load_timeout_s = load_timeout_s
        self.regularisation_c = regularisation_c

    def onboard(self, name: str, data_file: str | Path, progress: bool = False) -> OnboardResult:
        """Train head ``name`` on ``data_file`` with the served encoder, store it, load it, verify it.

        The name and the training file are checked before anything else, the trained head like
        any ready-made one (``onboard_model``) before it is written. A new version of an existing
        head is loaded while the previous one keeps serving; the previous version's files are
        archived once the new one has answered. What fails to load or to answer is taken back out.
        ``progress``: a bar while embedding (on a terminal) and a log line (logger
        ``headroom.client.onboarding``, INFO) after each step.
        """

        started = time.perf_counter()
        head_model_name(name)  # InvalidHeadName before anything else
        data = load_labelled_file(data_file)  # DatasetError before any embedding
        fingerprint = self.store.read_encoder_info()["fingerprint"]
        timings = {"reading": time.perf_counter() - started}
        _report(progress, f"{name}: read {len(data.texts)} examples of {len(data.classes)} classes", timings["reading"])
        # Embedding (through the server) and fitting happen outside every lock.
        head = train_from_file(
            data, Path(data_file), partial(self.client.embed, progress=progress), self.regularisation_c
        )
        timings["embedding"] = float(head.metrics["embedding_seconds"])
        timings["fitting"] = float(head.metrics["fitting_seconds"])
        _report(progress, f"{name}: embedded {len(data.texts)} texts through the server", timings["embedding"])
        _report(
            progress,
            f"{name}: fitted on {head.metrics['train_examples']}, hold-out accuracy "
            f"{head.metrics['holdout_accuracy']:.3f} on {head.metrics['holdout_examples']}, refitted on all",
            timings["fitting"],
        )
        slots = None
        if data.entities is not None:  # a tenant with slots: its token head too
            slot_head = train_slot_head(
                data.texts, data.entities, partial(self.client.embed_tokens, progress=progress), self.regularisation_c
            )
            head.metrics.update(slot_head.metrics)
            timings["embedding"] += float(slot_head.metrics["token_embedding_seconds"])
            timings["fitting"] += float(slot_head.metrics["token_fitting_seconds"])
            _report(
                progress,
                f"{name}: token head for {len(data.slot_labels)} slots, hold-out entity F1 "
                f"{slot_head.metrics['holdout_entity_f1']:.3f}",
                slot_head.metrics["token_embedding_seconds"] + slot_head.metrics["token_fitting_seconds"],
            )
        checking = time.perf_counter()
        checked = self._check(name, exported_head(head, fingerprint), head.labels, fingerprint, fingerprint)
        if data.entities is not None:
            try:
                slot_bytes = exported_slot_head(slot_head, fingerprint)
                slots = validation.check_slot_head(slot_bytes, slot_head.tags, fingerprint)
            except HeadValidationError as exc:
                raise HeadRefused(f"head {name!r} refused: {exc}") from exc
        timings["checking"] = time.perf_counter() - checking
        info = head_info(fingerprint, head.metrics, str(data_file))
        if slots is not None:
            info["slots"] = data.slot_labels
        version = self._install(
            name, checked, info, probe_text=data.texts[0], timings=timings, progress=progress, slots=slots
        )
        return OnboardResult(
            name,
            version,
            head.metrics,
            time.perf_counter() - started,
            timings["embedding"] + timings["fitting"],
            timings["loading"] + timings["first_answer"],
            timings,
            *self._last_loads,
        )

    def onboard_model(
        self,
        name: str,
        onnx_file: str | Path | bytes,
        labels: str | Path | Sequence[str],
        encoder_fingerprint: str | None = None,
    ) -> OnboardResult:
        """Onboard a ready-made ONNX head (``sentence_embedding`` FP32 [B, 384] -> probabilities [B, C]).

        ``labels``: a file (one per line, in output order) or a list. The head must have been
        trained on the served encoder's embeddings: ``encoder_fingerprint``, else the ONNX metadata
        ``encoder_fingerprint``, must be the served encoder's. Every check of
        ``repository/validation.py`` runs before anything is written (``HeadRefused``); then as
        ``onboard``: write atomically, load, verify one answer through ``pipeline``.
        """

        started = time.perf_counter()
        head_model_name(name)  # InvalidHeadName before anything else
        if isinstance(onnx_file, bytes):
            model_bytes, source = onnx_file, "onnx bytes"
        else:
            try:
                model_bytes, source = Path(onnx_file).read_bytes(), str(onnx_file)
            except OSError as exc:
                raise HeadRefused(f"head {name!r} refused: cannot read {onnx_file}: {exc.strerror}") from exc
        if isinstance(labels, (str, Path)):
            try:
                labels = read_labels_file(labels)
            except HeadValidationError as exc:
                raise HeadRefused(f"head {name!r} refused: {exc}") from exc
        served = self.store.read_encoder_info()["fingerprint"]
        timings = {"reading": time.perf_counter() - started}
        checked = self._check(name, model_bytes, labels, served, encoder_fingerprint)
        timings["checking"] = time.perf_counter() - started - timings["reading"]
        info = head_info(checked.encoder_fingerprint, checked.metrics, source)
        version = self._install(name, checked, info, probe_text=config.ONBOARD_PROBE_TEXT, timings=timings)
        first_answer = timings["loading"] + timings["first_answer"]
        return OnboardResult(
            name, version, checked.metrics, time.perf_counter() - started, 0.0, first_answer, timings, *self._last_loads
        )

    def _check(self, name: str, model_bytes: bytes, labels, served: str, encoder_fingerprint: str | None):
        """``headroom.repository.validation.check_head``; ``HeadRefused`` if it fails."""

        try:
            return validation.check_head(model_bytes, labels, served, encoder_fingerprint)
        except HeadValidationError as exc:
            raise HeadRefused(f"head {name!r} refused: {exc}") from exc

    @contextmanager
    def _head_lock(self, name: str):
        """Head ``name``'s cross-process lock (``HeadroomError`` when another holder keeps it too long)."""
        try:
            with head_lock(name, self.state_dir, self.lock_timeout_s):
                yield
        except HeadBusy as exc:
            raise HeadroomError(str(exc)) from exc

    def _install(
        self,
        name: str,
        checked,
        info: dict,
        probe_text: str,
        timings: dict[str, float],
        progress: bool = False,
        slots: SlotFiles | None = None,
    ) -> int:
        """Write a checked head (new, or the next version), load it, verify its first answer.

        Returns the version; adds ``writing``, ``loading`` and ``first_answer`` to ``timings``.
        Whatever fails after the write is withdrawn (``_withdraw``) before the error is raised;
        older versions are archived only once the new one has answered.
        """

        model_name = head_model_name(name)
        with self._head_lock(name):
            writing = time.perf_counter()
            stored = self.store.write_head_model(name, checked.model_bytes, checked.labels, info, slots=slots)
            loading = time.perf_counter()
            timings["writing"] = loading - writing
            try:
                self._last_loads = self._load_everywhere(stored.name, stored.version)
                answering = time.perf_counter()
                timings["loading"] = answering - loading
                self._verify(stored, checked.labels, probe_text, with_slots=slots is not None)
            except Exception as exc:  # a failed load, a wrong or missing answer, a dead server
                raise self._withdraw(stored, exc) from exc
            timings["first_answer"] = time.perf_counter() - answering
            _report(progress, f"{name}: wrote version {stored.version}", timings["writing"])
            _report(progress, f"{name}: loaded {model_name}", timings["loading"])
            _report(progress, f"{name}: first answer verified through {config.PIPELINE_MODEL}", timings["first_answer"])
            self.store.archive_old_versions(name, keep=stored.version)
        return stored.version

    def _on_every_replica(self, call: Callable[[HeadroomClient], None]) -> tuple[dict[str, float], dict[str, str]]:
        """Run a control call on every replica at once: (URL -> seconds it took, URL -> error)."""

        def timed(replica: HeadroomClient) -> tuple[str, float, str | None]:
            started = time.perf_counter()
            try:
                call(replica)
            except HeadroomError as exc:
                return replica.url, time.perf_counter() - started, str(exc)
            return replica.url, time.perf_counter() - started, None

        if len(self.replicas) == 1:
            outcomes = [timed(self.replicas[0])]
        else:
            # One pool for the Onboarding's life: an HTTP client keeps one connection per thread.
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(self.replicas), thread_name_prefix="onboard-replica")
            outcomes = list(self._pool.map(timed, self.replicas))
        done = {url: seconds for url, seconds, error in outcomes if error is None}
        missed = {url: error for url, _, error in outcomes if error is not None}
        return done, missed

    def _load_everywhere(self, name: str, version: int) -> tuple[dict[str, float], dict[str, str]]:
        """Load version ``version`` of head ``name`` on every replica; raises when none loaded it.

        On a store without atomic folders (S3) the load names the version, so a replica never
        takes a version that is still being written.
        """
        model_name = head_model_name(name)
        override = None if self.store.atomic else registration_load_config(name, [version])
        done, missed = self._on_every_replica(lambda replica: replica.load_model(model_name, config=override))
        if not done:
            raise HeadroomError("; ".join(missed.values()) if len(missed) > 1 else next(iter(missed.values())))
        for url, error in missed.items():
            log.warning("%s: replica %s missed the load (it converges by reconciling): %s", name, url, error)
        return done, missed

    def _verify(self, stored, labels: list[str], text: str, with_slots: bool = False) -> None:
        """The head just loaded must answer ``text`` through ``pipeline`` with its own labels
        (and, with slots, with entities: possibly none, but the pipeline saw its token head)."""
        (answer,) = self.client.classify([text], stored.name, return_errors=True)
        if isinstance(answer, HeadroomError):
            raise HeadroomError(
                f"{stored.model_name} version {stored.version} loaded but did not answer: {answer}", answer.status
            )
        if list(answer.probabilities) != labels:
            raise HeadroomError(
                f"{stored.model_name} version {stored.version} loaded but answered with labels "
                f"{list(answer.probabilities)}, not its own {labels}"
            )
        if with_slots and answer.entities is None:
            raise HeadroomError(f"{stored.model_name} version {stored.version} loaded but answered without its slots")

    def _withdraw(self, stored, cause: Exception) -> HeadroomError:
        """Take a head version that failed to load or answer back out; the error to raise.

        A new head is unloaded and archived; a new version's folder is archived and the head
        loaded again, so the previous version serves again. Steps that fail because the server is
        gone are skipped: the repository must not keep what was not reported as onboarded.
        """

        notes = []
        if stored.version == 1:
            _, missed = self._on_every_replica(lambda replica: replica.unload_model(stored.model_name))
            notes += [f"unloading it failed too: {error}" for error in missed.values()]  # a server may be gone
            self.store.archive_head(stored.name, suffix=".failed")
        else:
            self.store.archive_version(stored.name, stored.version, suffix=".failed")
            remaining = self.store.complete_versions(stored.name)
            override = None
            if not self.store.atomic and remaining:
                override = registration_load_config(stored.name, remaining[-1:])
            _, missed = self._on_every_replica(lambda replica: replica.load_model(stored.model_name, config=override))
            notes += [f"loading version {stored.version - 1} again failed too: {error}" for error in missed.values()]
        message = str(cause) if isinstance(cause, HeadroomError) else f"{type(cause).__name__}: {cause}"
        message += f"; version {stored.version} was withdrawn"
        if notes:
            message += "; " + "; ".join(notes)
        return HeadroomError(message, getattr(cause, "status", None))

    def offboard(self, name: str) -> Path | str | None:
        """Unload head ``name`` (on every replica) and archive its files; returns the archive.

        On a shared store (S3) the files are archived first: a reconciling replica would load
        again a head it still finds in the store.
        """

        model_name = head_model_name(name)
        with self._head_lock(name):
            archived = None if self.store.atomic else self.store.archive_head(name)
            _, missed = self._on_every_replica(lambda replica: self._unload_and_wait(replica, model_name))
            if missed and (self.store.atomic or len(missed) == len(self.replicas)):
                raise HeadroomError("; ".join(missed.values()))
            for url, error in missed.items():
                log.warning("%s: replica %s missed the unload (it converges by reconciling): %s", name, url, error)
            return self.store.archive_head(name) if self.store.atomic else archived

    def _unload_and_wait(self, replica: HeadroomClient, model_name: str) -> None:
        replica.unload_model(model_name)
        deadline = time.monotonic() + self.load_timeout_s
        while replica.is_model_ready(model_name):
            if time.monotonic() > deadline:
                seconds = self.load_timeout_s
                raise HeadroomError(f"{model_name} was still READY {seconds} s after unload on {replica.url}")
            time.sleep(UNLOAD_POLL_S)
