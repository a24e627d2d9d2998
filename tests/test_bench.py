"""Every benchmark script runs, in a seconds-long configuration, so none of them can rot.

Benchmarks are not tests of speed: nothing here checks a figure against a target, only that the
scripts run end to end against real servers and write well-formed reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.run_all import END_MARKER, START_MARKER, update_readme
from headroom import config

SCRIPTS = ["encoder_ceiling", "end_to_end", "model_per_tenant", "density", "dense_heads", "tuning", "run_all"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--help"],
        capture_output=True,
        text=True,
        cwd=config.PROJECT_ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.mark.integration
@pytest.mark.timeout(960)  # the subprocess's own limit is 900 s; a loaded 2-core machine needs ~5-8 min
def test_quick_run_of_all_benchmarks_writes_reports(tmp_path):
    env = {**os.environ, "HEADROOM_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--no-readme"],
        capture_output=True,
        text=True,
        cwd=config.PROJECT_ROOT,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for name in ("encoder_ceiling", "end_to_end", "model_per_tenant", "density", "tuning", "peer_infinity"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["benchmark"] == name and report["machine"]["cores"] >= 1
    for name in ("encoder_ceiling", "end_to_end", "model_per_tenant", "density"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    e2e = json.loads((tmp_path / "end_to_end.json").read_text())
    for variant in config.ENCODER_VARIANTS:
        saturated = e2e["variants"][variant]["saturated"]
        assert saturated["ok"] > 0 and saturated["errors"] == 0
    tenants = json.loads((tmp_path / "model_per_tenant.json").read_text())
    assert all(row["errors"] == 0 for row in tenants["headroom"] + tenants["one_model_per_tenant"])
    summary = (tmp_path / "summary.md").read_text()
    assert "end-to-end / encoder ceiling, int8" in summary and "| figure | measured | target |" in summary
    assert "infinity-emb (torch, fp32) sentences/s, 1 text(s) per request" in summary


def test_summary_replaces_only_the_marked_part_of_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{START_MARKER}\nold table\n{END_MARKER}\nafter\n")
    assert update_readme("| new | table |\n", readme)
    assert readme.read_text() == f"# title\nbefore\n{START_MARKER}\n| new | table |\n{END_MARKER}\nafter\n"
    readme.write_text("no markers\n")
    assert not update_readme("x\n", readme)
    assert readme.read_text() == "no markers\n"
