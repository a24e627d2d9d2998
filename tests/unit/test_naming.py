"""Unit tests of the head naming rule (client side, and the form the executor enforces)."""

from __future__ import annotations

import pytest
from headroom import config, naming
from headroom.executor import head_runner
from headroom.naming import (
    InvalidHeadName,
    head_model_name,
    head_models_in,
    head_name_of,
    head_name_problem,
    validate_head_name,
)


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
    """The executor checks each row's name with this very function: one rule, one copy."""
    assert head_runner.head_name_problem is naming.head_name_problem
    assert naming.RESERVED_HEAD_NAMES == {*config.SYSTEM_MODELS, "tokenizer"}
    assert head_name_problem("smart_home") is None
    assert "system model" in head_name_problem("encoder")
    assert "invalid head name" in head_name_problem("../x")


@pytest.mark.parametrize("name", ["", "Acme", "../x", "x" * 49, "caf\u00e9", "a\x00b"])
def test_the_executor_form_refuses_what_validation_refuses(name):
    with pytest.raises(InvalidHeadName):
        validate_head_name(name)
    assert head_name_problem(name) == (
        f"invalid head name {name!r}: names are 1-48 characters of a-z, 0-9, '_' and '-' "
        "starting with a letter or digit"
    )


def test_the_executor_form_shortens_a_long_name():
    problem = head_name_problem("x" * 1000)
    assert problem.startswith(f"invalid head name {'x' * 64!r}... (1000 characters): names are 1-48")


@pytest.mark.parametrize("name", sorted(naming.RESERVED_HEAD_NAMES))
def test_the_executor_form_refuses_system_models(name):
    assert head_name_problem(name) == f"'{name}' is a system model, not a head"


def test_head_models_in_lists_only_head_folders_with_a_config(tmp_path):
    for folder in ["head_a", "head_b", "encoder", "head_Bad", "head_c"]:
        (tmp_path / folder).mkdir()
    for folder in ["head_a", "head_b", "encoder", "head_Bad"]:
        (tmp_path / folder / "config.pbtxt").write_text("")
    assert head_models_in(tmp_path) == ["head_a", "head_b"]
