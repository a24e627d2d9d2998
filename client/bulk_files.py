"""Many texts in, one classification per text out: the file formats of ``headroom classify --input``.

Input (``read_records``), chosen by ``--input-format`` or the file's extension:

- ``lines``: one text per line (any other extension, and standard input by default); a blank line
  is a text too, refused by the server as empty, so output rows stay aligned with input lines;
- ``jsonl``: one object per line with ``text`` and optionally ``head``;
- ``csv``: a header naming a ``text`` column and optionally a ``head`` column.

Every other JSONL field or CSV column (an ``id``, say) is copied to the output row unchanged.
A malformed line is refused with its file and line number before anything is sent.

Output (``ResultWriter``): ``jsonl`` (one object per input row, in input order: the copied
fields, ``text``, ``head``, then ``label``, ``score``, ``probabilities`` and, for a head with
slots, ``entities`` (``label``, ``start``, ``end``, ``text``, ``score`` each), or ``error`` and
``status``) or ``csv`` (copied columns, ``text``, ``head``, ``label``, ``score``, ``error``;
entities only in JSONL).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

INPUT_FORMATS = ("lines", "jsonl", "csv")
OUTPUT_FORMATS = ("jsonl", "csv")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class InputError(ValueError):
    """An input file that cannot be read as texts to classify, with the place."""


@dataclass(frozen=True)
class Record:
    text: str
    head: str | None = None
    #: Fields copied to the output row (``id``, ...).
    extra: dict = field(default_factory=dict)


def input_format(path: str, given: str | None) -> str:
    """``given``, else the format the file name implies (``lines`` for standard input)."""
    if given:
        return given
    suffix = Path(path).suffix.lower() if path != "-" else ""
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    return "csv" if suffix == ".csv" else "lines"


def output_format(path: str | None, given: str | None) -> str:
    if given:
        return given
    return "csv" if path and Path(path).suffix.lower() == ".csv" else "jsonl"


def _jsonl_records(handle: IO[str], name: str) -> list[Record]:
    records = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            raise InputError(f"{name}:{number}: blank line; every line holds one JSON object with 'text'")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            raise InputError(f"{name}:{number}: expected an object with a string 'text'")
        head = value.get("head")
        if head is not None and not isinstance(head, str):
            raise InputError(f"{name}:{number}: 'head' must be a string")
        extra = {key: item for key, item in value.items() if key not in ("text", "head")}
        records.append(Record(value["text"], head, extra))
    return records


def _csv_records(handle: IO[str], name: str) -> list[Record]:
    reader = csv.DictReader(handle)
    if not reader.fieldnames or "text" not in reader.fieldnames:
        raise InputError(f"{name}: the CSV header must name a 'text' column (found {reader.fieldnames})")
    records = []
    for row in reader:
        if None in row:  # more fields than the header names
            raise InputError(f"{name}:{reader.line_num}: more fields than the header names")
        head = row.get("head") or None
        extra = {key: item for key, item in row.items() if key not in ("text", "head")}
        records.append(Record(row["text"] or "", head, extra))
    return records


def read_records(path: str, fmt: str, stdin: IO[str] | None = None) -> list[Record]:
    """Every record of ``path`` (``-``: ``stdin``) in format ``fmt``."""
    name = "<stdin>" if path == "-" else path
    try:
        handle = stdin if path == "-" else open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror}") from exc
    try:
        if fmt == "jsonl":
            return _jsonl_records(handle, name)
        if fmt == "csv":
            return _csv_records(handle, name)
        return [Record(line.rstrip("\r\n")) for line in handle]
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text ({exc.reason})") from exc
    finally:
        if handle is not stdin:
            handle.close()


class ResultWriter:
    """Writes one row per classified record, in order, as JSONL or CSV."""

    def __init__(self, handle: IO[str], fmt: str, extra_fields: Sequence[str] = ()) -> None:
        self._handle = handle
        self._fmt = fmt
        self._extra_fields = list(extra_fields)
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(handle)
            self._csv.writerow([*self._extra_fields, "text", "head", "label", "score", "error"])

    def write(self, records: Iterable[Record], heads: Iterable[str], results: Iterable) -> None:
        """``results``: a ``Classification`` or a ``HeadroomError`` per record."""
        for record, head, result in zip(records, heads, results, strict=True):
            failed = isinstance(result, Exception)
            if self._csv is not None:
                extra = [record.extra.get(name, "") for name in self._extra_fields]
                if failed:
                    self._csv.writerow([*extra, record.text, head, "", "", str(result)])
                else:
                    self._csv.writerow([*extra, record.text, head, result.label, f"{result.score:.6f}", ""])
                continue
            row = {**record.extra, "text": record.text, "head": head}
            if failed:
                row |= {"error": str(result), "status": getattr(result, "status", None)}
            else:
                row |= {"label": result.label, "score": result.score, "probabilities": result.probabilities}
                if result.entities is not None:
                    row["entities"] = [dataclasses.asdict(entity) for entity in result.entities]
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()


def extra_fields(records: Sequence[Record]) -> list[str]:
    """The copied field names of all records, in first-seen order (the CSV output's first columns)."""
    return list(dict.fromkeys(name for record in records for name in record.extra))
