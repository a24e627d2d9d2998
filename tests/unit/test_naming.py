"""Unit tests of the head naming rule (client side and the executor's copy)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from headroom import config
from headroom.naming import (
    HEAD_NAME_PATTERN,
    RESERVED_HEAD_NAMES,
    InvalidHeadName,
    head_model_name,
    head_models_in,
    head_name_of,
    validate_head_name,
)


def _head_files_module():
    path = config.DEFAULT_MODEL_REPOSITORY / config.EXECUTOR_MODEL / "1" / "head_files.py"
    spec = importlib.util.spec_from_file_location("head_files_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["smart_home", "acme-2", "a", "0day", "x" * 48])
def test_valid_names_map_to_head_models(name):
    assert head_model_name(name) == f"head_{name}"
    assert head_name_of(f"head_{name}") == name


@pytest.mark.parametrize(
    "name", ["", "Acme", "_x", "-x", "a b", "../x", "x/y", "x" * 49, "caf\u00e9", "head.x", "a\x00b"]
)
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(InvalidHeadName, match="1-48 characters"):
        validate_head_name(name)


@pytest.mark.parametrize("name", sorted(config.SYSTEM_MODELS))
def test_system_model_names_are_not_head_names(name):
    with pytest.raises(InvalidHeadName, match="system model"):
        validate_head_name(name)
    assert head_name_of(f"head_{name}") is None


def test_non_head_models_have_no_head_name():
    assert head_name_of("encoder") is None
    assert head_name_of("pipeline") is None
    assert head_name_of("head_") is None


def test_executor_enforces_the_same_rule():
    dispatch = _head_files_module()
    assert dispatch.HEAD_NAME_PATTERN == HEAD_NAME_PATTERN
    assert dispatch.HEAD_MODEL_PREFIX == config.HEAD_MODEL_PREFIX
    assert dispatch.RESERVED_HEAD_NAMES == RESERVED_HEAD_NAMES
    assert dispatch.head_name_problem("smart_home") is None
    assert "system model" in dispatch.head_name_problem("encoder")
    assert "invalid head name" in dispatch.head_name_problem("../x")


def test_head_models_in_lists_only_head_folders_with_a_config(tmp_path):
    for folder in ["head_a", "head_b", "encoder", "head_Bad", "head_c"]:
        (tmp_path / folder).mkdir()
    for folder in ["head_a", "head_b", "encoder", "head_Bad"]:
        (tmp_path / folder / "config.pbtxt").write_text("")
    assert head_models_in(tmp_path) == ["head_a", "head_b"]
