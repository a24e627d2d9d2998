"""Heads held in memory by the executor: stacked linear heads, ONNX Runtime sessions, an LRU.

Pure numpy / onnx / onnxruntime (no Triton import), so unit tests exercise it directly.

- ``headroom.head_format.linear_parameters`` recognises a head that is one linear layer and a
  softmax and returns its weights and bias. Such heads are **stacked**: ``LinearBank`` keeps the weights of
  every resident head with the same class count in one array, so the rows of a mixed batch run as
  one gather + batched matmul + softmax per class count. The arrays grow by ``BANK_GROWTH`` when
  full and shrink when heads leave, so they never hold more than ``BANK_GROWTH`` times the
  weights in them.
- Any other ONNX head runs as its own ``SessionHead`` (1 intra-op thread, no memory arena), its
  rows grouped into one session call.
- A head with slots also holds its token head (``headroom.head_format.parse_token_head``): linear
  and windowed-linear ones in ``LinearBank``s of their own (by tag count and window), run over
  the token rows of a batch as one matmul per head over all of its rows' tokens and one softmax
  per bank (``run_token_rows``); others as a ``SessionHead``. One key, one residency: the intent and the
  token head of a version come and go together.
- ``HeadResidency`` keeps what is resident under a byte budget, evicting the least recently used
  head first; the heads a batch is using are never evicted by that batch. Its lock is its own:
  ``HeadResidency.run`` makes a batch's heads resident and runs its rows under it, so a release
  from another thread (the executor's sweeper) never moves a slot while a batch runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from headroom.head_format import HeadFileError, SlotFiles, parse_head, parse_token_head, softmax

#: A full bank's arrays grow by this factor (by one slot while that adds less than one), and a
#: bank whose arrays hold more than this factor times its heads shrinks: allocated bytes never
#: exceed this factor times the weights they hold.
BANK_GROWTH = 1.25
#: What a bank shrinks to, times its heads: between 1 and ``BANK_GROWTH``, so that heads coming
#: and going around one size do not resize the arrays each time.
BANK_SHRINK_TO = 1.125


# --- stacked linear heads --------------------------------------------------------------------
class LinearBank:
    """Weights and biases of every resident linear head with ``classes`` classes, stacked.

    Slots are dense: the bank's ``used`` heads are in slots ``0 .. used - 1``. ``add`` appends a
    head, growing the arrays by ``BANK_GROWTH`` when they are full; ``release`` moves the last
    head into the freed slot (and returns the owner it moved, whose slot is now the freed one)
    and shrinks the arrays once they hold more than ``BANK_GROWTH`` times the heads in them.
    Slots change when heads leave, so callers hold one lock across ``add``, ``release`` and
    ``run`` (``HeadResidency`` holds its own lock across a whole batch, ``HeadResidency.run``).
    """

    def __init__(self, classes: int, dim: int, slots: int = 0) -> None:
        self.classes = classes
        self.dim = dim
        self.weights = np.empty((slots, classes, dim), dtype=np.float32)
        self.biases = np.empty((slots, classes), dtype=np.float32)
        self._owners: list[object] = []

    @property
    def capacity(self) -> int:
        return self.weights.shape[0]

    @property
    def used(self) -> int:
        return len(self._owners)

    @property
    def slot_bytes(self) -> int:
        """Bytes of one head's weights and bias."""
        return 4 * (self.classes * self.dim + self.classes)

    @property
    def allocated_bytes(self) -> int:
        return self.weights.nbytes + self.biases.nbytes

    @property
    def held_bytes(self) -> int:
        """Bytes of the weights and biases of the heads in the bank."""
        return self.used * self.slot_bytes

    def add(self, weights: np.ndarray, bias: np.ndarray, owner: object = None) -> int:
        """Store a head's parameters; returns its slot. ``owner`` is what ``release`` returns when
        this head moves to another slot."""
        slot = self.used
        if slot == self.capacity:
            self._resize(self.capacity + max(1, int(self.capacity * (BANK_GROWTH - 1.0))))
        self.weights[slot] = weights
        self.biases[slot] = bias
        self._owners.append(owner)
        return slot

    def release(self, slot: int) -> object:
        """Free ``slot``; the owner of the head moved into it from the last slot, or None."""
        last = self.used - 1
        if not 0 <= slot <= last:
            raise ValueError(f"slot {slot} is not in use (the bank holds {self.used} heads)")
        moved = None
        if slot != last:
            self.weights[slot] = self.weights[last]
            self.biases[slot] = self.biases[last]
            moved = self._owners[slot] = self._owners[last]
        self._owners.pop()
        used = self.used
        if self.capacity > max(used, int(used * BANK_GROWTH)):
            self._resize(max(used, int(used * BANK_SHRINK_TO)))
        return moved

    def _resize(self, capacity: int) -> None:
        used = self.used
        weights = np.empty((capacity, self.classes, self.dim), dtype=np.float32)
        biases = np.empty((capacity, self.classes), dtype=np.float32)
        weights[:used] = self.weights[:used]
        biases[:used] = self.biases[:used]
        self.weights, self.biases = weights, biases

    def run(self, embeddings: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Probabilities [rows, classes]: row i through the head in ``slots[i]``."""
        logits = np.matmul(self.weights[slots], embeddings[:, :, None])[:, :, 0] + self.biases[slots]
        return softmax(logits)

    def run_tokens(self, token_embeddings: np.ndarray, slots: np.ndarray, window: int = 0) -> np.ndarray:
        """Tag probabilities [rows, tokens, classes]: row i's tokens (each beside its ``window``
        neighbours either side: this bank's width is (2 window + 1) D) through the head in ``slots[i]``.

        One matmul per distinct head over all of its rows' tokens, [rows x tokens, D] x [D,
        (2 window + 1) K], then each neighbour's block added at its shift: the windowed features
        are never built (5x the token embeddings), nor a weight matrix gathered per row (as
        sentence heads do: [rows, K, width] floats, 96 MB for 256 rows of a 49-tag head)."""
        rows, tokens, dim = token_embeddings.shape
        offsets = 2 * window + 1
        logits = np.empty((rows, tokens, self.classes), dtype=np.float32)
        for slot in np.unique(slots):
            mine = np.flatnonzero(slots == slot)
            weights = self.weights[slot].reshape(self.classes, offsets, dim).transpose(2, 1, 0).reshape(dim, -1)
            projected = (token_embeddings[mine].reshape(-1, dim) @ weights).reshape(len(mine), tokens, offsets, -1)
            head = np.broadcast_to(self.biases[slot], (len(mine), tokens, self.classes)).copy()
            for offset in range(offsets):
                shift = offset - window  # token t reads token t + shift
                if shift >= 0:
                    head[:, : tokens - shift] += projected[:, shift:, offset]
                else:
                    head[:, -shift:] += projected[:, : tokens + shift, offset]
            logits[mine] = head
        return softmax(logits)


class SessionHead:
    """A head that is not one linear layer: its own small ONNX Runtime session."""

    def __init__(self, model_bytes: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # ~90 KB per head instead of an arena each
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HeadFileError(f"ONNX Runtime cannot load the head: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise HeadFileError(f"a head takes one input and gives probabilities, this one has {len(inputs)} inputs")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name

    def run(self, embeddings: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: embeddings})[0]


# --- what one head costs in memory, and how it runs -----------------------------------------
@dataclass
class ResidentHead:
    """One head version in memory: in a bank slot (linear) or as a session.

    A stacked head's ``slot`` changes when another head of its bank is released (the bank stays
    dense); ``HeadResidency`` updates it under its lock.
    """

    labels: tuple[str, ...]
    nbytes: int
    bank: LinearBank | None = None
    slot: int = -1
    session: SessionHead | None = None
    #: A head with slots: its token head's tag names, and where it runs (a bank slot or a session).
    tags: tuple[str, ...] | None = None
    tag_bank: LinearBank | None = None
    tag_slot: int = -1
    tag_window: int = 0
    tag_session: SessionHead | None = None

    @property
    def encoded_labels(self) -> list[bytes]:
        """UTF-8 label names, encoded once per residency rather than once per answered row."""
        cached = self.__dict__.get("_encoded_labels")
        if cached is None:
            cached = self.__dict__["_encoded_labels"] = [label.encode("utf-8") for label in self.labels]
        return cached


# --- residency -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResidencyStats:
    resident_heads: int
    #: Bytes of the resident heads' weights (stacked heads) and ONNX files (session heads).
    resident_bytes: int
    budget_bytes: int
    loads: int
    evictions: int
    #: Bytes of the stacked heads' arrays, allocated: at most ``BANK_GROWTH`` × ``stacked_bytes``.
    allocated_bytes: int = 0
    #: Bytes of the weights and biases of the stacked heads in those arrays.
    stacked_bytes: int = 0


class HeadResidency:
    """Head versions in memory, least recently used evicted first under ``budget_bytes``.

    ``acquire(keys, load)`` makes every key resident (calling ``load(key)`` for the missing ones)
    and returns them in order; keys used by that call are protected from eviction while it runs,
    so a batch with more heads than the budget holds still completes (over budget until the next
    call). ``run(embeddings, row_keys, load)`` does the same for a batch's rows and runs them,
    under the same lock. ``release(key)`` drops a head at once (offboarded or replaced).
    Thread-safe: every method takes the residency's private lock.
    """

    def __init__(self, budget_bytes: int, dim: int, log: Callable[[str], None] | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.dim = dim
        self._entries: OrderedDict[Hashable, ResidentHead] = OrderedDict()
        self._banks: dict[int, LinearBank] = {}
        self._tag_banks: dict[tuple[int, int], LinearBank] = {}  # token heads, by (tag count, window)
        self._bytes = 0
        self._loads = 0
        self._evictions = 0
        self._log = log or (lambda _message: None)
        self._lock = threading.RLock()

    def keys(self) -> list[Hashable]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> ResidencyStats:
        with self._lock:
            return ResidencyStats(
                len(self._entries),
                self._bytes,
                self.budget_bytes,
                self._loads,
                self._evictions,
                allocated_bytes=sum(bank.allocated_bytes for bank in self._all_banks()),
                stacked_bytes=sum(bank.held_bytes for bank in self._all_banks()),
            )

    def _all_banks(self) -> list[LinearBank]:
        return [*self._banks.values(), *self._tag_banks.values()]

    def acquire(
        self, keys: Sequence[Hashable], load: Callable[[Hashable], tuple[bytes, Sequence[str]]]
    ) -> dict[Hashable, ResidentHead | Exception]:
        """Each distinct key's resident head, or the exception loading it raised (per key)."""
        with self._lock:
            wanted = list(dict.fromkeys(keys))
            result: dict[Hashable, ResidentHead | Exception] = {}
            for key in wanted:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    result[key] = entry
                    continue
                try:
                    entry = self._load(key, load)
                except Exception as exc:  # one head's bad file never fails the others
                    result[key] = exc
                    continue
                self._entries[key] = entry
                self._bytes += entry.nbytes
                result[key] = entry
            self._evict(protected=set(wanted))
            return result

    def run(
        self,
        embeddings: np.ndarray,
        row_keys: Sequence[Hashable | None],
        load: Callable[[Hashable], tuple],
        rows_runner: Callable[[np.ndarray, list], list] | None = None,
    ) -> tuple[dict[Hashable, ResidentHead | Exception], list[np.ndarray | Exception | None]]:
        """Run row i of ``embeddings`` through the head of ``row_keys[i]`` (None: skip the row).

        Returns what ``acquire`` returns for the distinct keys, and ``rows_runner``'s result per
        row (default ``run_rows``; ``run_token_rows`` for token rows: ``run_tokens``; None for a
        skipped row and for a row whose head failed to load). The heads are made resident and
        run under one hold of the lock: no slot moves in between.
        """
        with self._lock:
            resident = self.acquire([key for key in row_keys if key is not None], load)
            heads = [None if key is None else resident[key] for key in row_keys]
            usable = [head if isinstance(head, ResidentHead) else None for head in heads]
            return resident, (rows_runner or run_rows)(embeddings, usable)

    def run_tokens(
        self,
        token_embeddings: np.ndarray,
        row_keys: Sequence[Hashable | None],
        load: Callable[[Hashable], tuple],
    ) -> tuple[dict[Hashable, ResidentHead | Exception], list[np.ndarray | Exception | None]]:
        """``run`` for token rows: row i's token embeddings [tokens, D] through the token head of
        ``row_keys[i]``; ``run_token_rows``' result per row."""
        return self.run(token_embeddings, row_keys, load, run_token_rows)

    def _load(self, key: Hashable, load: Callable[[Hashable], tuple]) -> ResidentHead:
        """``load(key)``: (head file, labels) or (head file, labels, ``SlotFiles`` or None)."""
        started = time.perf_counter()
        model_bytes, labels, *rest = load(key)
        slots: SlotFiles | None = rest[0] if rest else None
        labels = tuple(labels)
        parameters, _ = parse_head(model_bytes, labels, self.dim)
        token_parameters = None
        if slots is not None:  # checked before anything is stored: a bad token head stores nothing
            token_parameters, _ = parse_token_head(slots.model, slots.tags, self.dim)
            tag_session = None if token_parameters is not None else SessionHead(slots.model)
        if parameters is not None:
            weights, bias = parameters
            entry = ResidentHead(labels=labels, nbytes=weights.nbytes + bias.nbytes)
            entry.bank = self._bank(self._banks, weights.shape[0])
            entry.slot = entry.bank.add(weights, bias, owner=entry)
        else:
            entry = ResidentHead(labels=labels, nbytes=len(model_bytes), session=SessionHead(model_bytes))
        if slots is not None:
            entry.tags = tuple(slots.tags)
            if token_parameters is not None:
                weights, bias, window = token_parameters
                entry.nbytes += weights.nbytes + bias.nbytes
                entry.tag_window = window
                entry.tag_bank = self._tag_bank(weights.shape[0], window)
                entry.tag_slot = entry.tag_bank.add(weights, bias, owner=entry)
            else:
                entry.nbytes += len(slots.model)
                entry.tag_session = tag_session
        self._loads += 1
        kind = "stacked" if entry.bank is not None else "session"
        if entry.tags is not None:
            kind += f", {len(entry.tags)} tags " + ("stacked" if entry.tag_bank is not None else "session")
        self._log(f"head {key} resident ({kind}, {entry.nbytes} B) in {1000 * (time.perf_counter() - started):.1f} ms")
        return entry

    def _tag_bank(self, tags: int, window: int) -> LinearBank:
        bank = self._tag_banks.get((tags, window))
        if bank is None:
            bank = self._tag_banks[tags, window] = LinearBank(tags, (2 * window + 1) * self.dim)
        return bank

    def _bank(self, banks: dict[int, LinearBank], classes: int) -> LinearBank:
        bank = banks.get(classes)
        if bank is None:
            bank = banks[classes] = LinearBank(classes, self.dim)
        return bank

    def release(self, key: Hashable) -> bool:
        """Drop ``key`` from memory now; False when it was not resident."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._free(entry)
            return True

    def _free(self, entry: ResidentHead) -> None:
        self._bytes -= entry.nbytes
        if entry.bank is not None:
            moved = entry.bank.release(entry.slot)
            if moved is not None:
                moved.slot = entry.slot
            entry.slot = -1
            if entry.bank.used == 0:  # its arrays are empty now; a new bank comes with the next head
                self._banks.pop(entry.bank.classes, None)
        if entry.tag_bank is not None:
            moved = entry.tag_bank.release(entry.tag_slot)
            if moved is not None:
                moved.tag_slot = entry.tag_slot
            entry.tag_slot = -1
            if entry.tag_bank.used == 0:
                self._tag_banks.pop((entry.tag_bank.classes, entry.tag_window), None)
        entry.session = entry.tag_session = None

    def _evict(self, protected: set) -> None:
        for key in list(self._entries):
            if self._bytes <= self.budget_bytes:
                return
            if key in protected:
                continue
            self._free(self._entries.pop(key))
            self._evictions += 1


# --- running a mixed batch -------------------------------------------------------------------
def _run_grouped(
    x: np.ndarray,
    heads: Sequence[ResidentHead | None],
    stacked: Callable[[ResidentHead], tuple[LinearBank, int] | None],
    run_bank: Callable[[LinearBank, np.ndarray, np.ndarray, ResidentHead], np.ndarray],
    session_of: Callable[[ResidentHead], SessionHead],
    check: Callable[[np.ndarray, int, ResidentHead], None],
) -> list[np.ndarray | Exception | None]:
    """Row i of ``x`` through ``heads[i]`` (None rows skipped): rows of stacked heads (``stacked``:
    their bank and slot) one ``run_bank`` call per bank, the others one session call per head
    with all of its rows, its output ``check``ed. A failing session fails only its own rows."""
    out: list[np.ndarray | Exception | None] = [None] * len(heads)
    by_bank: dict[int, tuple[LinearBank, list[int], list[int]]] = {}
    by_session: dict[int, tuple[ResidentHead, list[int]]] = {}
    for row, head in enumerate(heads):
        if head is None:
            continue
        place = stacked(head)
        if place is not None:
            bank, slot = place
            group = by_bank.setdefault(id(bank), (bank, [], []))
            group[1].append(row)
            group[2].append(slot)
        else:
            by_session.setdefault(id(head), (head, []))[1].append(row)
    for bank, rows, slots in by_bank.values():
        results = run_bank(bank, x[rows], np.asarray(slots, dtype=np.int64), heads[rows[0]])
        for position, row in enumerate(rows):
            out[row] = results[position]
    for head, rows in by_session.values():
        try:
            results = session_of(head).run(np.ascontiguousarray(x[rows], dtype=np.float32))
            check(results, len(rows), head)
        except Exception as exc:  # this head's rows fail, the rest of the batch is answered
            for row in rows:
                out[row] = exc
            continue
        for position, row in enumerate(rows):
            out[row] = results[position].astype(np.float32, copy=False)
    return out


def _check_probabilities(probabilities: np.ndarray, rows: int, head: ResidentHead) -> None:
    if probabilities.ndim != 2 or probabilities.shape[0] != rows:
        raise HeadFileError(f"the head returned shape {list(probabilities.shape)} for {rows} rows")
    if probabilities.shape[1] != len(head.labels):
        raise HeadFileError(
            f"the head returned {probabilities.shape[1]} probabilities but names {len(head.labels)} labels"
        )


def run_rows(embeddings: np.ndarray, heads: Sequence[ResidentHead | None]) -> list[np.ndarray | Exception | None]:
    """Probabilities of each row through its head (None rows are skipped).

    Linear heads run as one gather + batched matmul + softmax per class count; session heads as
    one session call per head with all of its rows. A failing session fails only its own rows.
    """
    return _run_grouped(
        embeddings,
        heads,
        lambda head: (head.bank, head.slot) if head.bank is not None else None,
        lambda bank, x, slots, _head: bank.run(x, slots),
        lambda head: head.session,
        _check_probabilities,
    )


def run_token_rows(
    token_embeddings: np.ndarray, heads: Sequence[ResidentHead | None]
) -> list[np.ndarray | Exception | None]:
    """Tag probabilities [tokens, K] of each row's tokens through its head's token head (None
    rows, and rows whose head has no slots, are skipped: None).

    Stacked token heads run as one matmul per head and one softmax per bank; session ones as one
    session call per head with all of its rows. A failing session fails only its rows.
    """

    def check(probabilities: np.ndarray, rows: int, head: ResidentHead) -> None:
        expected = (rows, token_embeddings.shape[1], len(head.tags))
        if probabilities.shape != expected:
            raise HeadFileError(f"the token head returned shape {list(probabilities.shape)}, expected {list(expected)}")

    return _run_grouped(
        token_embeddings,
        [head if head is not None and head.tags is not None else None for head in heads],
        lambda head: (head.tag_bank, head.tag_slot) if head.tag_bank is not None else None,
        lambda bank, x, slots, head: bank.run_tokens(x, slots, head.tag_window),
        lambda head: head.tag_session,
        check,
    )
