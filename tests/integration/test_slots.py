"""Intents and slots from one encoder pass (issue 12), against the session's server (``triton``).

A slot tenant (``home``) is onboarded from Home Assistant's templates
(``headroom.export.home_assistant``) through the real onboarding path; then:

- served entities equal an offline run of the same ONNX files (encoder, token head) decoded the
  same way, and every entity's offsets point at its text in the TEXT as sent, whatever the text
  holds around it (accents, emoji, CJK, repeated spaces, punctuation);
- a text longer than the truncation length gets no entity beyond it;
- mixed requests of slot and classification heads answer both; a request of classification heads
  only gets exactly the four outputs it always got;
- a slot tenant onboarded, rolled to a new version and offboarded under load loses no request.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from headroom import config
from headroom.bio_tags import char_spans, decode
from headroom.client.inference import HeadroomError
from headroom.export.embeddings import RepositoryEmbedder
from headroom.export.home_assistant import home_assistant_split, write_split
from headroom.head_format import SLOTS_MODEL_FILE, TAGS_FILE
from headroom.repository.head_store import versions_of
from headroom.text_tokenizer import TextTokenizer, find_tokenizer_file

pytestmark = pytest.mark.integration

TENANT = "home"
#: Examples per intent in the tests' training files: enough for entities, quick to onboard.
TRAIN_PER_INTENT = 12
NOT_FOUND = {"404", "400", "NOT_FOUND", "StatusCode.NOT_FOUND"}
CLASSIFY_ONLY_OUTPUTS = {"LABEL", "SCORE", "PROBS", "LABELS"}


@pytest.fixture(scope="module")
def split():
    return home_assistant_split(seed=0, train_per_intent=TRAIN_PER_INTENT)


def training_file(split, directory: Path, skip: int = 0) -> Path:
    """The split's training file (``skip``: leave out every n-th example, for another version)."""
    train, _ = write_split(split, directory)
    if skip:
        lines = [line for i, line in enumerate(train.read_text(encoding="utf-8").splitlines()) if i % skip]
        train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train


@pytest.fixture(scope="module")
def home(triton, split, tmp_path_factory):
    directory = tmp_path_factory.mktemp("home")
    with triton.client() as client:
        result = triton.onboarding(client).onboard(TENANT, training_file(split, directory))
    assert result.metrics["slots"] == len(split.train.slot_labels)
    yield result
    with triton.client() as client:
        triton.onboarding(client).offboard(TENANT)


def offline_entities(repository: Path, head: str, texts: list[str]) -> list[list]:
    """What the served version of ``head`` should find, computed here from its files alone."""
    folder = repository / f"{config.HEAD_MODEL_PREFIX}{head}"
    version = folder / str(versions_of(folder)[-1])
    tags = [line for line in (version / TAGS_FILE).read_text(encoding="utf-8").splitlines() if line]
    session = ort.InferenceSession(str(version / SLOTS_MODEL_FILE), providers=["CPUExecutionProvider"])
    found = []
    for text, features in zip(texts, RepositoryEmbedder(repository).tokens(texts), strict=True):
        probabilities = session.run(None, {session.get_inputs()[0].name: features.embeddings[None]})[0]
        (spans,) = decode(probabilities, [len(features.offsets)], tags)
        found.append(char_spans(spans, features.offsets, text))
    return found


def test_served_entities_equal_an_offline_run_of_the_same_files(triton, home, split):
    texts = split.held_out.texts[:: max(1, len(split.held_out.texts) // 40)]
    with triton.client() as client:
        served = client.classify(texts, TENANT)
    expected = offline_entities(triton.repository, TENANT, texts)
    found = 0
    for answer, wanted in zip(served, expected, strict=True):
        assert answer.entities is not None
        assert [(e.label, e.start, e.end, e.text) for e in answer.entities] == [
            (e.label, e.start, e.end, e.text) for e in wanted
        ], answer.text
        np.testing.assert_allclose([e.score for e in answer.entities], [e.score for e in wanted], atol=1e-4)
        found += len(wanted)
    assert found >= len(texts) // 2, "the head found almost no entity in held-out texts"


DECORATIONS = [
    ("", ""),
    ("  Café ", "  — déjà vu!!"),
    ("😀😀 ", " 🏠"),
    ("東京では ", " 。ありがとう"),
    ("hey,,,   ", "...   ok?"),
    ("Ä\u0308 ", "\tthanks"),
]


@pytest.mark.parametrize("prefix, suffix", DECORATIONS)
def test_entity_offsets_point_at_their_text_in_the_text_as_sent(triton, home, split, prefix, suffix):
    texts = [prefix + text + suffix for text in split.held_out.texts[:30]]
    with triton.client() as client:
        answers = client.classify(texts, TENANT)
    spans = 0
    for answer in answers:
        previous_end = 0
        for entity in answer.entities:
            assert answer.text[entity.start : entity.end] == entity.text, (answer.text, entity)
            assert entity.start >= previous_end and entity.start < entity.end
            assert entity.label in split.train.slot_labels and 0 < entity.score <= 1
            assert entity.text == entity.text.strip()
            previous_end = entity.end
            spans += 1
    assert spans > 0


def test_no_entity_is_invented_beyond_the_truncation_length(triton, home):
    text = " ".join(["turn on the light in the kitchen"] * 80)
    tokenizer = TextTokenizer(find_tokenizer_file(triton.repository / config.ENCODER_MODEL), config.MAX_SEQ_LEN_TOKENS)
    (offsets,) = tokenizer.encode([text], offsets=True).offsets
    last_character = max(end for _, end in offsets)
    assert last_character < len(text) // 2, "the test text must run well past the truncation"
    with triton.client() as client:
        (answer,) = client.classify([text], TENANT)
    assert answer.entities is not None
    assert all(entity.end <= last_character for entity in answer.entities)


def test_mixed_requests_answer_slots_and_classes_and_classification_only_sees_what_it_saw(triton, home, split):
    texts = split.held_out.texts[:6]
    heads = [TENANT, "smart_home", TENANT, "knowledge", "smalltalk", TENANT]
    with triton.client() as client:
        mixed = client.classify(texts, heads, batch_size=len(texts))
        alone = client.classify(texts[:3], [TENANT] * 3)
        plain = client.classify(texts[:3], ["smart_home"] * 3)
    for answer, head in zip(mixed, heads, strict=True):
        assert (answer.entities is not None) == (head == TENANT)
    assert [a.entities for a in mixed if a.head == TENANT][:1] == [alone[0].entities]
    assert all(answer.entities is None for answer in plain)
    # A plain tritonclient request naming no outputs: exactly the outputs it always got.
    client = triton_http.InferenceServerClient(triton.http_url.split("://")[1])
    try:
        inputs = []
        for name, values in (("TEXT", texts[:2]), ("HEAD", ["smart_home", "knowledge"])):
            tensor = triton_http.InferInput(name, [2, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[v.encode()] for v in values], dtype=np.object_))
            inputs.append(tensor)
        response = client.infer(config.PIPELINE_MODEL, inputs).get_response()
        assert {output["name"] for output in response["outputs"]} == CLASSIFY_ONLY_OUTPUTS
        inputs[1].set_data_from_numpy(np.array([[TENANT.encode()], [b"knowledge"]], dtype=np.object_))
        result = client.infer(config.PIPELINE_MODEL, inputs)
        assert result.as_numpy("ENTITY_COUNT").reshape(-1)[1] == -1  # knowledge has no slots
        assert result.as_numpy("ENTITY_COUNT").reshape(-1)[0] >= 0
    finally:
        client.close()


def test_intents_of_a_slot_tenant_match_what_onboarding_measured(triton, home, split):
    with triton.client() as client:
        answers = client.classify(split.held_out.texts, TENANT)
    accuracy = np.mean([a.label == label for a, label in zip(answers, split.held_out.labels, strict=True)])
    assert accuracy > 0.6, accuracy  # held-out templates and slot values: well above chance (1/40)


class Load:
    """HTTP and gRPC threads classifying continuously, cycling over heads; failures recorded."""

    def __init__(self, triton, heads: list[str], texts: list[str]) -> None:
        self.heads, self.texts = list(heads), texts
        self.sent: Counter = Counter()
        self.failed: list[tuple[str, str, float]] = []
        self.without_entities: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(triton, url, i), daemon=True)
            for i, url in enumerate([triton.http_url, triton.http_url, triton.grpc_url, triton.grpc_url])
        ]

    def _run(self, triton, url: str, offset: int) -> None:
        with triton.client(url, concurrency=1, timeout_s=30) as client:
            step = offset
            while not self.stop.is_set():
                with self.lock:
                    head = self.heads[step % len(self.heads)]
                text = self.texts[step % len(self.texts)]
                step += 1
                (answer,) = client.classify([text], head, return_errors=True)
                with self.lock:
                    self.sent[head] += 1
                    if isinstance(answer, HeadroomError):
                        self.failed.append((head, str(answer.status), time.monotonic()))
                    elif head.startswith(TENANT) and answer.entities is None:
                        self.without_entities.append(head)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_a_slot_tenant_onboarded_rolled_and_offboarded_under_load_loses_nothing(triton, home, split, tmp_path):
    newcomer = f"{TENANT}-two"
    texts = split.held_out.texts[:50]
    with triton.client() as control, Load(triton, [TENANT, "smart_home", "knowledge"], texts) as load:
        onboarding = triton.onboarding(control)
        time.sleep(1)
        onboarding.onboard(newcomer, training_file(split, tmp_path / "new"))
        with load.lock:
            load.heads.append(newcomer)
        time.sleep(1)
        rolled = onboarding.onboard(TENANT, training_file(split, tmp_path / "v2", skip=5))
        assert rolled.version >= 2
        time.sleep(1)
        offboarded_at = time.monotonic()
        onboarding.offboard(newcomer)
        time.sleep(2)
    unexpected = [f for f in load.failed if not (f[0] == newcomer and f[2] >= offboarded_at)]
    assert not unexpected, unexpected[:5]
    refused = [f for f in load.failed if f[0] == newcomer]
    assert all(status in NOT_FOUND for _, status, _ in refused), refused[:3]
    assert not load.without_entities, "a slot tenant answered without its entities"
    assert load.sent[newcomer] > 0 and load.sent[TENANT] > 20, load.sent
    print({"sent": dict(load.sent), "failed": len(load.failed)})
