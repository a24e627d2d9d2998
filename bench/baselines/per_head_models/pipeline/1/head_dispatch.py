# Benchmark baseline, not a serving mode: issue 2's per-head-model pipeline, kept from commit
# c4971b3 (model_repository/pipeline/1/head_dispatch.py) for bench/ to measure, except that the
# naming rule, file names and repository reads are imported from headroom (one copy of each);
# see bench/baselines/per_head_models/__init__.py.
"""How the pipeline reaches heads: the one place that knows heads are Triton models.

``HeadDispatcher.run`` takes the batch's sentence embeddings and the rows of each head, calls
every distinct head **once** with all of its rows (concurrently, through BLS ``async_exec``) and
returns, per head, its probabilities and label names or a ``TritonError`` for those rows alone.
A later design may execute heads differently; the pipeline only relies on this contract.

Naming rule (``headroom.naming``, imported): a head name is 1-48 characters of
``a-z 0-9 _ -`` starting with a letter or digit, is not a system model's name, and is served by
the model ``head_<name>``. Only names that pass the rule are ever turned into model names, so no
request reaches a non-head model.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils
from headroom.config import HEAD_MODEL_PREFIX
from headroom.executor.head_files import encoder_fingerprint, version_numbers
from headroom.executor.head_files import version_numbers as _version_numbers
from headroom.head_format import HEAD_INFO_FILE, HEAD_INPUT, HEAD_OUTPUT, LABELS_FILE
from headroom.naming import head_name_problem  # noqa: F401  (the pipeline model imports it from here)


def group_rows_by_head(heads: list[str]) -> dict[str, list[int]]:
    """Row indices of each distinct head, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for row, head in enumerate(heads):
        groups.setdefault(head, []).append(row)
    return groups


@dataclass(frozen=True)
class HeadOutput:
    probabilities: np.ndarray  # [rows, classes], FP32
    labels: tuple[str, ...]  # names in probability order


@dataclass(frozen=True)
class _ServedVersion:
    folder_stamp: int  # mtime of head_<name>/ when resolved: a new version folder changes it
    version: int
    newest_on_disk: int
    labels: tuple[str, ...]
    problem: str | None = None  # why this version must not serve (trained for another encoder)


class HeadDispatcher:
    """Runs heads that are Triton models named ``head_<name>``.

    Each head is called at an explicit version: the newest version folder that Triton reports
    READY. While a newer version is still loading, the previous one keeps answering with its own
    labels (``<version>/labels.txt``); once the newer one is READY, calls switch to it.

    A version whose ``head.json`` records another encoder fingerprint than the served encoder's
    is refused with UNAVAILABLE: its features would not match what it was trained on.
    """

    def __init__(self, repository: str, encoder_fingerprint: str | None) -> None:
        self._repository = repository
        self._encoder_fingerprint = encoder_fingerprint
        self._served: dict[str, _ServedVersion] = {}

    def model_name(self, head: str) -> str:
        return HEAD_MODEL_PREFIX + head

    async def run(self, embeddings: np.ndarray, rows_by_head: dict[str, list[int]]) -> dict:
        heads = list(rows_by_head)
        results = await asyncio.gather(*(self._run_head(head, embeddings[rows_by_head[head]]) for head in heads))
        return dict(zip(heads, results, strict=True))

    async def _run_head(self, head: str, rows: np.ndarray):
        """One head's rows: its probabilities, or one TritonError for those rows alone."""
        try:
            return await self._run_head_unguarded(head, rows)
        except Exception as exc:  # never let one head's trouble fail the other tenants of the batch
            return pb_utils.TritonError(f"head '{head}' failed: {exc}", pb_utils.TritonError.INTERNAL)

    async def _run_head_unguarded(self, head: str, rows: np.ndarray):
        served = self._resolve(head)
        if served is None:
            return not_loaded_error(head)
        if served.problem is not None:
            return pb_utils.TritonError(served.problem, pb_utils.TritonError.UNAVAILABLE)
        response = await self._call(head, served.version, rows)
        if response.has_error():
            # The version may have been replaced or unloaded since it was resolved: look again once.
            retry = self._resolve(head, force=True)
            if retry is None:
                return not_loaded_error(head)
            if retry.version != served.version:
                served = retry
                response = await self._call(head, served.version, rows)
        if response.has_error():
            error = response.error()
            return pb_utils.TritonError(f"head '{head}' failed: {error.message()}", error.code())
        probabilities = pb_utils.get_output_tensor_by_name(response, HEAD_OUTPUT).as_numpy()
        if len(served.labels) != probabilities.shape[1]:
            return pb_utils.TritonError(
                f"head '{head}' returned {probabilities.shape[1]} probabilities but version "
                f"{served.version} names {len(served.labels)} labels",
                pb_utils.TritonError.INTERNAL,
            )
        return HeadOutput(probabilities=probabilities, labels=served.labels)

    async def _call(self, head: str, version: int, rows: np.ndarray):
        request = pb_utils.InferenceRequest(
            model_name=self.model_name(head),
            model_version=version,
            inputs=[pb_utils.Tensor(HEAD_INPUT, np.ascontiguousarray(rows, dtype=np.float32))],
            requested_output_names=[HEAD_OUTPUT],
        )
        return await request.async_exec()

    def _resolve(self, head: str, force: bool = False) -> _ServedVersion | None:
        """The version to call: cached, re-checked when a newer folder appears or is pending."""
        model = self.model_name(head)
        folder = os.path.join(self._repository, model)
        try:
            stamp = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            self._served.pop(head, None)
            return None
        cached = self._served.get(head)
        if cached is not None and not force and cached.folder_stamp == stamp:
            if cached.newest_on_disk == cached.version or not pb_utils.is_model_ready(
                model, str(cached.newest_on_disk)
            ):
                return cached
        try:
            versions = _version_numbers(folder)
        except OSError:  # offboarded between the stat above and now
            self._served.pop(head, None)
            return None
        for version in versions:
            if pb_utils.is_model_ready(model, str(version)):
                version_dir = os.path.join(folder, str(version))
                labels = _read_labels(os.path.join(version_dir, LABELS_FILE))
                served = _ServedVersion(stamp, version, versions[0], labels, self._check_encoder(head, version_dir))
                self._served[head] = served
                return served
        self._served.pop(head, None)
        return None

    def _check_encoder(self, head: str, version_dir: str) -> str | None:
        trained_for = _read_json(os.path.join(version_dir, HEAD_INFO_FILE)).get("encoder_fingerprint")
        if self._encoder_fingerprint and trained_for and trained_for != self._encoder_fingerprint:
            return (
                f"head '{head}' was trained against encoder {trained_for[:19]}..., but the server runs "
                f"{self._encoder_fingerprint[:19]}...: onboard it again"
            )
        return None


def read_encoder_fingerprint(encoder_dir: str) -> str | None:
    """Fingerprint in the newest ``<encoder>/<version>/encoder.json``, or None without one."""
    versions = version_numbers(encoder_dir)
    return encoder_fingerprint(os.path.join(encoder_dir, str(versions[0]))) if versions else None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_labels(path: str) -> tuple[str, ...]:
    try:
        # newline="\n": only line feeds separate labels (the store refuses labels with any).
        with open(path, encoding="utf-8", newline="\n") as handle:
            return tuple(line.rstrip("\n") for line in handle if line.strip())
    except (OSError, UnicodeDecodeError):
        return ()


def not_loaded_error(head: str):
    return pb_utils.TritonError(
        f"head '{head}' is not loaded (onboard it, or load model '{HEAD_MODEL_PREFIX}{head}')",
        pb_utils.TritonError.NOT_FOUND,
    )
