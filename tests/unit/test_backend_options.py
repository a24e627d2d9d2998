"""Unit tests of the Python-based onnxruntime backend's reading of config.pbtxt options."""

from __future__ import annotations

import importlib.util
import sys

import onnxruntime as ort
import pytest
from headroom import config


@pytest.fixture(scope="module")
def backend():
    path = config.PROJECT_ROOT / "backends" / "onnxruntime" / "model.py"
    spec = importlib.util.spec_from_file_location("onnxruntime_backend_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def params(**values: str) -> dict:
    return {"parameters": {key: {"string_value": value} for key, value in values.items()}}


def test_defaults_match_onnx_runtime(backend):
    options = backend.session_options({})
    assert options.intra_op_num_threads == 0 and options.inter_op_num_threads == 0
    assert options.enable_cpu_mem_arena and options.enable_mem_pattern
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_parameters_use_the_cpp_backends_names_and_values(backend):
    options = backend.session_options(
        params(
            intra_op_thread_count="1",
            inter_op_thread_count="2",
            execution_mode="1",
            enable_mem_arena="0",
            enable_mem_pattern="false",
        )
    )
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern


@pytest.mark.parametrize(
    "level, expected",
    [
        (-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        (1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        (2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        (0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_graph_level(backend, level, expected):
    assert backend.session_options({"optimization": {"graph": {"level": level}}}).graph_optimization_level == expected
