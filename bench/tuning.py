"""Tuning by measurement: end-to-end throughput of one configuration change at a time.

Each candidate edits one setting of the shipped ``config.pbtxt`` files in a temporary copy of the
repository (instance counts, batch sizes, dynamic-batching queue delays, ONNX Runtime threads,
the ``embed`` model's grouping limits), read and written with Triton's own protobuf schema
(``model_config_pb2`` and ``text_format``), starts a server and measures saturated throughput
over gRPC, 1 text per request, on texts of real length (``client.traffic.real_text_mix``) by
default or on 10-16-token texts (``--texts short``). The shipped configuration is measured first
and again last, so drift on this shared machine shows; each row also gives the server's CPU
time per text, which other work on the machine disturbs far less than throughput.

    python -m bench.tuning [--seconds 10] [--variant fp32] [--texts mix|short]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from headroom import config
from headroom.client.traffic import real_text_mix
from headroom.model_config import read_model_config, write_model_config
from headroom.server.launcher import TritonServer
from tritonclient.grpc import model_config_pb2

from bench.common import (
    RESULTS_DIR,
    demo_head_dirs,
    free_address,
    log,
    pipeline_traffic,
    run_load,
    settings,
    setup_logging,
    system_repository,
    texts_of_token_length,
    write_report,
)

CONCURRENCY = 256
ModelConfig = model_config_pb2.ModelConfig
Edit = Callable[[ModelConfig], None]


def instances(count: int) -> Edit:
    def edit(model: ModelConfig) -> None:
        model.instance_group[0].count = count

    return edit


def queue_delay(microseconds: int) -> Edit:
    def edit(model: ModelConfig) -> None:
        model.dynamic_batching.max_queue_delay_microseconds = microseconds

    return edit


def max_batch_size(rows: int) -> Edit:
    def edit(model: ModelConfig) -> None:
        model.max_batch_size = rows

    return edit


def parameter(key: str, value: str) -> Edit:
    def edit(model: ModelConfig) -> None:
        model.parameters[key].string_value = value

    return edit


def preferred_batch_sizes(*sizes: int) -> Edit:
    def edit(model: ModelConfig) -> None:
        model.dynamic_batching.preferred_batch_size[:] = sizes

    return edit


def graph_level(level: int) -> Edit:
    """The ONNX Runtime backend's ``optimization.graph.level`` (-1 basic, 1 extended, 2 none)."""

    def edit(model: ModelConfig) -> None:
        model.optimization.graph.level = level

    return edit


def response_cache(model: ModelConfig) -> None:
    model.response_cache.enable = True


def both(*edits: Edit) -> Edit:
    def edit(model: ModelConfig) -> None:
        for one in edits:
            one(model)

    return edit


#: Triton flag that gives the response cache its memory (only for candidates that enable it).
CACHE_ARGS = ("--cache-config=local,size=268435456",)

#: candidate name -> [(model, edit of its config)] (several models where one change needs them)
CANDIDATES: dict[str, list[tuple[str, Edit]]] = {
    "shipped": [],
    "pipeline: 1 instance": [("pipeline", instances(1))],
    "pipeline: 4 instances": [("pipeline", instances(4))],
    "pipeline: batches of at most 64 rows": [("pipeline", max_batch_size(64))],
    "pipeline: batches of at most 128 rows": [("pipeline", max_batch_size(128))],
    "pipeline: queue delay 2 ms": [("pipeline", queue_delay(2000))],
    "embed: 1 instance": [("embed", instances(1))],
    "embed: groups of at most 512 tokens": [("embed", parameter("max_batch_tokens", "512"))],
    "embed: groups of at most 2048 tokens": [("embed", parameter("max_batch_tokens", "2048"))],
    "embed: added padding at most 16 tokens": [("embed", parameter("max_added_padding", "16"))],
    "embed: added padding at most 64 tokens": [("embed", parameter("max_added_padding", "64"))],
    "embed: no length grouping (one call per batch)": [
        ("embed", both(parameter("max_batch_tokens", str(256 * 256)), parameter("max_added_padding", str(1 << 30))))
    ],
    "encoder: queue delay 2 ms": [("encoder", queue_delay(2000))],
    "encoder: 1 instance, 2 intra-op threads": [
        ("encoder", both(instances(1), parameter("intra_op_thread_count", "2")))
    ],
    "encoder: 1 instance, 1 intra-op thread": [("encoder", instances(1))],
    "encoder: preferred batch sizes 16/32/64": [("encoder", preferred_batch_sizes(16, 32, 64))],
    "encoder: graph optimisation basic only": [("encoder", graph_level(-1))],
    "encoder: response cache": [("encoder", response_cache)],
    "shipped (again)": [],
}
#: ``make bench``'s smoke run (``run_all --quick``, tests/integration/test_bench.py): the shipped
#: configuration twice and one candidate of each kind of edit (instances, dynamic batching,
#: a parameter, instances with a parameter, the response cache), each a server start of its own.
QUICK_CANDIDATES = {
    name: CANDIDATES[name]
    for name in (
        "shipped",
        "pipeline: 1 instance",
        "pipeline: queue delay 2 ms",
        "embed: groups of at most 512 tokens",
        "encoder: 1 instance, 2 intra-op threads",
        "encoder: response cache",
        "shipped (again)",
    )
}


def edit_config(path: Path, edit: Edit) -> None:
    """Apply ``edit`` to a ``config.pbtxt`` (comments are not kept: the copy is temporary)."""
    model = read_model_config(path.parent)
    before = model.SerializeToString(deterministic=True)
    edit(model)
    if model.SerializeToString(deterministic=True) == before:
        raise RuntimeError(f"the edit changed nothing in {path}")
    write_model_config(path.parent, model)


def run(
    seconds: float = 10.0,
    variant: str = config.DEFAULT_ENCODER_VARIANT,
    texts: str = "mix",
    candidates: dict = CANDIDATES,
) -> dict:
    chosen = real_text_mix() if texts == "mix" else texts_of_token_length(16, 10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="headroom-tune-") as tmp:
        template = system_repository(Path(tmp) / "template", variant)
        heads = [p.name[len(config.HEAD_MODEL_PREFIX) :] for p in demo_head_dirs(template, Path(tmp) / "state")]
        for name, edits in candidates.items():
            repository = Path(tmp) / "candidate"
            if repository.exists():
                shutil.rmtree(repository)
            shutil.copytree(template, repository)
            for model, edit in edits:
                edit_config(repository / model / "config.pbtxt", edit)
            cache = any(edit is response_cache for _, edit in edits)
            with TritonServer(
                free_address(), repository, log_file=RESULTS_DIR / "tuning.log", extra_args=CACHE_ARGS if cache else ()
            ) as server:
                traffic = pipeline_traffic(heads, chosen)
                run_load(server.address.grpc_url, traffic, duration_s=2.0, concurrency=CONCURRENCY, warmup_s=0.5)
                result = run_load(
                    server.address.grpc_url,
                    traffic,
                    duration_s=seconds,
                    concurrency=CONCURRENCY,
                    server_pid=server.process.pid,
                )
            rows.append({"candidate": name, **result.summary()})
            log.info(
                "%-48s %6.0f texts/s  %.2f ms server CPU per text  (%d errors)",
                name,
                result.throughput,
                rows[-1]["server_cpu_ms_per_request"] or 0,
                result.errors,
            )
    shipped = [r for r in rows if r["candidate"].startswith("shipped")]
    rate = sum(r["throughput_per_s"] for r in shipped) / len(shipped) if shipped else None
    cpu = [r["server_cpu_ms_per_request"] for r in shipped if r["server_cpu_ms_per_request"]]
    cpu_reference = sum(cpu) / len(cpu) if cpu else None
    for row in rows:
        row["relative_to_shipped"] = round(row["throughput_per_s"] / rate, 3) if rate else None
        own = row["server_cpu_ms_per_request"]
        # Above 1: the candidate needs less server CPU per text than the shipped configuration.
        row["cpu_efficiency_relative_to_shipped"] = round(cpu_reference / own, 3) if own and cpu_reference else None
    return {"variant": variant, "texts": texts, "seconds": seconds, "concurrency": CONCURRENCY, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variant", choices=config.ENCODER_VARIANTS, default=settings().encoder_variant)
    parser.add_argument("--texts", choices=("mix", "short"), default="mix")
    parser.add_argument("--only", nargs="+", help="measure only these candidates (and the shipped configuration)")
    args = parser.parse_args(argv)
    setup_logging()
    candidates = CANDIDATES
    if args.only:
        unknown = sorted(set(args.only) - set(CANDIDATES))
        if unknown:
            parser.error(f"unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
        candidates = {k: v for k, v in CANDIDATES.items() if k.startswith("shipped") or k in args.only}
    report = run(args.seconds, args.variant, args.texts, candidates)
    write_report("tuning", report)
    for row in report["rows"]:
        print(
            f"{row['candidate']:<48} {row['throughput_per_s']:>7.0f}/s  x{row['relative_to_shipped']}"
            f"  cpu x{row['cpu_efficiency_relative_to_shipped']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
