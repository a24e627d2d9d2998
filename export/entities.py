"""Entities (slots) in training files: the inline markup, the JSON spans, and what is refused.

A training example may name spans of its text as slots, two ways:

- JSONL ``"entities": [{"start": 26, "end": 33, "label": "area"}, ...]``: character offsets
  into ``text`` (Python ``str`` indices, i.e. code points), end exclusive;
- the inline markup Rasa users know, in any text: ``turn on the [kitchen](area) lights``. A text
  is markup when it holds ``](``; then every ``[`` and ``]`` must belong to a ``[value](label)``
  group (no nesting, value and label not empty). Other texts are plain, brackets included.

``check_entities`` refuses what a token head cannot learn from or would get wrong: spans out of
range, empty, overlapping, cutting a word, starting or ending with whitespace; labels that are
blank, hold whitespace or control characters, or start with ``B-``/``I-`` (a slot becomes the
BIO tags ``B-<label>`` and ``I-<label>``). ``headroom.export.datasets`` adds the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: A markup group: ``[value](label)``; neither holds a bracket or a parenthesis.
MARKUP_GROUP = re.compile(r"\[([^\[\]()]*)\]\(([^()\[\]]*)\)")
#: What makes a text markup.
MARKUP_SIGN = "]("
ENTITY_FIELDS = ("start", "end", "label")


class EntityError(ValueError):
    """An entity list or markup that cannot be used, with the reason."""


@dataclass(frozen=True, order=True)
class Entity:
    """A slot of a text: characters ``start`` .. ``end - 1`` (code points, end exclusive)."""

    start: int
    end: int
    label: str


def is_markup(text: str) -> bool:
    return MARKUP_SIGN in text


def parse_markup(text: str) -> tuple[str, tuple[Entity, ...]]:
    """``turn on the [kitchen](area) lights`` -> ("turn on the kitchen lights", (Entity(12, 19, "area"),)).

    A text without ``](`` comes back as it is, with no entities."""
    if not is_markup(text):
        return text, ()
    plain: list[str] = []
    entities: list[Entity] = []
    position = 0  # in ``text``
    length = 0  # of the plain text so far
    for match in MARKUP_GROUP.finditer(text):
        _check_between(text, position, match.start())
        plain.append(text[position : match.start()])
        length += match.start() - position
        value, label = match.group(1), match.group(2)
        if not value.strip():
            raise EntityError(f"empty value in the markup '{match.group(0)}' at character {match.start()}")
        if not label.strip():
            raise EntityError(f"empty label in the markup '{match.group(0)}' at character {match.start()}")
        entities.append(Entity(length, length + len(value), label))
        plain.append(value)
        length += len(value)
        position = match.end()
    _check_between(text, position, len(text))
    plain.append(text[position:])
    return "".join(plain), tuple(entities)


def _check_between(text: str, start: int, end: int) -> None:
    """Outside ``[value](label)`` groups a markup text holds no bracket."""
    for index in range(start, end):
        character = text[index]
        if character == "[":
            closing = text.find("]", index)
            what = "unclosed '['" if closing < 0 else "'[' without a '[value](label)' group (or nested brackets)"
            raise EntityError(f"{what} at character {index}")
        if character == "]":
            raise EntityError(f"']' without a matching '[' at character {index}")


def check_label(label: object, where: str) -> str:
    if not isinstance(label, str) or not label.strip():
        raise EntityError(f"{where}: the label is missing or blank")
    if any(character.isspace() or not character.isprintable() for character in label):
        raise EntityError(f"{where}: label {label!r} holds whitespace or a control character")
    if label.startswith(("B-", "I-")):
        raise EntityError(f"{where}: label {label!r} starts with B- or I- (slots become the tags B-<label>, I-<label>)")
    return label


def _word(character: str) -> bool:
    return character.isalnum()


def check_entities(text: str, entities: object) -> tuple[Entity, ...]:
    """A JSON entity list (or ``Entity`` objects) checked against ``text``, sorted by start."""
    if isinstance(entities, tuple) and all(isinstance(e, Entity) for e in entities):
        checked = list(entities)
    else:
        if not isinstance(entities, list):
            raise EntityError(f"'entities' must be a list of objects with {list(ENTITY_FIELDS)}")
        checked = []
        for number, entity in enumerate(entities):
            where = f"entity {number}"
            if not isinstance(entity, dict) or set(entity) != set(ENTITY_FIELDS):
                keys = sorted(entity) if isinstance(entity, dict) else type(entity).__name__
                raise EntityError(f"{where}: must be an object with exactly {list(ENTITY_FIELDS)}, got {keys}")
            start, end = entity["start"], entity["end"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
                raise EntityError(f"{where}: 'start' and 'end' must be integers")
            checked.append(Entity(start, end, entity["label"]))
    checked.sort()
    previous: Entity | None = None
    for number, entity in enumerate(checked):
        where = f"entity {number} ({entity.start}-{entity.end})"
        check_label(entity.label, where)
        if not 0 <= entity.start < entity.end <= len(text):
            raise EntityError(f"{where}: out of range for a text of {len(text)} characters (start < end <= length)")
        covered = text[entity.start : entity.end]
        where = f"entity {number} {covered!r} ({entity.start}-{entity.end})"
        if covered != covered.strip():
            raise EntityError(f"{where}: starts or ends with whitespace")
        if entity.start > 0 and _word(text[entity.start - 1]) and _word(text[entity.start]):
            raise EntityError(f"{where}: starts inside the word {_word_at(text, entity.start)!r}")
        if entity.end < len(text) and _word(text[entity.end - 1]) and _word(text[entity.end]):
            raise EntityError(f"{where}: ends inside the word {_word_at(text, entity.end - 1)!r}")
        if previous is not None and entity.start < previous.end:
            raise EntityError(f"{where}: overlaps the entity {text[previous.start : previous.end]!r}")
        previous = entity
    return tuple(checked)


def _word_at(text: str, index: int) -> str:
    start, end = index, index
    while start > 0 and _word(text[start - 1]):
        start -= 1
    while end < len(text) and _word(text[end]):
        end += 1
    return text[start:end]


def shifted(entities: Sequence[Entity], by: int) -> tuple[Entity, ...]:
    """``entities`` moved ``by`` characters to the left (the text lost that many at its start)."""
    return tuple(Entity(e.start - by, e.end - by, e.label) for e in entities)


def markup(text: str, entities: Sequence[Entity]) -> str:
    """``text`` with ``entities`` written as inline markup (``parse_markup``'s inverse)."""
    parts, position = [], 0
    for entity in sorted(entities):
        parts += [text[position : entity.start], f"[{text[entity.start : entity.end]}]({entity.label})"]
        position = entity.end
    parts.append(text[position:])
    return "".join(parts)
