"""Synthetic multi-tenant traffic shared by the locust file and the benchmarks.

Tenants are drawn with Zipf popularity (weight of the k-th most popular tenant ~ 1 / k**s,
s = 1.1 by default), texts uniformly from a list, and a small share of requests name a head
that does not exist: those must fail (with NOT_FOUND) and are counted as *expected* failures.

Texts: ``demo_texts`` (the demo tenants' training files: short utterances) or
``real_text_mix``, texts of real length: mostly such utterances, then longer sentences and
whole paragraphs of English prose from the Python documentation that every CPython ships
(``pydoc_data.topics``, the text of ``help()``), so the lengths are long-tailed as real traffic
is (p50 11, p90 43, p99 132 tokens, a few truncated at 256).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from headroom import config

ZIPF_EXPONENT = 1.1
EXPECTED_FAILURE_SHARE = 0.02
UNKNOWN_HEAD = "no_such_tenant"


def zipf_weights(count: int, exponent: float = ZIPF_EXPONENT) -> np.ndarray:
    """Normalised popularity of tenants ranked 1..count."""
    if count < 1:
        raise ValueError("need at least one tenant")
    ranks = np.arange(1, count + 1, dtype=np.float64)
    weights = ranks**-exponent
    return weights / weights.sum()


def demo_texts(limit: int | None = None, build_dir: Path = config.DEFAULT_BUILD_DIR) -> list[str]:
    """Texts of the demo tenants' training files (what ``make heads`` writes under ``build_dir`` and ships)."""
    files = sorted((Path(build_dir) / "demo_data").glob("*.jsonl")) + sorted(config.DEMO_DATA_DIR.glob("*.jsonl"))
    texts: list[str] = []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.append(json.loads(line)["text"])
    if not texts:
        raise FileNotFoundError("no demo data found: run `make heads` first")
    return texts[:limit] if limit else texts


#: Shares of ``real_text_mix``: short utterances, prose sentences, prose paragraphs.
MIX_SHARES = (0.75, 0.2, 0.05)
MIX_SIZE = 2000
MIX_SEED = 0
SENTENCE_MIN_CHARS = 30


def prose_sentences(paragraphs: Sequence[str]) -> list[str]:
    sentences = (s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p) if len(s) >= SENTENCE_MIN_CHARS)
    return list(dict.fromkeys(sentences))


def real_text_mix(size: int = MIX_SIZE, seed: int = MIX_SEED, shares: Sequence[float] = MIX_SHARES) -> list[str]:
    """``size`` texts of real, long-tailed length (see the module docstring), always the same for a seed."""
    from headroom.export.demo import prose_paragraphs

    paragraphs = prose_paragraphs()
    pools = (demo_texts(), prose_sentences(paragraphs), paragraphs)
    rng = random.Random(seed)
    return [rng.choice(rng.choices(pools, weights=shares, k=1)[0]) for _ in range(size)]


@dataclass(frozen=True)
class Request:
    text: str
    head: str
    expect_failure: bool


class TrafficMix:
    """Draws requests: Zipf-popular heads, uniform texts, a share of unknown-head requests."""

    def __init__(
        self,
        heads: Sequence[str],
        texts: Sequence[str],
        failure_share: float = EXPECTED_FAILURE_SHARE,
        exponent: float = ZIPF_EXPONENT,
        seed: int | None = None,
    ) -> None:
        if not heads:
            raise ValueError("no heads to send traffic to")
        self.heads = list(heads)
        self.texts = list(texts)
        self.failure_share = failure_share
        self._weights = zipf_weights(len(self.heads), exponent).tolist()
        self._random = random.Random(seed)

    def next(self) -> Request:
        text = self._random.choice(self.texts)
        if self._random.random() < self.failure_share:
            return Request(text, UNKNOWN_HEAD, True)
        head = self._random.choices(self.heads, weights=self._weights, k=1)[0]
        return Request(text, head, False)

    def batch(self, count: int) -> list[Request]:
        return [self.next() for _ in range(count)]
