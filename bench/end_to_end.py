"""Benchmarks 2 and 5: end-to-end throughput through ``pipeline``, and latency under load.

For each encoder variant: a server with the demo heads (built for that encoder), Zipf traffic
over the heads with texts of at most 16 tokens, sent over gRPC with enough requests in flight to
saturate. The ratio to the in-process encoder ceiling (``bench.encoder_ceiling``, measured in the
same run on the same texts) says how much of the hardware the served system delivers. Then, on
the same server, open-loop (Poisson) traffic at 25/50/75 % of the saturated rate gives
p50/p95/p99 latencies.

    python -m bench.end_to_end [--seconds 15] [--variants fp32 int8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import encoder_ceiling
from bench.common import (
    RESULTS_DIR,
    demo_head_dirs,
    free_address,
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
from headroom import config
from server.triton import TritonServer

LOAD_FRACTIONS = (0.25, 0.5, 0.75)
SATURATING_CONCURRENCY = 128


def served_repository(workdir: Path, variant: str) -> tuple[Path, list[str]]:
    repository = system_repository(workdir / f"repo_{variant}", variant)
    heads = [p.name[len(config.HEAD_MODEL_PREFIX) :] for p in demo_head_dirs(repository, workdir / "state")]
    return repository, heads


def measure_variant(variant: str, texts: list[str], seconds: float, concurrency: int, workdir: Path) -> dict:
    repository, heads = served_repository(workdir, variant)
    with TritonServer(free_address(), repository, log_file=RESULTS_DIR / f"end_to_end_{variant}.log") as server:
        traffic = pipeline_traffic(heads, texts)
        run_load(server.address.grpc_url, traffic, duration_s=2.0, concurrency=concurrency, warmup_s=0.5)
        saturated = run_load(server.address.grpc_url, traffic, duration_s=seconds, concurrency=concurrency)
        log.info("%s: saturated %.0f requests/s (%d errors)", variant, saturated.throughput, saturated.errors)
        latency = []
        for fraction in LOAD_FRACTIONS:
            rate = saturated.throughput * fraction
            result = run_load(
                server.address.grpc_url, traffic, duration_s=seconds, concurrency=4 * concurrency, rate_per_s=rate
            )
            latency.append({"load_fraction": fraction, "target_per_s": round(rate, 1), **result.summary()})
            log.info(
                "%s at %.0f%%: p50 %.1f ms p95 %.1f ms p99 %.1f ms",
                variant,
                fraction * 100,
                result.percentile(50),
                result.percentile(95),
                result.percentile(99),
            )
    return {"heads": heads, "saturated": saturated.summary(), "latency": latency}


def run(
    seconds: float = 15.0,
    variants=config.ENCODER_VARIANTS,
    ceiling: dict | None = None,
    concurrency: int = SATURATING_CONCURRENCY,
) -> dict:
    texts = texts_of_token_length(16, 10)
    if ceiling is None:
        ceiling = encoder_ceiling.run(seconds=min(seconds, 3.0), variants=variants, batch_sizes=(32, 64), lengths=(16,))
    results = {}
    with tempfile.TemporaryDirectory(prefix="headroom-bench-") as tmp:
        for variant in variants:
            measured = measure_variant(variant, texts, seconds, concurrency, Path(tmp))
            ceiling_rate = ceiling["best"][f"{variant}_T16"]
            measured["encoder_ceiling_per_s"] = ceiling_rate
            measured["ratio_to_ceiling"] = round(measured["saturated"]["throughput_per_s"] / ceiling_rate, 3)
            results[variant] = measured
    return {"texts": len(texts), "max_tokens": 16, "concurrency": concurrency, "seconds": seconds, "variants": results}


def plot(report: dict) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    variants = list(report["variants"])
    served = [report["variants"][v]["saturated"]["throughput_per_s"] for v in variants]
    ceiling = [report["variants"][v]["encoder_ceiling_per_s"] for v in variants]
    x = range(len(variants))
    left.bar([i - 0.2 for i in x], ceiling, width=0.4, label="encoder in-process")
    left.bar([i + 0.2 for i in x], served, width=0.4, label="pipeline end-to-end")
    left.set_xticks(list(x), variants)
    left.set_ylabel("sentences / s (16 tokens)")
    left.legend()
    left.set_title("Throughput")
    for variant in variants:
        rows = report["variants"][variant]["latency"]
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            right.plot([r["target_per_s"] for r in rows], [r[q] for r in rows], marker="o", label=f"{variant} {q[:3]}")
    right.set_xlabel("offered load (requests / s)")
    right.set_ylabel("latency (ms)")
    right.set_title("Latency under load")
    right.legend(fontsize=7)
    save_figure(figure, "end_to_end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per point (default %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=config.ENCODER_VARIANTS, default=list(config.ENCODER_VARIANTS))
    parser.add_argument("--concurrency", type=int, default=SATURATING_CONCURRENCY)
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.seconds, args.variants, concurrency=args.concurrency)
    write_report("end_to_end", report)
    plot(report)
    for variant, data in report["variants"].items():
        print(
            f"{variant}: {data['saturated']['throughput_per_s']:.0f} sentences/s end-to-end = "
            f"{data['ratio_to_ceiling']:.2f} x encoder ceiling ({data['encoder_ceiling_per_s']:.0f}/s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
