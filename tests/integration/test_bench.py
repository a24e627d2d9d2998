"""Every benchmark script runs, in a seconds-long configuration, so none of them can rot.

Benchmarks are not tests of speed: nothing here checks a figure against a target, only that the
scripts run end to end against real servers and write well-formed reports.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from headroom import config

from bench import encoder_ceiling, onboarding, peer_infinity, run_all, tuning
from bench.run_all import END_MARKER, QUICK, START_MARKER, update_readme

SCRIPTS = [
    "encoder_ceiling",
    "encoder_variants",
    "end_to_end",
    "onboarding",
    "model_per_tenant",
    "density",
    "dense_heads",
    "tuning",
    "cluster",
    "affinity",
    "slots",
    "nlu_accuracy",
    "run_all",
]


def run_quick(script: str, results: Path, *args: str, timeout_s: int) -> None:
    """``python -m bench.<script> args`` with its reports written into ``results``; it must succeed."""
    env = {**os.environ, "HEADROOM_BENCH_RESULTS": str(results)}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", *args],
        capture_output=True,
        text=True,
        cwd=config.PROJECT_ROOT,
        timeout=timeout_s,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]


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


def _positive(value) -> bool:
    """A measured figure: a finite number above zero (never held to a target: benchmarks, not tests)."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _check_quick_reports(results: Path, served: str) -> None:
    """The values of the reports ``bench.run_all --quick`` writes: what was asked for was measured
    (counts, variants, candidates), every figure is a positive finite number, ratios and shares are
    consistent with the figures they come from. No figure is compared with a target. ``served``:
    the encoder variant the benchmarks' servers run (``HEADROOM_ENCODER_VARIANT``)."""
    ceiling = json.loads((results / "encoder_ceiling.json").read_text())
    assert ceiling["seconds_per_point"] == QUICK["ceiling_s"] and ceiling["threads"] >= 1
    points = {(r["variant"], r["seq_len"], r["batch_size"]) for r in ceiling["rows"]}
    asked = itertools.product(config.ENCODER_VARIANTS, encoder_ceiling.SEQUENCE_LENGTHS, encoder_ceiling.BATCH_SIZES)
    assert len(ceiling["rows"]) == len(points) and points == set(asked)
    assert all(_positive(r["sentences_per_s"]) for r in ceiling["rows"])
    assert ceiling["best"] == {
        f"{v}_T{t}": max(r["sentences_per_s"] for r in ceiling["rows"] if (r["variant"], r["seq_len"]) == (v, t))
        for v in config.ENCODER_VARIANTS
        for t in encoder_ceiling.SEQUENCE_LENGTHS
    }

    peer = json.loads((results / "peer_infinity_mix.json").read_text())
    assert peer["peer"] == "infinity-emb" and peer["distinct_texts"] > 0
    assert peer["parity"]["min_cosine"] >= peer["parity"]["threshold"] and peer["parity"]["ok"] is True
    assert [mode["texts_per_request"] for mode in peer["modes"]] == list(peer_infinity.TEXTS_PER_REQUEST)
    for mode in peer["modes"]:
        assert mode["duration_s"] == QUICK["peer_s"] and mode["errors"] == 0, mode
        assert mode["sentences_per_s"] >= 0 and math.isfinite(mode["sentences_per_s"])
        latencies = [mode[key] for key in ("p50_ms", "p95_ms", "p99_ms")]
        assert latencies == [None] * 3 if not mode["requests"] else latencies == sorted(latencies), mode
    single = peer["modes"][0]  # 32 clients of one text each: answers in any 3-second window
    assert single["requests"] > 0 and _positive(single["sentences_per_s"]) and _positive(single["p50_ms"])

    report = json.loads((results / "onboarding.json").read_text())
    assert report["repeats"] == QUICK["onboarding_repeats"] == 1 and report["variant"] == served
    assert [row["examples"] for row in report["rows"]] == list(QUICK["onboarding_sizes"])
    for row in report["rows"]:
        assert set(row["median_s"]) == {"total", *onboarding.STEPS}
        assert all(value >= 0 and math.isfinite(value) for value in row["median_s"].values()), row["median_s"]
        # One run: its total holds each of its steps.
        assert _positive(row["median_s"]["total"]) and max(row["median_s"].values()) == row["median_s"]["total"]
        assert len(row["runs"]) == 1 and row["runs"][0]["version"] == 1
        assert row["classes"] >= 2 and 0.0 <= row["holdout_accuracy"] <= 1.0
        assert _positive(row["cli_s"])

    tenants = json.loads((results / "model_per_tenant.json").read_text())
    assert tenants["seconds"] == QUICK["tenant_s"] and tenants["variant"] == served
    for design in ("headroom", "one_model_per_tenant"):
        rows = tenants[design]
        assert [row["tenants"] for row in rows] == list(QUICK["tenants"]), design
        for row in rows:
            assert row["ok"] > 0 and _positive(row["throughput_per_s"]) and _positive(row["pss_mib"]), (design, row)
            assert math.isfinite(row["mib_per_tenant"]) and math.isfinite(row["kib_per_tenant"])
    assert [row["tenants"] for row in tenants["comparison"]] == list(QUICK["tenants"])
    for row, ours, theirs in zip(
        tenants["comparison"], tenants["headroom"], tenants["one_model_per_tenant"], strict=True
    ):
        assert row["throughput_ratio"] == round(ours["throughput_per_s"] / theirs["throughput_per_s"], 2)
        assert row["memory_per_tenant_ratio"] is None or _positive(row["memory_per_tenant_ratio"])

    density = json.loads((results / "density.json").read_text())
    heads = QUICK["density_heads"]
    assert density["heads"] == heads and density["training_examples"] == QUICK["density_examples"]
    assert [row["head"] for row in density["onboardings"]] == list(range(1, heads + 1))
    for row in density["onboardings"]:
        assert _positive(row["onboard_total_s"]) and _positive(row["load_to_first_answer_s"]), row
        assert 0 <= row["training_s"] <= row["onboard_total_s"], row
        assert row["without_training_s"] == pytest.approx(row["onboard_total_s"] - row["training_s"], abs=2e-3)
    for key in ("onboard_total_s", "onboard_without_training_s", "training_s", "load_to_first_answer_s"):
        assert set(density[key]) == {"p50", "p95", "mean"}, key
        assert all(value >= 0 and math.isfinite(value) for value in density[key].values()), (key, density[key])
    assert density["memory"][0]["heads"] == 0 and density["memory"][-1]["heads"] == heads
    assert all(_positive(m["pss_mib"]) for m in density["memory"])
    assert density["marginal_kib_per_head"] is None or math.isfinite(density["marginal_kib_per_head"])

    tuned = json.loads((results / "tuning.json").read_text())
    assert tuned["seconds"] == QUICK["tuning_s"] and tuned["texts"] == "mix"
    assert [row["candidate"] for row in tuned["rows"]] == list(tuning.QUICK_CANDIDATES)
    assert set(tuning.QUICK_CANDIDATES) <= set(tuning.CANDIDATES)
    assert all(_positive(row["throughput_per_s"]) and _positive(row["relative_to_shipped"]) for row in tuned["rows"])
    shipped = [row for row in tuned["rows"] if row["candidate"].startswith("shipped")]
    assert len(shipped) == 2 and all(row["errors"] == 0 and row["ok"] > 0 for row in shipped), shipped
    # The shipped runs are the reference: their relative throughputs average to 1.
    assert sum(row["relative_to_shipped"] for row in shipped) / 2 == pytest.approx(1.0, abs=0.002)

    cluster = json.loads((results / "cluster.json").read_text())
    for protocol in ("http", "grpc"):
        overhead = cluster["overhead"][protocol]
        assert overhead["requests_per_path"] > 0
        assert all(_positive(overhead[path]["p50_us"]) for path in ("direct", "router")), overhead
    assert cluster["throughput"] and all(point["sent"] > 0 and point["failed"] == 0 for point in cluster["throughput"])
    assert all(_positive(seconds) for seconds in cluster["convergence"]["replica_serves_every_head_s"].values())
    assert cluster["convergence"]["onboard_missed"] in ({}, [], 0, None)


@pytest.mark.integration
@pytest.mark.timeout(1560)  # the subprocess's own limit is 1500 s; a quiet 2-core machine needs ~9 min
def test_quick_run_of_all_benchmarks_writes_reports(tmp_path, settings):
    run_quick("run_all", tmp_path, "--quick", "--no-readme", timeout_s=1500)
    served = settings.encoder_variant  # what bench.common.settings() reads from the same environment
    names = ("encoder_ceiling", "end_to_end", "onboarding", "model_per_tenant", "density", "dense_heads", "tuning")
    for name in (*names, "peer_infinity_mix"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["benchmark"] == name and report["machine"]["cores"] >= 1
    for name in ("encoder_ceiling", "end_to_end", "onboarding", "model_per_tenant", "density"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    e2e = json.loads((tmp_path / "end_to_end.json").read_text())
    mix = e2e["text_sets"]["mix"]
    assert mix["p50"] < mix["p90"] < mix["p99"] <= mix["max"] == config.MAX_SEQ_LEN_TOKENS
    assert e2e["text_sets"]["short"]["max"] <= 16
    assert list(e2e["variants"]) == [served]  # --quick: the served variant only
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
    assert f"end to end / encoder ceiling, {served}, 1 text per request" in summary
    assert f"end to end / encoder ceiling, {served}, ≤16 tokens, 1 text per request" in summary
    assert "headroom (`pipeline`) / infinity-emb (torch, fp32), 1 text(s) per request, same texts" in summary
    assert "onboarding 200 examples through the API" in summary
    _check_quick_reports(tmp_path, served)


@pytest.mark.timeout(600)
def test_quick_run_of_encoder_variants_writes_a_report(tmp_path):
    """No server: every variant in-process on a few hundred texts, two speed rounds."""
    run_quick("encoder_variants", tmp_path, "--quick", timeout_s=540)
    report = json.loads((tmp_path / "encoder_variants.json").read_text())
    assert set(report["variants"]) == set(config.ENCODER_VARIANTS)
    assert report["rounds"] == 2 and report["threads"] >= 1  # --quick: two speed rounds
    assert report["evaluation_texts"]["demo"] > 0 and report["evaluation_texts"]["held_out_prose"] > 0
    for variant, figures in report["variants"].items():
        assert set(figures["holdout"]) == {"knowledge", "lifestyle", "smalltalk", "smart_home"}
        for tenant, holdout in figures["holdout"].items():
            assert 0.0 <= holdout["holdout_accuracy"] <= 1.0 and holdout["holdout_examples"] > 0, (variant, tenant)
        assert 0.9 <= figures["cosine_to_fp32"]["all"]["min"] <= 1.0 + 1e-6
        assert figures["cosine_to_fp32"]["all"]["min"] <= figures["cosine_to_fp32"]["all"]["mean"] <= 1.0 + 1e-6
        assert figures["model_bytes"] > 0
        for mixing in ("random_mix", "length_groups"):
            independence = figures["batch_independence"][mixing]
            assert independence["texts"] > 0 and 0 <= independence["label_flips"], (variant, mixing)
            assert 0.0 <= independence["max_abs_delta_prob"] <= 1.0, (variant, mixing)
        # fp32 against itself: identical embeddings.
        if variant == "fp32":
            assert figures["cosine_to_fp32"]["all"]["min"] == pytest.approx(1.0, abs=1e-5)
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


def test_make_bench_writes_its_summary_into_the_benchmarks_page():
    """``make bench`` writes into docs/benchmarks.md, which keeps both markers, in order."""
    assert run_all.README == config.PROJECT_ROOT / "docs" / "benchmarks.md"
    text = run_all.README.read_text(encoding="utf-8")
    assert text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1
    assert text.index(START_MARKER) < text.index(END_MARKER)
    assert START_MARKER not in (config.PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_quick_run_of_slots_writes_a_report(tmp_path):
    """A server of its own with a classification and a slot tenant of the same data."""
    run_quick("slots", tmp_path, "--quick", timeout_s=540)
    report = json.loads((tmp_path / "slots.json").read_text())
    for mode, figures in report["rounds"][0].items():
        assert figures["texts_per_s"] > 0 and figures["failed"] == 0, mode
    assert report["throughput_ratio_to_classification"]["classification"] == 1.0
    assert 0 < report["throughput_ratio_to_classification"]["slots"]
    assert report["slot_metrics"]["slots"] > 0 and 0 < report["slot_metrics"]["holdout_entity_f1"] <= 1
    memory = report["memory_per_tenant_bytes"]
    assert 0 < memory["token_head_file"] < memory["fine_tuned_minilm_fp32"] / 100
    assert all(report["executor"][key] > 0 for key in ("intent_us_per_row", "token_heads_us_per_row"))
    assert (tmp_path / "slots.png").stat().st_size > 0
