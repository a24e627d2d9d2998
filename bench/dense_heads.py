"""Benchmark 7, dense heads (issue 4): 10,000 heads on one server, control calls among them, and
throughput with 1,000 of them against a single head and against issue 2's per-head models.

Heads are synthetic (``bench.synthetic_heads``): random linear heads of 2-20 classes, written in
onboarding's layout with the served encoder's fingerprint, and every 1,000th a non-linear
Gemm-Relu-Gemm-Softmax head that the executor runs as its own ONNX Runtime session. Server
memory is the PSS of ``tritonserver`` plus its stub processes, read after the same warm-up
traffic (requests naming an unknown head: tokenizer, encoder, pipeline and executor all run).
The report names the allocator each server ran with (``allocator``: jemalloc or another
preloaded library, else glibc with its ``MALLOC_*`` settings), read from the running process.

1. zero heads: start-up time and PSS, the baseline of every memory figure;
2. N heads registered at start-up: bulk start time, every head READY in the repository index,
   PSS delta per head; the non-linear heads' and a few linear heads' answers against offline
   numpy; ``load_model`` of further heads one at a time (per-load time with N loaded);
   onboarding with N loaded (``Onboarding.onboard_model``: checks, atomic write,
   ``load_model``, a verified first answer through ``pipeline``); offboarding one
   (``Onboarding.offboard``): the executor's ``headroom_resident_head_bytes`` must drop by
   that head's weights, and a request right after must fail with NOT_FOUND "is not loaded";
   then every head answered once (all resident), PSS, and the executor's stacked arrays
   (``headroom_head_bank_bytes``) against the weights they hold (``headroom_stacked_head_bytes``);
3. ``--through-api``: a fresh server loads all N heads one ``load_model`` at a time (about
   20 minutes at 10,000 on this machine): bulk time, per-load time as N grows, PSS;
4. throughput: a server with T heads (1,000) and, beside it, issue 2's design
   (``bench.baselines.per_head_models``: one stub process per head) with B heads loaded one at a
   time; the same texts as Zipf traffic over T heads, over B heads and to one head, each design,
   alternated ``--rounds`` times so drift on this shared machine shows.

The steps live beside this module: ``bench.dense_servers`` (settings and server helpers),
``bench.dense_memory`` (steps 1-3), ``bench.dense_throughput`` (step 4) and ``bench.dense_report``
(figure and summary rows); this one runs them and writes the report.

    python -m bench.dense_heads [--heads 10000] [--throughput-heads 1000] [--baseline-heads 64]
                                [--through-api] [--skip-throughput] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from headroom import config
from headroom.export.encoder import read_encoder_info

from bench.common import (
    RESULTS_DIR,
    log,
    setup_logging,
    system_repository,
    texts_of_token_length,
    write_report,
)
from bench.common import (
    settings as common_settings,
)
from bench.dense_memory import dense_server, through_api, zero_heads
from bench.dense_report import plot, summary_rows
from bench.dense_servers import KIB, QUICK, Settings
from bench.dense_throughput import throughput
from bench.synthetic_heads import plan_heads, write_heads

#: What ``bench.run_all`` and others use from here (the steps live in ``bench.dense_*``).
__all__ = ["QUICK", "Settings", "main", "merge_throughput", "plot", "run", "run_throughput_only", "summary_rows"]


# --- the whole benchmark ---------------------------------------------------------------------
def run_throughput_only(settings: Settings | None = None) -> dict:
    """Step 4 alone (the ``throughput`` part of ``run``'s report), e.g. to measure it again."""
    import tempfile

    settings = settings or Settings()
    texts = texts_of_token_length(16, 10)
    with tempfile.TemporaryDirectory(prefix="headroom-dense-") as tmp:
        workdir = Path(tmp)
        repository = system_repository(workdir / "repo", settings.variant)
        fingerprint = read_encoder_info(repository)["fingerprint"]
        heads = plan_heads([f"d{i:05d}" for i in range(settings.heads)], settings.mlp_every)
        write_heads(repository, heads[: settings.throughput_heads], fingerprint)
        return throughput(repository, workdir, heads, fingerprint, texts, settings)


def merge_throughput(rates: dict, results_dir: Path = RESULTS_DIR) -> dict:
    """The last full report with its throughput part replaced by ``rates`` (measured separately)."""
    previous = json.loads((results_dir / "dense_heads.json").read_text())
    report = {key: value for key, value in previous.items() if key not in ("benchmark", "machine")}
    report["throughput"] = rates
    report["measured"] = {
        "throughput": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "everything else": previous.get("measured", {}).get("everything else", previous["machine"]["date"]),
    }
    return report


def run(settings: Settings | None = None) -> dict:
    import tempfile

    settings = settings or Settings()

    started = time.perf_counter()
    texts = texts_of_token_length(16, 10)
    with tempfile.TemporaryDirectory(prefix="headroom-dense-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        repository = system_repository(workdir / "repo", settings.variant)
        fingerprint = read_encoder_info(repository)["fingerprint"]

        log.info("1/4 zero heads")
        zero = zero_heads(repository, texts, settings)

        heads = plan_heads([f"d{i:05d}" for i in range(settings.heads)], settings.mlp_every)
        api_heads = plan_heads([f"api{i:03d}" for i in range(settings.api_loads)], seed=1)
        onboard = plan_heads([f"onb{i:03d}" for i in range(max(1, settings.onboardings))], seed=2)
        log.info("writing %d synthetic heads (%d non-linear)", len(heads), sum(h.kind == "mlp" for h in heads))
        write_started = time.perf_counter()
        write_heads(repository, heads, fingerprint)
        write_s = time.perf_counter() - write_started
        log.info("wrote %d heads in %.1f s", len(heads), write_s)

        log.info("2/4 %d heads registered at start-up", len(heads))
        dense = dense_server(repository, state_dir, heads, api_heads, onboard, fingerprint, texts, settings)

        api = None
        if settings.through_api:
            log.info("3/4 %d heads loaded through the API one at a time", len(heads))
            api = through_api(repository, heads, texts, settings)
        else:
            log.info("3/4 skipped: loading every head through the API (--through-api)")

        rates = None
        if settings.throughput:
            log.info("4/4 throughput: %d heads, one head, issue 2's per-head models", settings.throughput_heads)
            rates = throughput(repository, workdir, heads, fingerprint, texts, settings)
        else:
            log.info("4/4 skipped: throughput (--skip-throughput)")

    registered_delta = dense["pss_mib"] - zero["pss_mib"]
    resident_delta = dense["all_resident"]["pss_mib"] - zero["pss_mib"]
    memory = {
        "zero_heads_pss_mib": zero["pss_mib"],
        "registered_pss_mib": dense["pss_mib"],
        "registered_delta_mib": round(registered_delta, 1),
        "registered_kib_per_head": round(registered_delta * KIB / len(heads), 1),
        "all_resident_pss_mib": dense["all_resident"]["pss_mib"],
        "all_resident_delta_mib": round(resident_delta, 1),
        "all_resident_kib_per_head": round(resident_delta * KIB / dense["all_resident"]["heads"], 1),
        # tritonserver alone (no stubs) at each step, and the executor's stub.
        "tritonserver_mib": {
            "zero_heads": zero["pss_by_model_mib"].get("tritonserver"),
            "registered": dense["pss_by_model_mib"].get("tritonserver"),
            "all_resident": dense["all_resident"]["pss_by_model_mib"].get("tritonserver"),
        },
        "executor_mib": {
            "zero_heads": zero["pss_by_model_mib"].get(config.EXECUTOR_MODEL),
            "all_resident": dense["all_resident"]["pss_by_model_mib"].get(config.EXECUTOR_MODEL),
        },
    }
    if api is not None:
        memory["through_api_delta_mib"] = round(api["pss_mib"] - zero["pss_mib"], 1)
        memory["through_api_kib_per_head"] = round((api["pss_mib"] - zero["pss_mib"]) * KIB / len(heads), 1)
    return {
        "settings": dataclasses.asdict(settings),
        "allocator": dense["startup"]["allocator"],
        "heads": len(heads),
        "mlp_heads": sum(h.kind == "mlp" for h in heads),
        "write_s": round(write_s, 1),
        "zero_heads": zero,
        "memory": memory,
        **dense,
        "through_api": api,
        "throughput": rates,
        "elapsed_min": round((time.perf_counter() - started) / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    parser.add_argument("--quick", action="store_true", help="small counts (seconds-long smoke run)")
    parser.add_argument("--heads", type=int, help=f"heads registered at start-up (default {defaults.heads})")
    parser.add_argument("--api-loads", type=int, help=f"heads loaded one by one (default {defaults.api_loads})")
    parser.add_argument("--onboardings", type=int, help=f"heads onboarded after (default {defaults.onboardings})")
    parser.add_argument(
        "--throughput-heads", type=int, help=f"heads of the Zipf traffic (default {defaults.throughput_heads})"
    )
    parser.add_argument(
        "--baseline-heads", type=int, help=f"heads of issue 2's per-head models (default {defaults.baseline_heads})"
    )
    parser.add_argument("--seconds", type=float, help=f"per throughput run (default {defaults.seconds})")
    parser.add_argument("--rounds", type=int, help=f"alternations of the throughput runs (default {defaults.rounds})")
    parser.add_argument("--through-api", action="store_true", help="also load every head one at a time (long)")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="leave out step 4 (memory and control figures only)"
    )
    parser.add_argument(
        "--only-throughput",
        action="store_true",
        help="measure step 4 again and replace it in the last report (bench/results/dense_heads.json)",
    )
    parser.add_argument("--variant", choices=config.ENCODER_VARIANTS, default=common_settings().encoder_variant)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else defaults
    overrides = {
        key: value
        for key, value in {
            "heads": args.heads,
            "api_loads": args.api_loads,
            "onboardings": args.onboardings,
            "throughput_heads": args.throughput_heads,
            "baseline_heads": args.baseline_heads,
            "seconds": args.seconds,
            "rounds": args.rounds,
        }.items()
        if value is not None
    }
    settings = dataclasses.replace(
        settings,
        **overrides,
        through_api=args.through_api,
        throughput=not args.skip_throughput,
        variant=args.variant,
    )
    if args.only_throughput and args.skip_throughput:
        parser.error("--only-throughput and --skip-throughput exclude each other")
    setup_logging()
    if args.only_throughput:
        report = merge_throughput(run_throughput_only(settings))
    else:
        report = run(settings)
    write_report("dense_heads", report)
    plot(report)
    for figure, measured, target in summary_rows(report):
        print(f"{figure}: {measured}" + (f"  (target {target})" if target else ""))
    if report["throughput"]:
        print(json.dumps(report["throughput"]["requests_per_s"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
