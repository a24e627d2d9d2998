"""Unit tests of the served tokenizer's helper (model_repository/tokenizer/1/text_tokenizer.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from export.embeddings import load_text_tokenizer_module
from export.encoder import model_source_dir
from headroom import config


@pytest.fixture(scope="module")
def module():
    return load_text_tokenizer_module()


@pytest.fixture(scope="module")
def tokenizer(module):
    return module.TextTokenizer(model_source_dir() / "tokenizer.json", max_length=config.MAX_SEQ_LEN_TOKENS)


def test_pads_to_longest_text_of_the_batch_not_to_max_length(tokenizer):
    ids, mask = tokenizer(["hi", "turn on the lights in the kitchen please"])
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape
    assert ids.shape[1] < config.MAX_SEQ_LEN_TOKENS
    assert mask[1].all()  # the longest text has no padding
    assert mask[0].sum() == 3  # [CLS] hi [SEP]
    assert (ids[0][mask[0] == 0] == 0).all()


def test_truncates_at_max_length(tokenizer):
    ids, mask = tokenizer(["word " * 1000])
    assert ids.shape == (1, config.MAX_SEQ_LEN_TOKENS)
    assert ids[0, -1] == 102  # [SEP] survives truncation


def test_matches_the_reference_tokenizer(tokenizer):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(model_source_dir()))
    texts = ["Hello, World!", "Ünïcode and emoji 🚀 work", ""]
    ids, mask = tokenizer(texts)
    expected = reference(
        texts, padding=True, truncation=True, max_length=config.MAX_SEQ_LEN_TOKENS, return_tensors="np"
    )
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


def test_empty_batch(tokenizer):
    ids, mask = tokenizer([])
    assert ids.shape == (0, 0) and mask.shape == (0, 0)


def test_served_config_truncates_where_the_project_says(module):
    text = (config.MODEL_REPOSITORY / config.TOKENIZER_MODEL / "config.pbtxt").read_text()
    value = re.search(r'key: "max_length"\s*value: \{ string_value: "(\d+)" \}', text).group(1)
    assert int(value) == config.MAX_SEQ_LEN_TOKENS


def test_finds_the_newest_encoder_version_with_a_tokenizer(module, tmp_path):
    for version in ("1", "3", "10"):
        (tmp_path / version).mkdir()
    (tmp_path / "1" / "tokenizer.json").write_text("{}")
    (tmp_path / "3" / "tokenizer.json").write_text("{}")
    assert module.find_tokenizer_file(tmp_path) == tmp_path / "3" / "tokenizer.json"
    with pytest.raises(FileNotFoundError):
        module.find_tokenizer_file(tmp_path / "10")
