"""Triton Python model ``embed``: texts -> sentence embeddings, with length-aware batching.

Input: ``TEXT`` (BYTES [N, 1], UTF-8 texts; N rows per request, up to ``max_batch_size``).
Output: ``sentence_embedding`` (FP32 [N, 384], L2-normalised), row i for text i.

For one batch of requests (whatever the number of texts in each) it tokenizes every text once,
sorts them by token count and cuts them into groups of similar length (``length_groups.py``:
a token budget per call and a bound on the padding a text may add), calls ``encoder`` once per
group, all groups at once, and puts the rows back in request order. A text's embedding does
not depend on the texts that share its call (fp32: to 1e-5, as alone). Texts longer than
``max_length`` tokens are truncated.

Errors (the request fails alone, its batch-mates are answered): INVALID_ARG when a text is not
valid UTF-8; when an encoder call fails, the requests with a text in that group fail with the
encoder's code and message.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from headroom.config import TOKENIZER_FILE
from headroom.length_groups import GroupingLimits, plan_groups
from headroom.model_config import own_file, parameter
from headroom.text_tokenizer import TextTokenizer, TokenizedTexts

TEXT_INPUT = "TEXT"
EMBEDDING_OUTPUT = "sentence_embedding"


def _copy(error):
    """A TritonError of its own for each response: Triton frees each error with its response."""
    return pb_utils.TritonError(error.message(), error.code())


def _texts(request):
    """The request's texts, or a TritonError."""
    values = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1)
    try:
        return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in values]
    except UnicodeDecodeError as exc:
        return pb_utils.TritonError(f"TEXT is not valid UTF-8: {exc}", pb_utils.TritonError.INVALID_ARG)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.encoder_model = parameter(config, "encoder_model")
        tokenizer_file = own_file(args, TOKENIZER_FILE)
        self.tokenizer = TextTokenizer(tokenizer_file, max_length=int(parameter(config, "max_length")))
        self.limits = GroupingLimits(
            max_batch_tokens=int(parameter(config, "max_batch_tokens")),
            max_rows=int(parameter(config, "max_rows")),
            max_added_padding=int(parameter(config, "max_added_padding")),
        )
        output = pb_utils.get_output_config_by_name(config, EMBEDDING_OUTPUT)
        self.dim = int(output["dims"][-1])
        pb_utils.Logger.log_info(
            f"embed: tokenizer {tokenizer_file}, max_length {self.tokenizer.max_length}, groups of at most "
            f"{self.limits.max_batch_tokens} tokens / {self.limits.max_rows} rows, added padding "
            f"<= {self.limits.max_added_padding} tokens"
        )

    async def execute(self, requests):
        responses: list = [None] * len(requests)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, rows)
        for index, request in enumerate(requests):
            decoded = _texts(request)
            if isinstance(decoded, pb_utils.TritonError):
                responses[index] = pb_utils.InferenceResponse(error=decoded)
                continue
            spans.append((index, len(texts), len(decoded)))
            texts.extend(decoded)
        if not texts:
            return responses

        embeddings, row_errors = await self._embed(self.tokenizer.encode(texts))
        for index, start, count in spans:
            error = next((e for e in row_errors[start : start + count] if e is not None), None)
            if error is not None:
                responses[index] = pb_utils.InferenceResponse(error=_copy(error))
            else:
                tensor = pb_utils.Tensor(EMBEDDING_OUTPUT, embeddings[start : start + count])
                responses[index] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    async def _embed(self, tokens: TokenizedTexts) -> tuple[np.ndarray, list]:
        """Embeddings of every row and, per row, the TritonError of its group's encoder call or None."""
        groups = plan_groups(tokens.lengths, self.limits)
        results = await asyncio.gather(*(self._encode(tokens, rows) for rows in groups))
        embeddings = np.zeros((len(tokens), self.dim), dtype=np.float32)
        row_errors: list = [None] * len(tokens)
        for rows, result in zip(groups, results, strict=True):
            if isinstance(result, pb_utils.TritonError):
                for row in rows.tolist():
                    row_errors[row] = result
            else:
                embeddings[rows] = result
        return embeddings, row_errors

    async def _encode(self, tokens: TokenizedTexts, rows: np.ndarray):
        """One encoder call for ``rows``: their embeddings, or the encoder's TritonError."""
        input_ids, attention_mask = tokens.padded(rows)
        request = pb_utils.InferenceRequest(
            model_name=self.encoder_model,
            inputs=[pb_utils.Tensor("input_ids", input_ids), pb_utils.Tensor("attention_mask", attention_mask)],
            requested_output_names=[EMBEDDING_OUTPUT],
        )
        response = await request.async_exec()
        if response.has_error():
            error = response.error()
            return pb_utils.TritonError(f"encoder failed: {error.message()}", error.code())
        return pb_utils.get_output_tensor_by_name(response, EMBEDDING_OUTPUT).as_numpy()
