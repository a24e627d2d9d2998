"""Benchmark 4, density and onboarding: heads onboarded one by one through the API up to N.

Each onboarding trains a head through the server's ``embed`` model, writes it atomically, loads
it with ``load_model`` and verifies its first answer through ``pipeline``, exactly as ``headroom
onboard`` does. Reported: marginal server memory per head (slope of PSS against heads, from a
server that has already served), onboarding time with and without training (embedding and
fitting), and cold load-to-first-answer latency (write + load + verified first answer) as
p50/p95. Onboarding of larger files: ``bench.onboarding``. Thousands of heads:
``bench.dense_heads``. The plot puts memory against tenants next to the
one-model-per-tenant figures of ``bench.model_per_tenant`` when that report exists.

    python -m bench.density [--heads 100] [--examples 120]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from headroom import config
from headroom.client.inference import HeadroomClient
from headroom.client.onboarding import Onboarding
from headroom.client.traffic import UNKNOWN_HEAD
from headroom.server.launcher import TritonServer

from bench.common import (
    RESULTS_DIR,
    free_address,
    log,
    pipeline_traffic,
    pyplot,
    run_load,
    save_figure,
    settings,
    settle_pss,
    setup_logging,
    system_repository,
    texts_of_token_length,
    write_report,
)

MIB = 1024 * 1024
MEMORY_EVERY = 10


def training_file(destination: Path, examples: int) -> Path:
    """The first ``examples`` lines of the smart-home demo data (all ten intents)."""
    lines = (config.DEMO_DATA_DIR / "smart_home.jsonl").read_text(encoding="utf-8").splitlines()[:examples]
    destination.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return destination


def run(heads: int = 100, examples: int = 120, variant: str = config.DEFAULT_ENCODER_VARIANT) -> dict:
    rows, memory = [], []
    with tempfile.TemporaryDirectory(prefix="headroom-bench-") as tmp:
        workdir = Path(tmp)
        repository = system_repository(workdir / "repo", variant)
        data = training_file(workdir / "tenant.jsonl", examples)
        with TritonServer(free_address(), repository, log_file=RESULTS_DIR / "density.log") as server:
            pid = server.process.pid
            # Serve first (the shared models only): arena and allocator growth is not per head.
            warm_up = pipeline_traffic([UNKNOWN_HEAD], texts_of_token_length(64, 2), failure_share=1.0)
            run_load(server.address.grpc_url, warm_up, duration_s=3.0, concurrency=32, warmup_s=0.0)
            memory.append({"heads": 0, "pss_mib": round(settle_pss(pid) / MIB, 1)})
            with HeadroomClient(server.address.grpc_url) as client:
                onboarding = Onboarding(client, repository, workdir / "state")
                for index in range(1, heads + 1):
                    name = f"tenant{index:04d}"
                    result = onboarding.onboard(name, data)
                    steps = result.timings
                    rows.append(
                        {
                            "head": index,
                            "onboard_total_s": round(result.seconds_total, 3),
                            "training_s": round(result.seconds_training, 3),
                            "without_training_s": round(result.seconds_total - result.seconds_training, 3),
                            # Cold: write the files, load_model, the verified first answer.
                            "load_to_first_answer_s": round(
                                steps["writing"] + steps["loading"] + steps["first_answer"], 3
                            ),
                        }
                    )
                    if index % MEMORY_EVERY == 0 or index == heads:
                        memory.append({"heads": index, "pss_mib": round(settle_pss(pid, 1.0) / MIB, 1)})
                        log.info(
                            "%d heads onboarded: %.0f MiB, last onboarding %.2f s (%.2f s training)",
                            index,
                            memory[-1]["pss_mib"],
                            result.seconds_total,
                            result.seconds_training,
                        )
    x = np.array([m["heads"] for m in memory], dtype=float)
    y = np.array([m["pss_mib"] for m in memory], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else None

    def stats(key: str) -> dict:
        values = np.array([r[key] for r in rows])
        return {
            "p50": round(float(np.percentile(values, 50)), 3),
            "p95": round(float(np.percentile(values, 95)), 3),
            "mean": round(float(values.mean()), 3),
        }

    return {
        "variant": variant,
        "heads": heads,
        "training_examples": examples,
        "marginal_mib_per_head": None if slope is None else round(slope, 3),
        "marginal_kib_per_head": None if slope is None else round(slope * 1024, 1),
        "onboard_total_s": stats("onboard_total_s"),
        "onboard_without_training_s": stats("without_training_s"),
        "training_s": stats("training_s"),
        "load_to_first_answer_s": stats("load_to_first_answer_s"),
        "memory": memory,
        "onboardings": rows,
    }


def plot(report: dict, results_dir: Path = RESULTS_DIR) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(
        [m["heads"] for m in report["memory"]],
        [m["pss_mib"] for m in report["memory"]],
        marker="o",
        label="headroom (heads onboarded through the API)",
    )
    baseline_path = results_dir / "model_per_tenant.json"
    if baseline_path.exists():
        baseline = json.loads(baseline_path.read_text())["one_model_per_tenant"]
        first = baseline[0]
        points = [{"tenants": 0, "pss_mib": first["pss_mib"] - first["mib_per_tenant"] * first["tenants"]}]
        points += baseline
        axes.plot(
            [p["tenants"] for p in points],
            [p["pss_mib"] for p in points],
            marker="s",
            label="one model per tenant (measured)",
        )
        per_tenant = baseline[-1]["mib_per_tenant"]
        axes.plot(
            [0, report["heads"]],
            [points[0]["pss_mib"], points[0]["pss_mib"] + per_tenant * report["heads"]],
            linestyle="--",
            color="grey",
            label=f"one model per tenant, extrapolated ({per_tenant:.0f} MiB each)",
        )
    axes.set_xlabel("tenants")
    axes.set_ylabel("server PSS (MiB)")
    axes.set_title("Memory against tenants")
    axes.legend(fontsize=8)
    save_figure(figure, "density")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=100, help="heads to onboard (default %(default)s)")
    parser.add_argument("--examples", type=int, default=120, help="training examples per head (default %(default)s)")
    parser.add_argument("--variant", choices=config.ENCODER_VARIANTS, default=settings().encoder_variant)
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.heads, args.examples, args.variant)
    write_report("density", report)
    plot(report)
    print(
        f"{report['heads']} heads: {report['marginal_kib_per_head']} KiB per additional head; onboarding p50 "
        f"{report['onboard_total_s']['p50']} s ({report['onboard_without_training_s']['p50']} s without training); "
        f"load-to-first-answer p50 {report['load_to_first_answer_s']['p50']} s, "
        f"p95 {report['load_to_first_answer_s']['p95']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
