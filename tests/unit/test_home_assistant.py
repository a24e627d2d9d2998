"""Unit tests of the Home Assistant demo split (``headroom.export.home_assistant``): deterministic,
held-out templates and values never trained, spans on their values, training files that read back."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from headroom.export import home_assistant as ha
from headroom.export.datasets import load_labelled_file
from headroom.export.entities import Entity, check_entities


@pytest.fixture(scope="module")
def split():
    return ha.home_assistant_split()


def covered(data):
    """Per slot label, the texts its entities cover."""
    texts = defaultdict(set)
    for text, spans in zip(data.texts, data.entities, strict=True):
        for entity in spans:
            texts[entity.label].add(text[entity.start : entity.end])
    return texts


def possible_values() -> dict[str, set[str]]:
    """Per slot label, every text a value of a list the templates fill it from can read as."""
    from hassil.intents import RangeSlotList, TextSlotList
    from hassil.sample import sample_expression

    intents = ha._load()
    values = defaultdict(set)
    for intent in intents.intents.values():
        for data in intent.data:
            rules = {**intents.expansion_rules, **data.expansion_rules}
            for sentence in data.sentences:
                for reference in sentence.expression.list_references(rules):
                    name, slot = reference.list_name, reference.slot_name
                    lists = {**intents.slot_lists, **data.slot_lists}
                    if name == "name":
                        values[slot] |= {n for names in ha.SUPPLIED_NAMES.values() for n in names}
                    elif name in ha.SUPPLIED_VALUES:
                        values[slot] |= set(ha.SUPPLIED_VALUES[name])
                    elif isinstance(lists.get(name), RangeSlotList):
                        numbers = range(lists[name].start, lists[name].stop + 1, lists[name].step)
                        values[slot] |= {str(n) for n in numbers} | {f"{n}.5" for n in numbers}
                    elif isinstance(lists.get(name), TextSlotList):
                        for value in lists[name].values:
                            texts = sample_expression(value.text_in, lists, rules)
                            values[slot] |= {" ".join(text.split()) for text in texts}
    return values


def test_the_split_has_the_intents_and_sizes_asked_for(split):
    assert len(split.intents) >= 30 and split.intents == sorted(set(split.train.labels))
    assert 1100 <= len(split.train.texts) <= 1300 and 350 <= len(split.held_out.texts) <= 400
    assert set(split.held_out.labels) <= set(split.intents)
    assert {"area", "name", "floor", "brightness", "temperature", "color"} <= set(split.train.slot_labels)
    assert set(split.held_out.slot_labels) <= set(split.train.slot_labels)
    assert len(split.train_sources) == len(split.train.texts)
    assert len(split.held_out_sources) == len(split.held_out.texts)
    assert not set(split.train.texts) & set(split.held_out.texts)
    assert len(set(split.train.texts)) == len(split.train.texts)


def test_the_split_is_deterministic_and_the_seed_changes_it(split):
    again = ha.home_assistant_split()
    assert (again.train, again.held_out, again.train_sources) == (split.train, split.held_out, split.train_sources)
    other = ha.home_assistant_split(seed=1, train_per_intent=4, held_out_per_intent=2)
    assert other.train.texts != split.train.texts[: len(other.train.texts)]


def test_held_out_templates_are_never_used_in_training(split):
    trained = set(zip(split.train.labels, split.train_sources, strict=True))
    held = set(zip(split.held_out.labels, split.held_out_sources, strict=True))
    assert held and not trained & held
    assert len({source for _, source in held}) >= 100  # many templates, not a few


def test_held_out_values_never_appear_in_training_entities(split):
    trained, held = covered(split.train), covered(split.held_out)
    # The supplied lists: no held-out area, floor, name or free text was ever trained.
    slots = {"area": "area", "floor": "floor", "name": "name", "timer_name": "name", "message": "message"}
    slots |= {"search_query": "search_query", "zone": "state", "shopping_list_item": "item"}
    slots |= {"todo_list_item": "item", "timer_command": "conversation_command"}
    for list_name, label in slots.items():
        assert not trained[label] & set(split.held_out_values[list_name]), list_name
    for list_name in ("color", "fan_mode", "cover_classes", "media_class"):  # the package's lists
        assert split.held_out_values[list_name]
        assert not set().union(*trained.values()) & set(split.held_out_values[list_name]), list_name
    # Numbers: a range holds out a quarter of its values (by value, so ranges sharing a label
    # agree); the words of lists of two values (brightness "max"/"min", "half") are shared.
    for label in ("brightness", "percentage", "position", "volume_level", "hours", "minutes", "temperature"):
        numbers = {value for value in held[label] if value.replace(".", "").isdigit()}
        assert numbers and not trained[label] & numbers, label
    # And the held-out names are really held out in the held-out set.
    assert held["area"] <= set(split.held_out_values["area"])
    assert held["name"] <= set(split.held_out_values["name"]) | set(split.held_out_values["timer_name"])


def test_every_entity_covers_its_slot_value(split):
    values = possible_values()
    for data in (split.train, split.held_out):
        for text, spans in zip(data.texts, data.entities, strict=True):
            assert check_entities(text, spans) == spans
            for entity in spans:
                assert text[entity.start : entity.end] in values[entity.label], (text, entity)
            assert text == " ".join(text.split())
    assert ha._assemble([("turn  on ", None), (" kitchen ", "area"), (" lights ", None)]) == (
        "turn on kitchen lights",
        [Entity(8, 15, "area")],
    )


def test_supplied_names_are_distinct_and_sentences_read_right(split):
    names = [name for names in ha.SUPPLIED_NAMES.values() for name in names]
    assert len(names) == len(set(names)) >= 100
    assert len(set(ha.SUPPLIED_VALUES["area"])) >= 24
    for text in split.train.texts + split.held_out.texts:
        assert not ha._reads_wrong(text), text
    # A name fits its template's domain: "lock" templates lock locks.
    locks = set(ha.SUPPLIED_NAMES["lock"])
    for text, label, spans in zip(split.train.texts, split.train.labels, split.train.entities, strict=True):
        if label == "HassTurnOn" and text.startswith("lock "):
            assert {text[e.start : e.end] for e in spans if e.label == "name"} <= locks, text


def test_write_split_round_trips_through_load_labelled_file(split, tmp_path):
    train, held_out = ha.write_split(split, tmp_path / "home")
    for path, data in ((train, split.train), (held_out, split.held_out)):
        back = load_labelled_file(path)
        assert (back.texts, back.labels, back.entities) == (data.texts, data.labels, data.entities)
    first = json.loads(train.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"text", "label", "entities"}


def test_the_cli_writes_the_files_and_prints_the_counts(tmp_path, capsys):
    assert ha.main([str(tmp_path), "--train-per-intent", "3", "--held-out-per-intent", "1"]) == 0
    out = capsys.readouterr().out
    assert "intents" in out and "training examples" in out
    assert (tmp_path / "train.jsonl").is_file() and (tmp_path / "held_out.jsonl").is_file()
