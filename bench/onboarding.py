"""Benchmark: a labelled file of real length becomes a servable head (issue 9 §3).

Training files come from the demo data's chatterbot-corpus topic files (each utterance labelled
with its topic, 18 topics; median 10 tokens, a long tail up to the truncation length): 1,000 lines
drawn without replacement and 10,000 drawn with replacement (the files hold 1,230 distinct lines;
every line is embedded each time it appears: nothing is cached). Against a server started for
the run, each file is onboarded ``--repeats`` times as a new version of one head, with
``Onboarding.onboard`` (what ``headroom onboard`` calls) and once with the ``headroom onboard``
command itself (its wall time includes starting Python). Reported per size: total seconds and
the split (reading, embedding, fitting, checking, writing, loading, first answer), medians over
the repeats. Targets: 1,000 examples within 5 s, 10,000 within 30 s, first answer verified.

    python -m bench.onboarding [--sizes 1000 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from headroom import config
from headroom.client.inference import HeadroomClient
from headroom.client.onboarding import Onboarding
from headroom.export.demo import CORPUS_TENANTS, corpus_examples
from headroom.server.launcher import TritonServer

from bench.common import (
    RESULTS_DIR,
    free_address,
    length_distribution,
    log,
    pyplot,
    save_figure,
    setup_logging,
    system_repository,
    write_report,
)

SIZES = (1_000, 10_000)
TARGETS_S = {1_000: 5.0, 10_000: 30.0}
STEPS = ("reading", "embedding", "fitting", "checking", "writing", "loading", "first_answer")


def demo_examples() -> list[dict[str, str]]:
    """Every chatterbot-corpus utterance of the demo tenants, labelled with its topic."""
    return corpus_examples(tuple(topic for topics in CORPUS_TENANTS.values() for topic in topics))


def training_file(destination: Path, size: int, seed: int = 0) -> Path:
    """``size`` labelled demo lines: two of every topic, the rest
    drawn without replacement when there are enough, else with."""
    examples = demo_examples()
    rng = random.Random(seed)
    rng.shuffle(examples)
    topics = sorted({e["label"] for e in examples})
    if size < 2 * len(topics):
        raise ValueError(f"a training file needs at least {2 * len(topics)} lines (two per topic), not {size}")
    chosen = [e for topic in topics for e in [x for x in examples if x["label"] == topic][:2]]
    rest = [e for e in examples if e not in chosen]
    left = size - len(chosen)
    chosen += rng.sample(rest, left) if left <= len(rest) else rng.choices(examples, k=left)
    rng.shuffle(chosen)
    destination.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in chosen), encoding="utf-8")
    return destination


def _cli_onboard(server: TritonServer, repository: Path, name: str, data: Path) -> tuple[float, str]:
    env = {**os.environ, "HEADROOM_MODEL_REPOSITORY": str(repository)}
    command = [
        sys.executable,
        "-m",
        "headroom.client.cli",
        "onboard",
        "--url",
        server.address.grpc_url,
        name,
        str(data),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=config.PROJECT_ROOT, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"headroom onboard failed: {done.stderr[-2000:]}")
    return elapsed, done.stdout.strip().splitlines()[-1]


def run(sizes=SIZES, repeats: int = 3, variant: str = config.DEFAULT_ENCODER_VARIANT) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="headroom-bench-") as tmp:
        workdir = Path(tmp)
        repository = system_repository(workdir / "repo", variant)
        state_dir = config.state_dir_for(repository)
        with TritonServer(free_address(), repository, log_file=RESULTS_DIR / "onboarding.log") as server:
            with HeadroomClient(server.address.grpc_url) as client:
                onboarding = Onboarding(client, repository, state_dir)
                onboarding.onboard("warmup", training_file(workdir / "warmup.jsonl", 100))  # first-use costs
                for size in sizes:
                    data = training_file(workdir / f"mixed{size}.jsonl", size)
                    runs = []
                    for repeat in range(repeats):
                        result = onboarding.onboard(f"mixed{size}", data)
                        runs.append({"total": result.seconds_total, **result.timings, "version": result.version})
                        log.info(
                            "%d examples, run %d: %.2f s (%s)",
                            size,
                            repeat + 1,
                            result.seconds_total,
                            ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()),
                        )
                    cli_s, cli_line = _cli_onboard(server, repository, f"cli{size}", data)
                    log.info("%d examples, headroom onboard: %.2f s: %s", size, cli_s, cli_line)
                    median = {key: round(statistics.median(r[key] for r in runs), 3) for key in ("total", *STEPS)}
                    texts = [json.loads(line)["text"] for line in data.read_text(encoding="utf-8").splitlines()]
                    rows.append(
                        {
                            "examples": size,
                            "tokens": length_distribution(texts),
                            "classes": result.metrics["classes"],
                            "holdout_accuracy": result.metrics["holdout_accuracy"],
                            "median_s": median,
                            "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
                            "cli_s": round(cli_s, 2),
                            "cli_output": cli_line,
                            "target_s": TARGETS_S.get(size),
                            "meets_target": TARGETS_S.get(size) is None or median["total"] <= TARGETS_S[size],
                        }
                    )
    return {"variant": variant, "repeats": repeats, "rows": rows}


def plot(report: dict) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.5))
    labels = [f"{row['examples']:,} examples" for row in report["rows"]]
    left = [0.0] * len(labels)
    for step in STEPS:
        values = [row["median_s"][step] for row in report["rows"]]
        axes.barh(labels, values, left=left, label=step.replace("_", " "))
        left = [a + b for a, b in zip(left, values, strict=True)]
    for index, row in enumerate(report["rows"]):
        if row["target_s"]:
            axes.plot([row["target_s"]] * 2, [index - 0.4, index + 0.4], color="black", linestyle="--")
    axes.set_xlabel("seconds (median); dashed: target")
    axes.set_title(f"Onboarding through the API ({report['variant']} encoder)")
    axes.legend(fontsize=7, ncol=4, loc="lower right")
    save_figure(figure, "onboarding")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.sizes, args.repeats)
    write_report("onboarding", report)
    plot(report)
    for row in report["rows"]:
        split = ", ".join(f"{step} {row['median_s'][step]:.2f}" for step in STEPS)
        print(
            f"{row['examples']:,} examples: {row['median_s']['total']:.2f} s (target {row['target_s']} s; {split}); "
            f"headroom onboard {row['cli_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
