# Benchmark baseline, not a serving mode: issue 2's per-head-model pipeline, kept verbatim from
# commit c4971b3 (model_repository/pipeline/1/model.py) for bench/ to measure;
# see bench/baselines/per_head_models/__init__.py.
"""Triton Python model ``pipeline``: multi-tenant text classification (BLS).

Inputs (one per request): ``TEXT`` (BYTES, UTF-8 text) and ``HEAD`` (BYTES, a head name).
Outputs: ``LABEL`` (BYTES, winning label), ``SCORE`` (FP32, its probability), ``PROBS``
(FP32 [C]) and ``LABELS`` (BYTES [C], label names in ``PROBS`` order).

For one batch of requests it calls ``embed`` **once** with every valid text, whatever the
heads, then hands the embeddings to ``HeadDispatcher`` which calls each distinct head once.

Per-request errors (the request fails alone, its batch-mates are answered):
- INVALID_ARG: TEXT empty or whitespace only, TEXT or HEAD not valid UTF-8, HEAD breaks the
  naming rule (which also keeps ``encoder``, ``pipeline`` and other system models out of reach);
- NOT_FOUND: the head is not loaded (never onboarded, offboarded, or failed to load);
- UNAVAILABLE: the head was trained against another encoder than the one served.
A missing input is refused by Triton itself before the batch is formed (INVALID_ARG).
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from head_dispatch import (
    HeadDispatcher,
    HeadOutput,
    group_rows_by_head,
    head_name_problem,
    read_encoder_fingerprint,
)

EMBEDDING_OUTPUT = "sentence_embedding"


def _error_response(error):
    """A response carrying its *own* copy of ``error``.

    Triton frees each response's error object with the response: one TritonError shared by
    several responses (all rows of an unknown head, say) is freed twice and crashes the server.
    """
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(error.message(), error.code()))


def _invalid(message: str):
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


def _single_string(request, name: str):
    """The request's one string for input ``name``, or a TritonError."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return _invalid(f"input '{name}' is missing")
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        return _invalid(f"input '{name}' must hold exactly one string, got {values.size}")
    value = values[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return _invalid(f"input '{name}' is not valid UTF-8")
    return str(value)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.embed_model = config["parameters"]["embed_model"]["string_value"]
        repository = os.path.dirname(os.path.normpath(args["model_repository"]))
        encoder_dir = os.path.join(repository, config["parameters"]["encoder_model"]["string_value"])
        fingerprint = read_encoder_fingerprint(encoder_dir)
        self.dispatcher = HeadDispatcher(repository, fingerprint)
        pb_utils.Logger.log_info(f"pipeline: encoder fingerprint {fingerprint}; heads trained for another are refused")

    async def execute(self, requests):
        responses: list = [None] * len(requests)
        texts: list[str] = []
        heads: list[str] = []
        owners: list[int] = []  # request index of each valid row
        for index, request in enumerate(requests):
            parsed = self._parse(request)
            if isinstance(parsed, pb_utils.TritonError):
                responses[index] = _error_response(parsed)
                continue
            texts.append(parsed[0])
            heads.append(parsed[1])
            owners.append(index)

        if texts:
            embeddings = await self._embed(texts)
            if isinstance(embeddings, pb_utils.TritonError):
                for index in owners:
                    responses[index] = _error_response(embeddings)
            else:
                rows_by_head = group_rows_by_head(heads)
                outputs = await self.dispatcher.run(embeddings, rows_by_head)  # errors per head, never raises
                for head, rows in rows_by_head.items():
                    result = outputs[head]
                    for position, row in enumerate(rows):
                        responses[owners[row]] = _response(result, position)
        return responses

    def _parse(self, request):
        text = _single_string(request, "TEXT")
        if isinstance(text, pb_utils.TritonError):
            return text
        if not text.strip():
            return _invalid("TEXT is empty")
        head = _single_string(request, "HEAD")
        if isinstance(head, pb_utils.TritonError):
            return head
        problem = head_name_problem(head)
        if problem is not None:
            return _invalid(problem)
        return text, head

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


def _response(result, position: int):
    if not isinstance(result, HeadOutput):
        return _error_response(result)
    probabilities = result.probabilities[position]
    best = int(np.argmax(probabilities))
    return pb_utils.InferenceResponse(
        output_tensors=[
            # Leading 1: each request is one row of a batching model.
            pb_utils.Tensor("LABEL", np.array([[result.labels[best].encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor("SCORE", np.array([[probabilities[best]]], dtype=np.float32)),
            pb_utils.Tensor("PROBS", probabilities.astype(np.float32)[None, :]),
            pb_utils.Tensor("LABELS", np.array([[label.encode("utf-8") for label in result.labels]], dtype=np.object_)),
        ]
    )
