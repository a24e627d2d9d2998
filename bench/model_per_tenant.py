"""Benchmark 3: headroom against one model per tenant, what users run today.

The baseline gives every tenant a full model: its own copy of the encoder with its head, merged
into one ONNX file, served as its own Triton model (``full_<tenant>``, behind an ensemble
``tenant_<tenant>`` that tokenizes with a shared tokenizer model, ``bench/baselines/tokenizer/``)
in the same embedded server. headroom serves the same tenants as heads behind ``pipeline``
(registration models of the shared ``executor``, kilobytes each). For N = 10, 20, 40 tenants
(loaded one by one through the model-control API into one server per design) it measures
throughput under the same Zipf traffic
and then server memory (PSS of ``tritonserver`` plus its stub processes), and reports memory per
additional tenant and throughput as ratios.

    python -m bench.model_per_tenant [--tenants 10 20 40] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx
import onnx.compose
from headroom import config
from headroom.client.traffic import UNKNOWN_HEAD
from headroom.export.encoder import variant_path
from headroom.model_config import write_model_config
from headroom.repository.head_store import versions_of
from headroom.server.launcher import TritonServer

from bench.baselines.tokenizer import MODEL_NAME as TOKENIZER_MODEL
from bench.baselines.tokenizer import add_tokenizer_model
from bench.common import (
    RESULTS_DIR,
    clone_head,
    demo_head_dirs,
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

TENANT_COUNTS = (10, 20, 40)
CONCURRENCY = 128
MIB = 1024 * 1024

#: Rows one request to a tenant's full model (and its ensemble) may carry.
FULL_MODEL_MAX_BATCH_SIZE = 64


def full_model_config(name: str):
    """Tenant ``name``'s full model (encoder and head merged, ``full_<name>``) as Triton's ``ModelConfig``."""
    from tritonclient.grpc import model_config_pb2 as pb

    model = pb.ModelConfig(name=f"full_{name}", backend="onnxruntime", max_batch_size=FULL_MODEL_MAX_BATCH_SIZE)
    for tensor in ("input_ids", "attention_mask"):
        model.input.add(name=tensor, data_type=pb.TYPE_INT64, dims=[-1])
    model.output.add(name="probabilities", data_type=pb.TYPE_FP32, dims=[-1])
    model.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    model.dynamic_batching.max_queue_delay_microseconds = 2000
    return model


def tenant_ensemble_config(name: str):
    """Tenant ``name``'s ensemble (``tenant_<name>``): the shared tokenizer, then its full model."""
    from tritonclient.grpc import model_config_pb2 as pb

    model = pb.ModelConfig(name=f"tenant_{name}", platform="ensemble", max_batch_size=FULL_MODEL_MAX_BATCH_SIZE)
    model.input.add(name="TEXT", data_type=pb.TYPE_STRING, dims=[1])
    model.output.add(name="probabilities", data_type=pb.TYPE_FP32, dims=[-1])
    tokenize = model.ensemble_scheduling.step.add(model_name=TOKENIZER_MODEL, model_version=-1)
    tokenize.input_map["TEXT"] = "TEXT"
    tokenize.output_map["input_ids"] = "input_ids"
    tokenize.output_map["attention_mask"] = "attention_mask"
    classify = model.ensemble_scheduling.step.add(model_name=f"full_{name}", model_version=-1)
    classify.input_map["input_ids"] = "input_ids"
    classify.input_map["attention_mask"] = "attention_mask"
    classify.output_map["probabilities"] = "probabilities"
    return model


def merged_model(variant: str, head_dir: Path) -> bytes:
    """Encoder + head as one ONNX graph: token ids in, class probabilities out."""
    encoder = onnx.load(str(variant_path(variant, settings().build_dir)))
    head = onnx.load(str(head_dir / str(versions_of(head_dir)[-1]) / "model.onnx"))
    head = onnx.compose.add_prefix(head, "head_", rename_inputs=True, rename_outputs=False)
    merged = onnx.compose.merge_models(
        encoder, head, io_map=[("sentence_embedding", "head_sentence_embedding")], outputs=["probabilities"]
    )
    return merged.SerializeToString()


def tenant_names(count: int) -> list[str]:
    return [f"t{i:03d}" for i in range(count)]


def baseline_repository(workdir: Path, variant: str, heads: list[Path], count: int) -> Path:
    """Tokenizer (+ the encoder folder it reads its tokenizer from) and ``count`` full models."""
    repository = system_repository(workdir / "baseline_repo", variant)
    add_tokenizer_model(repository)
    merged_files = []
    for index, head in enumerate(heads):
        path = workdir / f"merged_{index}.onnx"
        path.write_bytes(merged_model(variant, head))
        merged_files.append(path)
    for index, name in enumerate(tenant_names(count)):
        full = repository / f"full_{name}"
        (full / "1").mkdir(parents=True)
        # A hard link saves disk; each model process still reads its own copy into memory.
        os.link(merged_files[index % len(merged_files)], full / "1" / "model.onnx")
        write_model_config(full, full_model_config(name))
        ensemble = repository / f"tenant_{name}"
        (ensemble / "1").mkdir(parents=True)
        write_model_config(ensemble, tenant_ensemble_config(name))
    return repository


def headroom_repository(workdir: Path, variant: str, count: int) -> tuple[Path, list[Path]]:
    repository = system_repository(workdir / "headroom_repo", variant)
    demo = demo_head_dirs(repository, workdir / "state")
    names = tenant_names(count)
    for index, name in enumerate(names):
        clone_head(demo[index % len(demo)], repository, name)
    return repository, demo


def baseline_traffic(tenants: list[str], texts: list[str]):
    import numpy as np
    import tritonclient.grpc as grpc_module
    from headroom.client.traffic import TrafficMix

    mix = TrafficMix(tenants, texts, failure_share=0.0, seed=0)

    def next_request():
        request = mix.next()
        tensor = grpc_module.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[request.text.encode("utf-8")]], dtype=np.object_))
        return f"tenant_{request.head}", [tensor], False

    return next_request


def _grow_and_measure(
    server: TritonServer, model_of, traffic_of, counts, seconds: float, label: str, warm_up
) -> list[dict]:
    """Load tenants one by one up to each count; after each step, measure throughput, then PSS.

    PSS is read after traffic at every point, and the zero-tenant point after ``warm_up`` traffic
    (the shared models only), so allocator and arena growth from serving is never counted as
    memory per tenant: a headroom head costs kilobytes, less than that growth.
    """
    import tritonclient.http as http

    client = http.InferenceServerClient(f"localhost:{server.address.http_port}", network_timeout=600)
    run_load(server.address.grpc_url, warm_up, duration_s=min(seconds, 5.0), concurrency=CONCURRENCY, warmup_s=0.0)
    rows = [{"tenants": 0, "pss_mib": round(settle_pss(server.process.pid) / MIB, 1)}]
    loaded: list[str] = []
    for count in counts:
        for name in tenant_names(count)[len(loaded) :]:
            client.load_model(model_of(name))
            loaded.append(name)
        traffic = traffic_of(list(loaded))
        result = run_load(server.address.grpc_url, traffic, duration_s=seconds, concurrency=CONCURRENCY)
        pss = settle_pss(server.process.pid)
        rows.append({"tenants": count, "pss_mib": round(pss / MIB, 1), **result.summary()})
        log.info(
            "%s with %d tenants: %.0f MiB, %.0f requests/s, %d errors",
            label,
            count,
            pss / MIB,
            result.throughput,
            result.errors,
        )
    client.close()
    return rows


def tokenizer_traffic(texts: list[str]):
    """Requests to the shared ``tokenizer`` alone: the baseline's warm-up before any tenant exists."""
    import tritonclient.grpc as grpc_module
    from headroom.client.inference import bytes_input

    counter = iter(range(1 << 62))

    def next_request():
        text = texts[next(counter) % len(texts)]
        return TOKENIZER_MODEL, [bytes_input(grpc_module, "TEXT", [text])], False

    return next_request


def _per_tenant(rows: list[dict]) -> list[dict]:
    base = rows[0]["pss_mib"]
    return [
        {
            **row,
            "mib_per_tenant": round((row["pss_mib"] - base) / row["tenants"], 3),
            "kib_per_tenant": round((row["pss_mib"] - base) * 1024 / row["tenants"], 1),
        }
        for row in rows
        if row["tenants"]
    ]


def memory_ratio(theirs_mib: float, ours_mib: float) -> float | None:
    """How many times more memory a tenant costs the baseline; None when headroom's growth is
    within measurement noise (at or below zero: heads cost kilobytes, PSS readings wobble by more)."""
    return round(theirs_mib / ours_mib, 1) if ours_mib > 0 else None


def run(counts=TENANT_COUNTS, seconds: float = 15.0, variant: str = config.DEFAULT_ENCODER_VARIANT) -> dict:
    counts = sorted(counts)
    texts = texts_of_token_length(16, 10)
    with tempfile.TemporaryDirectory(prefix="headroom-bench-") as tmp:
        workdir = Path(tmp)
        repository, demo = headroom_repository(workdir, variant, counts[-1])
        with TritonServer(
            free_address(),
            repository,
            log_file=RESULTS_DIR / "model_per_tenant_headroom.log",
            models=list(config.SYSTEM_MODELS),
        ) as server:
            headroom_rows = _grow_and_measure(
                server,
                lambda n: f"{config.HEAD_MODEL_PREFIX}{n}",
                lambda names: pipeline_traffic(names, texts),
                counts,
                seconds,
                "headroom",
                pipeline_traffic([UNKNOWN_HEAD], texts, failure_share=1.0),
            )
        baseline_repo = baseline_repository(workdir, variant, demo, counts[-1])
        with TritonServer(
            free_address(),
            baseline_repo,
            log_file=RESULTS_DIR / "model_per_tenant_baseline.log",
            models=[TOKENIZER_MODEL],
            system_models=(TOKENIZER_MODEL,),
        ) as server:
            baseline_rows = _grow_and_measure(
                server,
                lambda n: f"tenant_{n}",
                lambda names: baseline_traffic(names, texts),
                counts,
                seconds,
                "one model per tenant",
                tokenizer_traffic(texts),
            )
    headroom_rows, baseline_rows = _per_tenant(headroom_rows), _per_tenant(baseline_rows)
    comparison = []
    for ours, theirs in zip(headroom_rows, baseline_rows, strict=True):
        comparison.append(
            {
                "tenants": ours["tenants"],
                "memory_per_tenant_ratio": memory_ratio(theirs["mib_per_tenant"], ours["mib_per_tenant"]),
                "throughput_ratio": round(ours["throughput_per_s"] / max(theirs["throughput_per_s"], 1e-9), 2),
            }
        )
    return {
        "variant": variant,
        "seconds": seconds,
        "concurrency": CONCURRENCY,
        "headroom": headroom_rows,
        "one_model_per_tenant": baseline_rows,
        "comparison": comparison,
    }


def plot(report: dict) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("headroom", "headroom (shared encoder)"), ("one_model_per_tenant", "one model per tenant")):
        rows = report[key]
        left.plot([r["tenants"] for r in rows], [r["pss_mib"] for r in rows], marker="o", label=label)
        right.plot([r["tenants"] for r in rows], [r["throughput_per_s"] for r in rows], marker="o", label=label)
    left.set_xlabel("tenants")
    left.set_ylabel("server PSS (MiB)")
    left.set_title("Memory")
    right.set_xlabel("tenants (Zipf traffic)")
    right.set_ylabel("requests / s")
    right.set_title("Throughput")
    left.legend()
    save_figure(figure, "model_per_tenant")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, nargs="+", default=list(TENANT_COUNTS))
    parser.add_argument("--seconds", type=float, default=15.0, help="throughput run per point (default %(default)s)")
    parser.add_argument("--variant", choices=config.ENCODER_VARIANTS, default=settings().encoder_variant)
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.tenants, args.seconds, args.variant)
    write_report("model_per_tenant", report)
    plot(report)
    for row in report["comparison"]:
        ratio = row["memory_per_tenant_ratio"]
        print(
            f"{row['tenants']} tenants: memory per tenant "
            f"{'lower than PSS noise' if ratio is None else f'{ratio}x lower'}, "
            f"throughput {row['throughput_ratio']}x one model per tenant"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
