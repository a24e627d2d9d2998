"""How the pipeline reaches heads: the one place that knows how heads execute.

``HeadDispatcher.run`` takes the batch's sentence embeddings and each row's head name and makes
**one** BLS call to the shared ``executor`` model with all rows, whatever their heads. It returns,
per row, the head's probabilities and label names or a ``TritonError`` for that row alone. The
executor resolves each name to the READY version of its registration model ``head_<name>``,
checks the naming rule (so no row ever reaches a non-head model) and runs the heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

EXECUTOR_INPUT = "sentence_embedding"
EXECUTOR_HEAD_INPUT = "HEAD"
EXECUTOR_OUTPUTS = ["probabilities", "labels", "class_count", "error_code", "error_message"]
#: The executor's ``error_code`` values (its ROW_ERROR_CODES), as TritonError code names.
ROW_ERROR_CODES = ("OK", "INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL")


@dataclass(frozen=True)
class HeadOutput:
    probabilities: np.ndarray  # [classes], FP32
    labels: np.ndarray  # [classes], UTF-8 label names (bytes) in probability order, as the executor sent them


class HeadDispatcher:
    def __init__(self, executor_model: str) -> None:
        self._executor = executor_model

    async def run(self, embeddings: np.ndarray, heads: list[str]) -> list:
        """Each row's ``HeadOutput`` or ``TritonError``; never raises."""
        try:
            return await self._run(embeddings, heads)
        except Exception as exc:  # a broken call fails these rows, never the pipeline
            return [pb_utils.TritonError(f"head execution failed: {exc}", pb_utils.TritonError.INTERNAL)] * len(heads)

    async def _run(self, embeddings: np.ndarray, heads: list[str]) -> list:
        request = pb_utils.InferenceRequest(
            model_name=self._executor,
            inputs=[
                pb_utils.Tensor(EXECUTOR_INPUT, np.ascontiguousarray(embeddings, dtype=np.float32)),
                pb_utils.Tensor(
                    EXECUTOR_HEAD_INPUT, np.array([[head.encode("utf-8")] for head in heads], dtype=np.object_)
                ),
            ],
            requested_output_names=EXECUTOR_OUTPUTS,
        )
        response = await request.async_exec()
        if response.has_error():
            error = response.error()
            return [pb_utils.TritonError(f"head execution failed: {error.message()}", error.code())] * len(heads)
        out = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in EXECUTOR_OUTPUTS}
        results: list = []
        for row in range(len(heads)):
            code = int(out["error_code"][row, 0])
            if code:
                message = out["error_message"][row, 0]
                message = message.decode("utf-8") if isinstance(message, bytes) else str(message)
                results.append(pb_utils.TritonError(message, _triton_code(code)))
                continue
            count = int(out["class_count"][row, 0])
            results.append(HeadOutput(out["probabilities"][row, :count], out["labels"][row, :count]))
        return results


def _triton_code(code: int):
    name = ROW_ERROR_CODES[code] if 0 < code < len(ROW_ERROR_CODES) else "INTERNAL"
    return getattr(pb_utils.TritonError, name)
