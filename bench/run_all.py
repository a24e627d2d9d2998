"""``make bench``: every benchmark in one run, then ``bench/results/summary.md`` and the README table.

Order: encoder ceiling (1) and the infinity-emb peer (6) first, end-to-end throughput with
latency under load (2, 5), one model per tenant (3), density and onboarding (4), dense heads (7:
10,000 heads, issue 4), tuning. Ratios are taken between figures of this same run. The summary
table is also written into README.md between the ``bench:summary`` markers, so the README always
shows the latest run.

    python -m bench.run_all [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import dense_heads, density, encoder_ceiling, end_to_end, model_per_tenant, peer_infinity, tuning
from bench.common import RESULTS_DIR, log, machine_info, setup_logging, texts_of_token_length, write_report
from headroom import config

README = config.PROJECT_ROOT / "README.md"
START_MARKER = "<!-- bench:summary:start -->"
END_MARKER = "<!-- bench:summary:end -->"

FULL = {
    "ceiling_s": 3.0,
    "peer_s": 15.0,
    "e2e_s": 15.0,
    "tenants": (10, 20, 40),
    "tenant_s": 15.0,
    "density_heads": 100,
    "density_examples": 120,
    "dense": dense_heads.Settings(),
    "tuning_s": 10.0,
}
QUICK = {
    "ceiling_s": 0.5,
    "peer_s": 3.0,
    "e2e_s": 3.0,
    "tenants": (2, 4),
    "tenant_s": 3.0,
    "density_heads": 3,
    "density_examples": 80,
    "dense": dense_heads.QUICK,
    "tuning_s": 2.0,
}


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_markdown(reports: dict, elapsed_s: float) -> str:
    machine = machine_info()
    ceiling, e2e, tenants, dense = reports["ceiling"], reports["end_to_end"], reports["tenants"], reports["density"]
    peer = reports.get("peer")
    int8 = e2e["variants"].get("int8")
    fp32 = e2e["variants"].get("fp32")
    last = tenants["comparison"][-1]
    lines = [
        f"Latest `make bench`: {machine['date']}, {machine['cores']} cores ({machine['cpu']}), "
        f"Triton {machine['tritonserver']}, ONNX Runtime {machine['versions']['onnxruntime']}; "
        f"{elapsed_s / 60:.1f} min. Ratios are taken within this run.",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
    ]
    if int8:
        lines.append(
            f"| share of the cores used by the load generator itself at saturation (int8) | "
            f"{_fmt(int8['saturated'].get('client_cpu_share'))} | |"
        )
        lines.append(
            f"| end-to-end / encoder ceiling, int8, ≤16 tokens | {int8['ratio_to_ceiling']:.2f} "
            f"({int8['saturated']['throughput_per_s']:.0f} vs {int8['encoder_ceiling_per_s']:.0f} sentences/s)"
            " | ≥ 0.7 |"
        )
    if fp32:
        lines.append(
            f"| end-to-end / encoder ceiling, fp32, ≤16 tokens | {fp32['ratio_to_ceiling']:.2f} "
            f"({fp32['saturated']['throughput_per_s']:.0f} vs {fp32['encoder_ceiling_per_s']:.0f} sentences/s)"
            " | |"
        )
    baseline_row = tenants["one_model_per_tenant"][-1]
    ours_row = tenants["headroom"][-1]
    memory_ratio = last["memory_per_tenant_ratio"]
    lines += [
        f"| memory per additional tenant, one model per tenant / headroom ({last['tenants']} tenants, "
        f"{tenants['variant']}) | {'headroom below PSS noise' if memory_ratio is None else f'{memory_ratio:.0f}×'} "
        f"({baseline_row['mib_per_tenant']:.0f} MiB vs {ours_row['kib_per_tenant']:.0f} KiB) | ≥ 4× |",
        f"| throughput, headroom / one model per tenant ({last['tenants']} Zipf tenants) | "
        f"{last['throughput_ratio']}× ({ours_row['throughput_per_s']:.0f} vs {baseline_row['throughput_per_s']:.0f}"
        " requests/s) | ≥ 3× |",
        f"| marginal memory per onboarded head ({dense['heads']} heads) | "
        f"{_fmt(dense.get('marginal_kib_per_head'), 1)} KiB | |",
        f"| onboarding p50, with / without training ({dense['training_examples']} examples) | "
        f"{dense['onboard_total_s']['p50']:.2f} s / {dense['onboard_without_training_s']['p50']:.2f} s | seconds |",
        f"| cold load-to-first-answer p50 / p95 | {dense['load_to_first_answer_s']['p50']:.2f} s / "
        f"{dense['load_to_first_answer_s']['p95']:.2f} s | |",
    ]
    if reports.get("dense_heads"):
        lines += [
            f"| {figure} | {measured} | {target} |"
            for figure, measured, target in dense_heads.summary_rows(reports["dense_heads"])
        ]
    if peer:
        fp32_ceiling = ceiling["best"].get("fp32_T16")
        for mode in peer["modes"]:
            lines.append(
                f"| infinity-emb (torch, fp32) sentences/s, {mode['texts_per_request']} text(s) per request, "
                f"vs our fp32 encoder ceiling | {mode['sentences_per_s']:.0f} vs {_fmt(fp32_ceiling, 0)} "
                f"(min cosine to sentence-transformers {peer['parity']['min_cosine']:.4f}) | |"
            )
    lines += [
        "",
        "Latency under load (open-loop Poisson arrivals, same server as the throughput run):",
        "",
        "| variant | load | offered/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for variant, data in e2e["variants"].items():
        for row in data["latency"]:
            lines.append(
                f"| {variant} | {row['load_fraction']:.0%} | {row['target_per_s']:.0f} | {_fmt(row['p50_ms'], 1)}"
                f" | {_fmt(row['p95_ms'], 1)} | {_fmt(row['p99_ms'], 1)} |"
            )
    lines += [
        "",
        "Encoder ceiling (sentences/s, in-process ONNX Runtime, threads = cores):",
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
        lines += [
            "",
            f"Tuning ({reports['tuning']['variant']}, saturated requests/s, one change at a time):",
            "",
            "| configuration | requests/s | relative to shipped |",
            "|---|---|---|",
        ]
        for row in reports["tuning"]["rows"]:
            lines.append(f"| {row['candidate']} | {row['throughput_per_s']:.0f} | {row['relative_to_shipped']} |")
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
    """infinity-emb on the same texts as the encoder ceiling (needs ``make bench-env``)."""
    return peer_infinity.run(
        duration_s=settings["peer_s"],
        concurrency=32,
        texts=texts_of_token_length(16, 10),
        warmup_s=min(3.0, settings["peer_s"]),
        log_path=RESULTS_DIR / "peer_infinity.server.log",
    )


def run(quick: bool = False, with_tuning: bool = True, readme: Path | None = README) -> dict:
    settings = QUICK if quick else FULL
    started = time.perf_counter()
    reports: dict = {}
    log.info("1/7 encoder ceiling")
    reports["ceiling"] = encoder_ceiling.run(settings["ceiling_s"])
    write_report("encoder_ceiling", reports["ceiling"])
    encoder_ceiling.plot(reports["ceiling"])
    log.info("2/7 peer: infinity-emb")
    reports["peer"] = run_peer(settings)
    write_report("peer_infinity", reports["peer"])
    peer_infinity.plot({"machine": machine_info(), **reports["peer"]}, RESULTS_DIR / "peer_infinity.png")
    log.info("3/7 end-to-end throughput and latency under load")
    reports["end_to_end"] = end_to_end.run(settings["e2e_s"], ceiling=reports["ceiling"])
    write_report("end_to_end", reports["end_to_end"])
    end_to_end.plot(reports["end_to_end"])
    log.info("4/7 one model per tenant")
    reports["tenants"] = model_per_tenant.run(settings["tenants"], settings["tenant_s"])
    write_report("model_per_tenant", reports["tenants"])
    model_per_tenant.plot(reports["tenants"])
    log.info("5/7 density and onboarding")
    reports["density"] = density.run(settings["density_heads"], settings["density_examples"])
    write_report("density", reports["density"])
    density.plot(reports["density"])
    log.info("6/7 dense heads: %d heads", settings["dense"].heads)
    reports["dense_heads"] = dense_heads.run(settings["dense"])
    write_report("dense_heads", reports["dense_heads"])
    dense_heads.plot(reports["dense_heads"])
    if with_tuning:
        log.info("7/7 tuning")
        reports["tuning"] = tuning.run(settings["tuning_s"])
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
    parser.add_argument("--no-readme", action="store_true", help="do not write the summary table into README.md")
    args = parser.parse_args(argv)
    setup_logging()
    run(args.quick, with_tuning=not args.no_tuning, readme=None if args.no_readme else README)
    print((RESULTS_DIR / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
