"""Unit tests of the client's pure helpers: length-sorted chunks and the bulk file formats."""

from __future__ import annotations

import csv
import io
import json

import pytest
from headroom.client import bulk_files
from headroom.client.inference import Classification, HeadroomError, length_sorted_chunks, names_a_row


def test_chunks_hold_every_text_once_sorted_by_length():
    texts = ["a" * n for n in (5, 1, 30, 2, 2, 17, 9, 0, 4)]
    chunks = length_sorted_chunks(texts, 4)
    assert [len(chunk) for chunk in chunks] == [4, 4, 1]
    flat = [index for chunk in chunks for index in chunk]
    assert sorted(flat) == list(range(len(texts)))
    assert [len(texts[index]) for index in flat] == sorted(len(t) for t in texts)
    assert length_sorted_chunks([], 8) == []
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        length_sorted_chunks(texts, 0)


def test_only_errors_that_name_a_row_are_split_into_single_requests():
    assert names_a_row(HeadroomError("row 3: head 'x' is not loaded", "404"))
    assert not names_a_row(HeadroomError("head 'x' is not loaded", "404"))
    assert not names_a_row(HeadroomError("no answer within 60 s", "DEADLINE_EXCEEDED"))


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_formats_follow_the_extension_unless_given():
    assert bulk_files.input_format("a.jsonl", None) == "jsonl"
    assert bulk_files.input_format("a.CSV", None) == "csv"
    assert bulk_files.input_format("a.txt", None) == "lines"
    assert bulk_files.input_format("-", None) == "lines"
    assert bulk_files.input_format("a.txt", "jsonl") == "jsonl"
    assert bulk_files.output_format(None, None) == "jsonl"
    assert bulk_files.output_format("out.csv", None) == "csv"


def test_lines_keep_blank_lines_as_texts_so_rows_stay_aligned(tmp_path):
    path = _write(tmp_path, "in.txt", "first\r\n\nthird\n")
    records = bulk_files.read_records(path, "lines")
    assert [r.text for r in records] == ["first", "", "third"]
    assert bulk_files.read_records("-", "lines", io.StringIO("one\ntwo")) == [
        bulk_files.Record("one"),
        bulk_files.Record("two"),
    ]


def test_jsonl_records_keep_their_other_fields_and_refuse_bad_lines(tmp_path):
    path = _write(tmp_path, "in.jsonl", '{"id": 7, "text": "hi", "head": "acme"}\n{"text": "yo", "lang": "en"}\n')
    records = bulk_files.read_records(path, "jsonl")
    assert records == [bulk_files.Record("hi", "acme", {"id": 7}), bulk_files.Record("yo", None, {"lang": "en"})]
    assert bulk_files.extra_fields(records) == ["id", "lang"]
    for content, message in (
        ('{"text": "a"}\n{"text": 3}\n', ":2: expected an object with a string 'text'"),
        ('{"text": "a"}\n\n', ":2: blank line"),
        ("[1]\n", ":1: expected an object"),
        ('{"text": "a", "head": 1}\n', ":1: 'head' must be a string"),
        ("{oops\n", ":1: not valid JSON"),
    ):
        with pytest.raises(bulk_files.InputError, match=message):
            bulk_files.read_records(_write(tmp_path, "bad.jsonl", content), "jsonl")


def test_csv_records_need_a_text_column(tmp_path):
    path = _write(tmp_path, "in.csv", 'id,text,head\n1,"hello, there",acme\n2,bye,\n')
    records = bulk_files.read_records(path, "csv")
    assert records == [
        bulk_files.Record("hello, there", "acme", {"id": "1"}),
        bulk_files.Record("bye", None, {"id": "2"}),
    ]
    with pytest.raises(bulk_files.InputError, match="must name a 'text' column"):
        bulk_files.read_records(_write(tmp_path, "bad.csv", "body\nx\n"), "csv")
    with pytest.raises(bulk_files.InputError, match=":2: more fields than the header names"):
        bulk_files.read_records(_write(tmp_path, "bad.csv", "text\nx,y\n"), "csv")
    with pytest.raises(bulk_files.InputError, match="no such file|No such file"):
        bulk_files.read_records(str(tmp_path / "missing.csv"), "csv")


def test_results_are_written_in_order_with_errors_in_place():
    records = [bulk_files.Record("hi", None, {"id": 1}), bulk_files.Record("", None, {"id": 2})]
    results = [
        Classification("hi", "acme", "greet", 0.75, {"greet": 0.75, "bye": 0.25}),
        HeadroomError("TEXT is empty", "400"),
    ]
    out = io.StringIO()
    bulk_files.ResultWriter(out, "jsonl", ["id"]).write(records, ["acme", "acme"], results)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [
        {
            "id": 1,
            "text": "hi",
            "head": "acme",
            "label": "greet",
            "score": 0.75,
            "probabilities": {"greet": 0.75, "bye": 0.25},
        },
        {"id": 2, "text": "", "head": "acme", "error": "TEXT is empty", "status": "400"},
    ]
    out = io.StringIO()
    bulk_files.ResultWriter(out, "csv", ["id"]).write(records, ["acme", "acme"], results)
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [
        ["id", "text", "head", "label", "score", "error"],
        ["1", "hi", "acme", "greet", "0.750000", ""],
        ["2", "", "acme", "", "", "TEXT is empty"],
    ]
