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
from headroom import config

from bench.run_all import END_MARKER, START_MARKER, update_readme

SCRIPTS = [
    "encoder_ceiling",
    "encoder_variants",
    "end_to_end",
    "onboarding",
    "model_per_tenant",
    "density",
    "dense_heads",
    "tuning",
    "run_all",
]


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
    names = ("encoder_ceiling", "end_to_end", "onboarding", "model_per_tenant", "density", "tuning")
    for name in (*names, "peer_infinity_mix"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["benchmark"] == name and report["machine"]["cores"] >= 1
    for name in ("encoder_ceiling", "end_to_end", "onboarding", "model_per_tenant", "density"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    e2e = json.loads((tmp_path / "end_to_end.json").read_text())
    mix = e2e["text_sets"]["mix"]
    assert mix["p50"] < mix["p90"] < mix["p99"] <= mix["max"] == config.MAX_SEQ_LEN_TOKENS
    assert e2e["text_sets"]["short"]["max"] <= 16
    assert list(e2e["variants"]) == [config.ENCODER_VARIANT]  # --quick: the served variant only
    for variant in e2e["variants"]:
        for name, expected_modes in (("mix", {"pipeline_1", "pipeline_32", "embed_32"}), ("short", {"pipeline_1"})):
            measured = e2e["variants"][variant]["text_sets"][name]
            assert set(measured["modes"]) == expected_modes
            assert all(mode["errors"] == 0 for mode in measured["modes"].values())
            assert measured["modes"]["pipeline_1"]["ok"] > 0
            assert measured["ceiling"]["ceiling_per_s"] > 0
            assert all(len(mode["ratio_by_round"]) == e2e["rounds"] == 1 for mode in measured["modes"].values())
            assert [row["load_fraction"] for row in measured["latency"]] == [0.25, 0.5, 0.75]
            before = measured["ceiling"]["before"]["padded_tokens_per_real_token"]
            assert before["sorted_served_groups"] < before["arrival_batches_32"]
    onboarded = json.loads((tmp_path / "onboarding.json").read_text())["rows"]
    assert [row["examples"] for row in onboarded] == [200]
    assert onboarded[0]["median_s"]["embedding"] > 0 and "onboarded cli200 v1" in onboarded[0]["cli_output"]
    tenants = json.loads((tmp_path / "model_per_tenant.json").read_text())
    assert all(row["errors"] == 0 for row in tenants["headroom"] + tenants["one_model_per_tenant"])
    summary = (tmp_path / "summary.md").read_text()
    assert "**Texts of real length**" in summary and "| figure | measured | target |" in summary
    assert f"end to end / encoder ceiling, {config.ENCODER_VARIANT}, 1 text per request" in summary
    assert f"end to end / encoder ceiling, {config.ENCODER_VARIANT}, ≤16 tokens, 1 text per request" in summary
    assert "headroom (`pipeline`) / infinity-emb (torch, fp32), 1 text(s) per request, same texts" in summary
    assert "onboarding 200 examples through the API" in summary


@pytest.mark.timeout(600)
def test_quick_run_of_encoder_variants_writes_a_report(tmp_path):
    """No server: every variant in-process on a few hundred texts, two speed rounds."""
    env = {**os.environ, "HEADROOM_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.encoder_variants", "--quick"],
        capture_output=True,
        text=True,
        cwd=config.PROJECT_ROOT,
        timeout=540,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "encoder_variants.json").read_text())
    assert set(report["variants"]) == set(config.ENCODER_VARIANTS)
    for variant, figures in report["variants"].items():
        assert set(figures["holdout"]) == {"knowledge", "lifestyle", "smalltalk", "smart_home"}
        assert 0.9 <= figures["cosine_to_fp32"]["all"]["min"] <= 1.0 + 1e-6
        for workload in report["speed"].values():
            assert workload[variant]["sentences_per_s"] > 0
    assert (tmp_path / "encoder_variants.png").stat().st_size > 0


def test_summary_replaces_only_the_marked_part_of_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{START_MARKER}\nold table\n{END_MARKER}\nafter\n")
    assert update_readme("| new | table |\n", readme)
    assert readme.read_text() == f"# title\nbefore\n{START_MARKER}\n| new | table |\n{END_MARKER}\nafter\n"
    readme.write_text("no markers\n")
    assert not update_readme("x\n", readme)
    assert readme.read_text() == "no markers\n"
