"""Unit tests of token heads (slots) in the executor's pure parts: the admission rule, stacked
token heads against ONNX Runtime, residency of a head with slots, the token request's tensors,
and the runner's decoded spans. Small real ONNX graphs, no Triton.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from headroom.bio_tags import tag_names
from headroom.executor import head_runner, resident_heads, tensors
from headroom.export.slot_heads import TrainedSlotHead, slot_head_to_onnx
from headroom.head_format import HeadFileError, SlotFiles, parse_token_head
from headroom.row_errors import RowError
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_heads

DIM = 8
SLOTS = ["area", "name"]
TAGS = tag_names(SLOTS)  # O, B-area, I-area, B-name, I-name


def token_head(seed: int, tags: list[str] = TAGS, dim: int = DIM, window: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    width = (2 * window + 1) * dim
    weights = rng.normal(size=(len(tags), width)).astype(np.float32)
    head = TrainedSlotHead(weights, rng.normal(size=len(tags)).astype(np.float32), tags, window=window)
    return slot_head_to_onnx(head).SerializeToString()


def session_token_head(tags: list[str] = TAGS) -> bytes:
    """A token head that is not one linear layer (MatMul, Relu, MatMul, Softmax): a session."""
    rng = np.random.default_rng(7)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["token_embeddings", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["tag_probabilities"], axis=-1),
        ],
        "mlp",
        [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["b", "t", DIM])],
        [helper.make_tensor_value_info("tag_probabilities", TensorProto.FLOAT, ["b", "t", len(tags)])],
        [
            numpy_helper.from_array(rng.normal(size=(DIM, 16)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(16, len(tags))).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def run_alone(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def tokens(rows: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, length, DIM)).astype(np.float32)


def test_a_linear_token_head_is_recognised_and_a_wrong_one_refused():
    parameters, _ = parse_token_head(token_head(1), TAGS, DIM)
    assert parameters is not None and parameters[0].shape == (len(TAGS), DIM)
    assert parse_token_head(session_token_head(), TAGS, DIM)[0] is None
    with pytest.raises(HeadFileError, match="tags"):
        parse_token_head(token_head(1), TAGS[:3], DIM)
    with pytest.raises(HeadFileError, match="tags.txt"):
        parse_token_head(token_head(1), ["O", "I-area", "B-area", "B-name", "I-name"], DIM)
    with pytest.raises(HeadFileError, match=r"\[batch, tokens, 8\]"):
        parse_token_head(onnx_heads.linear_head(len(TAGS), 1, dim=DIM)[0], TAGS, DIM)  # a sentence head


@pytest.mark.parametrize("window", [1, 2])
def test_windowed_token_heads_are_recognised_and_stacked_as_each_alone(window):
    models = [token_head(seed, window=window) for seed in range(3)]
    parameters, _ = parse_token_head(models[0], TAGS, DIM)
    assert (
        parameters is not None
        and parameters[2] == window
        and parameters[0].shape == (len(TAGS), (2 * window + 1) * DIM)
    )
    residency = resident_heads.HeadResidency(1 << 20, DIM)
    intent, labels = onnx_heads.linear_head(3, 0, dim=DIM)
    loaded = residency.acquire(range(3), lambda key: (intent, labels, SlotFiles(models[key], TAGS)))
    owners = [1, 2, 0, 1]
    for length in (2, 3, 2 * window + 4):  # shorter than the window too: [CLS] [SEP]
        x = tokens(len(owners), length, seed=length)
        out = resident_heads.run_token_rows(x, [loaded[key] for key in owners])
        for row, key in enumerate(owners):
            np.testing.assert_allclose(out[row], run_alone(models[key], x[row : row + 1])[0], rtol=1e-5, atol=1e-6)


def test_stacked_token_heads_answer_as_each_alone():
    models = [token_head(seed) for seed in range(3)]
    residency = resident_heads.HeadResidency(1 << 20, DIM)
    intent, labels = onnx_heads.linear_head(3, 0, dim=DIM)
    loaded = residency.acquire(range(3), lambda key: (intent, labels, SlotFiles(models[key], TAGS)))
    owners = [2, 0, 1, 0, 2]
    x = tokens(len(owners), 6)
    out = resident_heads.run_token_rows(x, [loaded[key] for key in owners])
    for row, key in enumerate(owners):
        np.testing.assert_allclose(out[row], run_alone(models[key], x[row : row + 1])[0], rtol=1e-5, atol=1e-6)
    assert all(entry.tag_bank is not None for entry in loaded.values())


def test_a_session_token_head_and_a_head_without_slots_in_one_batch():
    residency = resident_heads.HeadResidency(1 << 20, DIM)
    intent, labels = onnx_heads.linear_head(2, 0, dim=DIM)
    files = {"mlp": SlotFiles(session_token_head(), TAGS), "plain": None}
    loaded = residency.acquire(list(files), lambda key: (intent, labels, files[key]))
    x = tokens(3, 4)
    out = resident_heads.run_token_rows(x, [loaded["mlp"], loaded["plain"], loaded["mlp"]])
    assert out[1] is None  # no token head: no spans to compute
    np.testing.assert_allclose(out[0], run_alone(files["mlp"].model, x[:1])[0], rtol=1e-5, atol=1e-6)
    assert loaded["mlp"].tag_session is not None and loaded["plain"].tags is None


def test_releasing_heads_with_slots_keeps_the_other_slots_right():
    models = {key: token_head(key) for key in range(4)}
    intent, labels = onnx_heads.linear_head(2, 0, dim=DIM)
    residency = resident_heads.HeadResidency(1 << 20, DIM)
    residency.acquire(list(models), lambda key: (intent, labels, SlotFiles(models[key], TAGS)))
    residency.release(0)
    residency.release(2)
    loaded = residency.acquire([1, 3], lambda key: pytest.fail("already resident"))
    x = tokens(2, 5)
    out = resident_heads.run_token_rows(x, [loaded[1], loaded[3]])
    for row, key in enumerate((1, 3)):
        np.testing.assert_allclose(out[row], run_alone(models[key], x[row : row + 1])[0], rtol=1e-5, atol=1e-6)
    stats = residency.stats()
    assert stats.resident_heads == 2 and stats.stacked_bytes > 0


def test_a_bad_token_head_fails_alone_and_stores_nothing():
    intent, labels = onnx_heads.linear_head(2, 0, dim=DIM)
    residency = resident_heads.HeadResidency(1 << 20, DIM)
    files = {"good": SlotFiles(token_head(1), TAGS), "bad": SlotFiles(b"not onnx", TAGS)}
    loaded = residency.acquire(["bad", "good"], lambda key: (intent, labels, files[key]))
    assert isinstance(loaded["bad"], HeadFileError) and not isinstance(loaded["good"], Exception)
    assert residency.keys() == ["good"]


def test_token_request_tensors_round_trip():
    from headroom.bio_tags import TokenSpan

    rows = [[TokenSpan(1, 3, "area", 0.9), TokenSpan(4, 5, "name", 0.5)], RowError("NOT_FOUND", "gone"), []]
    outputs = tensors.encode_token_outputs(rows)
    assert outputs["span_tokens"].shape == (3, 2, 2) and outputs["span_count"].reshape(-1).tolist() == [2, 0, 0]
    decoded = tensors.decode_token_outputs(outputs, 3)
    assert decoded[0] == [TokenSpan(1, 3, "area", pytest.approx(0.9)), TokenSpan(4, 5, "name", pytest.approx(0.5))]
    assert isinstance(decoded[1], RowError) and decoded[1].message == "gone" and decoded[2] == []
    empty = tensors.encode_token_outputs([[]])
    assert empty["span_tokens"].shape == (1, 1, 2)  # at least one column, padded


@pytest.mark.parametrize(
    "shape, counts, heads, problem",
    [
        ((2, 4, DIM), [[4], [3]], [[b"a"], [b"b"]], None),
        ((2, 4, DIM + 1), [[4], [3]], [[b"a"], [b"b"]], "must be"),
        ((2, 4, DIM), [[5], [3]], [[b"a"], [b"b"]], "token counts"),
        ((2, 4, DIM), [[1], [3]], [[b"a"], [b"b"]], "token counts"),
        ((2, 4, DIM), [[4]], [[b"a"], [b"b"]], "for 2 rows"),
        ((2, 4, DIM), None, [[b"a"], [b"b"]], "needs"),
    ],
)
def test_token_requests_are_parsed_or_refused(shape, counts, heads, problem):
    parsed = tensors.parse_token_request(
        np.zeros(shape, np.float32), None if counts is None else np.array(counts), np.array(heads, dtype=object), DIM
    )
    if problem is None:
        assert isinstance(parsed, tensors.TokenRows) and parsed.heads == ["a", "b"]
    else:
        assert isinstance(parsed, RowError) and problem in parsed.message


class _Files:
    """A head store of two heads in memory: ``slots`` (with a token head) and ``plain``."""

    def __init__(self, slot_model: bytes) -> None:
        self.intent, self.labels = onnx_heads.linear_head(2, 0, dim=DIM)
        self.slot_model = slot_model

    def read(self, head, version):
        return self.intent, self.labels

    def read_slots(self, head, version):
        return SlotFiles(self.slot_model, TAGS) if head == "slots" else None

    def trained_for(self, head, version):
        return None

    def has_version(self, head, version):
        return head in ("slots", "plain")


class _Served:
    def resolve(self, head):
        return 1 if head in ("slots", "plain") else None

    def forget(self, head):
        pass


def test_the_runner_decodes_valid_spans_and_says_which_heads_have_slots():
    # A token head that tags token 1 B-area and token 2 I-area whatever the input: bias only.
    bias = np.full(len(TAGS), -20.0, dtype=np.float32)
    head = TrainedSlotHead(np.zeros((len(TAGS), DIM), np.float32), bias, TAGS)
    model = slot_head_to_onnx(head).SerializeToString()
    runner = head_runner.HeadRunner(_Files(model), _Served(), resident_heads.HeadResidency(1 << 20, DIM), None)
    outcomes = runner.run(np.ones((3, DIM), np.float32), ["slots", "plain", "missing"])
    assert [o.has_slots for o in outcomes[:2]] == [True, False] and isinstance(outcomes[2], RowError)
    spans = runner.run_tokens(tokens(3, 5), np.array([5, 4, 5]), ["slots", "plain", "missing"])
    assert spans[1] == [] and isinstance(spans[2], RowError)
    # every token equally likely O / B-area...: decoded spans are valid BIO over tokens 1..count-2
    for span in spans[0]:
        assert 1 <= span.first < span.end <= 4 and span.label in SLOTS
