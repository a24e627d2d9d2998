"""Benchmark: what slot heads cost in the batch and in memory (issue 12).

Against a server started for the run, with a classification tenant and a slot tenant of the
same data (Home Assistant's templates, ``headroom.export.home_assistant``: the same texts, one
onboarded without its entities, one with them), it measures in alternating rounds:

- **served**: texts per second and latency percentiles of ``pipeline`` requests of
  ``texts_per_request`` held-out texts, ``concurrency`` in flight, for requests of the
  classification tenant only, of the slot tenant only, and mixed half and half (the ratio to
  classification-only is the figure: one machine's noise cancels within a round);
- **in the executor**: one batch of 256 rows through ``run_rows`` (intent heads) and through
  ``run_token_rows`` + ``decode`` (token heads) in process, per row;
- **memory per tenant**: the bytes of its stacked weights (intent head, token head), against one
  fine-tuned MiniLM per tenant (its parameters, fp32).

    python -m bench.slots [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from headroom import config
from headroom.client.inference import HeadroomClient
from headroom.client.onboarding import Onboarding
from headroom.export.home_assistant import home_assistant_split, write_split
from headroom.server.launcher import TritonServer

from bench.common import (
    RESULTS_DIR,
    free_address,
    log,
    machine_info,
    pyplot,
    save_figure,
    setup_logging,
    system_repository,
    write_report,
)

MODES = ("classification", "slots", "mixed")
CLASSES_TENANT, SLOTS_TENANT = "ha_intents", "ha_slots"
#: all-MiniLM-L6-v2's parameters: what one fine-tuned model per tenant holds (fp32).
MINILM_PARAMETERS = 22_713_216


def _classification_file(train: Path, destination: Path) -> Path:
    """The training file without its entities: the same tenant as a classification tenant."""
    lines = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    destination.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in lines))
    return destination


def _load(client: HeadroomClient, texts: list[str], heads_of, seconds: float, per_request: int, concurrency: int):
    """Requests of ``per_request`` texts for ``seconds``; texts/s and latency percentiles (ms)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    failed = 0

    def worker(offset: int) -> int:
        nonlocal failed
        sent, step = 0, offset
        while time.perf_counter() < stop:
            chunk = [texts[(step + i) % len(texts)] for i in range(per_request)]
            started = time.perf_counter()
            answers = client.classify(chunk, heads_of(step, per_request), batch_size=per_request, return_errors=True)
            latencies.append(time.perf_counter() - started)
            failed += sum(isinstance(a, Exception) for a in answers)
            sent += per_request
            step += per_request
        return sent

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        sent = sum(pool.map(worker, range(0, concurrency * 7, 7)))
    elapsed = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies)
    return {
        "texts_per_s": round(sent / elapsed, 1),
        "p50_ms": round(ms[len(ms) // 2], 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "failed": failed,
    }


def _heads_for(mode: str):
    if mode == "classification":
        return lambda step, n: [CLASSES_TENANT] * n
    if mode == "slots":
        return lambda step, n: [SLOTS_TENANT] * n
    return lambda step, n: [SLOTS_TENANT if (step + i) % 2 else CLASSES_TENANT for i in range(n)]


def executor_costs(dim: int = config.EMBEDDING_DIM, rows: int = 256, tokens: int = 16, repeats: int = 20) -> dict:
    """Microseconds per row of one batch of ``rows`` through intent heads, and through token
    heads (windowed, as onboarding trains them) + decoding (in process, stacked weights of 8
    tenants, tags mostly O as in real text)."""
    from headroom.bio_tags import decode, tag_names
    from headroom.executor import resident_heads
    from headroom.export.heads import TrainedHead, exported_head
    from headroom.export.slot_heads import DEFAULT_WINDOW, TrainedSlotHead, exported_slot_head
    from headroom.head_format import SlotFiles

    rng = np.random.default_rng(0)
    tags = tag_names([f"slot{i}" for i in range(24)])
    files = {}
    for tenant in range(8):
        intent = TrainedHead(
            rng.normal(size=(42, dim)).astype(np.float32), np.zeros(42, np.float32), [f"i{i}" for i in range(42)]
        )
        weights = rng.normal(scale=0.05, size=(len(tags), (2 * DEFAULT_WINDOW + 1) * dim)).astype(np.float32)
        bias = np.zeros(len(tags), np.float32)
        bias[0] = 4.0  # mostly O, as real text is
        token = TrainedSlotHead(weights, bias, tags, window=DEFAULT_WINDOW)
        files[tenant] = (exported_head(intent, "x"), intent.labels, SlotFiles(exported_slot_head(token, "x"), tags))
    residency = resident_heads.HeadResidency(1 << 30, dim)
    loaded = residency.acquire(list(files), files.__getitem__)
    heads = [loaded[row % 8] for row in range(rows)]
    sentences = rng.normal(size=(rows, dim)).astype(np.float32)
    per_token = rng.normal(size=(rows, tokens, dim)).astype(np.float32)
    lengths = np.full(rows, tokens)

    def best_of(call) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return min(times)

    intent_s = best_of(lambda: resident_heads.run_rows(sentences, heads))
    token_s = best_of(lambda: resident_heads.run_token_rows(per_token, heads))
    probabilities = np.stack(resident_heads.run_token_rows(per_token, heads))
    decode_s = best_of(lambda: decode(probabilities, lengths, tags))
    return {
        "rows": rows,
        "tokens": tokens,
        "tags": len(tags),
        "token_window": DEFAULT_WINDOW,
        "intent_us_per_row": round(1e6 * intent_s / rows, 2),
        "token_heads_us_per_row": round(1e6 * token_s / rows, 2),
        "decode_us_per_row": round(1e6 * decode_s / rows, 2),
        "token_embeddings_bytes_per_row": tokens * dim * 4,
    }


def run(seconds: float = 10.0, rounds: int = 3, per_request: int = 8, concurrency: int = 4) -> dict:
    split = home_assistant_split()
    with tempfile.TemporaryDirectory(prefix="headroom-bench-slots-") as tmp:
        workdir = Path(tmp)
        repository = system_repository(workdir / "repo", config.DEFAULT_ENCODER_VARIANT)
        train, _ = write_split(split, workdir / "data")
        with TritonServer(free_address(), repository, log_file=RESULTS_DIR / "slots.log") as server:
            with HeadroomClient(server.address.grpc_url, concurrency=concurrency) as client:
                onboarding = Onboarding(client, repository, config.state_dir_for(repository))
                classes = onboarding.onboard(CLASSES_TENANT, _classification_file(train, workdir / "intents.jsonl"))
                slots = onboarding.onboard(SLOTS_TENANT, train)
                log.info(
                    "onboarded %s in %.2f s and %s (entity F1 %.3f on its hold-out) in %.2f s",
                    CLASSES_TENANT,
                    classes.seconds_total,
                    SLOTS_TENANT,
                    slots.metrics["holdout_entity_f1"],
                    slots.seconds_total,
                )
                texts = split.held_out.texts
                _load(client, texts, _heads_for("mixed"), 2.0, per_request, concurrency)  # warm up
                by_round = []
                for number in range(rounds):
                    figures = {
                        mode: _load(client, texts, _heads_for(mode), seconds, per_request, concurrency)
                        for mode in MODES
                    }
                    by_round.append(figures)
                    log.info("round %d: %s", number + 1, figures)
        folder = repository / f"{config.HEAD_MODEL_PREFIX}{SLOTS_TENANT}"
        version = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())[-1]
        intent_bytes = (folder / str(version) / "model.onnx").stat().st_size
        token_bytes = (folder / str(version) / "slots.onnx").stat().st_size
    ratios = {
        mode: round(statistics.median(r[mode]["texts_per_s"] / r["classification"]["texts_per_s"] for r in by_round), 3)
        for mode in MODES
    }
    return {
        "machine": machine_info(),
        "texts_per_request": per_request,
        "concurrency": concurrency,
        "seconds_per_point": seconds,
        "rounds": by_round,
        "throughput_ratio_to_classification": ratios,
        "onboarding_s": {"classification": round(classes.seconds_total, 2), "slots": round(slots.seconds_total, 2)},
        "slot_metrics": {k: v for k, v in slots.metrics.items() if "entity" in k or k in ("slots", "holdout_accuracy")},
        "executor": executor_costs(),
        "memory_per_tenant_bytes": {
            "intent_head_file": intent_bytes,
            "token_head_file": token_bytes,
            "fine_tuned_minilm_fp32": MINILM_PARAMETERS * 4,
        },
    }


def plot(report: dict) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ratios = report["throughput_ratio_to_classification"]
    left.bar(list(ratios), list(ratios.values()), color=["#888", "#3a7", "#37a"])
    left.set_ylabel("texts/s, ratio to classification-only")
    left.set_title(f"served, {report['texts_per_request']} texts per request")
    memory = report["memory_per_tenant_bytes"]
    names = ["headroom: intent + token head", "fine-tuned MiniLM"]
    values = [memory["intent_head_file"] + memory["token_head_file"], memory["fine_tuned_minilm_fp32"]]
    right.bar(names, values, color=["#3a7", "#a33"])
    right.set_yscale("log")
    right.set_ylabel("bytes per tenant")
    right.set_title("memory per slot tenant")
    figure.tight_layout()
    save_figure(figure, "slots")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args(argv)
    report = run(seconds=1.0, rounds=1) if args.quick else run()
    path = write_report("slots", report)
    plot(report)
    log.info("ratios to classification-only: %s", report["throughput_ratio_to_classification"])
    log.info("executor: %s", report["executor"])
    log.info("memory per tenant: %s", report["memory_per_tenant_bytes"])
    log.info("report: %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
