"""A Python-based Triton backend named ``onnxruntime`` that serves ``model.onnx`` files.

The ``nvidia-pytriton`` wheel ships Triton and its Python backend but not the C++ ONNX Runtime
backend. Triton looks for ``<backend-dir>/<backend>/model.py`` when a model's config says
``backend: "<backend>"`` and no shared library of that name exists, so this file lets the very
same ``config.pbtxt`` (``backend: "onnxruntime"``) run in the embedded server and, unchanged, in
the official Triton container, where the real C++ backend takes over.

Contract (what it honours from ``config.pbtxt``):
- ``default_model_filename`` (default ``model.onnx``) inside the version folder;
- ``input``/``output`` names and data types; an output not named in the config is never computed;
- ``max_batch_size``: when > 0, all requests of a batch whose inputs share their non-batch shapes
  run as **one** session call and are split back per request; others run in shape groups;
- only the outputs some request asked for are computed (all of them when none is named);
- ONNX Runtime session options named as the C++ backend names them: ``parameters``
  ``intra_op_thread_count`` / ``inter_op_thread_count`` (0 = ONNX Runtime's default),
  ``execution_mode`` (0 sequential, 1 parallel), ``enable_mem_arena`` and ``enable_mem_pattern``
  ("1"/"0"), and ``optimization { graph { level } }`` (-1 basic, 1 basic + extended, 2 none;
  unset = all optimisations).

Errors: a request missing an input or whose group fails in ONNX Runtime gets an error response
(INVALID_ARG or INTERNAL); other requests of the batch are unaffected.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

#: ``optimization.graph.level`` of config.pbtxt, as the C++ ONNX Runtime backend reads it.
GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def _parameter(model_config: dict, key: str, default: str) -> str:
    entry = model_config.get("parameters", {}).get(key)
    if not entry:
        return default
    return entry.get("string_value", default)


def _flag(model_config: dict, key: str, default: bool) -> bool:
    return _parameter(model_config, key, "1" if default else "0").strip().lower() in ("1", "true")


def session_options(model_config: dict) -> ort.SessionOptions:
    """ONNX Runtime options from the config, named and valued as the C++ backend does."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(_parameter(model_config, "intra_op_thread_count", "0"))
    options.inter_op_num_threads = int(_parameter(model_config, "inter_op_thread_count", "0"))
    if _parameter(model_config, "execution_mode", "0") == "1":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.enable_cpu_mem_arena = _flag(model_config, "enable_mem_arena", True)
    options.enable_mem_pattern = _flag(model_config, "enable_mem_pattern", True)
    level = int(model_config.get("optimization", {}).get("graph", {}).get("level", 0) or 0)
    options.graph_optimization_level = GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return options


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(f"model file {path} does not exist")

        options = session_options(config)
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

        self.batching = config.get("max_batch_size", 0) > 0
        self.inputs = [
            (entry["name"], pb_utils.triton_string_to_numpy(entry["data_type"]), entry.get("optional", False))
            for entry in config["input"]
        ]
        self.output_dtypes = {
            entry["name"]: pb_utils.triton_string_to_numpy(entry["data_type"]) for entry in config["output"]
        }
        session_outputs = {meta.name for meta in self.session.get_outputs()}
        missing = set(self.output_dtypes) - session_outputs
        if missing:
            raise pb_utils.TritonModelException(
                f"config.pbtxt names outputs {sorted(missing)} that {filename} does not produce "
                f"(it produces {sorted(session_outputs)})"
            )
        self.logger.log_info(
            f"{self.model_name}: serving {path} with ONNX Runtime {ort.__version__} "
            f"(intra-op threads {options.intra_op_num_threads or 'default'})"
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        feeds: list[dict[str, np.ndarray]] = [None] * len(requests)
        wanted: list[list[str]] = [None] * len(requests)

        for index, request in enumerate(requests):
            feed, error = self._read_inputs(request)
            if error is not None:
                responses[index] = pb_utils.InferenceResponse(error=error)
                continue
            feeds[index] = feed
            wanted[index] = [name for name in request.requested_output_names() if name in self.output_dtypes] or list(
                self.output_dtypes
            )
            shapes = tuple(
                (name, array.shape[1:] if self.batching else (index,)) for name, array in sorted(feed.items())
            )
            groups[shapes].append(index)

        for members in groups.values():
            self._run_group(members, feeds, wanted, responses)
        return responses

    def _read_inputs(self, request):
        feed = {}
        for name, dtype, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if optional:
                    continue
                return None, pb_utils.TritonError(f"input '{name}' is missing", pb_utils.TritonError.INVALID_ARG)
            array = tensor.as_numpy()
            feed[name] = array if array.dtype == dtype else array.astype(dtype)
        return feed, None

    def _run_group(self, members, feeds, wanted, responses) -> None:
        output_names = sorted({name for index in members for name in wanted[index]})
        if len(members) == 1:
            batch_feed = feeds[members[0]]
        else:
            batch_feed = {name: np.concatenate([feeds[i][name] for i in members], axis=0) for name in feeds[members[0]]}
        try:
            results = self.session.run(output_names, batch_feed)
        except Exception as exc:  # ONNX Runtime raises its own exception types for bad shapes/values
            if len(members) > 1:
                # One bad request must not fail its batch-mates: run each member on its own.
                for index in members:
                    self._run_group([index], feeds, wanted, responses)
                return
            # One error object per response: Triton frees each with its response.
            error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}", pb_utils.TritonError.INTERNAL)
            responses[members[0]] = pb_utils.InferenceResponse(error=error)
            return
        by_name = dict(zip(output_names, results, strict=True))
        offset = 0
        for index in members:
            rows = next(iter(feeds[index].values())).shape[0] if self.batching else None
            tensors = []
            for name in wanted[index]:
                value = by_name[name]
                if rows is not None:
                    value = value[offset : offset + rows]
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.output_dtypes[name])))
            if rows is not None:
                offset += rows
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.session = None
