"""Triton Python model ``pipeline``: multi-tenant text classification (BLS).

Inputs, one row per text (a request carries N rows, 1 <= N <= ``max_batch_size``): ``TEXT``
(BYTES [N, 1], UTF-8 text) and ``HEAD`` (BYTES [N, 1], the head's name of each row; rows of one
request may name different heads).
Outputs, row i for text i: ``LABEL`` (BYTES [N, 1], winning label), ``SCORE`` (FP32 [N, 1], its
probability), ``PROBS`` (FP32 [N, C]) and ``LABELS`` (BYTES [N, C], label names in ``PROBS``
order). C is the class count of the widest head named in the request: a row whose head has
fewer classes is padded with probability 0 and label "" (never a real label: onboarding refuses
blank labels), so a row's labels are the entries of ``LABELS`` before the first "".

For one batch of requests it calls ``embed`` **once** with every valid text, whatever the
heads (``embed`` groups texts of similar length for the encoder), then runs every row's head
with **one** call to the shared ``executor`` (``_run_heads``), whatever the heads: the executor
resolves each name to the READY version of its registration model ``head_<name>``, checks the
naming rule (so no row ever reaches a non-head model) and answers each row or says why not
(``headroom.executor.tensors``, ``headroom.row_errors``).

Per-request errors (the request fails alone, its batch-mates are answered). A request fails
when one of its rows fails; with N > 1 the message names the row (``row 3: head 'x' is not
loaded ...``, then ``(rows 5, 9 failed too)`` when more did) and the code is that row's:
- INVALID_ARG: TEXT empty or blank (only whitespace, control or format characters: nothing the
  tokenizer keeps), TEXT or HEAD not valid UTF-8, HEAD breaks the
  naming rule (which also keeps ``encoder``, ``pipeline`` and other system models out of reach);
- NOT_FOUND: the head is not loaded (its registration model ``head_<name>`` is not READY:
  never onboarded, offboarded, unloaded);
- UNAVAILABLE: the head was trained against another encoder than the one served, or its file
  cannot run.
A missing input is refused by Triton itself before the batch is formed (INVALID_ARG).

Triton counts a request that failed for its head as a success, so the pipeline counts rows by
head and code, and requests and their seconds by head, on Triton's metrics port
(``headroom.tenant_metrics``: names, and the bound on how many heads get a label).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from headroom.config import TOKENIZER_FILE
from headroom.executor import tensors
from headroom.model_config import own_file, parameter
from headroom.row_errors import INVALID_ARG, RowError, triton_error
from headroom.tenant_metrics import DEFAULT_MAX_HEADS, MAX_HEADS_ENV, OK, RequestOutcome, TenantLabels
from headroom.text_tokenizer import BlankCheck

EMBEDDING_OUTPUT = "sentence_embedding"


def _error_response(error):
    """A response carrying its *own* copy of ``error``.

    Triton frees each response's error object with the response: one TritonError shared by
    several responses (all rows of an unknown head, say) is freed twice and crashes the server.
    """
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(error.message(), error.code()))


def _invalid(message: str):
    return triton_error(RowError(INVALID_ARG, message), pb_utils)


def _request_error(rows: list):
    """The error of a request from its rows' outcomes (a TritonError per failed row), or None.

    One-row requests fail with the row's own message; others name the first failed row (and
    the other failed rows), with its code.
    """
    failed = [index for index, row in enumerate(rows) if isinstance(row, pb_utils.TritonError)]
    if not failed:
        return None
    first = rows[failed[0]]
    if len(rows) == 1:
        return first
    message = f"row {failed[0]}: {first.message()}"
    others = failed[1:]
    if others:
        message += f" ({'rows' if len(others) > 1 else 'row'} {', '.join(map(str, others))} failed too)"
    return pb_utils.TritonError(message, first.code())


def _strings(request, name: str) -> list:
    """Each row's string of input ``name`` (a TritonError for a row that is not UTF-8)."""
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    strings: list = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value = _invalid(f"input '{name}' is not valid UTF-8")
        strings.append(value if isinstance(value, (str, pb_utils.TritonError)) else str(value))
    return strings


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.embed_model = parameter(config, "embed_model")
        self.executor_model = parameter(config, "executor_model")
        self.is_blank = BlankCheck(own_file(args, TOKENIZER_FILE))
        max_heads = os.environ.get(MAX_HEADS_ENV) or parameter(
            config, "tenant_metrics_max_heads", str(DEFAULT_MAX_HEADS)
        )
        self._metrics = _TenantMetrics(TenantLabels(int(max_heads)))

    async def execute(self, requests):
        started = time.perf_counter()
        responses: list = [None] * len(requests)
        outcomes: list = [None] * len(requests)
        texts: list[str] = []
        heads: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, rows) of valid requests
        for index, request in enumerate(requests):
            parsed = self._parse(request)
            if isinstance(parsed, pb_utils.TritonError):
                responses[index] = _error_response(parsed)
                outcomes[index] = _refused(request, parsed)
                continue
            spans.append((index, len(texts), len(parsed[0])))
            texts.extend(parsed[0])
            heads.extend(parsed[1])

        if texts:
            embeddings = await self._embed(texts)
            if isinstance(embeddings, pb_utils.TritonError):
                for index, start, count in spans:
                    responses[index] = _error_response(embeddings)
                    outcomes[index] = RequestOutcome(heads[start : start + count], [_code(embeddings)] * count)
            else:
                results = await self._run_heads(embeddings, heads)  # errors per row, never raises
                for index, start, count in spans:
                    rows = results[start : start + count]
                    responses[index] = _response(rows)
                    outcomes[index] = RequestOutcome(heads[start : start + count], [_code(row) for row in rows])
        self._metrics.record(outcomes, time.perf_counter() - started)
        return responses

    def _parse(self, request):
        """(texts, heads) of a request's rows, or the TritonError that fails it."""
        texts = _strings(request, "TEXT")
        heads = _strings(request, "HEAD")
        if len(texts) != len(heads):  # Triton checks batch sizes; a defence, not a contract
            return _invalid(f"{len(texts)} TEXT rows but {len(heads)} HEAD rows")
        rows: list = []
        for text, head in zip(texts, heads, strict=True):
            if isinstance(text, pb_utils.TritonError):
                rows.append(text)
            elif self.is_blank(text):
                rows.append(_invalid("TEXT is empty"))
            else:
                rows.append(head)  # a head name, or the TritonError of one that is not UTF-8
        error = _request_error(rows)
        return error if error is not None else (texts, heads)

    async def _embed(self, texts: list[str]):
        request = pb_utils.InferenceRequest(
            model_name=self.embed_model,
            inputs=[pb_utils.Tensor("TEXT", np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))],
            requested_output_names=[EMBEDDING_OUTPUT],
        )
        response = await request.async_exec()
        if response.has_error():
            error = response.error()
            return pb_utils.TritonError(f"embedding failed: {error.message()}", error.code())
        return pb_utils.get_output_tensor_by_name(response, EMBEDDING_OUTPUT).as_numpy()

    async def _run_heads(self, embeddings: np.ndarray, heads: list[str]) -> list:
        """Each row's ``tensors.HeadOutput`` or ``TritonError``, from one call to the executor with
        every row; never raises (a broken call fails these rows, never the pipeline)."""
        try:
            request = pb_utils.InferenceRequest(
                model_name=self.executor_model,
                inputs=[
                    pb_utils.Tensor(tensors.EMBEDDING_INPUT, np.ascontiguousarray(embeddings, dtype=np.float32)),
                    pb_utils.Tensor(
                        tensors.HEAD_INPUT, np.array([[head.encode("utf-8")] for head in heads], dtype=np.object_)
                    ),
                ],
                requested_output_names=list(tensors.OUTPUTS),
            )
            response = await request.async_exec()
            if response.has_error():
                error = response.error()
                return [pb_utils.TritonError(f"head execution failed: {error.message()}", error.code())] * len(heads)
            outputs = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in tensors.OUTPUTS}
            rows = tensors.decode_outputs(outputs, len(heads))
        except Exception as exc:
            return [pb_utils.TritonError(f"head execution failed: {exc}", pb_utils.TritonError.INTERNAL)] * len(heads)
        return [triton_error(row, pb_utils) if isinstance(row, RowError) else row for row in rows]


def _code(row) -> str:
    """A row's outcome for the counters: ``OK``, or its error's code name."""
    if not isinstance(row, pb_utils.TritonError):
        return OK
    if not _CODE_NAMES:  # pb_utils.TritonError exists once the stub runs, not at import
        _CODE_NAMES.update(
            (getattr(pb_utils.TritonError, name), name)
            for name in ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "CANCELLED")
            if hasattr(pb_utils.TritonError, name)
        )
    return _CODE_NAMES.get(row.code(), "UNKNOWN")


_CODE_NAMES: dict[int, str] = {}


def _refused(request, error) -> RequestOutcome:
    """The outcome of a request refused as a whole: each of its rows with the request's code."""
    heads = [head if isinstance(head, str) else None for head in _strings(request, "HEAD")]
    return RequestOutcome(heads, [_code(error)] * len(heads))


class _TenantMetrics:
    """``headroom.tenant_metrics``'s counters as ``pb_utils`` metrics (absent where the backend
    lacks them); each series is created once and updated once per batch."""

    def __init__(self, labels: TenantLabels) -> None:
        self.labels = labels
        self.enabled = hasattr(pb_utils, "MetricFamily")
        if not self.enabled:
            return
        counter = pb_utils.MetricFamily.COUNTER
        self._rows = pb_utils.MetricFamily(
            "headroom_tenant_rows_total", "Texts answered or refused, by head and code", counter
        )
        self._requests = pb_utils.MetricFamily(
            "headroom_tenant_requests_total", "Pipeline requests naming the head", counter
        )
        self._seconds = pb_utils.MetricFamily(
            "headroom_tenant_request_seconds_total", "Seconds the pipeline spent on requests naming the head", counter
        )
        self._series: dict = {}

    def _metric(self, family, **labels):
        key = (id(family), *sorted(labels.items()))
        metric = self._series.get(key)
        if metric is None:
            metric = self._series[key] = family.Metric(labels={"model": "pipeline", **labels})
        return metric

    def record(self, outcomes: list, seconds: float) -> None:
        if not self.enabled:
            return
        tally = self.labels.tally([outcome for outcome in outcomes if outcome is not None], seconds)
        for (head, code), count in tally.rows.items():
            self._metric(self._rows, head=head, code=code).increment(count)
        for head, count in tally.requests.items():
            self._metric(self._requests, head=head).increment(count)
            self._metric(self._seconds, head=head).increment(tally.seconds[head])


def _response(rows: list):
    """The response of one request from its rows (each a ``tensors.HeadOutput`` or a ``TritonError``)."""
    error = _request_error(rows)
    if error is not None:
        return _error_response(error)
    width = max(len(row.labels) for row in rows)
    count = len(rows)
    labels = np.full((count, 1), b"", dtype=np.object_)
    scores = np.zeros((count, 1), dtype=np.float32)
    probabilities = np.zeros((count, width), dtype=np.float32)
    names = np.full((count, width), b"", dtype=np.object_)
    for index, row in enumerate(rows):
        best = int(np.argmax(row.probabilities))
        classes = len(row.labels)
        labels[index, 0] = row.labels[best]
        scores[index, 0] = row.probabilities[best]
        probabilities[index, :classes] = row.probabilities
        names[index, :classes] = row.labels
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("LABEL", labels),
            pb_utils.Tensor("SCORE", scores),
            pb_utils.Tensor("PROBS", probabilities),
            pb_utils.Tensor("LABELS", names),
        ]
    )
