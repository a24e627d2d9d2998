"""Triton Python model ``embed``: texts -> sentence embeddings, with length-aware batching.

Input: ``TEXT`` (BYTES [N, 1], UTF-8 texts; N rows per request, up to ``max_batch_size``).
Outputs, row i for text i: ``sentence_embedding`` (FP32 [N, 384], L2-normalised) and, only
when a request names them (token heads: the pipeline's slot rows, and slot training),
``token_embeddings`` (FP32 [N, T, 384], T the longest text of the request in tokens, [CLS] and
[SEP] included; zeros past a text's end), ``token_offsets`` (INT32 [N, T, 2], each token's
character offsets into the text, code points, end exclusive; (0, 0) for [CLS] and [SEP],
(-1, -1) past the end) and ``token_count`` (INT32 [N, 1]). A batch whose requests name none of
them never asks the encoder for its token embeddings.

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
TOKENS_OUTPUT = "token_embeddings"
OFFSETS_OUTPUT = "token_offsets"
COUNT_OUTPUT = "token_count"
TOKEN_OUTPUTS = (TOKENS_OUTPUT, OFFSETS_OUTPUT, COUNT_OUTPUT)


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
        spans: list[tuple[int, int, int, bool]] = []  # (request index, first row, rows, wants tokens)
        for index, request in enumerate(requests):
            decoded = _texts(request)
            if isinstance(decoded, pb_utils.TritonError):
                responses[index] = pb_utils.InferenceResponse(error=decoded)
                continue
            wants_tokens = any(name in TOKEN_OUTPUTS for name in request.requested_output_names())
            spans.append((index, len(texts), len(decoded), wants_tokens))
            texts.extend(decoded)
        if not texts:
            return responses

        token_rows = np.zeros(len(texts), dtype=bool)
        for _, start, count, wants_tokens in spans:
            token_rows[start : start + count] = wants_tokens
        tokens = self.tokenizer.encode(texts, offsets=bool(token_rows.any()))
        embeddings, token_embeddings, row_errors = await self._embed(tokens, token_rows)
        for index, start, count, wants_tokens in spans:
            error = next((e for e in row_errors[start : start + count] if e is not None), None)
            if error is not None:
                responses[index] = pb_utils.InferenceResponse(error=_copy(error))
                continue
            outputs = [pb_utils.Tensor(EMBEDDING_OUTPUT, embeddings[start : start + count])]
            if wants_tokens:
                outputs.extend(self._token_outputs(tokens, token_embeddings, range(start, start + count)))
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
        return responses

    def _token_outputs(self, tokens: TokenizedTexts, token_embeddings: dict, rows: range) -> list:
        """``token_embeddings``, ``token_offsets`` and ``token_count`` of ``rows``, padded to
        the longest of them."""
        rows = list(rows)
        longest = int(tokens.lengths[rows].max())
        stacked = np.zeros((len(rows), longest, self.dim), dtype=np.float32)
        for position, row in enumerate(rows):
            stacked[position, : tokens.lengths[row]] = token_embeddings[row]
        counts = tokens.lengths[rows].astype(np.int32).reshape(-1, 1)
        return [
            pb_utils.Tensor(TOKENS_OUTPUT, stacked),
            pb_utils.Tensor(OFFSETS_OUTPUT, tokens.padded_offsets(rows)),
            pb_utils.Tensor(COUNT_OUTPUT, counts),
        ]

    async def _embed(self, tokens: TokenizedTexts, token_rows: np.ndarray) -> tuple[np.ndarray, dict, list]:
        """Embeddings of every row, the token embeddings [tokens, D] of the rows in
        ``token_rows`` (by row) and, per row, the TritonError of its group's encoder call or None."""
        groups = plan_groups(tokens.lengths, self.limits)
        results = await asyncio.gather(*(self._encode(tokens, rows, bool(token_rows[rows].any())) for rows in groups))
        embeddings = np.zeros((len(tokens), self.dim), dtype=np.float32)
        token_embeddings: dict[int, np.ndarray] = {}
        row_errors: list = [None] * len(tokens)
        for rows, result in zip(groups, results, strict=True):
            if isinstance(result, pb_utils.TritonError):
                for row in rows.tolist():
                    row_errors[row] = result
                continue
            sentences, per_token = result
            embeddings[rows] = sentences
            if per_token is not None:
                for position, row in enumerate(rows.tolist()):
                    if token_rows[row]:
                        token_embeddings[row] = per_token[position, : tokens.lengths[row]]
        return embeddings, token_embeddings, row_errors

    async def _encode(self, tokens: TokenizedTexts, rows: np.ndarray, with_tokens: bool):
        """One encoder call for ``rows``: (sentence embeddings, token embeddings or None), or
        the encoder's TritonError. Token embeddings are asked for only when a row needs them."""
        input_ids, attention_mask = tokens.padded(rows)
        outputs = [EMBEDDING_OUTPUT, TOKENS_OUTPUT] if with_tokens else [EMBEDDING_OUTPUT]
        request = pb_utils.InferenceRequest(
            model_name=self.encoder_model,
            inputs=[pb_utils.Tensor("input_ids", input_ids), pb_utils.Tensor("attention_mask", attention_mask)],
            requested_output_names=outputs,
        )
        response = await request.async_exec()
        if response.has_error():
            error = response.error()
            return pb_utils.TritonError(f"encoder failed: {error.message()}", error.code())
        sentences = pb_utils.get_output_tensor_by_name(response, EMBEDDING_OUTPUT).as_numpy()
        per_token = pb_utils.get_output_tensor_by_name(response, TOKENS_OUTPUT).as_numpy() if with_tokens else None
        return sentences, per_token
