"""Running a batch's rows through their heads, and why a row fails: the executor minus Triton.

``HeadRunner.run`` takes a batch's embeddings and each row's head name and returns, per row, a
``HeadOutput`` or a ``RowError``:

1. the name must pass the naming rule (``headroom.naming.head_name_problem``: no row ever reaches
   a non-head model) - else INVALID_ARG;
2. ``ServedVersions`` resolves it to the newest READY version of ``head_<name>`` - else NOT_FOUND;
3. that version must have been trained against the served encoder (checked once per version) -
   else UNAVAILABLE;
4. ``HeadResidency`` makes the version resident and runs the rows; a head whose files cannot be
   read or cannot serve fails its own rows (NOT_FOUND when its version left meanwhile,
   UNAVAILABLE for a bad file, INTERNAL otherwise).

Offboarded heads are freed by ``sweep``, called from the executor's sweeper thread: it releases
the weights of versions whose folder is gone (the residency locks for itself) and queues what it
freed. ``run`` (the model's own thread) applies the queue to its own bookkeeping (served-version
cache, resident version, encoder check) before each batch; only ``run`` changes those.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

import numpy as np
from headroom.bio_tags import TokenSpan, decode
from headroom.config import HEAD_MODEL_PREFIX
from headroom.executor.head_files import HeadFiles
from headroom.executor.resident_heads import HeadResidency
from headroom.executor.served_versions import ServedVersions
from headroom.executor.tensors import HeadOutput
from headroom.head_format import HeadFileError
from headroom.naming import head_name_problem
from headroom.row_errors import INTERNAL, INVALID_ARG, NOT_FOUND, UNAVAILABLE, RowError

HeadKey = tuple[str, int]  # (head name, version)


def not_loaded(head: str) -> RowError:
    return RowError(NOT_FOUND, f"head '{head}' is not loaded (onboard it, or load model '{HEAD_MODEL_PREFIX}{head}')")


def encoder_problem(head: str, trained_for: str | None, served: str | None) -> str | None:
    """Why a head trained against encoder ``trained_for`` cannot run on ``served``, or None
    (either fingerprint unknown: nothing to compare)."""
    if served and trained_for and trained_for != served:
        return (
            f"head '{head}' was trained against encoder {trained_for[:19]}..., but the server runs "
            f"{served[:19]}...: onboard it again"
        )
    return None


def load_failure(head: str, version: int, exc: Exception, version_exists: bool) -> RowError:
    """The RowError of a head version whose files failed to load with ``exc``."""
    if isinstance(exc, FileNotFoundError) and not version_exists:
        return not_loaded(head)
    if isinstance(exc, HeadFileError):
        return RowError(UNAVAILABLE, f"head '{head}' version {version} cannot serve: {exc}")
    return RowError(INTERNAL, f"head '{head}' version {version} failed to load: {type(exc).__name__}: {exc}")


def run_failure(head: str, exc: Exception) -> RowError:
    """The RowError of a resident head whose run failed with ``exc``."""
    return RowError(UNAVAILABLE, f"head '{head}' cannot run: {exc}")


class HeadRunner:
    def __init__(
        self,
        files: HeadFiles,
        served: ServedVersions,
        residency: HeadResidency,
        encoder_fingerprint: str | None,
    ) -> None:
        self.files = files
        self.served = served
        self.residency = residency
        self.encoder_fingerprint = encoder_fingerprint
        # Changed by ``run`` only (the model's thread):
        self._encoder_problems: dict[str, tuple[int, str | None]] = {}  # head -> (version, problem)
        self._resident_version: dict[str, int] = {}
        # Versions ``sweep`` freed, handed from the sweeper thread to ``run``.
        self._swept: queue.SimpleQueue[HeadKey] = queue.SimpleQueue()

    # --- one batch (the model's thread) ---------------------------------------------------------
    def run(self, embeddings: np.ndarray, heads: Sequence[str | RowError]) -> list[HeadOutput | RowError]:
        """Row i of ``embeddings`` through the head named ``heads[i]`` (or that row's RowError).

        Applies what ``sweep`` freed first (the model calls ``apply_sweeps`` itself to log it)."""
        keys, row_keys, resident, probabilities, failed = self._run_resident(embeddings, heads, self.residency.run)
        outcomes: list[HeadOutput | RowError] = []
        for head, key, result in zip(heads, row_keys, probabilities, strict=True):
            if key is None:
                outcomes.append(keys[head])
            elif key in failed:
                outcomes.append(failed[key])
            elif isinstance(result, Exception):
                outcomes.append(run_failure(head, result))
            else:
                entry = resident[key]
                outcomes.append(HeadOutput(result, entry.encoded_labels, has_slots=entry.tags is not None))
        return outcomes

    def run_tokens(
        self, token_embeddings: np.ndarray, counts: np.ndarray, heads: Sequence[str | RowError]
    ) -> list[list[TokenSpan] | RowError]:
        """Row i's tokens (``counts[i]`` of them, [CLS] and [SEP] included) through the token
        head of ``heads[i]``, decoded into valid BIO spans; [] for a head without slots."""
        keys, row_keys, resident, probabilities, failed = self._run_resident(
            token_embeddings, heads, self.residency.run_tokens
        )
        outcomes: list[list[TokenSpan] | RowError | None] = [None] * len(heads)
        by_head: dict[HeadKey, list[int]] = {}
        for row, (head, key, result) in enumerate(zip(heads, row_keys, probabilities, strict=True)):
            if key is None:
                outcomes[row] = keys[head]
            elif key in failed:
                outcomes[row] = failed[key]
            elif isinstance(result, Exception):
                outcomes[row] = run_failure(head, result)
            elif result is None:
                outcomes[row] = []  # no token head: no spans
            else:
                by_head.setdefault(key, []).append(row)
        for key, rows in by_head.items():  # one decode per head: its tag names
            stacked = np.stack([probabilities[row] for row in rows])
            for row, spans in zip(rows, decode(stacked, counts[rows], list(resident[key].tags)), strict=True):
                outcomes[row] = spans
        return outcomes

    def _run_resident(self, x: np.ndarray, heads: Sequence[str | RowError], run):
        """Apply what ``sweep`` freed, resolve each distinct head once, and ``run`` (a residency
        method) the rows under one hold of the residency lock: (keys by head, each row's key or
        None, resident heads, each row's result, RowError of each key whose files failed)."""
        self.apply_sweeps()
        keys = {head: self._key_of(head) for head in dict.fromkeys(heads)}
        row_keys = [None if isinstance(keys[head], RowError) else keys[head] for head in heads]
        resident, results = run(x, row_keys, self._load)
        failed = {
            key: self._load_failure(key, entry) for key, entry in resident.items() if isinstance(entry, Exception)
        }
        return keys, row_keys, resident, results, failed

    def _key_of(self, head: str | RowError) -> HeadKey | RowError:
        """(head, version) to run, or the RowError for every row of that head."""
        if isinstance(head, RowError):
            return head  # a name that could not be decoded
        problem = head_name_problem(head)
        if problem is not None:
            return RowError(INVALID_ARG, problem)
        version = self.served.resolve(head)
        if version is None:
            self._encoder_problems.pop(head, None)
            return not_loaded(head)
        previous = self._resident_version.get(head)
        if previous is not None and previous != version:
            self.residency.release((head, previous))  # rolled over: the old weights go now
        self._resident_version[head] = version
        checked = self._encoder_problems.get(head)
        if checked is None or checked[0] != version:
            problem = encoder_problem(head, self.files.trained_for(head, version), self.encoder_fingerprint)
            checked = self._encoder_problems[head] = (version, problem)
        if checked[1] is not None:
            return RowError(UNAVAILABLE, checked[1])
        return (head, version)

    def _load(self, key: HeadKey) -> tuple:
        model_bytes, labels = self.files.read(*key)
        return model_bytes, labels, self.files.read_slots(*key)

    def _load_failure(self, key: HeadKey, exc: Exception) -> RowError:
        self.served.forget(key[0])  # the version may have gone (rolled over, offboarded): ask again next time
        return load_failure(*key, exc, version_exists=self.files.has_version(*key))

    def apply_sweeps(self) -> int:
        """Forget what ``sweep`` freed since the last call; how many head versions that was."""
        applied = 0
        while True:
            try:
                head, version = self._swept.get_nowait()
            except queue.Empty:
                return applied
            applied += 1
            self.served.forget(head)
            if self._resident_version.get(head) == version:
                self._resident_version.pop(head, None)
                self._encoder_problems.pop(head, None)

    # --- freeing offboarded heads (the sweeper thread) -----------------------------------------
    def sweep(self) -> int:
        """Release resident head versions whose folder left the repository (offboarded,
        archived) and hand them to ``run``; how many there were."""
        gone = [key for key in self.residency.keys() if not self.files.has_version(*key)]
        for key in gone:
            if self.residency.release(key):
                self._swept.put(key)
        return len(gone)
