"""Triton Python model ``executor``: runs every tenant's head, a whole mixed batch at once.

Inputs: ``sentence_embedding`` (FP32 [B, 384]) and, optionally, ``HEAD`` (BYTES [B, 1], the head
name of each row). Without ``HEAD`` the request's parameter ``head`` names one head for all rows:
that is how a call to a registration model ``head_<name>`` (an ensemble whose one step is this
model; Triton forwards the caller's request parameters to the step) reaches its head.

Outputs, per row: ``probabilities`` (FP32, padded with 0 to the widest head of the request),
``labels`` (BYTES, padded with ""), ``class_count`` (INT32), ``error_code`` (INT32: 0 answered,
else an index into ``ROW_ERROR_CODES``) and ``error_message`` (BYTES).

With ``HEAD`` (the pipeline's one call per batch) a row's failure is reported in its own
``error_code``/``error_message`` and the request succeeds; without it the request fails as a
whole with that error. Row errors: INVALID_ARG (bad head name), NOT_FOUND (no version of
``head_<name>`` READY: never onboarded, offboarded, unloaded), UNAVAILABLE (trained against
another encoder; head file unusable), INTERNAL.

How heads run: ``served_versions`` picks the READY version of each head, ``resident_heads``
keeps head weights in memory (stacked linear heads, or ONNX Runtime sessions) under an LRU byte
budget, ``head_files`` is the only code that reads the repository. Nothing is ever written into
a model folder (Triton reloads a model whose folder changed).
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils
from head_files import HeadFiles, head_name_problem
from resident_heads import HeadFileError, HeadResidency, run_rows
from served_versions import ServedVersions

EMBEDDING_INPUT = "sentence_embedding"
HEAD_INPUT = "HEAD"
HEAD_PARAMETER = "head"
#: ``error_code`` values of a row; 0 means answered. The pipeline maps names to TritonError codes.
ROW_ERROR_CODES = ("OK", "INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL")
_CODE = {name: index for index, name in enumerate(ROW_ERROR_CODES)}

#: Environment overrides of the config parameters of the same meaning (README "Configuration").
BUDGET_ENV = "HEADROOM_RESIDENT_HEAD_BYTES"
TTL_ENV = "HEADROOM_READINESS_TTL_MS"


class RowError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def not_loaded(head: str) -> RowError:
    return RowError(
        "NOT_FOUND", f"head '{head}' is not loaded (onboard it, or load model '{HeadFiles('').model_name(head)}')"
    )


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        repository = os.path.dirname(os.path.normpath(args["model_repository"]))
        self.files = HeadFiles(repository)
        self.dim = int(config["input"][0]["dims"][-1])
        budget = int(os.environ.get(BUDGET_ENV) or _parameter(config, "resident_bytes_budget", str(256 << 20)))
        ttl_ms = float(os.environ.get(TTL_ENV) or _parameter(config, "readiness_ttl_ms", "200"))
        self.sweep_interval_s = float(_parameter(config, "sweep_interval_s", "1"))
        self.encoder_fingerprint = self.files.encoder_fingerprint(_parameter(config, "encoder_model", "encoder"))
        self.residency = HeadResidency(budget, self.dim, log=pb_utils.Logger.log_verbose)
        self.served = ServedVersions(self.files, pb_utils.is_model_ready, ttl_ms / 1000.0)
        self._encoder_problems: dict[str, tuple[int, str | None]] = {}  # head -> (version, problem)
        self._resident_version: dict[str, int] = {}
        self._metrics = _Metrics()
        self._freed = 0  # heads the sweeper freed since the last batch (reported by execute)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="executor-sweep", daemon=True)
        self._sweeper.start()
        pb_utils.Logger.log_info(
            f"executor: repository {repository}, resident budget {budget} B, readiness TTL {ttl_ms:g} ms, "
            f"encoder fingerprint {self.encoder_fingerprint}"
        )

    def finalize(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)

    # --- requests ----------------------------------------------------------------------------
    def execute(self, requests):
        self._report_sweeps()
        parsed = [self._parse(request) for request in requests]
        embeddings = [p[0] for p in parsed if not isinstance(p, RowError)]
        heads = [head for p in parsed if not isinstance(p, RowError) for head in p[1]]
        outcomes = self._run(np.concatenate(embeddings) if embeddings else np.zeros((0, self.dim), np.float32), heads)
        responses = []
        start = 0
        for request, item in zip(requests, parsed, strict=True):
            if isinstance(item, RowError):
                responses.append(_error_response(item))
                continue
            rows = outcomes[start : start + len(item[1])]
            start += len(item[1])
            responses.append(self._respond(request, rows, per_row_errors=item[2]))
        return responses

    def _parse(self, request):
        """(embeddings [B, D], head per row, names came from HEAD) or a RowError for the request."""
        tensor = pb_utils.get_input_tensor_by_name(request, EMBEDDING_INPUT)
        if tensor is None:
            return RowError("INVALID_ARG", f"input '{EMBEDDING_INPUT}' is missing")
        embeddings = np.asarray(tensor.as_numpy(), dtype=np.float32).reshape(-1, self.dim)
        head_tensor = pb_utils.get_input_tensor_by_name(request, HEAD_INPUT)
        if head_tensor is not None:
            values = head_tensor.as_numpy().reshape(-1)
            if values.size != embeddings.shape[0]:
                return RowError("INVALID_ARG", f"{values.size} head names for {embeddings.shape[0]} rows")
            return embeddings, [_decode(value) for value in values], True
        try:
            head = json.loads(request.parameters() or "{}").get(HEAD_PARAMETER)
        except ValueError:
            head = None
        if not isinstance(head, str):
            return RowError(
                "INVALID_ARG",
                f"no head named: send input '{HEAD_INPUT}' or the request parameter '{HEAD_PARAMETER}'",
            )
        return embeddings, [head] * embeddings.shape[0], False

    def _run(self, embeddings: np.ndarray, heads: list) -> list:
        """Per row: (probabilities, its ResidentHead) or a RowError."""
        outcomes: list = [None] * len(heads)
        keys: dict[str, tuple[str, int] | RowError] = {}
        for head in dict.fromkeys(heads):
            keys[head] = self._key_of(head)
        wanted = [key for key in keys.values() if not isinstance(key, RowError)]
        with self.residency.lock:
            resident = self.residency.acquire(wanted, self._load)
            row_heads = []
            for row, head in enumerate(heads):
                key = keys[head]
                entry = key if isinstance(key, RowError) else resident[key]
                if isinstance(entry, Exception):
                    outcomes[row] = entry if isinstance(entry, RowError) else self._load_failure(head, key, entry)
                    row_heads.append(None)
                else:
                    row_heads.append(entry)
            probabilities = run_rows(embeddings, row_heads)
        for row, entry in enumerate(row_heads):
            if entry is None:
                continue
            result = probabilities[row]
            if isinstance(result, Exception):
                outcomes[row] = RowError("UNAVAILABLE", f"head '{heads[row]}' cannot run: {result}")
            else:
                outcomes[row] = (result, entry)
        self._metrics.observe(self.residency.stats(), len(heads))
        return outcomes

    def _key_of(self, head):
        """(head, version) to run, or the RowError for every row of that head."""
        if not isinstance(head, str):
            return head  # a RowError from decoding
        problem = head_name_problem(head)
        if problem is not None:
            return RowError("INVALID_ARG", problem)
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
            checked = self._encoder_problems[head] = (version, self._encoder_problem(head, version))
        if checked[1] is not None:
            return RowError("UNAVAILABLE", checked[1])
        return (head, version)

    def _encoder_problem(self, head: str, version: int) -> str | None:
        trained_for = self.files.trained_for(head, version)
        if self.encoder_fingerprint and trained_for and trained_for != self.encoder_fingerprint:
            return (
                f"head '{head}' was trained against encoder {trained_for[:19]}..., but the server runs "
                f"{self.encoder_fingerprint[:19]}...: onboard it again"
            )
        return None

    def _load(self, key: tuple[str, int]):
        return self.files.read(*key)

    def _load_failure(self, head: str, key: tuple[str, int], exc: Exception) -> RowError:
        self.served.forget(head)  # the version may have gone (rolled over, offboarded): ask again next time
        if isinstance(exc, FileNotFoundError) and not self.files.has_version(*key):
            return not_loaded(head)
        if isinstance(exc, HeadFileError):
            return RowError("UNAVAILABLE", f"head '{head}' version {key[1]} cannot serve: {exc}")
        return RowError("INTERNAL", f"head '{head}' version {key[1]} failed to load: {type(exc).__name__}: {exc}")

    def _respond(self, request, rows: list, per_row_errors: bool):
        if not per_row_errors:
            failed = next((row for row in rows if isinstance(row, RowError)), None)
            if failed is not None:
                return _error_response(failed)
        width = max((len(row[1].labels) for row in rows if not isinstance(row, RowError)), default=0)
        batch = len(rows)
        probabilities = np.zeros((batch, width), dtype=np.float32)
        labels = np.full((batch, width), b"", dtype=np.object_)
        counts = np.zeros((batch, 1), dtype=np.int32)
        codes = np.zeros((batch, 1), dtype=np.int32)
        messages = np.full((batch, 1), b"", dtype=np.object_)
        for index, row in enumerate(rows):
            if isinstance(row, RowError):
                codes[index, 0] = _CODE[row.code]
                messages[index, 0] = str(row).encode("utf-8")
                continue
            values, head = row
            classes = len(head.labels)
            probabilities[index, :classes] = values
            labels[index, :classes] = head.encoded_labels
            counts[index, 0] = classes
        outputs = {
            "probabilities": probabilities,
            "labels": labels,
            "class_count": counts,
            "error_code": codes,
            "error_message": messages,
        }
        requested = request.requested_output_names() or list(outputs)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, outputs[name]) for name in requested])

    # --- freeing offboarded heads ------------------------------------------------------------
    # The sweeper thread only stats files and drops arrays (pure Python): calling pb_utils (logger,
    # metrics) off the model's own thread aborted the server once (a boost interprocess lock
    # exception), so what it did is reported by ``execute`` on the next batch.
    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_interval_s):
            try:
                self._freed += self.sweep()
            except Exception:  # never let the sweeper die; the next round tries again
                continue

    def sweep(self) -> int:
        """Drop resident heads whose version folder left the repository (offboarded, archived)."""
        gone = [key for key in self.residency.keys() if not self.files.has_version(*key)]
        for key in gone:
            self.residency.release(key)
            self.served.forget(key[0])
            if self._resident_version.get(key[0]) == key[1]:
                self._resident_version.pop(key[0], None)
                self._encoder_problems.pop(key[0], None)
        return len(gone)

    def _report_sweeps(self) -> None:
        freed, self._freed = self._freed, 0
        if freed:
            pb_utils.Logger.log_info(f"executor: freed {freed} head(s) no longer in the repository")


def _decode(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return RowError("INVALID_ARG", "HEAD is not valid UTF-8")
    return str(value)


def _error_response(error: RowError):
    code = getattr(pb_utils.TritonError, error.code, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))


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
