"""Labelled training files: JSONL (``{"text": ..., "label": ...}`` per line) or CSV (``text``, ``label``).

A line may also name slots (``headroom.export.entities``): a JSONL ``entities`` list, or the
inline markup ``turn on the [kitchen](area) lights`` in any text. Then ``LabelledTexts.entities``
holds each text's entities (an empty tuple for texts without); for a file where no line names
a slot (none has markup, and every ``entities`` list, if any, is empty) it is None, and the
tenant is a classification tenant.

``load_labelled_file`` refuses, with a message naming the line, anything a head cannot be
trained from: unknown format; a blank or whitespace-only line (a JSONL file may end with a
newline; blank lines elsewhere usually mean a file was cut or concatenated wrongly); fields or
columns other than ``text`` and ``label`` (listed, so a misspelt ``lable`` is not ignored); a
missing or empty text or label; a label with a line break or control character; fewer than two
classes; a class with fewer than two examples (the stratified hold-out needs two); entities
that ``headroom.export.entities`` refuses, and a line with both ``entities`` and markup.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from headroom.export.entities import Entity, EntityError, check_entities, is_markup, parse_markup, shifted

#: The fields (JSONL keys, CSV columns) a training file may have; ``entities`` is optional (JSONL).
FIELDS = ("text", "label", "entities")
REQUIRED_FIELDS = ("text", "label")


class DatasetError(ValueError):
    """A training file that cannot be used, with the reason."""


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[str]
    #: Each text's slots (empty tuple: none), or None: no line of the file names any.
    entities: list[tuple[Entity, ...]] | None = None

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    @property
    def slot_labels(self) -> list[str]:
        return sorted({entity.label for spans in self.entities or () for entity in spans})


Row = tuple[str, str, "tuple[Entity, ...] | None"]


def _check_row(source: str, text: object, label: object, entities: object = None) -> Row:
    """(text, label, entities or None when the line names none), text stripped and the entities
    moved with it."""
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{source}: 'text' is missing or empty")
    if label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, (dict, list)):
        raise DatasetError(f"{source}: 'label' is missing or empty")
    label = str(label).strip()
    if any(not character.isprintable() for character in label):
        # Labels travel one per line in labels.txt: a line break inside one would shift them all.
        raise DatasetError(f"{source}: label {label!r} contains a line break or control character")
    spans = None
    try:
        if is_markup(text):
            if entities is not None:
                raise EntityError("a line has either 'entities' or markup in its text, not both")
            text, spans = parse_markup(text)
            spans = check_entities(text, spans)
        elif entities is not None:
            spans = check_entities(text, entities)
    except EntityError as exc:
        raise DatasetError(f"{source}: {exc}") from exc
    stripped = text.strip()
    if spans is not None:
        spans = shifted(spans, len(text) - len(text.lstrip()))
    if not stripped:
        raise DatasetError(f"{source}: 'text' is missing or empty")
    return stripped, label, spans


def _unknown(names: object) -> list[str]:
    return sorted(str(name) for name in names if name not in FIELDS)


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                raise DatasetError(
                    f"{path}:{number}: line {number} is blank; every line must hold one example "
                    "(the file may only end with a newline)"
                )
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{number}: expected an object with 'text' and 'label'")
            unknown = _unknown(record)
            if unknown:
                raise DatasetError(
                    f"{path}:{number}: unknown field(s) {unknown}; a line holds only 'text', 'label' and 'entities'"
                )
            rows.append(_check_row(f"{path}:{number}", record.get("text"), record.get("label"), record.get("entities")))
    return rows


def _read_csv(path: Path) -> list[Row]:
    # utf-8-sig: spreadsheets often start a CSV with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DatasetError(f"{path}: no CSV header; the first line must be text,label")
        missing = sorted(set(REQUIRED_FIELDS) - set(header))
        if missing:
            raise DatasetError(f"{path}: CSV header must name 'text' and 'label' columns (missing {missing})")
        unknown = _unknown(header) + sorted(name for name in header if name == "entities")
        if unknown:
            # Slots in CSV travel as markup in the text: "turn on the [kitchen](area) lights".
            raise DatasetError(f"{path}: unknown column(s) {unknown}; the CSV header must be exactly text,label")
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise DatasetError(f"{path}: column(s) {duplicated} appear more than once in the CSV header")
        rows = []
        for row in reader:
            number = reader.line_num
            if not row or not "".join(row).strip():
                raise DatasetError(f"{path}:{number}: line {number} is blank; every line must hold one example")
            if len(row) != len(header):
                raise DatasetError(f"{path}:{number}: {len(row)} fields, but the header names {len(header)}")
            record = dict(zip(header, row, strict=True))
            rows.append(_check_row(f"{path}:{number}", record["text"], record["label"]))
        return rows


def load_labelled_file(path: str | Path) -> LabelledTexts:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _read_jsonl(path)
    elif suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise DatasetError(f"{path}: unknown format {suffix!r}; use .jsonl or .csv")
    if not rows:
        raise DatasetError(f"{path}: no labelled examples")
    counts = Counter(label for _, label, _ in rows)
    if len(counts) < 2:
        raise DatasetError(f"{path}: a head needs at least two classes, found only {sorted(counts)}")
    scarce = sorted(label for label, count in counts.items() if count < 2)
    if scarce:
        raise DatasetError(f"{path}: every class needs at least two examples; too few for {scarce}")
    # Only empty lists ("entities": [] on every line) name no slot: a token head would learn
    # nothing but "O", so that file is a classification file.
    named = any(spans for _, _, spans in rows)
    entities = [spans or () for _, _, spans in rows] if named else None
    return LabelledTexts(texts=[t for t, _, _ in rows], labels=[label for _, label, _ in rows], entities=entities)
