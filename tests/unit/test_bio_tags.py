"""Unit tests of ``headroom.bio_tags`` with the served tokenizer: character spans survive the
round trip spans -> token tags -> decoding -> characters on awkward text, decoding only ever
yields valid BIO, and nothing is invented beyond the truncation length."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from headroom import bio_tags
from headroom.bio_tags import IGNORED, char_spans, decode, tag_names, token_targets, viterbi
from headroom.export.encoder import model_source_dir
from headroom.export.entities import Entity
from headroom.text_tokenizer import TextTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

TAGS = tag_names(["area", "name"])


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(model_source_dir() / "tokenizer.json", max_length=256)


def spans_of(text: str, *pairs: tuple[str, str]) -> list[Entity]:
    """Entities for each (covered text, label), found left to right."""
    found, position = [], 0
    for covered, label in pairs:
        start = text.index(covered, position)
        found.append(Entity(start, start + len(covered), label))
        position = start + len(covered)
    return found


def round_trip(tokenizer, text: str, spans: list[Entity], tags=TAGS):
    (offsets,) = tokenizer.encode([text], offsets=True).offsets
    targets, dropped = token_targets(offsets, spans, tags)
    probabilities = np.full((1, len(offsets), len(tags)), 1e-3, dtype=np.float32)
    for position, target in enumerate(targets):
        probabilities[0, position, 0 if target == IGNORED else target] = 1.0
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    (token_spans,) = decode(probabilities, [len(offsets)], tags)
    return char_spans(token_spans, offsets, text), dropped


CASES = [
    ("turn on the lights in the kitchen", [("kitchen", "area")]),
    ("Allume la lumière du salon à côté du Café", [("lumière", "name"), ("Café", "area")]),
    ("turn on the lamp,   in the   living room!!!", [("lamp", "name"), ("living room", "area")]),
    ("😀 switch on 🏠 the porch light 😀", [("porch light", "name")]),
    ("東京の部屋 の ライト", [("東京の部屋", "area"), ("ライト", "name")]),
    ("the Ä\u0308nnchen light in the naïve den", [("Ä\u0308nnchen light", "name"), ("den", "area")]),
    ("dim the kitchen's ceiling-light", [("kitchen", "area"), ("ceiling-light", "name")]),
]


@pytest.mark.parametrize("text, pairs", CASES)
def test_character_spans_survive_the_round_trip(tokenizer, text, pairs):
    spans = spans_of(text, *pairs)
    found, dropped = round_trip(tokenizer, text, spans)
    assert dropped == 0
    assert [(s.start, s.end, s.label) for s in found] == [(s.start, s.end, s.label) for s in spans]
    assert all(s.text == text[s.start : s.end] for s in found)


def test_offsets_point_into_the_original_text(tokenizer):
    text = "  Ça   VA?  Über 東京 😀 naïve"
    (offsets,) = tokenizer.encode([text], offsets=True).offsets
    words = [text[start:end] for start, end in offsets if end > start]
    assert "".join(words) == "".join(text.split())  # every character but whitespace, in order


def test_nothing_is_invented_beyond_the_truncation_length():
    short = TextTokenizer(model_source_dir() / "tokenizer.json", max_length=16)
    text = "turn on the light in the kitchen " * 4 + "and in the garage"
    spans = spans_of(text, ("kitchen", "area"), ("garage", "area"))
    found, dropped = round_trip(short, text, spans)
    assert dropped == 1 and [s.text for s in found] == ["kitchen"]
    padded = short.encode([text], offsets=True).padded_offsets([0])
    assert padded.shape == (1, 16, 2) and padded[0, -1].tolist() == [0, 0]  # [SEP]


def valid(path: list[int], tags: list[str]) -> bool:
    previous = "O"
    for tag in (tags[i] for i in path):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_viterbi_returns_the_best_valid_sequence(length, seed):
    rng = np.random.default_rng(seed)
    tags = tag_names(["a", "b"])
    log_probs = np.log(rng.dirichlet(np.ones(len(tags)), size=length))
    path = viterbi(log_probs, tags).tolist()
    assert valid(path, tags)
    best = max(
        (p for p in itertools.product(range(len(tags)), repeat=length) if valid(list(p), tags)),
        key=lambda p: log_probs[np.arange(length), list(p)].sum(),
    )
    assert np.isclose(log_probs[np.arange(length), path].sum(), log_probs[np.arange(length), list(best)].sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_decoded_spans_are_always_valid_and_disjoint(seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(TAGS)), size=(6, 12)).astype(np.float32)
    lengths = rng.integers(2, 13, size=6)
    for row, spans in zip(range(6), decode(probabilities, lengths, TAGS), strict=True):
        end = 1
        for span in spans:
            assert end <= span.first < span.end <= lengths[row] - 1  # inside [CLS] .. [SEP]
            assert span.label in ("area", "name") and 0 < span.score <= 1
            end = span.end


def test_decoding_256_rows_is_fast():
    import time

    tags = tag_names([f"s{i}" for i in range(10)])
    probabilities = np.random.default_rng(0).dirichlet(np.ones(len(tags)), size=(256, 64)).astype(np.float32)
    started = time.perf_counter()
    decode(probabilities, np.full(256, 64), tags)
    assert time.perf_counter() - started < 0.5  # one batch of the pipeline's largest


def test_tag_names_are_checked():
    assert tag_names(["b", "a", "a"]) == ["O", "B-a", "I-a", "B-b", "I-b"]
    assert bio_tags.slot_labels_of(tag_names(["x", "y"])) == ["x", "y"]
    for bad in (["O"], ["B-a", "I-a", "O"], ["O", "I-a", "B-a"], ["O", "B-b", "I-b", "B-a", "I-a"]):
        with pytest.raises(ValueError):
            bio_tags.check_tag_names(bad)
