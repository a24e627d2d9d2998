"""The infinity-emb peer benchmark (bench/peer_infinity.py) runs end to end in a tiny configuration.

It needs the bench-only virtualenv that ``bench/setup_infinity_env.sh`` builds (``.venv-infinity``, or
``INFINITY_VENV``). Without it the test fails, it does not skip: a skipped benchmark would go unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def infinity_venv() -> Path:
    return Path(os.environ.get("INFINITY_VENV", ROOT / ".venv-infinity"))


def test_peer_infinity_tiny_run(tmp_path: Path) -> None:
    venv = infinity_venv()
    if not (venv / "bin" / "infinity_emb").exists():
        pytest.fail(
            f"{venv} has no infinity_emb: run `bench/setup_infinity_env.sh` first "
            "(it builds the bench-only infinity-emb virtualenv; `make test` should do it)"
        )
    output = tmp_path / "peer_infinity.json"
    command = [
        sys.executable,
        "-m",
        "bench.peer_infinity",
        # 32-text requests take ~1 s each on a busy 2-core machine: long enough to finish some.
        "--duration",
        "5",
        "--warmup",
        "1",
        "--concurrency",
        "8",
        "--batch-concurrency",
        "2",
        "--startup-timeout",
        "90",
        "--output",
        str(output),
    ]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    logs = f"stdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-3000:]}"
    assert output.exists(), f"no report written (exit code {completed.returncode})\n{logs}"
    report = json.loads(output.read_text())

    assert report["parity"]["min_cosine"] >= 0.99, logs
    assert completed.returncode == 0, logs
    assert [mode["texts_per_request"] for mode in report["modes"]] == [1, 32]
    for mode in report["modes"]:
        assert mode["sentences_per_s"] > 0, f"{mode}\n{logs}"
        assert mode["errors"] == 0, f"{mode}\n{logs}"
        assert 0 < mode["p50_ms"] <= mode["p95_ms"]
    assert report["versions"]["infinity-emb"]
    assert report["machine"]["cores"] >= 1
    assert output.with_suffix(".png").stat().st_size > 0
