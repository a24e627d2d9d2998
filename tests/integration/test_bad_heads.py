"""Bad heads are refused and change nothing (issue 5 §2), against the session's real tritonserver.

Every refusal must come with a clear message, leave the model repository exactly as it was (every
path and file hash) with no staging leftovers, and never disturb the demo heads: a background
thread classifies them during the whole module and must see no failure
(``test_serving_heads_kept_serving_throughout``, last). A valid ready-made head onboards and
answers as its ONNX file run alone; a bad new version of it is refused while the old one answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest
from headroom import config
from headroom.client.inference import HeadroomError
from headroom.client.onboarding import HeadRefused
from headroom.export.datasets import DatasetError
from headroom.export.encoder import read_encoder_info
from headroom.naming import RESERVED_HEAD_NAMES, InvalidHeadName
from headroom.repository import head_store, validation
from onnx import TensorProto

from tests.conftest import DEMO_HEADS
from tests.onnx_heads import OTHER_ENCODER, changes, graph_head, linear_head, snapshot, write_head_files
from tests.polling import wait_for

pytestmark = pytest.mark.integration

TRAFFIC_TEXTS = {
    "knowledge": "who wrote hamlet",
    "lifestyle": "do you like football",
    "smalltalk": "hello there, how are you",
    "smart_home": "turn on the kitchen lights",
}


class Traffic:
    """Classifies every demo head in a loop (own client) and records anything that is not an answer."""

    def __init__(self, triton) -> None:
        self.triton = triton
        self.answers = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.labels: dict[str, list[str]] = {}
        self.thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> None:
        with self.triton.client() as client:
            for head, text in TRAFFIC_TEXTS.items():
                self.labels[head] = list(client.classify([text], head)[0].probabilities)
        self.thread.start()
        wait_for(lambda: self.answers or self.failures, 30, interval_s=0.01, fail=False)

    def _run(self) -> None:
        with self.triton.client(self.triton.grpc_url, concurrency=4) as client:
            while not self.stop.is_set():
                heads = list(TRAFFIC_TEXTS)
                results = client.classify([TRAFFIC_TEXTS[h] for h in heads], heads, return_errors=True)
                for head, result in zip(heads, results, strict=True):
                    if isinstance(result, Exception):
                        self.failures.append(f"{head}: {result}")
                    elif list(result.probabilities) != self.labels[head]:
                        self.failures.append(f"{head}: answered with labels {list(result.probabilities)}")
                    else:
                        self.answers += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def traffic(triton):
    assert set(TRAFFIC_TEXTS) == set(DEMO_HEADS)
    running = Traffic(triton)
    running.start()
    yield running
    running.finish()


@pytest.fixture(scope="module")
def served_fingerprint(triton) -> str:
    return read_encoder_info(triton.repository)["fingerprint"]


@pytest.fixture
def unchanged(triton, traffic):
    """Asserts, after the test, that the repository and staging folder are exactly as before."""
    staging = triton.state_dir / "staging"
    before, staged_before = snapshot(triton.repository), snapshot(staging) if staging.exists() else {}
    answers_before = traffic.answers
    yield
    assert changes(before, snapshot(triton.repository)) == [], "the repository changed"
    assert (snapshot(staging) if staging.exists() else {}) == staged_before, "staging leftovers"
    assert not traffic.failures, traffic.failures[:3]
    assert traffic.thread.is_alive() and traffic.answers >= answers_before


# --- ready-made ONNX heads ------------------------------------------------------------------------
def _bad_heads(fingerprint: str) -> dict[str, tuple[bytes, list[str], str | None, str]]:
    """case -> (model bytes, labels, encoder_fingerprint argument, expected message part)."""
    good, good_labels = linear_head(3, seed=1, fingerprint=fingerprint)
    no_metadata, _ = linear_head(3, seed=2)
    session, session_labels = graph_head(3, seed=3, fingerprint=fingerprint)
    return {
        "not-onnx": (b"this is not an onnx file\n", ["a", "b"], fingerprint, "not an ONNX model"),
        "empty-file": (b"", ["a", "b"], fingerprint, "the head file is empty"),
        "width-383": (linear_head(3, fingerprint=fingerprint, dim=383)[0], good_labels, None, "[batch, 384]"),
        "width-768": (linear_head(3, fingerprint=fingerprint, dim=768)[0], good_labels, None, "[batch, 384]"),
        "int64-input": (graph_head(3, input_type=TensorProto.INT64)[0], session_labels, fingerprint, "is INT64"),
        "fp16-input": (graph_head(3, input_type=TensorProto.FLOAT16)[0], session_labels, fingerprint, "is FLOAT16"),
        "labels-fewer-linear": (good, good_labels[:2], None, "3 classes of width 384 but labels.txt names 2"),
        "labels-more-session": (session, [*session_labels, "g9"], None, "outputs 3 classes but 4 labels"),
        "labels-duplicate": (good, ["c0", "c1", "c0"], None, "labels must be unique; repeated: ['c0']"),
        "labels-newline": (good, ["c0", "c1\nc2", "c3"], None, "line break or control character"),
        "labels-blank": (good, ["c0", " ", "c2"], None, "label 2 is blank"),
        "labels-other-order": (good, ["c1", "c0", "c2"], None, "differ from those in the head's ONNX metadata"),
        "encoder-by-metadata": (
            linear_head(3, seed=1, fingerprint=OTHER_ENCODER)[0],
            good_labels,
            None,
            f"trained against encoder {OTHER_ENCODER}, but the server runs {fingerprint}",
        ),
        "encoder-by-argument": (
            no_metadata,
            good_labels,
            "sha256:" + "1" * 64,
            "trained against encoder sha256:1111",
        ),
        "encoder-argument-disagrees": (good, good_labels, OTHER_ENCODER, "they must agree"),
        "encoder-missing": (no_metadata, good_labels, None, "does not say which encoder it was trained for"),
        "logits": (graph_head(3, softmax=False)[0], session_labels, fingerprint, "must output probabilities"),
    }


BAD_HEAD_CASES = list(_bad_heads("sha256:x"))


@pytest.mark.parametrize("case", BAD_HEAD_CASES)
def test_bad_head_is_refused_and_changes_nothing(triton, served_fingerprint, unchanged, tmp_path, case):
    model_bytes, labels, fingerprint, message = _bad_heads(served_fingerprint)[case]
    onnx_file, _ = write_head_files(tmp_path, case, model_bytes, ["x"])
    with triton.client() as client:
        with pytest.raises(HeadRefused) as refused:
            triton.onboarding(client).onboard_model(f"bad-{case}", onnx_file, labels, encoder_fingerprint=fingerprint)
        assert not client.is_head_ready(f"bad-{case}")
    text = str(refused.value)
    assert text.startswith(f"head 'bad-{case}' refused: ") and message in text, text
    assert "\n" not in text
    assert not (triton.repository / f"head_bad-{case}").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("c0\n\nc1\n", "line 2 is blank"),
        ("c0\n", "at least two labels, got 1"),
        ("c0\nc1\nc0\n", "repeated: ['c0']"),
        ("c0\nc1\x07\n", "control character"),
    ],
)
def test_bad_labels_file_is_refused(triton, served_fingerprint, unchanged, tmp_path, content, message):
    onnx_file, labels_file = write_head_files(tmp_path, "h", *linear_head(2, fingerprint=served_fingerprint))
    labels_file.write_text(content, encoding="utf-8")
    with triton.client() as client, pytest.raises(HeadRefused, match="refused: ") as refused:
        triton.onboarding(client).onboard_model("bad-labels-file", onnx_file, labels_file)
    assert message in str(refused.value)


NAMES = ["encoder", "executor", "pipeline", "tokenizer", "embed", "../x", "Acme", "x" * 49, "", "a b", "head.x"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_names_are_refused_before_anything(triton, served_fingerprint, unchanged, tmp_path, name):
    onnx_file, labels_file = write_head_files(tmp_path, "h", *linear_head(2, fingerprint=served_fingerprint))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(8)))
    rule = "is a system model" if name in RESERVED_HEAD_NAMES else "invalid head name"
    with triton.client() as client:
        with pytest.raises(InvalidHeadName, match=rule):
            triton.onboarding(client).onboard_model(name, onnx_file, labels_file)
        with pytest.raises(InvalidHeadName, match=rule):
            triton.onboarding(client).onboard(name, data)
        with pytest.raises(InvalidHeadName, match=rule):
            triton.onboarding(client).offboard(name)
    assert not (triton.state_dir / "locks" / f"{name}.lock").exists()


# --- training files ----------------------------------------------------------------------------------
def _examples(count: int = 12) -> list[dict[str, str]]:
    return [
        {"text": f"please turn {'on' if i % 2 else 'off'} lamp {i}", "label": "on" if i % 2 else "off"}
        for i in range(count)
    ]


def _jsonl(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


TRAINING_FILES = {
    "one-class.jsonl": (_jsonl([{"text": f"lamp {i}", "label": "on"} for i in range(6)]), "at least two classes"),
    "blank-line.jsonl": (
        _jsonl(_examples()[:5]) + "\n" + _jsonl(_examples()[5:]),
        "blank-line.jsonl:6: line 6 is blank",
    ),
    "whitespace-line.jsonl": (_jsonl(_examples()[:3]) + "  \t\n" + _jsonl(_examples()[3:]), ":4: line 4 is blank"),
    "unknown-key.jsonl": (
        _jsonl(_examples()[:2]) + json.dumps({"text": "lamp", "label": "on", "lable": "on", "id": 3}) + "\n",
        ":3: unknown field(s) ['id', 'lable']",
    ),
    "unknown-column.csv": (
        "text,label,source\n" + "".join(f"{e['text']},{e['label']},web\n" for e in _examples()),
        "unknown column(s) ['source']",
    ),
    "extra-field.csv": ("text,label\nlamp on,on\nlamp off,off,web\n", ":3: 3 fields, but the header names 2"),
    "blank-line.csv": ("text,label\nlamp on,on\n\nlamp off,off\n", ":3: line 3 is blank"),
}


@pytest.mark.parametrize("filename", list(TRAINING_FILES))
def test_bad_training_file_is_refused_before_anything(triton, unchanged, tmp_path, filename):
    content, message = TRAINING_FILES[filename]
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    with triton.client() as client, pytest.raises(DatasetError) as refused:
        triton.onboarding(client).onboard("bad-training", path)
    assert message in str(refused.value), str(refused.value)
    assert "\n" not in str(refused.value)


def test_cli_refuses_a_bad_head_in_one_line(triton, tmp_path, unchanged):
    onnx_file, labels_file = write_head_files(tmp_path, "logits", *graph_head(3, softmax=False))
    env = {
        **os.environ,
        config.ADMIN_KEY_ENV: triton.admin_key,
        "HEADROOM_STATE_DIR": str(triton.state_dir),
    }
    command = [
        sys.executable, "-m", "headroom.client.cli", "--repository", str(triton.repository), "onboard", "cli-bad",
        "--url", triton.http_url, "--onnx", str(onnx_file), "--labels", str(labels_file),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.PROJECT_ROOT, env=env)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # beside an INFO log line
    assert len(errors) == 1 and errors[0].startswith("error: head 'cli-bad' refused: the head does not say"), errors


# --- a valid head, then bad new versions of it -----------------------------------------------------
TEXTS = ["turn on the kitchen lights", "who wrote hamlet", "what a lovely day", "order a pizza please"]


def _answers_equal_the_onnx_file(client, name: str, model_bytes: bytes, labels: list[str]) -> float:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for text in TEXTS:
        (answer,) = client.classify([text], name)
        expected = session.run(None, {"sentence_embedding": client.embed([text])})[0][0]
        assert list(answer.probabilities) == labels
        worst = max(worst, float(np.abs(np.array(list(answer.probabilities.values())) - expected).max()))
    return worst


@pytest.fixture(scope="module")
def good_head(triton, served_fingerprint, tmp_path_factory, traffic):
    model_bytes, labels = linear_head(4, seed=11, fingerprint=served_fingerprint, prefix="good")
    onnx_file, labels_file = write_head_files(tmp_path_factory.mktemp("good"), "good", model_bytes, labels)
    with triton.client() as client:
        result = triton.onboarding(client).onboard_model("good-ready-made", onnx_file, labels_file)
    yield result, model_bytes, labels
    with triton.client() as client:
        triton.onboarding(client).offboard("good-ready-made")


def test_a_valid_ready_made_head_answers_as_its_onnx_file(triton, good_head):
    result, model_bytes, labels = good_head
    assert result.version == 1 and 0 < result.seconds_to_first_answer < result.seconds_total
    with triton.client() as client:
        assert _answers_equal_the_onnx_file(client, "good-ready-made", model_bytes, labels) <= 1e-5
    info = json.loads((triton.repository / "head_good-ready-made" / "1" / "head.json").read_text())
    assert (
        info["labels"] == labels and info["encoder_fingerprint"] == read_encoder_info(triton.repository)["fingerprint"]
    )
    assert (triton.repository / "head_good-ready-made" / "1" / "model.onnx").read_bytes() == model_bytes


@pytest.mark.parametrize("case", ["not-onnx", "width-383", "labels-fewer-linear", "encoder-by-metadata", "logits"])
def test_bad_new_version_is_refused_and_the_old_one_keeps_answering(
    triton, served_fingerprint, good_head, unchanged, tmp_path, case
):
    _, good_bytes, good_labels = good_head
    model_bytes, labels, fingerprint, message = _bad_heads(served_fingerprint)[case]
    onnx_file, _ = write_head_files(tmp_path, case, model_bytes, labels)
    with triton.client() as client:
        with pytest.raises(HeadRefused, match="refused: ") as refused:
            triton.onboarding(client).onboard_model(
                "good-ready-made", onnx_file, labels, encoder_fingerprint=fingerprint
            )
        assert message in str(refused.value)
        assert _answers_equal_the_onnx_file(client, "good-ready-made", good_bytes, good_labels) <= 1e-5


def _skip_validation(model_bytes, labels, repository, served, encoder_fingerprint=None):
    """Lets a bad head through, to exercise what happens when a written head cannot answer."""
    return validation.CheckedHead(model_bytes, list(labels), served, "session")


def test_a_head_that_cannot_answer_after_loading_is_withdrawn(triton, traffic, monkeypatch, tmp_path):
    """Behind the checks: the first answer through the pipeline is verified, or the head goes."""
    before = snapshot(triton.repository)
    monkeypatch.setattr(validation, "check_head", _skip_validation)
    onnx_file, labels_file = write_head_files(tmp_path, "broken", b"this is not an onnx file", ["a", "b"])
    with triton.client() as client:
        with pytest.raises(HeadroomError, match="did not answer: .*not an ONNX model.*version 1 was withdrawn"):
            triton.onboarding(client).onboard_model("withdrawn", onnx_file, labels_file)
        assert not client.is_head_ready("withdrawn")
        assert "withdrawn" not in {h.name for h in client.list_heads() if h.state == "READY"}
    assert changes(before, snapshot(triton.repository)) == []
    assert list((triton.state_dir / "archive").glob("head_withdrawn.failed.*"))


def test_a_new_version_that_cannot_answer_is_withdrawn_and_the_old_one_serves(
    triton, good_head, traffic, monkeypatch, tmp_path
):
    _, good_bytes, good_labels = good_head
    before = snapshot(triton.repository)
    monkeypatch.setattr(validation, "check_head", _skip_validation)
    onnx_file, labels_file = write_head_files(tmp_path, "broken", b"this is not an onnx file", good_labels)
    with triton.client() as client:
        with pytest.raises(HeadroomError, match="version 2 loaded but did not answer: .*version 2 was withdrawn"):
            triton.onboarding(client).onboard_model("good-ready-made", onnx_file, labels_file)
        monkeypatch.undo()
        assert head_store.versions_of(triton.repository / "head_good-ready-made") == [1]
        assert _answers_equal_the_onnx_file(client, "good-ready-made", good_bytes, good_labels) <= 1e-5
        assert {h.version for h in client.list_heads() if h.name == "good-ready-made" and h.state == "READY"} == {"1"}
    assert changes(before, snapshot(triton.repository)) == []


def test_serving_heads_kept_serving_throughout(traffic):
    """Last in the module: the demo heads answered every request while all of the above ran."""
    answers = traffic.answers
    traffic.finish()
    assert not traffic.failures, f"{len(traffic.failures)} failures, first: {traffic.failures[:3]}"
    assert answers >= 40, f"only {answers} answers: the traffic did not run throughout"


def test_labels_files_read_like_the_executor_reads_them(tmp_path):
    """Unit: a final newline and CRLF endings are fine; the labels come back in file order."""
    path = tmp_path / "labels.txt"
    path.write_bytes(b"b\r\na\r\n")
    assert validation.read_labels_file(path) == ["b", "a"]
    path.write_text("b\na", encoding="utf-8")
    assert validation.read_labels_file(path) == ["b", "a"]


def test_onboarding_checks_heads_with_the_executors_own_rules_and_writes_nothing_there(triton):
    """One copy of the head rules: onboarding's check and the executor's loading run the same
    ``parse_head``, imported normally, and checking a head writes nothing into a model folder."""
    from headroom import head_format
    from headroom.executor import resident_heads

    assert validation.parse_head is head_format.parse_head
    assert resident_heads.parse_head is head_format.parse_head
    folder = triton.repository / config.EXECUTOR_MODEL
    before = snapshot(folder)
    fingerprint = read_encoder_info(triton.repository)["fingerprint"]
    model_bytes, labels = linear_head(3, seed=5, fingerprint=fingerprint)
    assert validation.check_head(model_bytes, labels, fingerprint).labels == labels
    assert changes(before, snapshot(folder)) == []
