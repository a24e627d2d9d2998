"""``bench.dense_heads`` step 4: throughput with T heads against one head and against issue 2's
per-head models (``bench.baselines.per_head_models``), alternated over rounds."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from pathlib import Path

from headroom import config

from bench.baselines import per_head_models
from bench.common import (
    log,
    pipeline_traffic,
    run_load,
    settle_pss,
)
from bench.dense_servers import (
    CONCURRENCY,
    MIB,
    Settings,
    executor_loads,
    start_server,
    stats_ms,
    timed_loads,
    touch_heads,
    warm_and_measure_pss,
)
from bench.synthetic_heads import SyntheticHead, write_heads


# --- step 4: throughput ----------------------------------------------------------------------
def throughput(
    repository: Path,
    workdir: Path,
    heads: list[SyntheticHead],
    fingerprint: str,
    texts: list[str],
    settings: Settings,
) -> dict:
    many = heads[: settings.throughput_heads]
    few = many[: settings.baseline_heads]
    names_many, names_few = [h.name for h in many], [h.name for h in few]
    baseline_repo = per_head_models.lay_out_repository(workdir / "per_head_models_repo", settings.variant)
    write_heads(baseline_repo, few, fingerprint, config_text=per_head_models.head_config)
    with contextlib.ExitStack() as stack:
        ours, ours_start_s = start_server(
            repository, [*config.SYSTEM_MODELS, *(h.model_name for h in many)], "throughput"
        )
        stack.callback(ours.stop)
        theirs, theirs_start_s = start_server(
            baseline_repo, list(per_head_models.SYSTEM_MODELS), "per_head_models", per_head_models.SYSTEM_MODELS
        )
        stack.callback(theirs.stop)
        theirs_empty = warm_and_measure_pss(theirs, texts, settings)
        load_times, _ = timed_loads(theirs, [h.model_name for h in few], max(1, len(few) // 4), "per-head models")
        touch_heads(theirs, names_few, texts, concurrency=8)
        theirs_loaded = settle_pss(theirs.process.pid, max(2.0, settings.warmup_s))
        baseline_memory = {
            "heads": len(few),
            "pss_without_heads_mib": round(theirs_empty / MIB, 1),
            "pss_mib": round(theirs_loaded / MIB, 1),
            "mib_per_head": round((theirs_loaded - theirs_empty) / MIB / max(1, len(few)), 1),
            "load_ms": stats_ms(load_times),
        }
        log.info(
            "per-head models: %d heads loaded one at a time (p50 %s ms each), %.1f MiB per head",
            len(few),
            baseline_memory["load_ms"].get("p50"),
            baseline_memory["mib_per_head"],
        )
        touch_heads(ours, names_many, texts)

        def traffic(names: list[str]) -> Callable:
            return lambda: pipeline_traffic(names, texts, seed=0)

        plan = {
            "many": ("headroom", f"Zipf over {len(many)} heads", ours, traffic(names_many)),
            "one": ("headroom", "one head", ours, traffic(names_many[:1])),
            "few": ("headroom", f"Zipf over {len(few)} heads", ours, traffic(names_few)),
            "baseline_few": ("per-head models", f"Zipf over {len(few)} heads", theirs, traffic(names_few)),
            "baseline_one": ("per-head models", "one head", theirs, traffic(names_few[:1])),
        }
        for _, _, server, make in plan.values():
            run_load(server.address.grpc_url, make(), duration_s=min(2.0, settings.seconds), concurrency=CONCURRENCY)
        runs = []
        for round_index in range(settings.rounds):
            # Forward, then backward: each pair compared is measured side by side, in both orders.
            order = list(plan) if round_index % 2 == 0 else list(reversed(plan))
            for key in order:
                design, load, server, make = plan[key]
                result = run_load(
                    server.address.grpc_url,
                    make(),
                    duration_s=settings.seconds,
                    concurrency=CONCURRENCY,
                    server_pid=server.process.pid,
                )
                summary = result.summary()
                runs.append({"round": round_index + 1, "run": key, "design": design, "traffic": load, **summary})
                log.info(
                    "round %d, %s, %s: %.0f requests/s, %.2f server CPU ms per request (%d errors)",
                    round_index + 1,
                    design,
                    load,
                    result.throughput,
                    summary["server_cpu_ms_per_request"] or 0.0,
                    result.errors,
                )
        executor_reloaded = executor_loads(ours) > 1

    def rate(key: str, round_index: int | None = None) -> float:
        return statistics.fmean(
            r["throughput_per_s"] for r in runs if r["run"] == key and round_index in (None, r["round"])
        )

    def cpu(key: str, round_index: int) -> float:
        return next(r["server_cpu_ms_per_request"] for r in runs if r["run"] == key and r["round"] == round_index)

    def ratio(numerator: str, denominator: str) -> dict:
        """Throughput of ``numerator`` over ``denominator``: measured, and as implied by the server
        CPU each request took (the machine's cores are the bottleneck; other work on them moves
        throughput far more than CPU per request)."""
        rounds = range(1, settings.rounds + 1)
        per_round = [rate(numerator, i) / rate(denominator, i) for i in rounds]
        by_cpu = [cpu(denominator, i) / cpu(numerator, i) for i in rounds]
        return {
            "median_of_rounds": round(statistics.median(per_round), 3),
            "per_round": [round(value, 3) for value in per_round],
            "of_means": round(rate(numerator) / rate(denominator), 3),
            "by_server_cpu_median": round(statistics.median(by_cpu), 3),
            "by_server_cpu_per_round": [round(value, 3) for value in by_cpu],
        }

    return {
        "throughput_heads": len(many),
        "baseline_heads": len(few),
        "concurrency": CONCURRENCY,
        "seconds": settings.seconds,
        "rounds": settings.rounds,
        "start_s": {"headroom": round(ours_start_s, 2), "per_head_models": round(theirs_start_s, 2)},
        "per_head_models_memory": baseline_memory,
        "requests_per_s": {
            f"{design}, {load}": round(statistics.median(rate(key, i) for i in range(1, settings.rounds + 1)), 1)
            for key, (design, load, _, _) in plan.items()
        },
        "requests_per_s_mean": {f"{design}, {load}": round(rate(key), 1) for key, (design, load, _, _) in plan.items()},
        "server_cpu_ms_per_request": {
            f"{design}, {load}": round(
                statistics.median(cpu(key, i) for i in range(1, settings.rounds + 1)),
                3,
            )
            for key, (design, load, _, _) in plan.items()
        },
        "many_to_one": ratio("many", "one"),
        "headroom_to_per_head_models": ratio("few", "baseline_few"),
        "per_head_models_few_to_one": ratio("baseline_few", "baseline_one"),
        "executor_reloaded": executor_reloaded,
        "runs": runs,
        "errors": sum(r["errors"] for r in runs),
    }
