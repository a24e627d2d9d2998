"""Unit tests of row errors: the codes, their wire form, and the one mapping to Triton's codes."""

from __future__ import annotations

import numpy as np
import pytest
from headroom import config, row_errors
from headroom.model_config import read_model_config
from headroom.row_errors import RowError, from_wire, to_wire, triton_error
from tritonclient.grpc import model_config_pb2


class FakeTritonError:
    """The part of ``pb_utils.TritonError`` ``triton_error`` uses: codes by name, (message, code)."""

    INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL = 3, 5, 10, 13

    def __init__(self, message: str, code: int) -> None:
        self.message, self.code = message, code


class FakePbUtils:
    TritonError = FakeTritonError


def test_codes_are_triton_error_code_names():
    assert row_errors.CODES == ("INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL")
    with pytest.raises(ValueError, match="unknown row error code 'OK'"):
        RowError("OK", "fine")


@pytest.mark.parametrize("code", row_errors.CODES)
def test_a_row_error_travels_as_its_code_name_and_message(code):
    error = RowError(code, "head 'caf\u00e9' is not loaded")
    wire = to_wire(error)
    assert wire == (code.encode(), "head 'caf\u00e9' is not loaded".encode())
    assert from_wire(*wire) == error
    assert from_wire(code, "head 'caf\u00e9' is not loaded") == error  # str, as some numpy arrays hold
    mapped = triton_error(error, FakePbUtils)
    assert (mapped.message, mapped.code) == (error.message, getattr(FakeTritonError, code))


def test_an_answered_row_has_no_error_and_an_unknown_code_reads_as_internal():
    assert to_wire(None) == (b"", b"") and from_wire(b"", b"") is None
    assert from_wire(np.array([b""], dtype=np.object_)[0], b"") is None
    assert from_wire(b"SOMETHING_NEW", b"why") == RowError("INTERNAL", "why")


def test_each_mapping_makes_a_new_triton_error():
    """Triton frees a response's error with it: two responses must never share one."""
    error = RowError("NOT_FOUND", "gone")
    assert triton_error(error, FakePbUtils) is not triton_error(error, FakePbUtils)


def test_the_executor_declares_error_code_as_the_code_name():
    executor = read_model_config(config.DEFAULT_MODEL_REPOSITORY / config.EXECUTOR_MODEL)
    error_code = next(output for output in executor.output if output.name == "error_code")
    assert model_config_pb2.DataType.Name(error_code.data_type) == "TYPE_STRING"
