"""client/examples/classify.py, the plain-tritonclient example, against the session's server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from headroom import config

EXAMPLE = config.PROJECT_ROOT / "client" / "examples" / "classify.py"

pytestmark = pytest.mark.integration


def test_example_prints_labels_of_the_smart_home_head(triton) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), triton.http_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(rows) == 2 and all(len(row) == 3 for row in rows), done.stdout
    with triton.client() as client:
        expected = client.classify([text for _, _, text in rows], "smart_home")
    assert rows[0][2] == "turn on the kitchen lights"
    for (label, score, _), answer in zip(rows, expected, strict=True):
        assert label == answer.label and label in answer.probabilities  # a real label of the head
        assert float(score) == pytest.approx(answer.score, abs=1e-3)
