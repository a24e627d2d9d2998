"""``make bench``: every benchmark in one run, then ``bench/results/summary.md`` and the table in docs/benchmarks.md.

Order: encoder ceiling at fixed lengths (1); end-to-end throughput against the ceiling on texts of
real length and on short texts, with latency under load (2, 5); the infinity-emb peer on the same
texts; onboarding files of 1,000 and 10,000 examples; the encoder variants side by side; one model
per tenant (3); density (4); dense heads (10,000 heads); replicas behind the router; tuning.
Ratios are taken between figures of this same run. The summary, real-text figures first, is also
written into docs/benchmarks.md between the ``bench:summary`` markers, so the benchmarks page
always shows the latest run.

    python -m bench.run_all [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from headroom import config
from headroom.client.traffic import MIX_SIZE

from bench import (
    cluster,
    common,
    dense_heads,
    density,
    encoder_ceiling,
    encoder_variants,
    end_to_end,
    model_per_tenant,
    onboarding,
    peer_infinity,
    tuning,
)
from bench.common import RESULTS_DIR, log, machine_info, setup_logging, write_report

#: The page the summary table is written into (between the markers); the name is historical.
README = config.PROJECT_ROOT / "docs" / "benchmarks.md"
START_MARKER = "<!-- bench:summary:start -->"
END_MARKER = "<!-- bench:summary:end -->"

FULL = {
    "ceiling_s": 3.0,
    "variant_rounds": 7,
    "peer_s": 15.0,
    "e2e_s": 15.0,
    "e2e_variants": config.ENCODER_VARIANTS,
    "mix_size": MIX_SIZE,
    "e2e_rounds": 3,
    "peer_texts": end_to_end.TEXT_SETS,
    "onboarding_sizes": onboarding.SIZES,
    "onboarding_repeats": 3,
    "tenants": (10, 20, 40),
    "tenant_s": 15.0,
    "density_heads": 100,
    "density_examples": 120,
    "dense": dense_heads.Settings(),
    "cluster": cluster.FULL,
    "tuning_s": 10.0,
    "tuning_candidates": tuning.CANDIDATES,
}
QUICK = {
    "ceiling_s": 0.5,
    # tests/test_bench.py runs bench.encoder_variants --quick on its own
    "variant_rounds": None,
    "peer_s": 3.0,
    "e2e_s": 2.0,
    "e2e_variants": None,  # the served variant (HEADROOM_ENCODER_VARIANT) only
    "mix_size": 300,
    "e2e_rounds": 1,
    "peer_texts": ("mix",),
    "onboarding_sizes": (200,),
    "onboarding_repeats": 1,
    "tenants": (2, 4),
    "tenant_s": 3.0,
    "density_heads": 3,
    "density_examples": 80,
    "dense": dense_heads.QUICK,
    # Seconds-long points: three replicas still start (about a minute on 2 cores).
    "cluster": cluster.Plan(overhead_requests=50, load_s=1.0, warmup_s=0.5, rounds=1, mix_size=300),
    "tuning_s": 3.0,  # a point must see answers even on a loaded machine
    "tuning_candidates": tuning.QUICK_CANDIDATES,
}
#: Targets of issue 9 (benchmarks, not tests: the summary shows what is reached).
TARGETS = {"mix_1": "≥ 0.80", "mix_32": "≥ 0.95", "short": "≥ 0.85", "peer": "≥ 2×", "p99_ms": "≤ 100 ms"}


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}"


def _real_text_rows(reports: dict) -> list[str]:
    e2e = reports["end_to_end"]
    served = common.settings().encoder_variant
    default = served if served in e2e["variants"] else next(iter(e2e["variants"]))
    mix = e2e["variants"][default]["text_sets"]["mix"]
    ceiling = mix["ceiling"]["ceiling_per_s"]
    batch = e2e["batch_texts"]
    rows = []
    for mode, label, target in (
        ("pipeline_1", "1 text per request", TARGETS["mix_1"]),
        (f"pipeline_{batch}", f"{batch} texts per request", TARGETS["mix_32"]),
        (f"embed_{batch}", f"`embed`, {batch} texts per request", ""),
    ):
        data = mix["modes"].get(mode)
        if data:
            rounds = ", ".join(f"{r:.2f}" for r in data.get("ratio_by_round", []))
            rows.append(
                f"| end to end / encoder ceiling, {default}, {label} | {mix['ratio_to_ceiling'][mode]:.2f} "
                f"({data['texts_per_s']:.0f} vs {ceiling:.0f} texts/s; rounds {rounds}) | {target} |"
            )
    before = mix["ceiling"]["before"]["sentences_per_s"]
    arrival = next(value for name, value in before.items() if name.startswith("arrival"))
    rows.append(
        f"| encoder in-process, length-sorted / arrival-order batches of {encoder_ceiling.FIXED_BATCH} "
        f"({default}) | {_ratio(mix['ceiling']['before']['ceiling_per_s'], arrival)}× "
        f"({mix['ceiling']['before']['ceiling_per_s']:.0f} vs {arrival:.0f} texts/s) | |"
    )
    half = next((r for r in mix["latency"] if r["load_fraction"] == 0.5), None)
    if half:
        rows.append(
            f"| latency at 50 % of saturation ({half['target_per_s']:.0f} requests/s), p50 / p95 / p99, {default} "
            f"| {_fmt(half['p50_ms'], 1)} / {_fmt(half['p95_ms'], 1)} / {_fmt(half['p99_ms'], 1)} ms "
            f"| p99 {TARGETS['p99_ms']} |"
        )
    peer = reports.get("peer", {}).get("mix")
    if peer:
        ours = {1: mix["modes"]["pipeline_1"]["texts_per_s"], batch: mix["modes"].get(f"embed_{batch}", {})}
        for mode in peer["modes"]:
            per_request = mode["texts_per_request"]
            served = ours.get(per_request)
            served = served.get("texts_per_s") if isinstance(served, dict) else served
            what = "`pipeline`" if per_request == 1 else "`embed`"
            rows.append(
                f"| headroom ({what}) / infinity-emb (torch, fp32), {per_request} text(s) per request, same texts | "
                f"{_ratio(served, mode['sentences_per_s'])}× ({_fmt(served, 0)} vs {mode['sentences_per_s']:.0f} "
                f"texts/s) | {TARGETS['peer']} |"
            )
    for row in reports.get("onboarding", {}).get("rows", []):
        split = ", ".join(f"{step.replace('_', ' ')} {row['median_s'][step]:.2f}" for step in onboarding.STEPS)
        target = f"≤ {row['target_s']:.0f} s" if row["target_s"] else ""
        rows.append(
            f"| onboarding {row['examples']:,} examples through the API, first answer verified (median) | "
            f"{row['median_s']['total']:.2f} s ({split} s); `headroom onboard` {row['cli_s']:.2f} s | {target} |"
        )
    return rows


def _short_text_rows(reports: dict) -> list[str]:
    rows = []
    for variant, data in reports["end_to_end"]["variants"].items():
        short = data["text_sets"]["short"]
        mode = short["modes"]["pipeline_1"]
        rounds = ", ".join(f"{r:.2f}" for r in mode.get("ratio_by_round", []))
        rows.append(
            f"| end to end / encoder ceiling, {variant}, ≤16 tokens, 1 text per request | "
            f"{short['ratio_to_ceiling']['pipeline_1']:.2f} ({mode['texts_per_s']:.0f} vs "
            f"{short['ceiling']['ceiling_per_s']:.0f} texts/s; rounds {rounds}) | {TARGETS['short']} |"
        )
    peer = reports.get("peer", {}).get("short")
    fp32 = reports["end_to_end"]["variants"].get("fp32")
    if peer and fp32:
        served = fp32["text_sets"]["short"]["modes"]["pipeline_1"]["texts_per_s"]
        for mode in peer["modes"]:
            rows.append(
                f"| infinity-emb (torch, fp32), ≤16 tokens, {mode['texts_per_request']} text(s) per request, "
                f"against headroom fp32 at 1 text per request | {mode['sentences_per_s']:.0f} vs {served:.0f} texts/s "
                f"(min cosine to sentence-transformers {peer['parity']['min_cosine']:.4f}) | |"
            )
    return rows


def _tenant_rows(reports: dict) -> list[str]:
    tenants, dense = reports["tenants"], reports["density"]
    last = tenants["comparison"][-1]
    baseline_row = tenants["one_model_per_tenant"][-1]
    ours_row = tenants["headroom"][-1]
    memory_ratio = last["memory_per_tenant_ratio"]
    rows = [
        f"| memory per additional tenant, one model per tenant / headroom ({last['tenants']} tenants, "
        f"{tenants['variant']}) | {'headroom below PSS noise' if memory_ratio is None else f'{memory_ratio:.0f}×'} "
        f"({baseline_row['mib_per_tenant']:.0f} MiB vs {ours_row['kib_per_tenant']:.0f} KiB) | ≥ 4× |",
        f"| throughput, headroom / one model per tenant ({last['tenants']} Zipf tenants, ≤16 tokens) | "
        f"{last['throughput_ratio']}× ({ours_row['throughput_per_s']:.0f} vs {baseline_row['throughput_per_s']:.0f}"
        " requests/s) | ≥ 3× |",
        f"| marginal memory per onboarded head ({dense['heads']} heads onboarded through the API) | "
        f"{_fmt(dense.get('marginal_kib_per_head'), 1)} KiB | |",
        f"| onboarding p50, with / without training ({dense['training_examples']} examples) | "
        f"{dense['onboard_total_s']['p50']:.2f} s / {dense['onboard_without_training_s']['p50']:.2f} s | seconds |",
        f"| cold write + load + verified first answer, p50 / p95 | {dense['load_to_first_answer_s']['p50']:.2f} s / "
        f"{dense['load_to_first_answer_s']['p95']:.2f} s | |",
    ]
    if reports.get("dense_heads"):
        rows += [
            f"| {figure} | {measured} | {target} |"
            for figure, measured, target in dense_heads.summary_rows(reports["dense_heads"])
        ]
    return rows


def summary_markdown(reports: dict, elapsed_s: float) -> str:
    machine = machine_info()
    ceiling, e2e = reports["ceiling"], reports["end_to_end"]
    mix = e2e["text_sets"]["mix"]
    lines = [
        f"Latest `make bench`: {machine['date']}, {machine['cores']} cores ({machine['cpu']}), "
        f"Triton {machine['tritonserver']}, ONNX Runtime {machine['versions']['onnxruntime']}; "
        f"{elapsed_s / 60:.1f} min. Ratios are taken within this run.",
        "",
        f"**Texts of real length** ({mix['texts']} texts, {mix['distinct']} distinct: utterances, prose "
        f"sentences and paragraphs; tokens p50 {mix['p50']}, p90 {mix['p90']}, p99 {mix['p99']}, max {mix['max']}, "
        f"{mix['truncated']} cut at {config.MAX_SEQ_LEN_TOKENS}). Encoder ceiling: the same texts in-process, "
        "sorted by length into ideal batches.",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        *_real_text_rows(reports),
        "",
        "**Short texts** (10-16 tokens, the figures of earlier issues):",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        *_short_text_rows(reports),
        "",
        "**Tenants and density:**",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        *_tenant_rows(reports),
        "",
        "Latency under load (1 text per request, open-loop Poisson arrivals, same server as the throughput run):",
        "",
        "| variant | texts | load | offered/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, data in e2e["variants"].items():
        for name, values in data["text_sets"].items():
            for row in values["latency"]:
                lines.append(
                    f"| {variant} | {name} | {row['load_fraction']:.0%} | {row['target_per_s']:.0f} | "
                    f"{_fmt(row['p50_ms'], 1)} | {_fmt(row['p95_ms'], 1)} | {_fmt(row['p99_ms'], 1)} |"
                )
    if reports.get("cluster"):
        lines += [
            "",
            f"**Replicas behind the router** (`bench/cluster.py`; {reports['cluster']['note']}):",
            "",
            "| figure | measured | target |",
            "|---|---|---|",
            *(
                f"| {figure} | {measured} | {target} |"
                for figure, measured, target in cluster.summary_rows(reports["cluster"])
            ),
        ]
    if reports.get("encoder_variants"):
        lines += ["", "Encoder variants (`bench/encoder_variants.py`):", ""]
        lines += [f"- {line}" for line in encoder_variants.summary_rows(reports["encoder_variants"])]
    lines += [
        "",
        "Encoder ceiling at fixed lengths (sentences/s, in-process ONNX Runtime, threads = cores):",
        "",
        "| variant | tokens | B=1 | B=8 | B=32 | B=64 |",
        "|---|---|---|---|---|---|",
    ]
    for variant in sorted({r["variant"] for r in ceiling["rows"]}):
        for length in sorted({r["seq_len"] for r in ceiling["rows"]}):
            cells = {
                r["batch_size"]: r["sentences_per_s"]
                for r in ceiling["rows"]
                if r["variant"] == variant and r["seq_len"] == length
            }
            lines.append(
                f"| {variant} | {length} | " + " | ".join(_fmt(cells.get(b), 0) for b in (1, 8, 32, 64)) + " |"
            )
    if reports.get("tuning"):
        tuned = reports["tuning"]
        lines += [
            "",
            f"Tuning ({tuned['variant']}, {tuned['texts']} texts, saturated texts/s, one change at a time):",
            "",
            "| configuration | texts/s | relative to shipped | server CPU per text, relative |",
            "|---|---|---|---|",
        ]
        for row in tuned["rows"]:
            lines.append(
                f"| {row['candidate']} | {row['throughput_per_s']:.0f} | {row['relative_to_shipped']} | "
                f"{row['cpu_efficiency_relative_to_shipped']} |"
            )
    lines += ["", "Reports: `bench/results/*.json` and `*.png`."]
    return "\n".join(lines) + "\n"


def update_readme(summary: str, readme: Path = README) -> bool:
    text = readme.read_text(encoding="utf-8")
    if START_MARKER not in text or END_MARKER not in text:
        log.warning("README has no %s ... %s markers; not updated", START_MARKER, END_MARKER)
        return False
    head, rest = text.split(START_MARKER, 1)
    _, tail = rest.split(END_MARKER, 1)
    readme.write_text(f"{head}{START_MARKER}\n{summary}{END_MARKER}{tail}", encoding="utf-8")
    return True


def run_peer(settings: dict) -> dict:
    """infinity-emb on the texts of ``bench.end_to_end`` (needs ``make bench-env``), one run per text set."""
    sets = end_to_end.text_sets(settings["mix_size"])
    return {
        name: peer_infinity.run(
            duration_s=settings["peer_s"],
            concurrency=32,
            texts=sets[name],
            warmup_s=min(3.0, settings["peer_s"]),
            log_path=RESULTS_DIR / f"peer_infinity_{name}.server.log",
        )
        for name in settings["peer_texts"]
    }


def run(quick: bool = False, with_tuning: bool = True, readme: Path | None = README) -> dict:
    settings = QUICK if quick else FULL
    variant = common.settings().encoder_variant  # the one `make serve` installs
    started = time.perf_counter()
    reports: dict = {}
    steps = 10 if with_tuning else 9

    def step(number: int, what: str) -> None:
        log.info("%d/%d %s (%.1f min so far)", number, steps, what, (time.perf_counter() - started) / 60)

    step(1, "encoder ceiling at fixed lengths")
    reports["ceiling"] = encoder_ceiling.run(settings["ceiling_s"])
    write_report("encoder_ceiling", reports["ceiling"])
    encoder_ceiling.plot(reports["ceiling"])
    step(2, "end to end against the ceiling: texts of real length and short texts, latency under load")
    reports["end_to_end"] = end_to_end.run(
        settings["e2e_s"],
        settings["e2e_variants"] or (variant,),
        mix_size=settings["mix_size"],
        rounds=settings["e2e_rounds"],
    )
    write_report("end_to_end", reports["end_to_end"])
    end_to_end.plot(reports["end_to_end"])
    step(3, "peer: infinity-emb on the same texts")
    reports["peer"] = run_peer(settings)
    for name, peer in reports["peer"].items():
        write_report(f"peer_infinity_{name}", peer)
        peer_infinity.plot({"machine": machine_info(), **peer}, RESULTS_DIR / f"peer_infinity_{name}.png")
    step(4, "onboarding files of real length")
    reports["onboarding"] = onboarding.run(settings["onboarding_sizes"], settings["onboarding_repeats"], variant)
    write_report("onboarding", reports["onboarding"])
    onboarding.plot(reports["onboarding"])
    if settings["variant_rounds"]:
        step(5, "encoder variants: fidelity, hold-out accuracy, batch independence, speed")
        reports["encoder_variants"] = encoder_variants.run(settings["variant_rounds"])
        write_report("encoder_variants", reports["encoder_variants"])
        encoder_variants.plot(reports["encoder_variants"])
    step(6, "one model per tenant")
    reports["tenants"] = model_per_tenant.run(settings["tenants"], settings["tenant_s"], variant)
    write_report("model_per_tenant", reports["tenants"])
    model_per_tenant.plot(reports["tenants"])
    step(7, "density")
    reports["density"] = density.run(settings["density_heads"], settings["density_examples"], variant)
    write_report("density", reports["density"])
    density.plot(reports["density"])
    step(8, f"dense heads: {settings['dense'].heads} heads")
    reports["dense_heads"] = dense_heads.run(dataclasses.replace(settings["dense"], variant=variant))
    write_report("dense_heads", reports["dense_heads"])
    dense_heads.plot(reports["dense_heads"])
    step(9, "replicas behind the router: overhead, throughput, convergence")
    reports["cluster"] = {"machine": machine_info(), **cluster.run(settings["cluster"])}
    write_report("cluster", reports["cluster"])
    cluster.plot(reports["cluster"])
    if with_tuning:
        step(10, "tuning")
        reports["tuning"] = tuning.run(settings["tuning_s"], variant, candidates=settings["tuning_candidates"])
        write_report("tuning", reports["tuning"])
    summary = summary_markdown(reports, time.perf_counter() - started)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "summary.md").write_text(summary, encoding="utf-8")
    (RESULTS_DIR / "summary.json").write_text(json.dumps(reports, indent=2) + "\n")
    if readme is not None:
        update_readme(summary, readme)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run of every benchmark")
    parser.add_argument("--no-tuning", action="store_true")
    parser.add_argument("--no-readme", action="store_true", help="do not write the summary into docs/benchmarks.md")
    args = parser.parse_args(argv)
    setup_logging()
    run(args.quick, with_tuning=not args.no_tuning, readme=None if args.no_readme else README)
    print((RESULTS_DIR / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
