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

    The rule: a text is markup when it holds ``](``. Then every ``[`` and ``]`` in it must belong
    to a ``[value](label)`` group, whose value and label are not empty and hold no bracket or
    parenthesis (so no nesting); anything else is refused (``EntityError``, naming the character
    where it went wrong in ``text``: "unclosed '[' at character 12"). A text without ``](`` is
    plain and comes back as it is, brackets included, with no entities: "[urgent] call me".
    Only this form of Rasa's markup is read (not ``[value]{"entity": ...}`` nor synonyms). The
    labels are checked by ``check_entities``."""
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
            closing = text.find("]", index + 1)
            opening = text.find("[", index + 1)
            if closing < 0:
                raise EntityError(f"unclosed '[' at character {index}")
            if 0 <= opening < closing:
                raise EntityError(f"nested '[' at character {opening} inside the '[' at character {index}")
            if text.startswith("(", closing + 1) and ")" not in text[closing:]:
                raise EntityError(f"unclosed '(' at character {closing + 1}")
            raise EntityError(f"'[' at character {index} does not start a '[value](label)' group")
        if character == "]":
            raise EntityError(f"']' at character {index} without a matching '['")


def check_label(label: object, where: str) -> str:
    if not isinstance(label, str):
        raise EntityError(f"{where}: the label must be a string, got {label!r}")
    if not label.strip():
        raise EntityError(f"{where}: the label is blank")
    if any(character.isspace() or not character.isprintable() for character in label):
        raise EntityError(f"{where}: label {label!r} holds whitespace or a control character")
    if label.startswith(("B-", "I-")):
        raise EntityError(f"{where}: label {label!r} starts with B- or I- (slots become the tags B-<label>, I-<label>)")
    return label


def _word(character: str) -> bool:
    return character.isalnum()


def check_entities(text: str, entities: object) -> tuple[Entity, ...]:
    """A JSON entity list (or a sequence of ``Entity``) checked against ``text``, sorted by position.

    Each refusal names the entity by its index in ``entities`` and, once its range is known
    to be valid, the text it covers."""
    if isinstance(entities, (tuple, list)) and all(isinstance(e, Entity) for e in entities):
        given = list(entities)
    elif not isinstance(entities, list):
        raise EntityError(f"'entities' must be a list of objects with {list(ENTITY_FIELDS)}")
    else:
        given = []
        for number, entity in enumerate(entities):
            if not isinstance(entity, dict) or set(entity) != set(ENTITY_FIELDS):
                keys = sorted(map(str, entity)) if isinstance(entity, dict) else type(entity).__name__
                raise EntityError(f"entity {number}: must be an object with exactly {list(ENTITY_FIELDS)}, got {keys}")
            given.append(Entity(entity["start"], entity["end"], entity["label"]))
    for number, entity in enumerate(given):
        _check_one(text, entity, f"entity {number}")
    # Sorted by position only: labels of bad types were refused above, but need no comparing.
    order = sorted(range(len(given)), key=lambda i: (given[i].start, given[i].end))
    for before, after in zip(order, order[1:], strict=False):
        first, second = given[before], given[after]
        if second.start < first.end:
            raise EntityError(
                f"entity {after} {_covered(text, second)} overlaps entity {before} {_covered(text, first)}"
            )
    return tuple(given[i] for i in order)


def _covered(text: str, entity: Entity) -> str:
    return f"{text[entity.start : entity.end]!r} ({entity.start}-{entity.end})"


def _check_one(text: str, entity: Entity, where: str) -> None:
    start, end = entity.start, entity.end
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        raise EntityError(f"{where}: 'start' and 'end' must be integers, got {start!r} and {end!r}")
    if not 0 <= start < end <= len(text):
        raise EntityError(
            f"{where} ({start}-{end}): out of range for a text of {len(text)} characters (0 <= start < end <= length)"
        )
    where = f"{where} {_covered(text, entity)}"
    check_label(entity.label, where)
    covered = text[start:end]
    if covered != covered.strip():
        raise EntityError(f"{where}: starts or ends with whitespace")
    if start > 0 and _word(text[start - 1]) and _word(text[start]):
        raise EntityError(f"{where}: starts inside the word {_word_at(text, start)!r}")
    if end < len(text) and _word(text[end - 1]) and _word(text[end]):
        raise EntityError(f"{where}: ends inside the word {_word_at(text, end - 1)!r}")


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
