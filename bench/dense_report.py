"""``bench.dense_heads``' report: the figure (memory against heads, throughput) and the summary rows."""

from __future__ import annotations

from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    pyplot,
    save_figure,
)
from bench.dense_servers import (
    MIB,
    allocator_text,
)


def plot(report: dict, results_dir: Path = RESULTS_DIR) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    heads, memory = report["heads"], report["memory"]
    left.plot(
        [0, heads],
        [memory["zero_heads_pss_mib"], memory["registered_pss_mib"]],
        marker="o",
        label=f"headroom, registered at start-up ({memory['registered_kib_per_head']:.0f} KiB/head)",
    )
    left.plot(
        [0, report["all_resident"]["heads"]],
        [memory["zero_heads_pss_mib"], memory["all_resident_pss_mib"]],
        marker="^",
        label=f"headroom, every head resident ({memory['all_resident_kib_per_head']:.0f} KiB/head)",
    )
    if report.get("through_api"):
        left.plot(
            [0, heads],
            [memory["zero_heads_pss_mib"], report["through_api"]["pss_mib"]],
            marker="s",
            label=f"headroom, loaded through the API ({memory['through_api_kib_per_head']:.0f} KiB/head)",
        )
    if report.get("throughput"):
        _plot_baseline_memory(left, report["throughput"]["per_head_models_memory"], heads)
    left.set_yscale("log")
    left.set_xlabel("heads")
    left.set_ylabel("server PSS (MiB, log scale)")
    left.set_title(f"Memory against heads ({allocator_text(report['allocator'])})")
    left.legend(fontsize=7)
    if report.get("throughput"):
        _plot_throughput(right, report["throughput"])
    else:
        right.set_axis_off()
        right.text(0.5, 0.5, "throughput not measured (--skip-throughput)", ha="center", va="center")
    save_figure(figure, "dense_heads", results_dir)


def _plot_baseline_memory(left, baseline: dict, heads: int) -> None:
    left.plot(
        [0, baseline["heads"]],
        [baseline["pss_without_heads_mib"], baseline["pss_mib"]],
        marker="x",
        color="grey",
        label=f"issue 2, one model per head (measured, {baseline['mib_per_head']:.0f} MiB/head)",
    )
    left.plot(
        [baseline["heads"], heads],
        [baseline["pss_mib"], baseline["pss_without_heads_mib"] + baseline["mib_per_head"] * heads],
        linestyle="--",
        color="grey",
        label="issue 2, extrapolated",
    )


def _plot_throughput(right, throughput_report: dict) -> None:
    rates = throughput_report["requests_per_s"]
    labels = list(rates)
    colors = ["tab:blue" if label.startswith("headroom") else "grey" for label in labels]
    spread = [[], []]  # distance of the slowest and fastest round from the median
    for label in labels:
        rounds = [r["throughput_per_s"] for r in throughput_report["runs"] if f"{r['design']}, {r['traffic']}" == label]
        spread[0].append(rates[label] - min(rounds))
        spread[1].append(max(rounds) - rates[label])
    right.barh(range(len(labels)), [rates[label] for label in labels], xerr=spread, capsize=3, color=colors)
    right.set_yticks(range(len(labels)), [label.replace(", ", "\n") for label in labels], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("requests / s (≤16-token texts)")
    right.set_title(f"Throughput, same texts: median and range of {throughput_report['rounds']} round(s)")


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(figure, measured, target) rows for ``bench.run_all``'s summary table."""
    n = report["heads"]
    memory, startup = report["memory"], report["startup"]
    loads, onboarding, off = report["api_loads"], report["onboarding"], report["offboarding"]
    rates = report["throughput"]
    resident = report["all_resident"]
    triton = memory.get("tritonserver_mib", {})
    rows = [
        ("allocator of tritonserver and its stubs", allocator_text(report["allocator"]), ""),
        (
            f"{n} heads registered at start-up: bulk load / all READY (repository index)",
            f"{startup['bulk_start_s']:.1f} s / {startup['ready_heads']} READY",
            "",
        ),
        (
            f"server memory per registered head, {n} heads (PSS over the zero-head server)",
            f"{memory['registered_kib_per_head']:.1f} KiB ({memory['registered_delta_mib']:.0f} MiB in all)",
            "≤ 100 KiB",
        ),
        (
            f"... with every head resident in the executor ({resident['heads']} heads)",
            f"{memory['all_resident_kib_per_head']:.1f} KiB ({memory['all_resident_delta_mib']:.0f} MiB in all)",
            "≤ 64 KiB",
        ),
        (
            "tritonserver alone (no stubs): zero heads / registered / every head resident",
            f"{triton.get('zero_heads')} / {triton.get('registered')} / {triton.get('all_resident')} MiB",
            "",
        ),
        (
            "executor: stacked arrays allocated / weights they hold",
            f"{(resident.get('head_bank_bytes') or 0) / MIB:.1f} / "
            f"{(resident.get('stacked_head_bytes') or 0) / MIB:.1f} MiB ({resident.get('bank_to_weights')}×)",
            "≤ 1.25×",
        ),
        (
            f"load_model of one head with {loads['loaded_before']} loaded, p50 / p95",
            f"{loads['load_ms']['p50']:.0f} / {loads['load_ms']['p95']:.0f} ms",
            "",
        ),
        (
            f"onboarding with {onboarding['loaded_before']} loaded: load-to-first-answer p50 / p95",
            f"{onboarding['load_to_first_answer_ms']['p50']:.0f} / {onboarding['load_to_first_answer_ms']['p95']:.0f}"
            f" ms (whole onboarding p50 {onboarding['onboard_ms']['p50']:.0f} ms)",
            "",
        ),
        (
            "offboarding: resident weights freed / request right after",
            f"{off['freed_bytes']:.0f} of {off['head_resident_bytes']} B after {off['freed_after_s']} s / "
            f"{off['request_after']['status']} in {off['request_after']['ms']:.0f} ms",
            "freed; NOT_FOUND at once",
        ),
    ]
    if rates:
        rows += [
            (
                f"throughput, Zipf over {rates['throughput_heads']} heads / one head",
                f"{rates['many_to_one']['median_of_rounds']:.2f} (median of {rates['rounds']} rounds; "
                f"{rates['many_to_one']['by_server_cpu_median']:.2f} by server CPU per request)",
                "≥ 0.9",
            ),
            (
                f"throughput, headroom / issue 2's per-head models ({rates['baseline_heads']} Zipf heads)",
                f"{rates['headroom_to_per_head_models']['median_of_rounds']:.2f}× (median of {rates['rounds']} rounds; "
                f"{rates['headroom_to_per_head_models']['by_server_cpu_median']:.2f}× by server CPU per request)",
                "",
            ),
        ]
    if report.get("through_api"):
        api = report["through_api"]
        rows.insert(
            2,
            (
                f"{n} heads through the API one at a time: bulk / per load at the end p50",
                f"{api['bulk_s'] / 60:.1f} min / {api['last_tenth_load_ms']['p50']:.0f} ms",
                "",
            ),
        )
    return rows
