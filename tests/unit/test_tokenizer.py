"""Unit tests of the served tokenizer wrapper (``headroom.text_tokenizer``, used by ``embed`` and ``pipeline``)."""

from __future__ import annotations

import numpy as np
import pytest
from headroom import config, text_tokenizer
from headroom.export.encoder import model_source_dir


@pytest.fixture(scope="module")
def module():
    return text_tokenizer


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
    assert len(tokenizer.encode([])) == 0


def test_encode_keeps_each_text_unpadded_and_pads_a_group_to_its_own_longest(tokenizer):
    texts = ["hi", "turn on the lights in the kitchen please", "ok then", "word " * 1000]
    tokens = tokenizer.encode(texts)
    assert tokens.lengths.tolist() == [3, 10, 4, config.MAX_SEQ_LEN_TOKENS]
    ids, mask = tokens.padded([2, 0])  # rows in the order asked for, padded to the longer of the two
    assert ids.shape == mask.shape == (2, 4)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(ids[0], tokens.ids[2])
    np.testing.assert_array_equal(ids[1, :3], tokens.ids[0])
    full_ids, full_mask = tokenizer(texts)  # all rows, padded to the longest: the reference layout
    np.testing.assert_array_equal(full_ids[2, :4], ids[0])
    assert full_ids.shape == (4, config.MAX_SEQ_LEN_TOKENS)


def test_served_config_truncates_where_the_project_says(module):
    from headroom.model_config import parameters_in

    parameters = parameters_in(config.DEFAULT_MODEL_REPOSITORY / config.EMBED_MODEL)
    assert int(parameters["max_length"]) == config.MAX_SEQ_LEN_TOKENS


def test_finds_the_newest_encoder_version_with_a_tokenizer(module, tmp_path):
    for version in ("1", "3", "10"):
        (tmp_path / version).mkdir()
    (tmp_path / "1" / "tokenizer.json").write_text("{}")
    (tmp_path / "3" / "tokenizer.json").write_text("{}")
    assert module.find_tokenizer_file(tmp_path) == tmp_path / "3" / "tokenizer.json"
    with pytest.raises(FileNotFoundError):
        module.find_tokenizer_file(tmp_path / "10")


def test_blank_check_agrees_with_the_tokenizer_on_every_code_point():
    """The pipeline refuses a text as empty exactly when the tokenizer keeps nothing of it."""
    from headroom.text_tokenizer import BlankCheck
    from tokenizers import Tokenizer

    tokenizer_file = model_source_dir() / "tokenizer.json"
    blank = BlankCheck(str(tokenizer_file))
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    # Every code point of the first three planes (surrogates excluded), and mixed texts.
    texts = [chr(c) for c in range(0x30000) if not 0xD800 <= c <= 0xDFFF]
    texts += ["\x00\x00\x00", "\u200b\u200d\ufeff", "\x01\x02 \u00ad", "a\u200b", " \u0301 ", "\ufffd\t", "é"]
    disagreements = [
        text
        for text, encoding in zip(texts, tokenizer.encode_batch(texts), strict=True)
        if blank(text) == any(not special for special in encoding.special_tokens_mask)
    ]
    assert not disagreements, [f"U+{ord(t[0]):04X}" if len(t) == 1 else t for t in disagreements[:10]]
    assert blank("\x00\x00\x00") and blank("\u200b\u200d\ufeff") and blank(" \t\n")
    assert not blank("é") and not blank("a\u200b")
