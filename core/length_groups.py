"""Which texts go to the encoder together: groups of similar token length (pure numpy).

The encoder pays for every position of its input, padding included, and a batch is padded to
its longest text. Real traffic is long-tailed (median about 10 tokens, a few texts of 256), so
one long text in a batch of 32 short ones multiplies the batch's cost several times. Texts are
therefore sorted by token count and cut into groups, each run as its own encoder call and
padded only to its own longest text. A text joins the current group unless

- the group would exceed ``max_batch_tokens`` (rows × longest, as text-embeddings-inference
  counts ``--max-batch-tokens`` for padded models): a bound on one call's time and memory,
  and the encoder runs fastest at a few hundred to a few thousand tokens per call;
- the group would exceed ``max_rows`` (the encoder's ``max_batch_size``);
- the padding it adds to the rows already in the group (rows × its extra length) exceeds
  ``max_added_padding``: about the work one more encoder call costs, so a new group is cheaper.

Sorting changes which texts share a call, never an answer: the fp32 encoder's result for a text
does not depend on its batch-mates or its padding (to 1e-5; tests/test_length_groups.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupingLimits:
    """Bounds of one encoder call (docs/benchmarks.md, "Length-aware batching", gives the measurements)."""

    max_batch_tokens: int = 1024
    max_rows: int = 128
    max_added_padding: int = 32

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_added_padding < 0:
            raise ValueError(f"max_added_padding must not be negative, got {self.max_added_padding}")


def plan_groups(lengths: Sequence[int] | np.ndarray, limits: GroupingLimits) -> list[np.ndarray]:
    """Row indices of each group, shortest texts first; every row is in exactly one group.

    A text longer than ``max_batch_tokens`` on its own gets a group of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    longest = 0
    for position, length in enumerate(lengths[order].tolist()):
        rows = position - start
        if rows and (
            (rows + 1) * length > limits.max_batch_tokens
            or rows >= limits.max_rows
            or rows * (length - longest) > limits.max_added_padding
        ):
            groups.append(order[start:position])
            start = position
        longest = length
    if len(order):
        groups.append(order[start:])
    return groups


def padded_tokens(lengths: Sequence[int] | np.ndarray, groups: Sequence[np.ndarray]) -> int:
    """Positions the encoder computes for ``groups``: the sum of rows × longest over the groups."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(sum(len(group) * int(lengths[group].max()) for group in groups if len(group)))
