"""Unit tests of the head executor's pure parts: stacking, grouping, LRU residency, versions,
resolving rows to heads and why a row fails, the executor's tensors.

The modules are the package ``headroom.executor`` (``model_repository/executor/1/model.py`` is
Triton's adapter to it); they import no Triton code, so they are tested here with small real ONNX
graphs and ONNX Runtime.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from headroom import head_format
from headroom.executor import head_files, head_runner, resident_heads, served_versions, tensors
from headroom.export.heads import head_to_onnx
from headroom.head_format import HEAD_INPUT, HEAD_OUTPUT
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_heads

DIM = 8


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
def test_trained_heads_and_matmul_heads_are_recognised_as_linear():
    head = onnx_heads.trained_linear_head(5, seed=1, dim=DIM)
    model_bytes = head_to_onnx(head).SerializeToString()
    weights, bias = head_format.linear_parameters(onnx.load_from_string(model_bytes))
    np.testing.assert_array_equal(weights, head.weights)
    np.testing.assert_array_equal(bias, head.bias)
    weights, bias = head_format.linear_parameters(onnx.load_from_string(matmul_add_head(3, seed=2)[0]))
    assert weights.shape == (3, DIM) and bias.shape == (3,)
    assert head_format.linear_parameters(onnx.load_from_string(mlp_head(3, seed=3)[0])) is None


def test_a_bank_grows_by_a_quarter_and_stays_dense():
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


def test_bank_arrays_stay_within_the_growth_factor_of_their_weights():
    """Any sequence of adds and releases: allocated bytes <= BANK_GROWTH x the weights held, each
    head's parameters still in its own slot, and the arrays resized a number of times that grows
    with the log of the heads, not with the heads."""
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


def test_released_heads_free_their_arrays_and_the_others_still_answer():
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


def test_mixed_batch_equals_each_head_run_alone():
    """Stacked (2 class counts, 2 graph forms) and session heads, rows interleaved."""
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


def test_a_failing_session_head_fails_only_its_rows():
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
def test_bad_head_files_are_refused_per_head(model_bytes, labels, message):
    good = linear_head(3, 32)
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    loaded = residency.acquire(["bad", "good"], lambda key: (model_bytes, labels) if key == "bad" else good)
    assert isinstance(loaded["bad"], resident_heads.HeadFileError) and message in str(loaded["bad"])
    assert loaded["good"].bank is not None
    assert residency.keys() == ["good"]


def test_int64_input_is_refused():
    model_bytes, labels = onnx_heads.graph_head(3, seed=50, input_type=TensorProto.INT64, dim=DIM)
    with pytest.raises(resident_heads.HeadFileError, match="FLOAT"):
        resident_heads.parse_head(model_bytes, labels, DIM)


# --- LRU order and byte budget -----------------------------------------------------------------
def test_lru_order_and_byte_budget():
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


def test_a_batch_larger_than_the_budget_keeps_its_heads_until_done():
    heads = {name: linear_head(2, seed) for seed, name in enumerate("abc")}
    per_head = 2 * DIM * 4 + 2 * 4
    residency = resident_heads.HeadResidency(budget_bytes=per_head, dim=DIM)
    loaded = residency.acquire(["a", "b", "c"], heads.__getitem__)
    assert all(not isinstance(entry, Exception) for entry in loaded.values())
    assert residency.keys() == ["a", "b", "c"]  # protected while this batch runs
    residency.acquire(["c"], heads.__getitem__)
    assert residency.keys() == ["c"]  # back under budget at the next call


def test_release_frees_bytes_and_the_slot():
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


def test_served_version_follows_readiness_and_the_folder(tmp_path):
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


# --- the residency's lock is its own -----------------------------------------------------------
def test_a_release_from_another_thread_waits_for_the_running_batch():
    """``HeadResidency.run`` holds the residency's private lock from loading to running: a
    release (the sweeper's) cannot move a slot in between."""
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    heads = {"a": linear_head(3, 60), "b": linear_head(3, 61)}
    residency.acquire(["a"], heads.__getitem__)
    assert not hasattr(residency, "lock")
    loading, may_finish, released = threading.Event(), threading.Event(), threading.Event()

    def slow_load(key):
        loading.set()
        assert may_finish.wait(5)
        return heads[key]

    x = embeddings(2)
    batch = threading.Thread(target=lambda: residency.run(x, ["b", "b"], slow_load))
    batch.start()
    assert loading.wait(5)
    sweeper = threading.Thread(target=lambda: (residency.release("a"), released.set()))
    sweeper.start()
    assert not released.wait(0.2)  # held off while the batch loads and runs
    may_finish.set()
    batch.join(5)
    sweeper.join(5)
    assert released.is_set() and residency.keys() == ["b"]


def test_residency_run_skips_rows_without_a_head_and_reports_load_failures():
    residency = resident_heads.HeadResidency(budget_bytes=1 << 20, dim=DIM)
    good = linear_head(3, 62)
    resident, out = residency.run(
        embeddings(3), ["good", None, "bad"], lambda key: good if key == "good" else (b"nope", ["a"])
    )
    assert isinstance(resident["bad"], resident_heads.HeadFileError)
    assert out[0].shape == (3,) and out[1] is None and out[2] is None
    np.testing.assert_allclose(out[0], run_alone(good[0], embeddings(3)[:1])[0], atol=1e-6)


# --- resolving rows to heads, and why a row fails ----------------------------------------------
SERVED = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64


class Repository:
    """A model repository folder with heads in it, and which of their versions are READY."""

    def __init__(self, root) -> None:
        self.root = root
        self.ready: set[tuple[str, str]] = set()
        (root / "executor" / "1").mkdir(parents=True)  # the executor's own copy of encoder.json
        (root / "executor" / "1" / "encoder.json").write_text(f'{{"fingerprint": "{SERVED}"}}')

    def add(self, head: str, version: int, model_bytes: bytes, labels: list[str], fingerprint: str = SERVED):
        folder = self.root / f"head_{head}" / str(version)
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(model_bytes)
        (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        (folder / "head.json").write_text(f'{{"encoder_fingerprint": "{fingerprint}"}}')
        self.ready.add((f"head_{head}", str(version)))

    def remove(self, head: str) -> None:
        shutil.rmtree(self.root / f"head_{head}")
        self.ready = {(model, version) for model, version in self.ready if model != f"head_{head}"}

    def runner(self, budget_bytes: int = 1 << 20) -> head_runner.HeadRunner:
        files = head_files.HeadFiles(str(self.root))
        return head_runner.HeadRunner(
            files,
            served_versions.ServedVersions(files, lambda model, version: (model, version) in self.ready, ttl_s=0.0),
            resident_heads.HeadResidency(budget_bytes, DIM),
            head_files.encoder_fingerprint(str(self.root / "executor" / "1")),
        )


def test_the_executor_checks_names_with_the_naming_rule_itself():
    from headroom import naming

    assert head_runner.head_name_problem is naming.head_name_problem


def test_rows_are_answered_or_fail_with_their_own_code_and_message(tmp_path):
    repository = Repository(tmp_path)
    good_bytes, good_labels = linear_head(3, 70)
    repository.add("good", 1, good_bytes, good_labels)
    repository.add("stale", 1, *linear_head(3, 71), fingerprint=OTHER)
    repository.add("broken", 1, b"not an onnx file", ["a", "b"])
    runner = repository.runner()
    undecodable = tensors.decode_head(b"\xff")
    heads = ["good", "nobody", "Bad Name", "encoder", "stale", "broken", undecodable, "good"]
    x = embeddings(len(heads))
    rows = runner.run(x, heads)

    expected = run_alone(good_bytes, x[[0, 7]])
    for row, want in zip((rows[0], rows[7]), expected, strict=True):
        assert isinstance(row, tensors.HeadOutput)
        np.testing.assert_allclose(row.probabilities, want, atol=1e-6)
        assert list(row.labels) == [label.encode() for label in good_labels]
    codes = [(row.code, row.message) for row in rows[1:7]]
    assert codes[0] == ("NOT_FOUND", "head 'nobody' is not loaded (onboard it, or load model 'head_nobody')")
    assert codes[1][0] == "INVALID_ARG" and codes[1][1].startswith("invalid head name 'Bad Name': names are 1-48")
    assert codes[2] == ("INVALID_ARG", "'encoder' is a system model, not a head")
    assert codes[3] == (
        "UNAVAILABLE",
        f"head 'stale' was trained against encoder {OTHER[:19]}..., but the server runs {SERVED[:19]}...: "
        "onboard it again",
    )
    assert codes[4][0] == "UNAVAILABLE" and codes[4][1].startswith("head 'broken' version 1 cannot serve: ")
    assert codes[5] == ("INVALID_ARG", "HEAD is not valid UTF-8")


def test_load_failures_map_to_codes():
    assert head_runner.load_failure("h", 3, FileNotFoundError("x"), version_exists=False).code == "NOT_FOUND"
    assert head_runner.load_failure("h", 3, FileNotFoundError("x"), version_exists=True).code == "INTERNAL"
    error = head_runner.load_failure("h", 3, PermissionError("denied"), version_exists=True)
    assert error.message == "head 'h' version 3 failed to load: PermissionError: denied"
    error = head_runner.load_failure("h", 3, head_format.HeadFileError("bad"), version_exists=True)
    assert (error.code, error.message) == ("UNAVAILABLE", "head 'h' version 3 cannot serve: bad")
    assert head_runner.run_failure("h", ValueError("shape")).message == "head 'h' cannot run: shape"
    assert head_runner.encoder_problem("h", None, SERVED) is None
    assert head_runner.encoder_problem("h", SERVED, None) is None
    assert head_runner.encoder_problem("h", SERVED, SERVED) is None


def test_a_rolled_over_head_frees_its_old_version(tmp_path):
    repository = Repository(tmp_path)
    repository.add("acme", 1, *linear_head(3, 80))
    runner = repository.runner()
    runner.run(embeddings(1), ["acme"])
    assert runner.residency.keys() == [("acme", 1)]
    repository.add("acme", 2, *linear_head(4, 81))
    (row,) = runner.run(embeddings(1), ["acme"])
    assert len(row.labels) == 4 and runner.residency.keys() == [("acme", 2)]


def test_the_sweeper_frees_offboarded_heads_and_hands_them_to_the_batch_path(tmp_path):
    repository = Repository(tmp_path)
    repository.add("gone", 1, *linear_head(3, 90))
    repository.add("kept", 1, *linear_head(3, 91))
    runner = repository.runner()
    runner.run(embeddings(2), ["gone", "kept"])
    repository.remove("gone")
    assert runner.sweep() == 1  # on the sweeper thread: the weights go at once
    assert runner.residency.keys() == [("kept", 1)]
    assert runner.served.cached_heads() == ["gone", "kept"]  # the batch path's state: untouched
    assert runner.apply_sweeps() == 1 and runner.served.cached_heads() == ["kept"]
    assert runner.apply_sweeps() == 0
    gone, kept = runner.run(embeddings(2), ["gone", "kept"])
    assert gone.code == "NOT_FOUND" and isinstance(kept, tensors.HeadOutput)
    repository.add("gone", 2, *linear_head(3, 92))  # onboarded again
    assert isinstance(runner.run(embeddings(1), ["gone"])[0], tensors.HeadOutput)


# --- the executor's tensors --------------------------------------------------------------------
def test_outputs_round_trip_with_row_errors_as_code_names():
    from headroom.row_errors import RowError

    rows = [
        tensors.HeadOutput(np.array([0.25, 0.75], np.float32), [b"no", b"yes"]),
        RowError("NOT_FOUND", "head 'x' is not loaded"),
        tensors.HeadOutput(np.array([0.5, 0.25, 0.25], np.float32), [b"a", b"b", b"c"]),
    ]
    outputs = tensors.encode_outputs(rows)
    assert list(outputs) == list(tensors.OUTPUTS)
    assert outputs["error_code"].tolist() == [[b""], [b"NOT_FOUND"], [b""]]
    assert outputs["error_message"].tolist() == [[b""], [b"head 'x' is not loaded"], [b""]]
    assert outputs["labels"].tolist() == [[b"no", b"yes", b""], [b"", b"", b""], [b"a", b"b", b"c"]]
    assert outputs["class_count"].tolist() == [[2], [0], [3]]
    back = tensors.decode_outputs(outputs, len(rows))
    assert back[1] == rows[1]
    for got, sent in ((back[0], rows[0]), (back[2], rows[2])):
        np.testing.assert_array_equal(got.probabilities, sent.probabilities)
        assert list(got.labels) == list(sent.labels)


def test_requests_parse_into_rows_or_fail_whole():
    x = embeddings(2)
    rows = tensors.parse_request(x, np.array([[b"a"], [b"b"]], dtype=np.object_), None, DIM)
    assert rows.heads == ["a", "b"] and rows.per_row_errors and rows.embeddings.shape == (2, DIM)
    rows = tensors.parse_request(x, None, '{"head": "acme"}', DIM)
    assert rows.heads == ["acme", "acme"] and not rows.per_row_errors
    for heads, parameters, message in [
        (None, None, "no head named: send input 'HEAD' or the request parameter 'head'"),
        (None, "not json", "no head named: send input 'HEAD' or the request parameter 'head'"),
        (None, '{"head": 3}', "no head named: send input 'HEAD' or the request parameter 'head'"),
        (np.array([[b"a"]], dtype=np.object_), None, "1 head names for 2 rows"),
    ]:
        error = tensors.parse_request(x, heads, parameters, DIM)
        assert (error.code, error.message) == ("INVALID_ARG", message)
    error = tensors.parse_request(None, None, None, DIM)
    assert (error.code, error.message) == ("INVALID_ARG", "input 'sentence_embedding' is missing")
    assert tensors.first_error([tensors.HeadOutput(np.zeros(1), [b"a"])]) is None
