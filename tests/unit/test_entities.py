"""Unit tests of training files with entities (``headroom.export.entities``, ``datasets``) and of
the Home Assistant demo split (``headroom.export.home_assistant``)."""

from __future__ import annotations

import json

import pytest
from headroom.export.datasets import DatasetError, load_labelled_file
from headroom.export.entities import Entity, EntityError, check_entities, markup, parse_markup
from headroom.export.home_assistant import home_assistant_split, write_split


def jsonl(tmp_path, *records) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


PLAIN = [{"text": "hello", "label": "greet"}, {"text": "hi", "label": "greet"}]
PLAIN += [{"text": "bye", "label": "leave"}, {"text": "see you", "label": "leave"}]


def test_markup_becomes_plain_text_and_spans():
    assert parse_markup("turn on the [kitchen](area) lights") == (
        "turn on the kitchen lights",
        (Entity(12, 19, "area"),),
    )
    text, spans = parse_markup("set the [living room](area) [lamp](name) to [50](brightness)%")
    assert [text[s.start : s.end] for s in spans] == ["living room", "lamp", "50"]
    assert markup(text, spans) == "set the [living room](area) [lamp](name) to [50](brightness)%"
    assert parse_markup("[urgent] call me") == ("[urgent] call me", ())  # no "](": plain text


@pytest.mark.parametrize(
    "text, problem",
    [
        ("turn on the [kitchen(area) lights ](x)", "'\\[' without"),
        ("the [a [b](x)](y)", "'\\[' without"),
        ("a ] b [c](d)", "']' without"),
        ("a [](area) b", "empty value"),
        ("a [b]() c", "empty label"),
        ("turn on [the light](area] now", "'\\[' without"),
    ],
)
def test_markup_that_does_not_parse_is_refused(text, problem):
    with pytest.raises(EntityError, match=problem):
        parse_markup(text)


@pytest.mark.parametrize(
    "entities, problem",
    [
        ([{"start": 12, "end": 40, "label": "area"}], "out of range"),
        ([{"start": -1, "end": 3, "label": "area"}], "out of range"),
        ([{"start": 5, "end": 5, "label": "area"}], "out of range"),
        ([{"start": 12, "end": 19, "label": "area"}, {"start": 12, "end": 26, "label": "name"}], "overlaps"),
        ([{"start": 13, "end": 19, "label": "area"}], "starts inside the word 'kitchen'"),
        ([{"start": 12, "end": 17, "label": "area"}], "ends inside the word 'kitchen'"),
        ([{"start": 11, "end": 19, "label": "area"}], "whitespace"),
        ([{"start": 12, "end": 19, "label": "the area"}], "whitespace"),
        ([{"start": 12, "end": 19, "label": "B-area"}], "B- or I-"),
        ([{"start": 12, "end": 19, "label": ""}], "blank"),
        ([{"start": 12, "end": 19}], "exactly"),
        ([{"start": 12.0, "end": 19, "label": "area"}], "integers"),
        ({"start": 12}, "must be a list"),
    ],
)
def test_bad_spans_are_refused(entities, problem):
    with pytest.raises(EntityError, match=problem):
        check_entities("turn on the kitchen lights", entities)


def test_jsonl_entities_are_read_and_moved_with_the_stripped_text(tmp_path):
    path = jsonl(
        tmp_path,
        {
            "text": "  turn on the kitchen lights",
            "label": "on",
            "entities": [{"start": 14, "end": 21, "label": "area"}],
        },
        {"text": "turn on the [hall](area) lamp", "label": "on"},
        *PLAIN,
    )
    data = load_labelled_file(path)
    assert data.texts[0] == "turn on the kitchen lights" and data.entities[0] == (Entity(12, 19, "area"),)
    assert data.texts[1] == "turn on the hall lamp" and data.entities[1] == (Entity(12, 16, "area"),)
    assert data.entities[2:] == [()] * 4 and data.slot_labels == ["area"]


def test_a_file_without_entities_is_a_classification_file(tmp_path):
    assert load_labelled_file(jsonl(tmp_path, *PLAIN)).entities is None


def test_refusals_name_the_file_and_line(tmp_path):
    bad = {"text": "turn on the kitchen", "label": "on", "entities": [{"start": 13, "end": 19, "label": "area"}]}
    with pytest.raises(DatasetError, match=r"train\.jsonl:3: entity 0 .*starts inside the word"):
        load_labelled_file(jsonl(tmp_path, *PLAIN[:2], bad, *PLAIN[2:]))
    both = {"text": "turn on the [kitchen](area)", "label": "on", "entities": []}
    with pytest.raises(DatasetError, match=r"train\.jsonl:1: .*not both"):
        load_labelled_file(jsonl(tmp_path, both, *PLAIN))
    broken = {"text": "turn on the [kitchen(area) ](x)", "label": "on"}
    with pytest.raises(DatasetError, match=r"train\.jsonl:5: "):
        load_labelled_file(jsonl(tmp_path, *PLAIN, broken))


def test_csv_texts_may_carry_markup(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'text,label\n"turn on the [kitchen](area) lights",on\nturn on the [hall](area),on\nbye,leave\nciao,leave\n',
        encoding="utf-8",
    )
    data = load_labelled_file(path)
    assert data.texts[0] == "turn on the kitchen lights" and data.entities[0] == (Entity(12, 19, "area"),)
    path.write_text("text,label,entities\na,b,c\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="unknown column"):
        load_labelled_file(path)


@pytest.fixture(scope="module")
def split():
    return home_assistant_split()


def test_the_home_assistant_split_holds_out_templates_and_values(split):
    assert len(split.intents) >= 40 and len(split.train.slot_labels) >= 20
    assert 1000 <= len(split.train.texts) <= 1300 and 250 <= len(split.held_out.texts) <= 450
    assert not set(split.train.texts) & set(split.held_out.texts)
    pairs = zip(split.train.texts, split.train.entities, strict=True)
    trained = {text[e.start : e.end] for text, spans in pairs for e in spans}
    for name in ("area", "name", "floor"):  # the supplied lists: no held-out value was ever trained
        assert not trained & set(split.held_out_values[name]), name
    for data in (split.train, split.held_out):
        for text, spans in zip(data.texts, data.entities, strict=True):
            assert check_entities(text, spans) == spans


def test_the_split_is_deterministic_and_round_trips_as_training_files(split, tmp_path):
    again = home_assistant_split()
    assert again.train.texts == split.train.texts and again.held_out.entities == split.held_out.entities
    train, held_out = write_split(split, tmp_path)
    data = load_labelled_file(train)
    assert (data.texts, data.labels, data.entities) == (split.train.texts, split.train.labels, split.train.entities)
