"""Per-tenant counters of the pipeline, with a bound on how many tenants get a label of their own.

Triton counts a ``pipeline`` request whose row failed for its head (NOT_FOUND, UNAVAILABLE...)
as a *successful* inference: the error travels in the response, not in Triton's status. So the
pipeline keeps its own counters, on Triton's metrics port (``pb_utils.MetricFamily``):

- ``headroom_tenant_rows_total{head, code}``: texts answered (``code="OK"``) or refused (the
  row's code: INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL), per head;
- ``headroom_tenant_requests_total{head}`` and ``headroom_tenant_request_seconds_total{head}``:
  requests naming the head and the seconds the pipeline spent on them (their batch's time in
  ``execute``: embedding and heads, not Triton's queue); their ratio is the head's mean latency.
  A per-head histogram would multiply the series by its buckets; Triton's own
  ``nv_inference_request_duration_us{model="pipeline"}`` and its queue time cover the whole.

Cardinality bound: a head gets its own ``head`` label once it has been *answered* (a loaded,
valid head: a client cannot mint labels by sending made-up names), for at most ``max_heads``
heads per server process; every other row or request is counted under ``head="(other)"``.
Every head's series costs about a kilobyte in Prometheus; 1000 heads (the default,
``tenant_metrics_max_heads`` in pipeline's config.pbtxt, env HEADROOM_TENANT_METRICS_MAX_HEADS)
is a few thousand series per replica.

Pure Python: ``tally`` turns a batch into increments; the model applies them (one call per
series per batch, since each metric update is a message to the Triton process).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from headroom.naming import head_name_problem

OK = "OK"
OTHER_HEAD = "(other)"
DEFAULT_MAX_HEADS = 1000
MAX_HEADS_ENV = "HEADROOM_TENANT_METRICS_MAX_HEADS"


@dataclass
class Tally:
    """One batch's increments: rows by (head label, code), requests and seconds by head label."""

    rows: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class RequestOutcome:
    """One request of a batch: each row's head (None when it was not valid UTF-8) and code."""

    heads: Sequence[str | None]
    codes: Sequence[str]


class TenantLabels:
    """Which ``head`` label each head's series get, within the bound."""

    def __init__(self, max_heads: int = DEFAULT_MAX_HEADS) -> None:
        self.max_heads = max(0, max_heads)
        self._labelled: set[str] = set()

    def label(self, head: str | None, answered: bool) -> str:
        if head is not None and head in self._labelled:
            return head
        if answered and head is not None and len(self._labelled) < self.max_heads and head_name_problem(head) is None:
            self._labelled.add(head)
            return head
        return OTHER_HEAD

    def tally(self, requests: Sequence[RequestOutcome], seconds: float) -> Tally:
        """The increments of a batch whose requests took ``seconds`` in the pipeline."""
        tally = Tally()
        for request in requests:
            labels = set()
            for head, code in zip(request.heads, request.codes, strict=True):
                label = self.label(head, code == OK)
                tally.rows[label, code] += 1
                labels.add(label)
            for label in labels:
                tally.requests[label] += 1
                tally.seconds[label] += seconds
        return tally
