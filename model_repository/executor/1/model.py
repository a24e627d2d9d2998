"""Triton Python model ``executor``: runs every tenant's head, a whole mixed batch at once.

The adapter between Triton and ``headroom.executor``: the tensors are described (and parsed and
encoded) in ``headroom.executor.tensors``, the rows run and fail in
``headroom.executor.head_runner``, the row error codes are ``headroom.row_errors``'.

A token request (``token_embeddings``, ``token_count``, ``HEAD``: the pipeline's rows whose
head has slots) runs each row's tokens through its head's token head and answers BIO spans in
token positions (``headroom.executor.tensors``).

With ``HEAD`` (the pipeline's one call per batch) a row's failure is reported in its own
``error_code``/``error_message`` and the request succeeds; without it (a call to a registration
model ``head_<name>`` with the request parameter ``head``) the request fails as a whole with
that error. Row errors: INVALID_ARG (bad head name), NOT_FOUND (no version of ``head_<name>``
READY: never onboarded, offboarded, unloaded), UNAVAILABLE (trained against another encoder;
head file unusable), INTERNAL.

Nothing is ever written into a model folder (Triton reloads a model whose folder changed).
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils
from headroom.config import HEAD_STORE_ENV
from headroom.executor import tensors
from headroom.executor.head_files import HeadFiles, encoder_fingerprint
from headroom.executor.head_runner import HeadRunner
from headroom.executor.resident_heads import HeadResidency
from headroom.executor.served_versions import ServedVersions
from headroom.model_config import parameter
from headroom.row_errors import RowError, triton_error
from headroom.s3 import S3Location, is_s3_url

#: Environment overrides of the config parameters of the same meaning (README "Configuration").
BUDGET_ENV = "HEADROOM_RESIDENT_HEAD_BYTES"
TTL_ENV = "HEADROOM_READINESS_TTL_MS"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        # Heads come from the head store: the launcher names it (an S3 repository is copied into
        # temporary folders, one per model); else this model's own repository folder.
        repository = os.environ.get(HEAD_STORE_ENV) or os.path.dirname(os.path.normpath(args["model_repository"]))
        if is_s3_url(repository):
            from headroom.executor.s3_head_files import S3HeadFiles

            files = S3HeadFiles(S3Location.parse(repository))
        else:
            files = HeadFiles(repository)
        embedding = next(entry for entry in config["input"] if entry["name"] == tensors.EMBEDDING_INPUT)
        self.dim = int(embedding["dims"][-1])
        budget = int(os.environ.get(BUDGET_ENV) or parameter(config, "resident_bytes_budget", str(256 << 20)))
        ttl_ms = float(os.environ.get(TTL_ENV) or parameter(config, "readiness_ttl_ms", "200"))
        self.sweep_interval_s = float(parameter(config, "sweep_interval_s", "1"))
        fingerprint = encoder_fingerprint(os.path.join(args["model_repository"], args["model_version"]))
        self.runner = HeadRunner(
            files,
            ServedVersions(files, pb_utils.is_model_ready, ttl_ms / 1000.0),
            HeadResidency(budget, self.dim, log=pb_utils.Logger.log_verbose),
            fingerprint,
        )
        self._metrics = _Metrics()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="executor-sweep", daemon=True)
        self._sweeper.start()
        pb_utils.Logger.log_info(
            f"executor: repository {repository}, resident budget {budget} B, readiness TTL {ttl_ms:g} ms, "
            f"encoder fingerprint {fingerprint}"
        )

    def finalize(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)

    def execute(self, requests):
        freed = self.runner.apply_sweeps()
        if freed:
            pb_utils.Logger.log_info(f"executor: freed {freed} head(s) no longer in the repository")
        parsed = [self._parse(request) for request in requests]
        sentence = [rows for rows in parsed if isinstance(rows, tensors.Rows)]
        embeddings = (
            np.concatenate([rows.embeddings for rows in sentence]) if sentence else np.zeros((0, self.dim), np.float32)
        )
        outcomes = self.runner.run(embeddings, [head for rows in sentence for head in rows.heads])
        token_outcomes = [self._run_tokens(rows) for rows in parsed if isinstance(rows, tensors.TokenRows)]
        self._metrics.observe(self.runner.residency.stats(), len(outcomes) + sum(map(len, token_outcomes)))
        responses = []
        start = 0
        for request, rows in zip(requests, parsed, strict=True):
            if isinstance(rows, RowError):
                responses.append(pb_utils.InferenceResponse(error=triton_error(rows, pb_utils)))
            elif isinstance(rows, tensors.TokenRows):
                outputs = tensors.encode_token_outputs(token_outcomes.pop(0))
                responses.append(_response(request, outputs))
            else:
                mine = outcomes[start : start + len(rows.heads)]
                start += len(rows.heads)
                responses.append(self._respond(request, mine, rows.per_row_errors))
        return responses

    def _run_tokens(self, rows: tensors.TokenRows) -> list:
        # Requests of different token lengths are not padded together: one call per request.
        return self.runner.run_tokens(rows.token_embeddings, rows.counts, rows.heads)

    def _parse(self, request):
        tokens = pb_utils.get_input_tensor_by_name(request, tensors.TOKEN_INPUT)
        heads = pb_utils.get_input_tensor_by_name(request, tensors.HEAD_INPUT)
        if tokens is not None:
            counts = pb_utils.get_input_tensor_by_name(request, tensors.TOKEN_COUNT_INPUT)
            return tensors.parse_token_request(
                tokens.as_numpy(),
                None if counts is None else counts.as_numpy(),
                None if heads is None else heads.as_numpy(),
                self.dim,
            )
        embeddings = pb_utils.get_input_tensor_by_name(request, tensors.EMBEDDING_INPUT)
        return tensors.parse_request(
            None if embeddings is None else embeddings.as_numpy(),
            None if heads is None else heads.as_numpy(),
            request.parameters(),
            self.dim,
        )

    def _respond(self, request, rows: list, per_row_errors: bool):
        if not per_row_errors:
            failed = tensors.first_error(rows)
            if failed is not None:
                return pb_utils.InferenceResponse(error=triton_error(failed, pb_utils))
        return _response(request, tensors.encode_outputs(rows))

    # --- freeing offboarded heads ------------------------------------------------------------
    # The sweeper thread only stats files and drops arrays (pure Python): calling pb_utils (logger,
    # metrics) off the model's own thread aborted the server once (a boost interprocess lock
    # exception), so ``execute`` reports what it freed on the next batch.
    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_interval_s):
            try:
                self.runner.sweep()
            except Exception:  # never let the sweeper die; the next round tries again
                continue


def _response(request, outputs: dict):
    """The outputs the request asked for (all of this kind of request when it named none)."""
    requested = [name for name in request.requested_output_names() if name in outputs] or list(outputs)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, outputs[name]) for name in requested])


class _Metrics:
    """Custom Prometheus metrics on Triton's metrics port (absent where the backend lacks them).

    Updated from ``execute`` only (the model's own thread), once per batch.
    """

    def __init__(self) -> None:
        self.enabled = hasattr(pb_utils, "MetricFamily")
        if not self.enabled:
            return
        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        labels = {"model": "executor"}
        self._families = [
            pb_utils.MetricFamily("headroom_resident_heads", "Head versions resident in the executor", gauge),
            pb_utils.MetricFamily("headroom_resident_head_bytes", "Bytes of resident head weights", gauge),
            pb_utils.MetricFamily(
                "headroom_head_bank_bytes", "Bytes allocated for the stacked heads' weight arrays", gauge
            ),
            pb_utils.MetricFamily(
                "headroom_stacked_head_bytes", "Bytes of the stacked heads' weights in those arrays", gauge
            ),
            pb_utils.MetricFamily("headroom_head_loads_total", "Head versions made resident", counter),
            pb_utils.MetricFamily("headroom_head_evictions_total", "Heads evicted under the byte budget", counter),
            pb_utils.MetricFamily("headroom_executor_rows_total", "Rows run by the executor", counter),
        ]
        self.heads, self.bytes, self.bank_bytes, self.stacked_bytes, self.loads, self.evictions, self.rows = (
            f.Metric(labels) for f in self._families
        )
        self._loads_seen = 0
        self._evictions_seen = 0

    def observe(self, stats, rows: int) -> None:
        if not self.enabled:
            return
        self.heads.set(stats.resident_heads)
        self.bytes.set(stats.resident_bytes)
        self.bank_bytes.set(stats.allocated_bytes)
        self.stacked_bytes.set(stats.stacked_bytes)
        self.loads.increment(stats.loads - self._loads_seen)
        self.evictions.increment(stats.evictions - self._evictions_seen)
        self._loads_seen, self._evictions_seen = stats.loads, stats.evictions
        if rows:
            self.rows.increment(rows)
