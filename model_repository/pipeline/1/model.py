"""Triton Python model ``pipeline``: multi-tenant text classification (BLS).

Inputs, one row per text (a request carries N rows, 1 <= N <= ``max_batch_size``): ``TEXT``
(BYTES [N, 1], UTF-8 text) and ``HEAD`` (BYTES [N, 1], the head's name of each row; rows of one
request may name different heads).
Outputs, row i for text i: ``LABEL`` (BYTES [N, 1], winning label), ``SCORE`` (FP32 [N, 1], its
probability), ``PROBS`` (FP32 [N, C]) and ``LABELS`` (BYTES [N, C], label names in ``PROBS``
order). C is the class count of the widest head named in the request: a row whose head has
fewer classes is padded with probability 0 and label "" (never a real label: onboarding refuses
blank labels), so a row's labels are the entries of ``LABELS`` before the first "".

Entities (slots), only in the response of a request with a row whose head has slots:
``ENTITY_COUNT`` (INT32 [N, 1]; -1 for a row whose head has no slots) and, per entity, ``ENTITY_LABELS`` (BYTES [N, M]),
``ENTITY_STARTS`` / ``ENTITY_ENDS`` (INT32 [N, M], character offsets into the row's TEXT as
sent, counted in Unicode code points, end exclusive), ``ENTITY_TEXTS`` (BYTES [N, M], the covered
text) and ``ENTITY_SCORES`` (FP32 [N, M], the mean probability of the span's tags). M is the
most entities of a row of the request, at least 1; rows with fewer are padded with "" / -1 /
0 (a row's entities are its first ``ENTITY_COUNT``). Requests of classification heads only get
exactly the four outputs above.

Slot rows come from the same encoder pass as their intent: the pipeline asks ``embed`` for
token embeddings only for the rows whose head has slots (which heads have slots it learns from
the executor's ``has_slots``; a slot head's first request in a pipeline instance, or after it
gained slots in a new version, costs its rows one more encoder pass), sends those rows' tokens
to the executor as a token request beside the sentence request, and maps the token spans it
answers to characters with ``embed``'s ``token_offsets`` (``headroom.bio_tags.char_spans``).

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

import asyncio
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from headroom.bio_tags import char_spans
from headroom.config import EMBEDDING_DIM, TOKENIZER_FILE
from headroom.executor import tensors
from headroom.model_config import own_file, parameter
from headroom.row_errors import INVALID_ARG, RowError, triton_error
from headroom.tenant_metrics import DEFAULT_MAX_HEADS, MAX_HEADS_ENV, OK, RequestOutcome, TenantLabels
from headroom.text_tokenizer import BlankCheck

EMBEDDING_OUTPUT = "sentence_embedding"
#: What ``embed`` answers for a slot row besides its sentence embedding.
TOKEN_OUTPUTS = ("token_embeddings", "token_offsets", "token_count")
ENTITY_OUTPUTS = ("ENTITY_COUNT", "ENTITY_LABELS", "ENTITY_STARTS", "ENTITY_ENDS", "ENTITY_TEXTS", "ENTITY_SCORES")


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
        self.dim = EMBEDDING_DIM
        #: Heads the executor said have slots (``has_slots``): their rows get token embeddings.
        self.slot_heads: set[str] = set()

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
            rows = await self._answer(texts, heads)  # per row: (HeadOutput, entities or None) or TritonError
            for index, start, count in spans:
                mine = rows[start : start + count]
                responses[index] = _response(mine)
                outcomes[index] = RequestOutcome(heads[start : start + count], [_code(row) for row in mine])
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

    async def _answer(self, texts: list[str], heads: list[str]) -> list:
        """Each row's (``tensors.HeadOutput``, its ``CharSpan`` entities or None) or its
        TritonError: one embedding pass, then the sentence and token requests to the executor."""
        slot_rows = [row for row, head in enumerate(heads) if head in self.slot_heads]
        embedded = await self._embed(texts, slot_rows)
        results = await self._run_heads(texts, heads, embedded, slot_rows)
        # Heads that gained slots (new to this instance, or a new version): learned now, and
        # their rows embedded once more for their tokens. Heads that lost them: forgotten.
        late = []
        for row, result in enumerate(results):
            if isinstance(result, pb_utils.TritonError):
                continue
            output, entities = result
            if output.has_slots and entities is None:
                self.slot_heads.add(heads[row])
                late.append(row)
            elif not output.has_slots:
                self.slot_heads.discard(heads[row])
        if late:
            embedded = await self._embed([texts[row] for row in late], list(range(len(late))))
            entities = await self._run_token_heads([texts[row] for row in late], [heads[row] for row in late], embedded)
            for row, found in zip(late, entities, strict=True):
                results[row] = found if isinstance(found, pb_utils.TritonError) else (results[row][0], found)
        return results

    async def _embed(self, texts: list[str], slot_rows: list[int]) -> dict:
        """One ``embed`` request for the rows without slots (sentence embeddings only) and one
        for ``slot_rows`` (their tokens too), sent together: ``rows`` (row -> (request, position)),
        and each request's outputs by name or its TritonError."""
        slot_set = set(slot_rows)
        groups = [[row for row in range(len(texts)) if row not in slot_set], slot_rows]
        groups = [(rows, with_tokens) for rows, with_tokens in zip(groups, (False, True), strict=True) if rows]
        answers = await asyncio.gather(
            *(self._embed_call([texts[row] for row in rows], with_tokens) for rows, with_tokens in groups)
        )
        where = {row: (call, position) for call, (rows, _) in enumerate(groups) for position, row in enumerate(rows)}
        return {"rows": where, "answers": answers}

    async def _embed_call(self, texts: list[str], with_tokens: bool):
        outputs = [EMBEDDING_OUTPUT, *TOKEN_OUTPUTS] if with_tokens else [EMBEDDING_OUTPUT]
        request = pb_utils.InferenceRequest(
            model_name=self.embed_model,
            inputs=[pb_utils.Tensor("TEXT", np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))],
            requested_output_names=outputs,
        )
        response = await request.async_exec()
        if response.has_error():
            error = response.error()
            return pb_utils.TritonError(f"embedding failed: {error.message()}", error.code())
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    async def _run_heads(self, texts: list[str], heads: list[str], embedded: dict, slot_rows: list[int]) -> list:
        """Every row's (HeadOutput, entities or None) or TritonError: the sentence request with
        every embedded row and the token request with the slot rows, sent together."""
        results: list = [None] * len(heads)
        embeddings = np.zeros((len(heads), self.dim), dtype=np.float32)
        for row, (call, position) in embedded["rows"].items():
            answer = embedded["answers"][call]
            if isinstance(answer, pb_utils.TritonError):
                results[row] = answer
            else:
                embeddings[row] = answer[EMBEDDING_OUTPUT][position]
        good = [row for row in range(len(heads)) if results[row] is None]
        good_slots = [row for row in slot_rows if results[row] is None]
        sentence, tokens = await asyncio.gather(
            self._sentence_call(embeddings[good], [heads[row] for row in good]),
            self._run_token_heads(
                [texts[row] for row in good_slots], [heads[row] for row in good_slots], embedded, good_slots
            ),
        )
        for row, output in zip(good, sentence, strict=True):
            results[row] = output if isinstance(output, pb_utils.TritonError) else (output, None)
        for row, found in zip(good_slots, tokens, strict=True):
            if isinstance(results[row], pb_utils.TritonError):
                continue
            if isinstance(found, pb_utils.TritonError):
                results[row] = found
            elif results[row][0].has_slots:
                results[row] = (results[row][0], found)
        return results

    async def _sentence_call(self, embeddings: np.ndarray, heads: list[str]) -> list:
        """Each row's ``tensors.HeadOutput`` or ``TritonError``, from one call to the executor with
        every row; never raises (a broken call fails these rows, never the pipeline)."""
        if not heads:
            return []
        try:
            request = pb_utils.InferenceRequest(
                model_name=self.executor_model,
                inputs=[
                    pb_utils.Tensor(tensors.EMBEDDING_INPUT, np.ascontiguousarray(embeddings, dtype=np.float32)),
                    pb_utils.Tensor(tensors.HEAD_INPUT, _names(heads)),
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

    async def _run_token_heads(
        self, texts: list[str], heads: list[str], embedded: dict, rows: list[int] | None = None
    ) -> list:
        """Each of these slot rows' ``CharSpan`` entities or TritonError: one token request to
        the executor with the rows' token embeddings (``embedded`` by ``rows``, default 0..n-1)."""
        if not heads:
            return []
        rows = list(range(len(heads))) if rows is None else rows
        places = [embedded["rows"][row] for row in rows]
        answer = embedded["answers"][places[0][0]]  # the slot rows are all in one embed call
        if isinstance(answer, pb_utils.TritonError):
            return [answer] * len(heads)
        positions = [position for _, position in places]
        counts = answer["token_count"].reshape(-1)[positions].astype(np.int32)
        longest = int(counts.max())
        token_embeddings = np.ascontiguousarray(answer["token_embeddings"][positions, :longest], dtype=np.float32)
        try:
            request = pb_utils.InferenceRequest(
                model_name=self.executor_model,
                inputs=[
                    pb_utils.Tensor(tensors.TOKEN_INPUT, token_embeddings),
                    pb_utils.Tensor(tensors.TOKEN_COUNT_INPUT, counts.reshape(-1, 1)),
                    pb_utils.Tensor(tensors.HEAD_INPUT, _names(heads)),
                ],
                requested_output_names=list(tensors.TOKEN_OUTPUTS),
            )
            response = await request.async_exec()
            if response.has_error():
                error = response.error()
                return [pb_utils.TritonError(f"slot execution failed: {error.message()}", error.code())] * len(heads)
            outputs = {
                name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in tensors.TOKEN_OUTPUTS
            }
            decoded = tensors.decode_token_outputs(outputs, len(heads))
        except Exception as exc:
            return [pb_utils.TritonError(f"slot execution failed: {exc}", pb_utils.TritonError.INTERNAL)] * len(heads)
        found: list = []
        for text, position, count, spans in zip(texts, positions, counts, decoded, strict=True):
            if isinstance(spans, RowError):
                found.append(triton_error(spans, pb_utils))
            else:
                found.append(char_spans(spans, answer["token_offsets"][position, : int(count)], text))
        return found


def _names(heads: list[str]) -> np.ndarray:
    return np.array([[head.encode("utf-8")] for head in heads], dtype=np.object_)


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
    """The response of one request from its rows (each (``tensors.HeadOutput``, entities or
    None) or a ``TritonError``)."""
    error = _request_error(rows)
    if error is not None:
        return _error_response(error)
    width = max(len(output.labels) for output, _ in rows)
    count = len(rows)
    labels = np.full((count, 1), b"", dtype=np.object_)
    scores = np.zeros((count, 1), dtype=np.float32)
    probabilities = np.zeros((count, width), dtype=np.float32)
    names = np.full((count, width), b"", dtype=np.object_)
    for index, (row, _) in enumerate(rows):
        best = int(np.argmax(row.probabilities))
        classes = len(row.labels)
        labels[index, 0] = row.labels[best]
        scores[index, 0] = row.probabilities[best]
        probabilities[index, :classes] = row.probabilities
        names[index, :classes] = row.labels
    outputs = [
        pb_utils.Tensor("LABEL", labels),
        pb_utils.Tensor("SCORE", scores),
        pb_utils.Tensor("PROBS", probabilities),
        pb_utils.Tensor("LABELS", names),
    ]
    # Only when a row's head has slots: a request naming no outputs gets every output Triton
    # has, so adding them always would change what classification-only tenants see.
    if any(entities is not None for _, entities in rows):
        outputs.extend(_entity_tensors([entities for _, entities in rows]))
    return pb_utils.InferenceResponse(output_tensors=outputs)


def _entity_tensors(rows: list[list | None]) -> list:
    """``ENTITY_*`` of each row's ``CharSpan`` entities (None: its head has no slots, count -1),
    padded to the row with the most."""
    width = max([1, *(len(entities) for entities in rows if entities is not None)])
    count = len(rows)
    counts = np.full((count, 1), -1, dtype=np.int32)
    labels = np.full((count, width), b"", dtype=np.object_)
    starts = np.full((count, width), -1, dtype=np.int32)
    ends = np.full((count, width), -1, dtype=np.int32)
    texts = np.full((count, width), b"", dtype=np.object_)
    scores = np.zeros((count, width), dtype=np.float32)
    for index, entities in enumerate(rows):
        if entities is None:
            continue
        counts[index, 0] = len(entities)
        for position, entity in enumerate(entities):
            labels[index, position] = entity.label.encode("utf-8")
            starts[index, position], ends[index, position] = entity.start, entity.end
            texts[index, position] = entity.text.encode("utf-8")
            scores[index, position] = entity.score
    arrays = (counts, labels, starts, ends, texts, scores)
    return [pb_utils.Tensor(name, array) for name, array in zip(ENTITY_OUTPUTS, arrays, strict=True)]
