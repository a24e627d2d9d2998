"""Triton's Prometheus metrics page (``--metrics-port``, ``/metrics``): fetched and parsed.

The page is not part of Triton's inference API (``tritonclient`` has no call for it): it is read
over plain HTTP and parsed with ``prometheus_client``'s own text parser, never by hand.

    page = read_metrics("localhost", 8002)
    page.total("nv_inference_count", model="pipeline")
    page.totals(prefix="headroom_")          # {sample name: sum over its label sets}
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One line of the page: sample name (``_total``, ``_bucket``... included), labels, value."""

    name: str
    labels: dict[str, str] = field(hash=False)
    value: float


def metrics_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/metrics"


def _fetch(host: str, port: int, timeout_s: float) -> bytes:
    """The page as sent; ``OSError`` (``urllib.error.URLError`` included) when nothing answers."""
    with urllib.request.urlopen(metrics_url(host, port), timeout=timeout_s) as response:
        return response.read()


def fetch_metrics_text(host: str, port: int, timeout_s: float = 30.0) -> str:
    """The page's text; ``OSError`` (``urllib.error.URLError`` included) when nothing answers."""
    return _fetch(host, port, timeout_s).decode("utf-8")


def metrics_page_bytes(host: str, port: int, timeout_s: float = 60.0) -> int:
    """Size of the page in bytes (it grows with every model loaded)."""
    return len(_fetch(host, port, timeout_s))


def metrics_up(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether the metrics page answers 200 (Triton opens it shortly after its HTTP port)."""
    try:
        with urllib.request.urlopen(metrics_url(host, port), timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text-format page, in page order, under the name the page gives it.

    ``prometheus_client`` parses in OpenMetrics terms and appends ``_total`` to the samples of a
    counter declared without it (Triton's ``nv_inference_count``...); such samples get their
    declared name back (the one PromQL and the dashboards use), found in the page's ``# TYPE`` lines.
    """
    from prometheus_client.parser import text_string_to_metric_families

    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and line.count(" ") >= 3}
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter" and family.name in declared and name == f"{family.name}_total":
                name = family.name
            samples.append(Sample(name, dict(sample.labels), float(sample.value)))
    return samples


class MetricsPage:
    """The samples of one reading, looked up by sample name and labels."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    @classmethod
    def parse(cls, text: str) -> MetricsPage:
        return cls(parse_samples(text))

    def select(self, name: str, **labels: str) -> Iterator[Sample]:
        """Samples called ``name`` whose labels include every ``labels`` pair."""
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                yield sample

    def __contains__(self, name: str) -> bool:
        return any(sample.name == name for sample in self.samples)

    def names(self) -> set[str]:
        return {sample.name for sample in self.samples}

    def value(self, name: str, **labels: str) -> float | None:
        """The first matching sample's value, None when there is none."""
        return next((sample.value for sample in self.select(name, **labels)), None)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the matching samples (0 when there is none)."""
        return sum(sample.value for sample in self.select(name, **labels))

    def totals(self, prefix: str = "") -> dict[str, float]:
        """Sample name -> sum over its label sets, for the names that start with ``prefix``."""
        sums: dict[str, float] = {}
        for sample in self.samples:
            if sample.name.startswith(prefix):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def label_values(self, label: str) -> dict[str, set[str]]:
        """Sample name -> the values its samples carry for ``label`` (an empty set if none do)."""
        values: dict[str, set[str]] = {}
        for sample in self.samples:
            found = values.setdefault(sample.name, set())
            if label in sample.labels:
                found.add(sample.labels[label])
        return values


def read_metrics(host: str, port: int, timeout_s: float = 30.0) -> MetricsPage:
    """Fetch and parse the metrics page of the server at ``host:port``."""
    return MetricsPage.parse(fetch_metrics_text(host, port, timeout_s))
