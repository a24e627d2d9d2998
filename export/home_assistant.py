"""A demo slot tenant from real third-party data: Home Assistant's English intent templates.

The ``home-assistant-intents`` package ships Home Assistant's English sentence templates (42
intents, ``{slot}`` placeholders, alternatives ``(a|b)``, optional parts ``[a]``, rules
``<name>``; Apache-2.0); ``hassil``, Home Assistant's own parser, reads them. Their expansions
run to millions, so this module **samples**: per intent, random expansions of its templates,
recording where each slot value lands, so every example comes with its entities.

Area, device, floor names and the free-text values (messages, shopping items, search queries...)
are supplied here (``SUPPLIED_VALUES``): the package leaves them to the user's home. The split
holds out **every fourth template of an intent and every fourth value of every list** (an intent
of two or three templates holds out its last; a range holds out the numbers that leave 3 divided
by 4; a list of fewer than four values is shared): held-out examples come from held-out templates
filled with held-out values only, so the head never saw their sentence form nor their slot values.

    split = home_assistant_split()           # NluSplit(train, held_out, ...), deterministic
    write_split(split, Path("build/home"))   # train.jsonl, held_out.jsonl (text, label, entities)

``python -m headroom.export.home_assistant OUTDIR`` writes the two files and prints the counts.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headroom.export.datasets import LabelledTexts
from headroom.export.entities import Entity, EntityError, check_entities

LANGUAGE = "en"
#: Examples drawn per intent: about 1,170 training and 372 held-out examples over 42 intents.
DEFAULT_TRAIN_PER_INTENT = 28
DEFAULT_HELD_OUT_PER_INTENT = 9
#: Every HOLD_OUT_EVERY-th template of an intent, and value of a list, is held out.
HOLD_OUT_EVERY = 4
#: Draws per wanted example before an intent gives up (duplicates and refused spans are redrawn).
DRAWS_PER_EXAMPLE = 20
#: A head needs two examples of a class (``headroom.export.datasets``).
MIN_TRAIN_PER_INTENT = 2
DEFAULT_SEED = 0

#: Values the templates' lists leave to the user's home (``{area}``, ``{name}``...), and the
#: free-text (wildcard) lists.
SUPPLIED_VALUES: dict[str, tuple[str, ...]] = {
    "area": (
        "kitchen",
        "living room",
        "bedroom",
        "bathroom",
        "garage",
        "office",
        "hallway",
        "dining room",
        "basement",
        "attic",
        "guest room",
        "nursery",
        "patio",
        "laundry room",
        "den",
        "study",
        "master bedroom",
        "kids room",
        "porch",
        "backyard",
    ),
    "name": (
        "ceiling light",
        "desk lamp",
        "garage door",
        "front door",
        "kitchen speaker",
        "tv",
        "porch light",
        "bedroom fan",
        "thermostat",
        "dishwasher",
        "floor lamp",
        "coffee maker",
        "hallway light",
        "living room blinds",
        "back door lock",
        "air purifier",
        "night light",
        "sound bar",
        "heater",
        "patio lights",
    ),
    "floor": (
        "first floor",
        "second floor",
        "ground floor",
        "upstairs",
        "downstairs",
        "third floor",
        "top floor",
        "loft",
    ),
    "message": (
        "dinner is ready",
        "time to leave for school",
        "the movie starts soon",
        "please come downstairs",
        "the laundry is done",
        "we are out of milk",
        "guests are arriving",
        "bed time in ten minutes",
    ),
    "search_query": (
        "jazz",
        "the beatles",
        "relaxing piano",
        "taylor swift",
        "morning news",
        "classical music",
        "lo-fi beats",
        "miles davis",
    ),
    "zone": ("work", "school", "the gym", "the office", "grandma's house", "the store", "downtown", "the airport"),
    "timer_name": ("pizza", "laundry", "tea", "pasta", "cookies", "nap", "workout", "rice"),
    "timer_command": (
        "turn off the oven",
        "turn on the porch light",
        "stop the music",
        "close the blinds",
        "turn off the tv",
        "lock the front door",
        "open the garage",
        "turn on the fan",
    ),
    "shopping_list_item": ("milk", "eggs", "bread", "apples", "coffee", "paper towels", "cheese", "bananas"),
    "todo_list_item": (
        "call mom",
        "pay the rent",
        "water the plants",
        "book a dentist appointment",
        "clean the garage",
        "return the library books",
        "renew the passport",
        "fix the bike",
    ),
}


@dataclass(frozen=True)
class NluSplit:
    train: LabelledTexts
    held_out: LabelledTexts
    intents: list[str]
    templates: dict[str, int]  # per split name: templates used
    held_out_values: dict[str, list[str]] = field(default_factory=dict)


def _load():
    import home_assistant_intents
    from hassil.intents import Intents

    return Intents.from_dict(home_assistant_intents.get_intents(LANGUAGE))


class _Sampler:
    """Random expansions of hassil expressions, recording where each slot's value lands."""

    def __init__(self, intents, rng: random.Random, values: dict[str, list], held_out: bool) -> None:
        self.intents = intents
        self.rng = rng
        self.values = values  # list name -> values usable in this split
        self.held_out = held_out

    def sample(self, expression, rules) -> list[tuple[str, str | None]]:
        """Pieces (text, slot name or None) of one expansion; KeyError for an unknown list."""
        from hassil.expression import Alternative, ListReference, Permutation, RuleReference, Sequence, TextChunk

        if isinstance(expression, TextChunk):
            return [(expression.text, None)]
        if isinstance(expression, ListReference):
            value = self._value(expression.list_name)
            return [(value, expression.slot_name)]
        if isinstance(expression, RuleReference):
            return self.sample(rules[expression.rule_name].expression, rules)
        if isinstance(expression, Alternative):
            return self.sample(self.rng.choice(expression.items), rules)
        if isinstance(expression, Permutation):
            items = list(expression.items)
            self.rng.shuffle(items)
            pieces: list[tuple[str, str | None]] = []
            for item in items:
                pieces += [*self.sample(item, rules), (" ", None)]
            return pieces
        if isinstance(expression, Sequence):
            return [piece for item in expression.items for piece in self.sample(item, rules)]
        raise TypeError(f"unknown hassil expression {type(expression).__name__}")

    def _value(self, list_name: str) -> str:
        from hassil.intents import RangeSlotList, TextSlotList

        if list_name in self.values:
            return self.rng.choice(self.values[list_name])
        slot_list = self.intents.slot_lists.get(list_name)
        if isinstance(slot_list, RangeSlotList):
            # By value, so that ranges sharing numbers (minutes, percentages) agree on them.
            every = list(range(slot_list.start, slot_list.stop + 1, slot_list.step))
            numbers = [n for n in every if (n % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1) == self.held_out]
            return str(self.rng.choice(numbers or every))
        if isinstance(slot_list, TextSlotList):
            usable = _split_values(slot_list.values, self.held_out)
            text = "".join(piece for piece, _ in self.sample(self.rng.choice(usable).text_in, {}))
            return text.strip()
        raise KeyError(list_name)


def _held_out_templates(count: int) -> set[int]:
    """Every fourth template; an intent of 2 or 3 templates holds out its last one (1: none)."""
    every = {i for i in range(count) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1}
    return every or ({count - 1} if count > 1 else set())


def _split_values(values: Sequence, held_out: bool) -> list:
    chosen = [v for i, v in enumerate(values) if (i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1) == held_out]
    return chosen or list(values)  # a list of fewer than HOLD_OUT_EVERY values is shared


def _assemble(pieces: list[tuple[str, str | None]]) -> tuple[str, list[Entity]]:
    """The text of ``pieces`` with runs of whitespace collapsed, and the slots' spans in it."""
    out: list[str] = []
    entities: list[Entity] = []
    for piece, slot in pieces:
        if slot is not None:
            piece = piece.strip()
            if out and out[-1] != " " and piece:
                pass  # templates put their own spaces; a value glued to text stays glued
            start = len(out)
            out.extend(piece)
            if piece:
                entities.append(Entity(start, len(out), slot))
            continue
        for character in piece:
            if character.isspace():
                if out and out[-1] != " ":
                    out.append(" ")
            else:
                out.append(character)
    text = "".join(out)
    stripped = text.rstrip()
    return stripped, [e for e in entities if e.end <= len(stripped)]


def _examples(intents, name: str, templates: list, want: int, sampler: _Sampler, taken: set[str]):
    """Up to ``want`` distinct (text, entities) of intent ``name`` from ``templates``."""
    examples: list[tuple[str, tuple[Entity, ...]]] = []
    for _ in range(want * DRAWS_PER_EXAMPLE):
        if len(examples) == want or not templates:
            break
        sentence, rules = sampler.rng.choice(templates)
        try:
            text, entities = _assemble(sampler.sample(sentence.expression, rules))
            entities = check_entities(text, tuple(entities))
        except (KeyError, EntityError):
            continue
        if not text or text in taken:
            continue
        taken.add(text)
        examples.append((text, entities))
    return examples


def home_assistant_split(
    seed: int = DEFAULT_SEED,
    train_per_intent: int = DEFAULT_TRAIN_PER_INTENT,
    held_out_per_intent: int = DEFAULT_HELD_OUT_PER_INTENT,
) -> NluSplit:
    """Training and held-out examples of every intent with usable templates (deterministic)."""
    intents = _load()
    supplied = {
        held_out: {name: _split_values(list(values), held_out) for name, values in SUPPLIED_VALUES.items()}
        for held_out in (False, True)
    }
    rng = random.Random(seed)
    taken: set[str] = set()
    rows: dict[bool, list[tuple[str, str, tuple[Entity, ...]]]] = {False: [], True: []}
    used = {"train": 0, "held_out": 0}
    for name in sorted(intents.intents):
        intent = intents.intents[name]
        templates = [
            (sentence, {**intents.expansion_rules, **data.expansion_rules})
            for data in intent.data
            for sentence in data.sentences
        ]
        held_out_templates = _held_out_templates(len(templates))
        for held_out, want in ((False, train_per_intent), (True, held_out_per_intent)):
            mine = [t for i, t in enumerate(templates) if (i in held_out_templates) == held_out]
            sampler = _Sampler(intents, rng, supplied[held_out], held_out)
            found = _examples(intents, name, mine, want, sampler, taken)
            used["held_out" if held_out else "train"] += len(mine)
            rows[held_out].extend((text, name, entities) for text, entities in found)
    # An intent of few distinct sentences (HassNevermind) keeps all of them for training (a head
    # needs two examples of a class); one that still has fewer is left out.
    counts = Counter(label for _, label, _ in rows[False])
    scarce = {label for label in counts if counts[label] < MIN_TRAIN_PER_INTENT}
    rows[False] += [row for row in rows[True] if row[1] in scarce]
    rows[True] = [row for row in rows[True] if row[1] not in scarce]
    counts = Counter(label for _, label, _ in rows[False])
    rows[False] = [row for row in rows[False] if counts[row[1]] >= MIN_TRAIN_PER_INTENT]
    train_intents = {label for _, label, _ in rows[False]}
    held = [row for row in rows[True] if row[1] in train_intents]  # an intent the head can know
    return NluSplit(
        train=_labelled(rows[False]),
        held_out=_labelled(held),
        intents=sorted(train_intents),
        templates=used,
        held_out_values={name: list(values) for name, values in supplied[True].items()},
    )


def _labelled(rows: list[tuple[str, str, tuple[Entity, ...]]]) -> LabelledTexts:
    return LabelledTexts(
        texts=[text for text, _, _ in rows],
        labels=[label for _, label, _ in rows],
        entities=[entities for _, _, entities in rows],
    )


def _jsonl(data: LabelledTexts) -> str:
    lines = []
    for text, label, entities in zip(data.texts, data.labels, data.entities or [()] * len(data.texts), strict=True):
        spans = [{"start": e.start, "end": e.end, "label": e.label} for e in entities]
        lines.append(json.dumps({"text": text, "label": label, "entities": spans}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def write_split(split: NluSplit, directory: Path) -> tuple[Path, Path]:
    """``train.jsonl`` and ``held_out.jsonl`` in the training-file format (text, label, entities)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "train.jsonl", directory / "held_out.jsonl"
    for path, data in zip(paths, (split.train, split.held_out), strict=True):
        path.write_text(_jsonl(data), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path, help="where train.jsonl and held_out.jsonl go")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train-per-intent", type=int, default=DEFAULT_TRAIN_PER_INTENT)
    parser.add_argument("--held-out-per-intent", type=int, default=DEFAULT_HELD_OUT_PER_INTENT)
    args = parser.parse_args(argv)
    split = home_assistant_split(args.seed, args.train_per_intent, args.held_out_per_intent)
    train, held_out = write_split(split, args.outdir)
    print(
        f"{len(split.intents)} intents, {len(split.train.slot_labels)} slots: {len(split.train.texts)} training "
        f"examples ({train}), {len(split.held_out.texts)} held out ({held_out}) from held-out templates and values"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
