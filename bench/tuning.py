"""Tuning by measurement: end-to-end throughput of one configuration change at a time.

Each candidate edits one setting of the shipped ``config.pbtxt`` files in a temporary copy of
the repository (instance counts, dynamic-batching queue delays, ONNX Runtime threads), starts a
server and measures saturated throughput with the same traffic as ``bench.end_to_end``. The
shipped configuration is measured first and again last, so drift on this shared machine shows.

    python -m bench.tuning [--seconds 10] [--variant int8]
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    demo_head_dirs,
    free_address,
    log,
    pipeline_traffic,
    run_load,
    setup_logging,
    system_repository,
    texts_of_token_length,
    write_report,
)
from headroom import config
from server.triton import TritonServer

CONCURRENCY = 128


def set_instance_count(text: str, count: int) -> str:
    return re.sub(r"count: \d+", f"count: {count}", text, count=1)


def set_queue_delay(text: str, microseconds: int) -> str:
    return re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {microseconds}", text)


def set_threads(text: str, threads: int) -> str:
    return re.sub(r'(key: "intra_op_thread_count"\s*value: \{ string_value: )"\d+"', rf'\1"{threads}"', text)


def set_preferred_batch_sizes(text: str, sizes: tuple[int, ...]) -> str:
    listed = ", ".join(str(size) for size in sizes)
    return text.replace("dynamic_batching {", f"dynamic_batching {{\n  preferred_batch_size: [ {listed} ]", 1)


def set_graph_level(text: str, level: int) -> str:
    """The ONNX Runtime backend's ``optimization.graph.level`` (-1 basic, 1 extended, 2 none)."""
    return text.replace("instance_group [", f"optimization {{ graph: {{ level: {level} }} }}\ninstance_group [", 1)


def enable_response_cache(text: str) -> str:
    return text.rstrip("\n") + "\nresponse_cache { enable: true }\n"


#: Triton flag that gives the response cache its memory (only for candidates that enable it).
CACHE_ARGS = ("--cache-config=local,size=268435456",)


#: candidate name -> (model, edit of its config.pbtxt)
CANDIDATES = {
    "shipped": None,
    "pipeline: 1 instance": ("pipeline", lambda t: set_instance_count(t, 1)),
    "pipeline: 4 instances": ("pipeline", lambda t: set_instance_count(t, 4)),
    "pipeline: queue delay 2 ms": ("pipeline", lambda t: set_queue_delay(t, 2000)),
    "pipeline: queue delay 10 ms": ("pipeline", lambda t: set_queue_delay(t, 10000)),
    "encoder: queue delay 0": ("encoder", lambda t: set_queue_delay(t, 0)),
    "encoder: 1 intra-op thread": ("encoder", lambda t: set_threads(t, 1)),
    "encoder: 2 instances, 1 thread each": ("encoder", lambda t: set_threads(set_instance_count(t, 2), 1)),
    "tokenizer: 2 instances": ("tokenizer", lambda t: set_instance_count(t, 2)),
    "encoder: preferred batch sizes 16/32/64": ("encoder", lambda t: set_preferred_batch_sizes(t, (16, 32, 64))),
    "encoder: graph optimisation basic only": ("encoder", lambda t: set_graph_level(t, -1)),
    "encoder: graph optimisation off": ("encoder", lambda t: set_graph_level(t, 2)),
    "encoder: response cache": ("encoder", enable_response_cache),
    "shipped (again)": None,
}


def run(seconds: float = 10.0, variant: str = "int8", candidates: dict = CANDIDATES) -> dict:
    texts = texts_of_token_length(16, 10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="headroom-tune-") as tmp:
        template = system_repository(Path(tmp) / "template", variant)
        heads = [p.name[len(config.HEAD_MODEL_PREFIX) :] for p in demo_head_dirs(template, Path(tmp) / "state")]
        for name, change in candidates.items():
            repository = Path(tmp) / "candidate"
            if repository.exists():
                shutil.rmtree(repository)
            shutil.copytree(template, repository)
            if change is not None:
                model, edit = change
                path = repository / model / "config.pbtxt"
                edited = edit(path.read_text())
                if edited == path.read_text():
                    raise RuntimeError(f"candidate {name!r} changed nothing in {path}")
                path.write_text(edited)
            cache = change is not None and change[1] is enable_response_cache
            with TritonServer(
                free_address(), repository, log_file=RESULTS_DIR / "tuning.log", extra_args=CACHE_ARGS if cache else ()
            ) as server:
                traffic = pipeline_traffic(heads, texts)
                run_load(server.address.grpc_url, traffic, duration_s=2.0, concurrency=CONCURRENCY, warmup_s=0.5)
                result = run_load(server.address.grpc_url, traffic, duration_s=seconds, concurrency=CONCURRENCY)
            rows.append({"candidate": name, **result.summary()})
            log.info("%-40s %6.0f requests/s  p50 %.1f ms", name, result.throughput, result.percentile(50))
    shipped = [r["throughput_per_s"] for r in rows if r["candidate"].startswith("shipped")]
    reference = sum(shipped) / len(shipped) if shipped else None
    for row in rows:
        row["relative_to_shipped"] = round(row["throughput_per_s"] / reference, 3) if reference else None
    return {"variant": variant, "seconds": seconds, "concurrency": CONCURRENCY, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variant", choices=config.ENCODER_VARIANTS, default="int8")
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.seconds, args.variant)
    write_report("tuning", report)
    for row in report["rows"]:
        print(f"{row['candidate']:<40} {row['throughput_per_s']:>7.0f}/s  x{row['relative_to_shipped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
