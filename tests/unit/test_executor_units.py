"""Unit tests of the head executor's pure parts: stacking, grouping, LRU residency, versions.

The modules live in ``model_repository/executor/1/`` (Triton loads them from there); they import
no Triton code, so they are tested here with small real ONNX graphs and ONNX Runtime.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from headroom import config, head_format
from headroom.export.heads import head_to_onnx
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_heads

EXECUTOR_DIR = config.DEFAULT_MODEL_REPOSITORY / config.EXECUTOR_MODEL / "1"
DIM = 8


@pytest.fixture(scope="module")
def executor_modules():
    sys.path.insert(0, str(EXECUTOR_DIR))
    try:
        yield (
            importlib.import_module("resident_heads"),
            importlib.import_module("served_versions"),
            importlib.import_module("head_files"),
        )
    finally:
        sys.path.remove(str(EXECUTOR_DIR))


def linear_head(classes: int, seed: int, dim: int = DIM) -> tuple[bytes, list[str]]:
    return onnx_heads.linear_head(classes, seed, dim=dim)


def mlp_head(classes: int, seed: int) -> tuple[bytes, list[str]]:
    """A non-linear head: Gemm -> Relu -> Gemm -> Softmax (runs as its own session)."""
    return onnx_heads.graph_head(classes, seed, dim=DIM, prefix="n")


def matmul_add_head(classes: int, seed: int) -> tuple[bytes, list[str]]:
    """The other linear form: MatMul [D, C] + Add + Softmax."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [HEAD_INPUT, "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [HEAD_OUTPUT], axis=-1),
        ],
        "head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", DIM])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(rng.normal(size=(DIM, classes)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=classes).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), [f"m{i}" for i in range(classes)]


def run_alone(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def embeddings(rows: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- recognising and stacking linear heads ---------------------------------------------------
def test_trained_heads_and_matmul_heads_are_recognised_as_linear(executor_modules):
    resident_heads, _, _ = executor_modules
    head = onnx_heads.trained_linear_head(5, seed=1, dim=DIM)
    model_bytes = head_to_onnx(head).SerializeToString()
    weights, bias = head_format.linear_parameters(onnx.load_from_string(model_bytes))
    np.testing.assert_array_equal(weights, head.weights)
    np.testing.assert_array_equal(bias, head.bias)
    weights, bias = head_format.linear_parameters(onnx.load_from_string(matmul_add_head(3, seed=2)[0]))
    assert weights.shape == (3, DIM) and bias.shape == (3,)
    assert head_format.linear_parameters(onnx.load_from_string(mlp_head(3, seed=3)[0])) is None


def test_a_bank_grows_by_a_quarter_and_stays_dense(executor_modules):
    resident_heads, _, _ = executor_modules
    bank = resident_heads.LinearBank(classes=3, dim=DIM)
    slots = [bank.add(np.full((3, DIM), i, np.float32), np.full(3, i, np.float32), owner=i) for i in range(9)]
    # One slot at a time below 4 heads, then a quarter more: 1, 2, 3, 4, 5, 6, 7, 8, 10.
    assert slots == list(range(9)) and bank.capacity == 10 and bank.used == 9
    # Growing kept what the first slots held.
    assert [float(bank.weights[slot, 0, 0]) for slot in slots] == [float(i) for i in range(9)]
    # Releasing slot 2 moves the last head (owner 8) into it.
    assert bank.release(2) == 8
    assert bank.used == 8 and float(bank.weights[2, 0, 0]) == 8.0 and float(bank.biases[2, 0]) == 8.0
    assert bank.release(bank.used - 1) is None  # the last slot: nothing moves
    assert bank.add(np.zeros((3, DIM), np.float32), np.zeros(3, np.float32)) == 7
    with pytest.raises(ValueError, match="not in use"):
        bank.release(8)


def test_bank_arrays_stay_within_the_growth_factor_of_their_weights(executor_modules):
    """Any sequence of adds and releases: allocated bytes <= BANK_GROWTH x the weights held, each
    head's parameters still in its own slot, and the arrays resized a number of times that grows
    with the log of the heads, not with the heads."""
    resident_heads, _, _ = executor_modules
    growth = resident_heads.BANK_GROWTH
    assert growth <= 1.25
    bank = resident_heads.LinearBank(classes=2, dim=DIM)
    rng = np.random.default_rng(7)
    slot_of: dict[int, int] = {}  # owner -> slot, kept as ``HeadResidency`` keeps it
    resizes, capacity = 0, bank.capacity

    def check() -> None:
        nonlocal resizes, capacity
        resizes += bank.capacity != capacity
        capacity = bank.capacity
        assert bank.capacity <= max(bank.used, int(growth * bank.used))
        assert bank.allocated_bytes <= growth * bank.held_bytes
        owners_held = np.array(list(slot_of), dtype=np.float32)
        slots = np.array(list(slot_of.values()), dtype=np.int64)
        assert sorted(slots.tolist()) == list(range(bank.used))
        np.testing.assert_array_equal(bank.weights[slots, 0, 0], owners_held)
        np.testing.assert_array_equal(bank.biases[slots, 1], owners_held)

    owners = iter(range(1, 10**6))
    for _ in range(1000):  # 1,000 heads arrive
        owner = next(owners)
        slot_of[owner] = bank.add(np.full((2, DIM), owner, np.float32), np.full(2, owner, np.float32), owner)
        check()
    assert resizes <= 35  # one slot at a time up to 4, then log(1000 / 4) / log(1.25) = 25 more
    for step in range(4000):  # churn: heads leave and arrive, fewer over time, then more again
        leave = rng.random() < (0.7 if step < 2000 else 0.3)
        if leave and slot_of:
            slot = slot_of.pop(list(slot_of)[int(rng.integers(len(slot_of)))])
            moved = bank.release(slot)
            if moved is not None:
                slot_of[moved] = slot
        else:
            owner = next(owners)
            slot_of[owner] = bank.add(np.full((2, DIM), owner, np.float32), np.full(2, owner, np.float32), owner)
        check()
    assert resizes <= 200  # of 5,000 steps


def test_released_heads_free_their_arrays_and_the_others_still_answer(executor_modules):
    resident_heads, _, _ = executor_modules
    heads = {key: linear_head(3, 100 + key) for key in range(40)}
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    residency.acquire(list(heads), heads.__getitem__)
    stats = residency.stats()
    assert stats.stacked_bytes == stats.resident_bytes == 40 * (3 * DIM * 4 + 3 * 4)
    assert stats.allocated_bytes <= resident_heads.BANK_GROWTH * stats.stacked_bytes
    for key in range(0, 40, 3):  # slots move as heads leave
        assert residency.release(key)
    stats = residency.stats()
    assert stats.allocated_bytes <= resident_heads.BANK_GROWTH * stats.stacked_bytes
    kept = [key for key in heads if key % 3]
    loaded = residency.acquire(kept, heads.__getitem__)
    x = embeddings(len(kept))
    out = resident_heads.run_rows(x, [loaded[key] for key in kept])
    for row, key in enumerate(kept):
        np.testing.assert_allclose(out[row], run_alone(heads[key][0], x[row : row + 1])[0], atol=1e-6)
    for key in kept:
        residency.release(key)
    assert residency.stats().allocated_bytes == 0  # an empty bank is dropped


def test_mixed_batch_equals_each_head_run_alone(executor_modules):
    """Stacked (2 class counts, 2 graph forms) and session heads, rows interleaved."""
    resident_heads, _, _ = executor_modules
    heads = [linear_head(3, 10), linear_head(3, 11), linear_head(7, 12), matmul_add_head(3, 13)]
    heads += [mlp_head(4, 14), mlp_head(2, 15)]
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    loaded = residency.acquire(list(range(len(heads))), lambda key: heads[key])
    assert sum(entry.bank is not None for entry in loaded.values()) == 4
    assert sum(entry.session is not None for entry in loaded.values()) == 2
    rows = 60
    owner = np.random.default_rng(1).integers(0, len(heads), size=rows)
    x = embeddings(rows)
    out = resident_heads.run_rows(x, [loaded[int(key)] for key in owner])
    for key, (model_bytes, labels) in enumerate(heads):
        mine = np.flatnonzero(owner == key)
        expected = run_alone(model_bytes, x[mine])
        got = np.stack([out[row] for row in mine])
        assert got.shape == (len(mine), len(labels))
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_failing_session_head_fails_only_its_rows(executor_modules):
    resident_heads, _, _ = executor_modules
    good = linear_head(3, 20)
    mlp_bytes, _ = mlp_head(4, 21)
    wrong_labels = (mlp_bytes, ["only", "two"])  # the graph gives 4 probabilities
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    loaded = residency.acquire(["good", "bad"], lambda key: good if key == "good" else wrong_labels)
    out = resident_heads.run_rows(embeddings(4), [loaded["good"], loaded["bad"], None, loaded["good"]])
    assert out[0].shape == (3,) and out[3].shape == (3,) and out[2] is None
    assert isinstance(out[1], resident_heads.HeadFileError) and "4 probabilities" in str(out[1])


@pytest.mark.parametrize(
    ("model_bytes", "labels", "message"),
    [
        (b"not an onnx file", ["a"], "not an ONNX model"),
        (linear_head(3, 30, dim=DIM + 1)[0], ["a", "b", "c"], f"[batch, {DIM}]"),
        (linear_head(3, 31)[0], ["a", "b"], "names 2 labels"),
    ],
    ids=["not-onnx", "wrong-width", "labels-mismatch"],
)
def test_bad_head_files_are_refused_per_head(executor_modules, model_bytes, labels, message):
    resident_heads, _, _ = executor_modules
    good = linear_head(3, 32)
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    loaded = residency.acquire(["bad", "good"], lambda key: (model_bytes, labels) if key == "bad" else good)
    assert isinstance(loaded["bad"], resident_heads.HeadFileError) and message in str(loaded["bad"])
    assert loaded["good"].bank is not None
    assert residency.keys() == ["good"]


def test_int64_input_is_refused(executor_modules):
    resident_heads, _, _ = executor_modules
    model_bytes, labels = onnx_heads.graph_head(3, seed=50, input_type=TensorProto.INT64, dim=DIM)
    with pytest.raises(resident_heads.HeadFileError, match="FLOAT"):
        resident_heads.parse_head(model_bytes, labels, DIM)


# --- LRU order and byte budget -----------------------------------------------------------------
def test_lru_order_and_byte_budget(executor_modules):
    resident_heads, _, _ = executor_modules
    heads = {name: linear_head(4, seed) for seed, name in enumerate("abcde")}
    per_head = 4 * DIM * 4 + 4 * 4  # weights + bias, float32
    residency = resident_heads.HeadResidency(budget_bytes=3 * per_head, dim=DIM)
    loads: list[str] = []

    def load(key):
        loads.append(key)
        return heads[key]

    residency.acquire(["a", "b", "c"], load)
    assert residency.keys() == ["a", "b", "c"]
    residency.acquire(["a"], load)  # a is now the most recently used
    assert residency.keys() == ["b", "c", "a"]
    residency.acquire(["d"], load)  # over budget: b, the least recently used, goes
    assert residency.keys() == ["c", "a", "d"]
    assert residency.stats().resident_bytes == 3 * per_head and residency.stats().evictions == 1
    residency.acquire(["b"], load)  # loaded again from its files
    assert loads == ["a", "b", "c", "d", "b"]
    assert residency.keys() == ["a", "d", "b"]


def test_a_batch_larger_than_the_budget_keeps_its_heads_until_done(executor_modules):
    resident_heads, _, _ = executor_modules
    heads = {name: linear_head(2, seed) for seed, name in enumerate("abc")}
    per_head = 2 * DIM * 4 + 2 * 4
    residency = resident_heads.HeadResidency(budget_bytes=per_head, dim=DIM)
    loaded = residency.acquire(["a", "b", "c"], heads.__getitem__)
    assert all(not isinstance(entry, Exception) for entry in loaded.values())
    assert residency.keys() == ["a", "b", "c"]  # protected while this batch runs
    residency.acquire(["c"], heads.__getitem__)
    assert residency.keys() == ["c"]  # back under budget at the next call


def test_release_frees_bytes_and_the_slot(executor_modules):
    resident_heads, _, _ = executor_modules
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    head = linear_head(3, 40)
    entry = residency.acquire([("x", 1)], lambda _key: head)[("x", 1)]
    assert residency.stats().resident_bytes > 0 and entry.bank.used == 1
    assert residency.release(("x", 1)) is True
    assert residency.stats().resident_bytes == 0 and entry.bank.used == 0 and residency.keys() == []
    assert residency.release(("x", 1)) is False


# --- which version serves ----------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_served_version_follows_readiness_and_the_folder(executor_modules, tmp_path):
    _, served_versions, head_files = executor_modules
    files = head_files.HeadFiles(str(tmp_path))
    (tmp_path / "head_acme" / "1").mkdir(parents=True)
    ready = {("head_acme", "1")}
    asked: list[tuple[str, str]] = []

    def is_ready(model: str, version: str) -> bool:
        asked.append((model, version))
        return (model, version) in ready

    clock = FakeClock()
    served = served_versions.ServedVersions(files, is_ready, ttl_s=0.2, clock=clock)
    assert served.resolve("acme") == 1
    asked.clear()
    assert served.resolve("acme") == 1 and asked == []  # cached within the TTL

    # A bare unload through model control: seen once the TTL has passed.
    ready.clear()
    assert served.resolve("acme") == 1
    clock.now += 0.3
    assert served.resolve("acme") is None

    # Version 2 written while 1 serves: 1 answers until 2 is READY, then 2 at once.
    ready.add(("head_acme", "1"))
    assert served.resolve("acme") == 1
    (tmp_path / "head_acme" / "2").mkdir()
    assert served.resolve("acme") == 1
    ready.add(("head_acme", "2"))
    assert served.resolve("acme") == 2

    # Offboarded (folder gone): at once, whatever the cache says.
    (tmp_path / "head_acme" / "1").rmdir()
    (tmp_path / "head_acme" / "2").rmdir()
    (tmp_path / "head_acme").rmdir()
    assert served.resolve("acme") is None
    assert served.resolve("never-onboarded") is None
