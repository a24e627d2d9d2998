"""Unit tests of training files with entities: the markup and the spans
(``headroom.export.entities``) and how ``headroom.export.datasets`` reads them, file and line."""

from __future__ import annotations

import json

import pytest
from headroom.export.datasets import DatasetError, load_labelled_file
from headroom.export.entities import Entity, EntityError, check_entities, markup, parse_markup

TEXT = "turn on the kitchen lights"
PLAIN = [{"text": "hello", "label": "greet"}, {"text": "hi", "label": "greet"}]
PLAIN += [{"text": "bye", "label": "leave"}, {"text": "see you", "label": "leave"}]


def jsonl(tmp_path, *records, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def span(start, end, label="area"):
    return {"start": start, "end": end, "label": label}


def test_markup_becomes_plain_text_and_spans():
    assert parse_markup("turn on the [kitchen](area) lights") == (TEXT, (Entity(12, 19, "area"),))
    text, spans = parse_markup("set the [living room](area) [lamp](name) to [50](brightness)%")
    assert [(text[s.start : s.end], s.label) for s in spans] == [
        ("living room", "area"),
        ("lamp", "name"),
        ("50", "brightness"),
    ]
    assert markup(text, spans) == "set the [living room](area) [lamp](name) to [50](brightness)%"
    # Offsets are code points: an accent or an emoji before a group counts one each.
    text, spans = parse_markup("café 🎉 [salon](area)")
    assert text[spans[0].start : spans[0].end] == "salon" and spans[0].start == 7


@pytest.mark.parametrize("text", ["[urgent] call me", "a ] b [ c", "see [the docs] (page 2)"])
def test_a_text_without_the_markup_sign_is_plain_brackets_included(text):
    assert parse_markup(text) == (text, ())


@pytest.mark.parametrize(
    "text, problem",
    [
        ("turn on the [kitchen(area) lights ](x)", r"'\[' at character 12 does not start"),
        ("turn on the [kitchen lights](area", r"unclosed '\(' at character 28"),
        ("x [a](b) [c", r"unclosed '\[' at character 9"),
        ("the [a [b](x)](y)", r"nested '\[' at character 7 inside the '\[' at character 4"),
        ("a ] b [c](d)", r"'\]' at character 2 without a matching '\['"),
        ("a [](area) b", r"empty value in the markup '\[\]\(area\)' at character 2"),
        ("a [b]() c", "empty label"),
        ("a [b](  ) c", "empty label"),
        ("turn on [the light](area] now", r"unclosed '\(' at character 19"),
    ],
)
def test_markup_that_does_not_parse_is_refused_with_where(text, problem):
    with pytest.raises(EntityError, match=problem):
        parse_markup(text)


@pytest.mark.parametrize(
    "entities, problem",
    [
        ([span(12, 40)], r"entity 0 \(12-40\): out of range for a text of 26 characters"),
        ([span(-1, 3)], "out of range"),
        ([span(5, 5)], "out of range"),
        ([span(19, 12)], "out of range"),
        ([span(12, 19), span(12, 26, "name")], r"entity 1 'kitchen lights' \(12-26\) overlaps entity 0 'kitchen'"),
        ([span(0, 4, "verb"), span(12, 26), span(20, 26, "x")], r"entity 2 'lights' .*overlaps entity 1"),
        ([span(12, 19), span(12, 19)], "overlaps"),
        ([span(13, 19)], r"entity 0 'itchen' \(13-19\): starts inside the word 'kitchen'"),
        ([span(12, 17)], "ends inside the word 'kitchen'"),
        ([span(11, 19)], "starts or ends with whitespace"),
        ([span(12, 20)], "starts or ends with whitespace"),
        ([span(12, 19, "the area")], "holds whitespace or a control character"),
        ([span(12, 19, "area\x07")], "holds whitespace or a control character"),
        ([span(12, 19, "B-area")], "B- or I-"),
        ([span(12, 19, "I-area")], "B- or I-"),
        ([span(12, 19, "")], "blank"),
        ([span(12, 19, "  ")], "blank"),
        ([span(12, 19, 7)], "must be a string, got 7"),
        ([{"start": 12, "end": 19}], r"entity 0: must be an object with exactly \['start', 'end', 'label'\]"),
        ([{**span(12, 19), "value": "kitchen"}], "exactly"),
        (["kitchen"], "exactly"),
        ([{"start": 12.0, "end": 19, "label": "area"}], "must be integers"),
        ([{"start": True, "end": 19, "label": "area"}], "must be integers"),
        ({"start": 12}, "must be a list"),
        ("12-19", "must be a list"),
    ],
)
def test_bad_spans_are_refused(entities, problem):
    with pytest.raises(EntityError, match=problem):
        check_entities(TEXT, entities)


def test_good_spans_come_back_sorted_and_punctuation_is_a_boundary():
    sorted_spans = (Entity(12, 19, "area"), Entity(20, 26, "what"))
    assert check_entities(TEXT, [span(20, 26, "what"), span(12, 19)]) == sorted_spans
    assert check_entities("dim to 50%", [span(7, 9, "brightness")]) == (Entity(7, 9, "brightness"),)
    assert check_entities("timer 36-minutes", [span(6, 8, "minutes")]) == (Entity(6, 8, "minutes"),)
    assert check_entities(TEXT, []) == ()


def test_jsonl_entities_are_read_and_moved_with_the_stripped_text(tmp_path):
    path = jsonl(
        tmp_path,
        # Checked against the text as written (offsets 14-21), then moved with the stripping.
        {"text": "  turn on the kitchen lights \n", "label": "on", "entities": [span(14, 21)]},
        {"text": " \tturn on the [hall](area) lamp ", "label": "on"},
        {"text": "turn off the lights", "label": "off", "entities": []},
        {"text": "switch off", "label": "off"},
        *PLAIN,
    )
    data = load_labelled_file(path)
    assert data.texts[0] == TEXT and data.entities[0] == (Entity(12, 19, "area"),)
    assert data.texts[1] == "turn on the hall lamp" and data.entities[1] == (Entity(12, 16, "area"),)
    assert data.entities[2:] == [()] * 6 and data.slot_labels == ["area"]
    for text, spans in zip(data.texts, data.entities, strict=True):
        assert check_entities(text, spans) == spans


def test_a_file_without_entities_is_a_classification_file(tmp_path):
    data = load_labelled_file(jsonl(tmp_path, *PLAIN))
    assert data.entities is None and data.slot_labels == [] and data.texts == ["hello", "hi", "bye", "see you"]
    # Only empty lists name no slot either: nothing for a token head to learn.
    assert load_labelled_file(jsonl(tmp_path, *({**r, "entities": []} for r in PLAIN))).entities is None
    path = tmp_path / "train.csv"
    path.write_text("text,label\n[urgent] hi,greet\nhello,greet\nbye,leave\nciao,leave\n", encoding="utf-8")
    data = load_labelled_file(path)
    assert data.entities is None and data.texts[0] == "[urgent] hi"


def test_refusals_name_the_file_and_line(tmp_path):
    bad = {"text": "turn on the kitchen", "label": "on", "entities": [span(13, 19)]}
    with pytest.raises(DatasetError, match=r"train\.jsonl:3: entity 0 'itchen' \(13-19\): starts inside the word"):
        load_labelled_file(jsonl(tmp_path, *PLAIN[:2], bad, *PLAIN[2:]))
    both = {"text": "turn on the [kitchen](area)", "label": "on", "entities": []}
    with pytest.raises(DatasetError, match=r"train\.jsonl:1: .*either 'entities' or markup in its text, not both"):
        load_labelled_file(jsonl(tmp_path, both, *PLAIN))
    broken = {"text": "turn on the [kitchen(area) ](x)", "label": "on"}
    with pytest.raises(DatasetError, match=r"train\.jsonl:5: '\[' at character 12"):
        load_labelled_file(jsonl(tmp_path, *PLAIN, broken))
    label = {"text": "turn on the [kitchen](B-area)", "label": "on"}
    with pytest.raises(DatasetError, match=r"train\.jsonl:2: entity 0 'kitchen' \(12-19\): label 'B-area'"):
        load_labelled_file(jsonl(tmp_path, PLAIN[0], label, *PLAIN[1:]))
    shape = {"text": "turn on the kitchen", "label": "on", "entities": {"start": 12}}
    with pytest.raises(DatasetError, match=r"train\.jsonl:4: 'entities' must be a list"):
        load_labelled_file(jsonl(tmp_path, *PLAIN[:3], shape, PLAIN[3]))
    # The existing refusals keep their messages.
    with pytest.raises(DatasetError, match=r"train\.jsonl:1: unknown field\(s\) \['entity'\]"):
        load_labelled_file(jsonl(tmp_path, {"text": "a", "label": "b", "entity": []}, *PLAIN))


def test_csv_texts_may_carry_markup_and_errors_name_the_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'text,label\n"turn on the [kitchen](area) lights",on\n  turn on the [hall](area),on\nbye,leave\nciao,leave\n',
        encoding="utf-8",
    )
    data = load_labelled_file(path)
    assert data.texts[0] == TEXT and data.entities[0] == (Entity(12, 19, "area"),)
    assert data.texts[1] == "turn on the hall" and data.entities[1] == (Entity(12, 16, "area"),)
    assert data.entities[2:] == [(), ()]
    path.write_text("text,label\nhi,greet\nhello,greet\nturn on the [kit]chen](area),on\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"train\.csv:4: .*character 12"):
        load_labelled_file(path)
    path.write_text("text,label,entities\na,b,c\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"unknown column\(s\) \['entities'\]"):
        load_labelled_file(path)
