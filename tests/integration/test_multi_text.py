"""Many texts per request, and texts of real length, through the one real server (issue 9 §1-2).

A ``pipeline`` request carries N rows (TEXT and HEAD [N, 1]) that may name different heads; each
row is answered as the same text alone (fp32: ``PROBS`` to 1e-5 of the offline computation),
rows of narrower heads padded with probability 0 and label "". One bad row fails its request
with a message naming the row; batch-mates in other requests are answered. The client sends
texts in length-sorted chunks and returns results in the caller's order; ``headroom classify
--input`` reads lines, JSONL or CSV and writes JSONL or CSV.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from headroom import config
from headroom.client.traffic import real_text_mix
from tritonclient.utils import InferenceServerException

from tests.conftest import DEMO_HEADS
from tests.reference import embedder, offline, tolerance

pytestmark = pytest.mark.integration

MODULES = {"http": triton_http, "grpc": triton_grpc}
#: Texts of very different lengths: utterances, sentences, paragraphs, one cut at 256 tokens.
MIXED_TEXTS = [
    "hi",
    "turn on the kitchen lights",
    *real_text_mix(size=20, seed=11),
    "who wrote hamlet",
    "the weather tomorrow and the day after " * 40,
]


def _strings(module, name: str, values: list[str | bytes]):
    array = np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in values], dtype=np.object_)
    tensor = module.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _infer(triton, protocol: str, texts: list, heads: list):
    module = MODULES[protocol]
    url = (triton.http_url if protocol == "http" else triton.grpc_url).split("://")[1]
    client = module.InferenceServerClient(url)
    try:
        return client.infer(config.PIPELINE_MODEL, [_strings(module, "TEXT", texts), _strings(module, "HEAD", heads)])
    finally:
        client.close()


def _heads_for(texts: list[str]) -> list[str]:
    return [DEMO_HEADS[index % len(DEMO_HEADS)] for index in range(len(texts))]


def _expected(triton, texts: list[str], heads: list[str]) -> list[tuple[list[str], np.ndarray]]:
    """(labels, probabilities) of each text alone through its head, offline."""
    answers = [offline(triton.repository, head, [text]) for text, head in zip(texts, heads, strict=True)]
    return [(labels, probs[0]) for labels, probs in answers]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_request_of_many_texts_and_heads_answers_each_row_as_alone(triton, protocol):
    heads = _heads_for(MIXED_TEXTS)
    result = _infer(triton, protocol, MIXED_TEXTS, heads)
    expected = _expected(triton, MIXED_TEXTS, heads)
    width = max(len(labels) for labels, _ in expected)
    probs, names = result.as_numpy("PROBS"), result.as_numpy("LABELS")
    assert probs.shape == names.shape == (len(MIXED_TEXTS), width)
    assert result.as_numpy("LABEL").shape == result.as_numpy("SCORE").shape == (len(MIXED_TEXTS), 1)
    for row, (labels, reference) in enumerate(expected):
        classes = len(labels)
        assert [name.decode() for name in names[row, :classes]] == labels, f"row {row} answered by another head"
        assert (names[row, classes:] == b"").all() and (probs[row, classes:] == 0).all(), "padding is '' and 0"
        assert np.abs(probs[row, :classes] - reference).max() <= tolerance(triton.repository), row
        assert result.as_numpy("SCORE")[row, 0] == pytest.approx(float(probs[row, :classes].max()), abs=1e-6)
        if np.sort(reference)[-1] - np.sort(reference)[-2] > 2 * tolerance(triton.repository):
            assert result.as_numpy("LABEL")[row, 0].decode() == labels[int(np.argmax(reference))]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_rows_fail_their_request_named_while_batch_mates_are_answered(triton, protocol):
    good_texts = MIXED_TEXTS[:8]
    bad_texts = ["lock the front door", "hello", " \t ", "good morning", "what is a computer", "hi"]
    bad_heads = ["smart_home", "smalltalk", "knowledge", "smalltalk", "no_such_head", "smalltalk"]
    outcomes: dict[str, object] = {}

    def send(key: str, texts: list, heads: list) -> None:
        try:
            outcomes[key] = _infer(triton, protocol, texts, heads)
        except InferenceServerException as exc:
            outcomes[key] = exc

    requests = {
        "good": (good_texts, _heads_for(good_texts)),
        "bad": (bad_texts, bad_heads),
        "unknown-only": (["hello", "hi"], ["no_such_head", "smart_home"]),
        "alone": (["turn on the kitchen lights"], ["smart_home"]),
    }
    threads = [threading.Thread(target=send, args=(key, *args)) for key, args in requests.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Texts are checked before anything runs: blank row 2 fails the request at once (the head of
    # row 4 is never resolved).
    bad = outcomes["bad"]
    assert isinstance(bad, InferenceServerException), bad
    assert bad.message() == "row 2: TEXT is empty", bad.message()
    assert str(bad.status()) == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    unknown = outcomes["unknown-only"]
    assert isinstance(unknown, InferenceServerException)
    assert unknown.message().startswith("row 0: head 'no_such_head' is not loaded"), unknown.message()
    assert str(unknown.status()) == ("404" if protocol == "http" else "StatusCode.NOT_FOUND")
    for key in ("good", "alone"):
        texts, heads = requests[key]
        result = outcomes[key]
        assert not isinstance(result, Exception), (key, result)
        for row, (labels, reference) in enumerate(_expected(triton, texts, heads)):
            assert np.abs(result.as_numpy("PROBS")[row, : len(labels)] - reference).max() <= tolerance(
                triton.repository
            )


def test_two_bad_rows_are_both_named(triton):
    with pytest.raises(InferenceServerException) as raised:
        _infer(triton, "grpc", ["hello", "hi", "there"], ["no_such_head", "smart_home", "Not-A-Name"])
    # Both are found by the executor; the first names its code (NOT_FOUND), the other is listed.
    assert raised.value.message().startswith("row 0: head 'no_such_head' is not loaded"), raised.value.message()
    assert raised.value.message().endswith("(row 2 failed too)")


def test_concurrent_single_texts_of_mixed_length_are_answered_as_alone(triton):
    """Batches the server forms from single-text requests of very different lengths and heads."""
    texts = real_text_mix(size=96, seed=21)
    heads = _heads_for(texts)
    with triton.client(triton.grpc_url, concurrency=48) as client:
        results = client.classify(texts, heads, batch_size=1)
    for result, text, head, (labels, reference) in zip(
        results, texts, heads, _expected(triton, texts, heads), strict=True
    ):
        assert result.text == text and result.head == head
        assert list(result.probabilities) == labels
        assert np.abs(np.array(list(result.probabilities.values())) - reference).max() <= tolerance(triton.repository)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_chunks_by_length_and_answers_in_the_callers_order(triton, protocol):
    texts = real_text_mix(size=60, seed=4) + ["hi", "x " * 600]
    random.Random(2).shuffle(texts)
    heads = _heads_for(texts)
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with triton.client(url, concurrency=4) as client:
        chunked = client.classify(texts, heads, batch_size=7)
        embeddings = client.embed(texts, batch_size=5)
    assert [(r.text, r.head) for r in chunked] == list(zip(texts, heads, strict=True))
    for result, (labels, reference) in zip(chunked, _expected(triton, texts, heads), strict=True):
        assert list(result.probabilities) == labels
        assert np.abs(np.array(list(result.probabilities.values())) - reference).max() <= tolerance(triton.repository)
    alone = embedder(triton.repository)(texts)
    assert embeddings.shape == (len(texts), config.EMBEDDING_DIM)
    if tolerance(triton.repository) <= 1e-5:
        assert np.abs(embeddings - alone).max() <= 1e-5
    else:
        assert (embeddings * alone).sum(axis=1).min() >= 0.97


def test_client_answers_every_good_text_of_a_chunk_with_a_bad_row(triton):
    texts = ["turn on the kitchen lights", "", "who wrote hamlet", "hello there", "lock the door"]
    heads = ["smart_home", "smart_home", "knowledge", "no_such_head", "smart_home"]
    with triton.client(triton.grpc_url) as client:
        results = client.classify(texts, heads, return_errors=True, batch_size=8)
        with pytest.raises(Exception, match="TEXT is empty"):
            client.classify(texts, heads, batch_size=8)
    # Each text got its own outcome, with the message a text alone gets.
    assert str(results[1]) == "TEXT is empty"
    assert str(results[3]).startswith("head 'no_such_head' is not loaded")
    assert [results[i].label for i in (0, 2, 4)] == ["lights_on", results[2].label, "lock_door"]
    assert (
        results[2].head == "knowledge"
        and list(results[2].probabilities) == offline(triton.repository, "knowledge", [texts[2]])[0]
    )


def test_embed_of_a_mixed_batch_equals_each_text_alone(triton):
    module = triton_grpc
    client = module.InferenceServerClient(triton.grpc_url.split("://")[1])
    try:
        result = client.infer(config.EMBED_MODEL, [_strings(module, "TEXT", MIXED_TEXTS)])
    finally:
        client.close()
    served = result.as_numpy("sentence_embedding")
    alone = embedder(triton.repository)(MIXED_TEXTS)
    assert served.shape == (len(MIXED_TEXTS), config.EMBEDDING_DIM)
    if tolerance(triton.repository) <= 1e-5:
        assert np.abs(served - alone).max() <= 1e-5
    else:
        assert (served * alone).sum(axis=1).min() >= 0.97


# --- headroom classify --input ------------------------------------------------------------------
def _cli(triton, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "headroom.client.cli", "classify", "--url", triton.grpc_url, *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300, cwd=config.PROJECT_ROOT)


def test_bulk_cli_reads_lines_and_writes_jsonl_in_input_order(triton, tmp_path):
    texts = real_text_mix(size=40, seed=8)
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = _cli(triton, "--head", "knowledge", "--input", str(source), "--output", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == texts
    labels, reference = offline(triton.repository, "knowledge", texts)
    for row, probs in zip(rows, reference, strict=True):
        assert row["head"] == "knowledge" and list(row["probabilities"]) == labels
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert abs(row["score"] - float(probs.max())) <= tolerance(triton.repository)
    # The same texts from standard input.
    done = _cli(triton, "--head", "knowledge", "--input", "-", stdin="\n".join(texts) + "\n")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["label"] for line in done.stdout.splitlines()] == [row["label"] for row in rows]


def test_bulk_cli_jsonl_with_heads_and_ids_to_csv_and_bad_rows(triton, tmp_path):
    records = [
        {"id": 1, "text": "turn on the kitchen lights", "head": "smart_home"},
        {"id": 2, "text": "who wrote hamlet"},  # takes --head
        {"id": 3, "text": "", "head": "smart_home"},
        {"id": 4, "text": "hello there", "head": "no_such_head"},
        {"id": 5, "text": "lock the front door", "head": "smart_home"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out.csv"
    done = _cli(triton, "--head", "knowledge", "--input", str(source), "--output", str(out))
    assert done.returncode == 1, done.stderr  # a smoke test: some texts got no label
    assert "2 of 5 texts got no label" in done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [row["id"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [row["head"] for row in rows] == ["smart_home", "knowledge", "smart_home", "no_such_head", "smart_home"]
    assert rows[0]["label"] == "lights_on" and rows[4]["label"] == "lock_door" and rows[1]["label"]
    assert rows[2]["error"] == "TEXT is empty" and not rows[2]["label"]
    assert rows[3]["error"].startswith("head 'no_such_head' is not loaded")


def test_bulk_cli_reads_csv_and_refuses_a_malformed_file(triton, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('text,lang\n"turn on the lights, please",en\nplay some jazz,en\n', encoding="utf-8")
    done = _cli(triton, "--head", "smart_home", "--input", str(source), "--output-format", "jsonl")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(row["lang"], row["label"]) for row in rows] == [("en", "lights_on"), ("en", "play_music")]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    done = _cli(triton, "--head", "smart_home", "--input", str(broken))
    assert done.returncode == 1 and f"{broken}:2: not valid JSON" in done.stderr
    done = _cli(triton, "--input", str(source))
    assert done.returncode == 1 and "record 1 names no head" in done.stderr
