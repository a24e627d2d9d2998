"""Triton Python model ``tokenizer``: TEXT (BYTES) -> input_ids, attention_mask (INT64).

Each request's texts are padded to that request's longest text and truncated at the
``max_length`` parameter of ``config.pbtxt``. The tokenizer file is the one shipped next to the
encoder (``<repository>/<encoder_model>/<version>/tokenizer.json``), so tokenizer and encoder
always come from the same export.

Errors (that request alone): INVALID_ARG when a text is not valid UTF-8.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from headroom.text_tokenizer import TextTokenizer, find_tokenizer_file


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        max_length = int(parameters["max_length"]["string_value"])
        encoder_model = parameters["encoder_model"]["string_value"]
        repository = os.path.dirname(os.path.normpath(args["model_repository"]))
        tokenizer_file = find_tokenizer_file(os.path.join(repository, encoder_model))
        self.tokenizer = TextTokenizer(tokenizer_file, max_length=max_length)
        pb_utils.Logger.log_info(f"tokenizer: {tokenizer_file}, max_length={max_length}")

    def execute(self, requests):
        return [self._tokenize(request) for request in requests]

    def _tokenize(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        try:
            texts = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in raw]
        except UnicodeDecodeError as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"TEXT is not valid UTF-8: {exc}", pb_utils.TritonError.INVALID_ARG)
            )
        input_ids, attention_mask = self.tokenizer(texts)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("input_ids", input_ids),
                pb_utils.Tensor("attention_mask", attention_mask.astype(np.int64)),
            ]
        )
