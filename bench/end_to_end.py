"""Benchmarks 2 and 5: end-to-end throughput of the served system against the encoder ceiling,
on text of real length and on short texts, and latency under load.

Two text sets: ``mix``, texts of real, long-tailed length (``client.traffic.real_text_mix``:
utterances, prose sentences and paragraphs; its token distribution is in the report), and
``short``, demo texts of 10-16 tokens (the figures of earlier issues). For each encoder variant,
one server with the demo heads, and in this order:

1. before the server starts, the encoder in-process on the same texts in arrival order and
   with ideal length-sorted batches (``bench.encoder_ceiling.text_ceiling``): what sorting is
   worth;
2. ``--rounds`` rounds, each: the ceiling (the better sorted plan, in-process beside the idle
   server), then ``pipeline`` at saturation over gRPC with 1 text per request (``concurrency``
   in flight, Zipf tenants), and on the mix also with 32 texts per request (each row its own
   draw of text and tenant, as an unsorted client sends them) and ``embed`` with 32 texts per
   request. A ratio is the median over rounds of the mode's texts/s over its round's ceiling:
   this shared machine drifts by tens of percent within minutes;
3. latency at 25/50/75 % of the median 1-text saturated rate (open-loop Poisson): p50/p95/p99.

    python -m bench.end_to_end [--seconds 15] [--variants fp32 int8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from headroom import config
from headroom.client.traffic import MIX_SIZE, real_text_mix
from headroom.server.launcher import TritonServer

from bench import encoder_ceiling
from bench.common import (
    RESULTS_DIR,
    demo_head_dirs,
    embed_traffic,
    free_address,
    length_distribution,
    log,
    pipeline_traffic,
    pyplot,
    run_load,
    save_figure,
    setup_logging,
    system_repository,
    texts_of_token_length,
    write_report,
)

LOAD_FRACTIONS = (0.25, 0.5, 0.75)
#: Requests in flight at saturation with 1 text per request.
SATURATING_CONCURRENCY = 256
#: Texts per request of the batched modes, and how many such requests are in flight.
BATCH_TEXTS = 32
BATCH_CONCURRENCY = 16
TEXT_SETS = ("mix", "short")


def text_sets(mix_size: int = MIX_SIZE) -> dict[str, list[str]]:
    return {"mix": real_text_mix(size=mix_size), "short": texts_of_token_length(16, 10)}


def served_repository(workdir: Path, variant: str) -> tuple[Path, list[str]]:
    repository = system_repository(workdir / f"repo_{variant}", variant)
    heads = [p.name[len(config.HEAD_MODEL_PREFIX) :] for p in demo_head_dirs(repository, workdir / "state")]
    return repository, heads


def _saturate(server: TritonServer, traffic, texts_per_request: int, concurrency: int, seconds: float) -> dict:
    run_load(server.address.grpc_url, traffic, duration_s=min(3.0, seconds), concurrency=concurrency, warmup_s=0.5)
    result = run_load(
        server.address.grpc_url, traffic, duration_s=seconds, concurrency=concurrency, server_pid=server.process.pid
    )
    summary = result.summary()
    summary["texts_per_request"] = texts_per_request
    summary["concurrency"] = concurrency
    summary["texts_per_s"] = round(result.throughput * texts_per_request, 1)
    return summary


def _latency(server: TritonServer, traffic, saturated_per_s: float, seconds: float, concurrency: int) -> list[dict]:
    rows = []
    for fraction in LOAD_FRACTIONS:
        rate = saturated_per_s * fraction
        result = run_load(
            server.address.grpc_url, traffic, duration_s=seconds, concurrency=4 * concurrency, rate_per_s=rate
        )
        rows.append({"load_fraction": fraction, "target_per_s": round(rate, 1), **result.summary()})
        log.info(
            "  at %.0f%% (%.0f/s): p50 %.1f ms p95 %.1f ms p99 %.1f ms",
            fraction * 100,
            rate,
            result.percentile(50) or 0,
            result.percentile(95) or 0,
            result.percentile(99) or 0,
        )
    return rows


def measure_variant(
    variant: str, sets: dict[str, list[str]], seconds: float, concurrency: int, workdir: Path, rounds: int
) -> dict:
    """Every mode of every text set, ``rounds`` times, each round after its own ceiling measurement."""
    repository, heads = served_repository(workdir, variant)
    ceiling_s = min(seconds, 3.0)
    # Every plan once (arrival order included) before the server starts: what sorting is worth.
    first = {name: encoder_ceiling.text_ceiling(variant, texts, ceiling_s, 1) for name, texts in sets.items()}
    results: dict[str, dict] = {}
    with TritonServer(free_address(), repository, log_file=RESULTS_DIR / f"end_to_end_{variant}.log") as server:
        for name, texts in sets.items():
            traffic = {"pipeline_1": (pipeline_traffic(heads, texts), 1, concurrency)}
            if name == "mix":
                traffic[f"pipeline_{BATCH_TEXTS}"] = (
                    pipeline_traffic(heads, texts, texts_per_request=BATCH_TEXTS),
                    BATCH_TEXTS,
                    BATCH_CONCURRENCY,
                )
                traffic[f"embed_{BATCH_TEXTS}"] = (embed_traffic(texts, BATCH_TEXTS), BATCH_TEXTS, BATCH_CONCURRENCY)
            ceilings: list[float] = []
            runs: dict[str, list[dict]] = {mode: [] for mode in traffic}
            for round_index in range(rounds):
                # Beside the idle server (its processes wait, using next to no CPU), right before
                # the modes it is compared with: this shared machine drifts by tens of percent.
                ceiling = encoder_ceiling.text_ceiling(variant, texts, ceiling_s, 1, encoder_ceiling.SORTED_PLANS)
                ceilings.append(ceiling["ceiling_per_s"])
                for mode, (generator, per_request, clients) in traffic.items():
                    runs[mode].append(_saturate(server, generator, per_request, clients, seconds))
                log.info(
                    "%s %s round %d: ceiling %.0f texts/s; %s",
                    variant,
                    name,
                    round_index + 1,
                    ceilings[-1],
                    ", ".join(f"{mode} {runs[mode][-1]['texts_per_s']:.0f}" for mode in traffic),
                )
            modes, ratios = {}, {}
            for mode, measured in runs.items():
                per_round = [m["texts_per_s"] / c if c else 0.0 for m, c in zip(measured, ceilings, strict=True)]
                middle = sorted(range(len(per_round)), key=per_round.__getitem__)[len(per_round) // 2]
                modes[mode] = {
                    **measured[middle],
                    "texts_per_s_by_round": [m["texts_per_s"] for m in measured],
                    "ratio_by_round": [round(r, 3) for r in per_round],
                }
                ratios[mode] = round(statistics.median(per_round), 3)
            saturated = statistics.median(m["throughput_per_s"] for m in runs["pipeline_1"])
            results[name] = {
                "modes": modes,
                "ratio_to_ceiling": ratios,
                "ceiling": {
                    "before": first[name],
                    "by_round": ceilings,
                    "ceiling_per_s": round(statistics.median(ceilings), 1),
                },
                "latency": _latency(server, traffic["pipeline_1"][0], saturated, seconds, concurrency),
            }
            log.info("%s %s: ratios to the ceiling (median of %d rounds) %s", variant, name, rounds, ratios)
    return {"heads": heads, "text_sets": results}


def run(
    seconds: float = 15.0,
    variants=config.ENCODER_VARIANTS,
    concurrency: int = SATURATING_CONCURRENCY,
    mix_size: int = MIX_SIZE,
    rounds: int = 3,
) -> dict:
    """``mix_size`` texts of the mix; every figure measured ``rounds`` times (a quick run: once)."""
    sets = text_sets(mix_size)
    results = {}
    with tempfile.TemporaryDirectory(prefix="headroom-bench-") as tmp:
        for variant in variants:
            results[variant] = measure_variant(variant, sets, seconds, concurrency, Path(tmp), rounds)
    return {
        "text_sets": {name: length_distribution(texts) for name, texts in sets.items()},
        "concurrency": concurrency,
        "batch_texts": BATCH_TEXTS,
        "batch_concurrency": BATCH_CONCURRENCY,
        "seconds": seconds,
        "rounds": rounds,
        "variants": results,
    }


def plot(report: dict) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    variants = list(report["variants"])
    bars = []
    for variant in variants:
        for name, data in report["variants"][variant]["text_sets"].items():
            bars.append((f"{variant}\n{name}", "ceiling", data["ceiling"]["ceiling_per_s"]))
            for mode, values in data["modes"].items():
                bars.append((f"{variant}\n{name}", mode, values["texts_per_s"]))
    groups = list(dict.fromkeys(group for group, _, _ in bars))
    kinds = list(dict.fromkeys(kind for _, kind, _ in bars))
    width = 0.8 / len(kinds)
    for position, kind in enumerate(kinds):
        xs = [groups.index(g) + (position - (len(kinds) - 1) / 2) * width for g, k, _ in bars if k == kind]
        left.bar(xs, [v for _, k, v in bars if k == kind], width=width, label=kind)
    left.set_xticks(range(len(groups)), groups, fontsize=8)
    left.set_ylabel("texts / s")
    left.set_yscale("log")
    left.legend(fontsize=7)
    left.set_title("Throughput: encoder ceiling and end to end")
    for variant in variants:
        rows = report["variants"][variant]["text_sets"]["mix"]["latency"]
        for q in ("p50_ms", "p99_ms"):
            right.plot([r["target_per_s"] for r in rows], [r[q] for r in rows], marker="o", label=f"{variant} {q[:3]}")
    right.set_xlabel("offered load on the mix (requests / s, 1 text each)")
    right.set_ylabel("latency (ms)")
    right.set_title("Latency under load, texts of real length")
    right.legend(fontsize=7)
    save_figure(figure, "end_to_end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per point (default %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=config.ENCODER_VARIANTS, default=list(config.ENCODER_VARIANTS))
    parser.add_argument("--concurrency", type=int, default=SATURATING_CONCURRENCY)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ceiling + every mode (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.seconds, args.variants, concurrency=args.concurrency, rounds=args.rounds)
    write_report("end_to_end", report)
    plot(report)
    for name, distribution in report["text_sets"].items():
        print(f"{name}: {distribution}")
    for variant, data in report["variants"].items():
        for name, values in data["text_sets"].items():
            ceiling = values["ceiling"]["ceiling_per_s"]
            print(f"{variant} {name}: ceiling {ceiling:.0f} texts/s; ratios {values['ratio_to_ceiling']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
