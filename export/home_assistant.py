"""A demo slot tenant from real third-party data: Home Assistant's English intent templates.

The ``home-assistant-intents`` package ships Home Assistant's English sentence templates (42
intents, ``{slot}`` placeholders, alternatives ``(a|b)``, optional parts ``[a]``, rules
``<name>``; Apache-2.0); ``hassil``, Home Assistant's own parser, reads them. Their expansions
run to millions, so this module **samples**: per intent, random expansions of its templates,
recording where each slot value lands, so every example comes with its entities (labelled by
slot name; a slot a template implies without text, such as ``domain``, has no span and is left
out). The intent is the example's label.

The package leaves what belongs to a home to the user: area, floor and entity names, and the
free-text (wildcard) values (messages, shopping items, search queries...). They are supplied
here: ``SUPPLIED_VALUES``, and ``SUPPLIED_NAMES`` by entity domain, because each block of
templates says which domains its ``{name}`` may be (``lock the {name}`` gets "front door", not
"desk lamp"). Numbers come from the package's ranges (digits only), colours, states and the
like from its lists.

The split holds out **every fourth template of an intent and every fourth value of every list**
(an intent of two or three templates holds out its last; one whose training templates give
fewer than two sentences, such as HassNevermind, holds out none; a range holds out the numbers
n with (n // step) % 4 == 3; a list of fewer than four values is shared): held-out examples come
from held-out templates filled with held-out values only, so the head never saw their sentence
form nor their slot values.

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
from typing import Any

from headroom.export.datasets import LabelledTexts
from headroom.export.entities import Entity, EntityError, check_entities

LANGUAGE = "en"
#: Examples drawn per intent; a few intents have fewer distinct sentences than this (or no
#: held-out template), so the split holds about 1,160 training and 355 held-out examples.
DEFAULT_TRAIN_PER_INTENT = 30
DEFAULT_HELD_OUT_PER_INTENT = 10
#: Every HOLD_OUT_EVERY-th template of an intent, and value of a list, is held out.
HOLD_OUT_EVERY = 4
#: Draws per wanted example before an intent gives up (duplicates and refused spans are redrawn).
DRAWS_PER_EXAMPLE = 20
#: A head needs two examples of a class (``headroom.export.datasets``).
MIN_TRAIN_PER_INTENT = 2
#: A template's fraction of a range (the halves of a temperature) shows this often.
FRACTION_SHARE = 0.25
DEFAULT_SEED = 0

#: Values the templates' lists leave to the user's home, and the free-text (wildcard) lists.
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
        "family room",
        "entryway",
        "playroom",
        "pantry",
        "workshop",
        "sunroom",
        "guest bathroom",
        "mudroom",
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

#: ``{name}`` values by the entity domain a template block is for (``IntentData.domains``);
#: no name is in two domains, so holding one out holds it out everywhere.
SUPPLIED_NAMES: dict[str, tuple[str, ...]] = {
    "light": (
        "ceiling light",
        "desk lamp",
        "floor lamp",
        "porch light",
        "chandelier",
        "night light",
        "reading lamp",
        "string lights",
        "vanity light",
        "led strip",
        "bedside lamp",
        "pendant",
    ),
    "switch": (
        "coffee maker",
        "christmas tree",
        "space heater",
        "kettle",
        "pool pump",
        "fountain",
        "electric blanket",
        "dehumidifier",
    ),
    "fan": (
        "ceiling fan",
        "bedroom fan",
        "tower fan",
        "attic fan",
        "exhaust fan",
        "desk fan",
        "air purifier",
        "box fan",
    ),
    "input_boolean": ("guest mode", "vacation mode", "away mode", "party mode"),
    "climate": (
        "thermostat",
        "heat pump",
        "air conditioner",
        "upstairs thermostat",
        "bedroom heater",
        "mini split",
        "boiler",
        "radiator",
    ),
    "media_player": (
        "kitchen speaker",
        "tv",
        "sound bar",
        "bedroom speaker",
        "living room tv",
        "sonos",
        "apple tv",
        "stereo",
        "office speaker",
        "chromecast",
        "record player",
        "smart display",
    ),
    "cover": (
        "garage door",
        "living room blinds",
        "bedroom curtains",
        "patio awning",
        "skylight",
        "front gate",
        "kitchen shades",
        "roller shutter",
    ),
    "valve": ("water main", "sprinkler valve", "garden hose", "gas valve", "irrigation valve", "pool valve"),
    "lock": (
        "front door",
        "back door",
        "side gate",
        "patio door",
        "deadbolt",
        "basement door",
        "shed lock",
        "mailbox lock",
    ),
    "sensor": (
        "outdoor temperature",
        "humidity",
        "power usage",
        "air quality",
        "battery level",
        "rain gauge",
        "water level",
        "solar production",
    ),
    "binary_sensor": (
        "front window",
        "garage window",
        "motion sensor",
        "bedroom window",
        "mailbox",
        "office presence",
        "skylight sensor",
        "cellar door",
    ),
    "person": ("anna", "john", "mom", "dad", "emma", "grandpa", "liam", "sophie"),
    "weather": ("london", "paris", "new york", "the cabin", "berlin", "the beach house", "tokyo", "the lake"),
    "lawn_mower": ("lawn mower", "automower", "husqvarna", "robomow", "worx", "gardena"),
    "todo": ("shopping", "grocery", "chores", "packing", "costco", "hardware store", "school supplies", "camping"),
    "vacuum": ("roomba", "robot vacuum", "roborock", "downstairs vacuum", "upstairs vacuum", "deebot"),
    "scene": ("movie night", "good morning", "romantic dinner", "relax", "party", "bedtime", "wake up", "focus"),
    "script": ("bedtime routine", "morning routine", "leaving home", "arriving home", "goodnight", "feed the cat"),
    "button": ("doorbell", "restart router", "pet feeder", "reboot nas"),
    "input_button": ("panic", "identify", "all off", "snooze"),
}

#: Words a template may add after a name ("{name} <light>", "{name} [mower]"): two in a row
#: ("desk lamp light") read wrong, so such a draw is redrawn (as is any word said twice).
_NOUN_WORDS = frozenset({"light", "lights", "lighting", "lamp", "lamps"})


@dataclass(frozen=True)
class NluSplit:
    """Training and held-out examples (label: intent; entities: slot spans) and how they were made."""

    train: LabelledTexts
    held_out: LabelledTexts
    intents: list[str]
    #: How many distinct templates each side drew from: {"train": ..., "held_out": ...}.
    templates: dict[str, int]
    #: The held-out values of each split list (supplied lists, and the package's lists of four
    #: values or more; ranges hold out by rule, see the module's docstring).
    held_out_values: dict[str, list[str]] = field(default_factory=dict)
    #: Per example, the template (as written in the package) it was expanded from.
    train_sources: list[str] = field(default_factory=list)
    held_out_sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Variant:
    """A template as one block of an intent has it: its rules, lists and name domains."""

    sentence: Any  # hassil.expression.Sentence
    rules: dict[str, Any]
    slot_lists: dict[str, Any]
    domains: tuple[str, ...]


@dataclass(frozen=True)
class _Template:
    text: str
    #: Blocks of one intent may share a template (with other domains): one template, held out or not.
    variants: tuple[_Variant, ...]


def _load():
    import home_assistant_intents
    from hassil.intents import Intents

    return Intents.from_dict(home_assistant_intents.get_intents(LANGUAGE))


def _templates(intents, name: str) -> list[_Template]:
    """The distinct templates of intent ``name``, in the package's order."""
    variants: dict[str, list[_Variant]] = {}
    for data in intents.intents[name].data:
        parsed = {sentence.text.strip(): sentence for sentence in data.sentences}  # hassil sorts them
        rules = {**intents.expansion_rules, **data.expansion_rules}
        lists = {**intents.slot_lists, **data.slot_lists}
        domains = tuple(sorted(data.domains))
        for text in data.sentence_texts:
            variants.setdefault(text.strip(), []).append(_Variant(parsed[text.strip()], rules, lists, domains))
    return [_Template(text, tuple(found)) for text, found in variants.items()]


def _split_values(values: Sequence, held_out: bool) -> list:
    chosen = [v for i, v in enumerate(values) if (i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1) == held_out]
    return chosen or list(values)  # a list of fewer than HOLD_OUT_EVERY values is shared


def _held_out_templates(count: int) -> set[int]:
    """Every fourth template; an intent of 2 or 3 templates holds out its last one (1: none)."""
    every = {i for i in range(count) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1}
    return every or ({count - 1} if count > 1 else set())


def _held_out_number(number: int, step: int) -> bool:
    # By value, so that ranges sharing numbers (minutes, percentages) agree on them; by step,
    # so that a range of hundreds (colour temperatures) holds out a quarter too.
    return (number // step) % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1


class _Sampler:
    """Random expansions of hassil expressions for one side of the split, recording where each
    slot's value lands."""

    def __init__(self, rng: random.Random, held_out: bool) -> None:
        self.rng = rng
        self.held_out = held_out
        self.values = {list_name: _split_values(v, held_out) for list_name, v in SUPPLIED_VALUES.items()}
        self.names = {domain: _split_values(v, held_out) for domain, v in SUPPLIED_NAMES.items()}
        self.all_names = [name for names in self.names.values() for name in names]

    def sample(self, expression, variant: _Variant) -> list[tuple[str, str | None]]:
        """Pieces (text, slot name or None) of one expansion; KeyError for a list without values."""
        from hassil.expression import Alternative, ListReference, Permutation, RuleReference, Sequence, TextChunk

        if isinstance(expression, TextChunk):
            return [(expression.original_text, None)]
        if isinstance(expression, ListReference):
            return [(self._value(expression.list_name, variant), expression.slot_name)]
        if isinstance(expression, RuleReference):
            return self.sample(variant.rules[expression.rule_name].expression, variant)
        if isinstance(expression, Alternative):
            return self.sample(self.rng.choice(expression.items), variant)
        if isinstance(expression, Permutation):
            items = list(expression.items)
            self.rng.shuffle(items)
            pieces: list[tuple[str, str | None]] = []
            for item in items:
                pieces += [*self.sample(item, variant), (" ", None)]
            return pieces
        if isinstance(expression, Sequence):
            return [piece for item in expression.items for piece in self.sample(item, variant)]
        raise TypeError(f"unknown hassil expression {type(expression).__name__}")

    def _value(self, list_name: str, variant: _Variant) -> str:
        from hassil.intents import RangeSlotList, TextSlotList

        if list_name == "name":
            names = [n for domain in variant.domains for n in self.names.get(domain, ())]
            return self.rng.choice(names or self.all_names)
        if list_name in self.values:
            return self.rng.choice(self.values[list_name])
        slot_list = variant.slot_lists.get(list_name)
        if isinstance(slot_list, RangeSlotList):
            every = range(slot_list.start, slot_list.stop + 1, slot_list.step)
            numbers = [n for n in every if _held_out_number(n, slot_list.step) == self.held_out] or list(every)
            number = str(self.rng.choice(numbers))
            fractions = _fractions(slot_list)
            if fractions and self.rng.random() < FRACTION_SHARE:
                number += f"{self.rng.choice(fractions):g}".lstrip("0")  # 21 -> 21.5
            return number
        if isinstance(slot_list, TextSlotList):
            value = self.rng.choice(_split_values(slot_list.values, self.held_out))
            return " ".join("".join(piece for piece, _ in self.sample(value.text_in, variant)).split())
        raise KeyError(list_name)  # a wildcard nobody supplied values for


def _fractions(slot_list) -> list[float]:
    """What a range adds to its integers (0.5 for halves), or nothing."""
    from hassil.intents import RangeFractionType

    return RangeFractionType.get_fractions(slot_list.fraction_type)


def _assemble(pieces: list[tuple[str, str | None]]) -> tuple[str, list[Entity]]:
    """The text of ``pieces`` with runs of whitespace collapsed, and the slots' spans in it.

    A value is written as it is (stripped); templates put their own spaces around it, and one
    glued to a word ("{area}s") makes a span that cuts a word, which ``check_entities`` refuses."""
    out: list[str] = []
    entities: list[Entity] = []
    for piece, slot in pieces:
        if slot is not None:
            piece = piece.strip()
            if piece:
                start = len(out)
                out.extend(piece)
                entities.append(Entity(start, len(out), slot))
            continue
        for character in piece:
            if not character.isspace():
                out.append(character)
            elif out and out[-1] != " ":
                out.append(" ")
    text = "".join(out).rstrip()
    return text, [e for e in entities if e.end <= len(text)]


def _reads_wrong(text: str) -> bool:
    """A word said twice in a row ("the second floor floor") or a name's noun said again
    ("the desk lamp light")."""
    words = text.split()
    return any(a == b or (a in _NOUN_WORDS and b in _NOUN_WORDS) for a, b in zip(words, words[1:], strict=False))


def _examples(
    templates: list[_Template], want: int, sampler: _Sampler, taken: set[str]
) -> list[tuple[str, tuple[Entity, ...], str]]:
    """Up to ``want`` distinct (text, entities, template) from ``templates``; ``taken``: texts
    already drawn (by any intent, either side)."""
    examples: list[tuple[str, tuple[Entity, ...], str]] = []
    for _ in range(want * DRAWS_PER_EXAMPLE):
        if len(examples) == want or not templates:
            break
        template = sampler.rng.choice(templates)
        variant = sampler.rng.choice(template.variants)
        try:
            text, entities = _assemble(sampler.sample(variant.sentence.expression, variant))
            spans = check_entities(text, entities)
        except (KeyError, EntityError):
            continue
        if not text or text in taken or _reads_wrong(text):
            continue
        taken.add(text)
        examples.append((text, spans, template.text))
    return examples


def _held_out_values(intents) -> dict[str, list[str]]:
    """Every split list's held-out values, as they read in a text."""
    from hassil.intents import TextSlotList
    from hassil.sample import sample_expression

    values = {list_name: _split_values(v, True) for list_name, v in SUPPLIED_VALUES.items()}
    values["name"] = [name for names in SUPPLIED_NAMES.values() for name in _split_values(names, True)]
    for list_name, slot_list in sorted(intents.slot_lists.items()):
        if isinstance(slot_list, TextSlotList) and len(slot_list.values) >= HOLD_OUT_EVERY:
            held = _split_values(slot_list.values, True)
            texts = (sample_expression(v.text_in, intents.slot_lists, intents.expansion_rules) for v in held)
            values[list_name] = sorted({" ".join(text.split()) for alternatives in texts for text in alternatives})
    return values


Row = tuple[str, str, tuple[Entity, ...], str]  # text, intent, entities, template


def home_assistant_split(
    seed: int = DEFAULT_SEED,
    train_per_intent: int = DEFAULT_TRAIN_PER_INTENT,
    held_out_per_intent: int = DEFAULT_HELD_OUT_PER_INTENT,
) -> NluSplit:
    """Training and held-out examples of every intent with usable templates (deterministic:
    the same arguments and package versions give the same texts in the same order)."""
    intents = _load()
    rng = random.Random(seed)
    samplers = {held_out: _Sampler(rng, held_out) for held_out in (False, True)}
    taken: set[str] = set()
    rows: dict[bool, list[Row]] = {False: [], True: []}
    used = Counter({"train": 0, "held_out": 0})
    for name in sorted(intents.intents):
        templates = _templates(intents, name)
        held = _held_out_templates(len(templates))
        train = [t for i, t in enumerate(templates) if i not in held]
        found = _examples(train, train_per_intent, samplers[False], taken)
        if len(found) < MIN_TRAIN_PER_INTENT and held:
            # Too few distinct sentences without the held-out templates (HassNevermind: "nevermind",
            # "never mind"): the intent trains on all of its templates and holds none out.
            taken.difference_update(text for text, _, _ in found)
            train, held = templates, set()
            found = _examples(train, train_per_intent, samplers[False], taken)
        if len(found) < MIN_TRAIN_PER_INTENT:
            taken.difference_update(text for text, _, _ in found)
            continue  # a head cannot learn an intent from one sentence: left out
        held_out = [t for i, t in enumerate(templates) if i in held]
        used.update(train=len(train), held_out=len(held_out))
        rows[False] += [(text, name, spans, source) for text, spans, source in found]
        found = _examples(held_out, held_out_per_intent, samplers[True], taken)
        rows[True] += [(text, name, spans, source) for text, spans, source in found]
    return NluSplit(
        train=_labelled(rows[False]),
        held_out=_labelled(rows[True]),
        intents=sorted({intent for _, intent, _, _ in rows[False]}),
        templates=dict(used),
        held_out_values=_held_out_values(intents),
        train_sources=[source for *_, source in rows[False]],
        held_out_sources=[source for *_, source in rows[True]],
    )


def _labelled(rows: list[Row]) -> LabelledTexts:
    return LabelledTexts(
        texts=[text for text, _, _, _ in rows],
        labels=[label for _, label, _, _ in rows],
        entities=[entities for _, _, entities, _ in rows],
    )


def _jsonl(data: LabelledTexts) -> str:
    lines = []
    for text, label, entities in zip(data.texts, data.labels, data.entities or [()] * len(data.texts), strict=True):
        spans = [{"start": e.start, "end": e.end, "label": e.label} for e in entities]
        lines.append(json.dumps({"text": text, "label": label, "entities": spans}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def write_split(split: NluSplit, directory: str | Path) -> tuple[Path, Path]:
    """``train.jsonl`` and ``held_out.jsonl`` in the training-file format (text, label, entities),
    which ``load_labelled_file`` reads back as they are."""
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
        f"{len(split.intents)} intents, {len(split.train.slot_labels)} slots, templates "
        f"{split.templates['train']} trained and {split.templates['held_out']} held out: "
        f"{len(split.train.texts)} training examples ({train}), {len(split.held_out.texts)} held out "
        f"({held_out}) from held-out templates and values"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
