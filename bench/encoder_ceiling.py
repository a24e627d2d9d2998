"""Benchmark 1, the encoder ceiling: raw ONNX Runtime throughput of the encoder in-process.

Every encoder variant, batch sizes 1/8/32/64, sequence lengths 16 and 64, intra-op threads =
cores. ``text_ceiling`` measures the same on a list of real texts (tokenization excluded): the
whole list sorted by token count and cut into ideal batches (as the served ``embed`` model cuts
them, and into batches of 32: the faster of the two is the ceiling), and, for comparison, in
arrival order in batches of 32. These are the limits the served system is measured against
(``bench.end_to_end``).

    python -m bench.encoder_ceiling [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from headroom import config
from headroom.export.embeddings import grouping_limits
from headroom.export.encoder import export_all, model_source_dir, variant_path
from headroom.length_groups import plan_groups
from headroom.text_tokenizer import TextTokenizer

from bench.common import (
    SOURCE_REPOSITORY,
    log,
    pyplot,
    save_figure,
    settings,
    setup_logging,
    texts_of_token_length,
    write_report,
)

BATCH_SIZES = (1, 8, 32, 64)
SEQUENCE_LENGTHS = (16, 64)
#: Rows per batch of the fixed-size plans of ``text_ceiling``.
FIXED_BATCH = 32


def token_batch(texts: list[str], batch_size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` real texts as [batch, length] ids and mask (padded to exactly ``length``)."""
    tokenizer = TextTokenizer(model_source_dir() / config.TOKENIZER_FILE, max_length=length)
    chosen = [texts[i % len(texts)] for i in range(batch_size)]
    ids, mask = tokenizer(chosen)
    pad = length - ids.shape[1]
    return np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))


def session_for(variant: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(variant_path(variant, settings().build_dir)), sess_options=options, providers=["CPUExecutionProvider"]
    )


def measure(session, ids: np.ndarray, mask: np.ndarray, seconds: float) -> float:
    feed = {"input_ids": ids, "attention_mask": mask}
    session.run(["sentence_embedding"], feed)  # warm-up
    sentences, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(["sentence_embedding"], feed)
        sentences += ids.shape[0]
    return sentences / elapsed


def batch_plans(lengths: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Ways to cut texts of these token lengths into encoder batches (row indices per batch)."""
    order = np.argsort(lengths, kind="stable")
    rows = np.arange(len(lengths))
    return {
        "sorted_served_groups": plan_groups(lengths, grouping_limits(SOURCE_REPOSITORY)),
        f"sorted_batches_{FIXED_BATCH}": [order[i : i + FIXED_BATCH] for i in range(0, len(order), FIXED_BATCH)],
        f"arrival_batches_{FIXED_BATCH}": [rows[i : i + FIXED_BATCH] for i in range(0, len(rows), FIXED_BATCH)],
    }


#: The plans of ``batch_plans`` that sort the texts first: the ceiling is the better of them.
SORTED_PLANS = ("sorted_served_groups", f"sorted_batches_{FIXED_BATCH}")


def text_ceiling(
    variant: str, texts: list[str], seconds: float = 3.0, rounds: int = 2, only: tuple[str, ...] | None = None
) -> dict:
    """In-process sentences/s of ``variant`` on ``texts`` for each plan of ``batch_plans``
    (``only``: just the plans named there).

    Each plan runs every batch of the list, over and over for ``seconds``, ``rounds`` times
    alternating with the other plans; the best round counts. ``ceiling_per_s`` is the better of
    the sorted plans: the most the encoder can do on these texts here.
    """
    tokenizer = TextTokenizer(model_source_dir() / config.TOKENIZER_FILE, max_length=config.MAX_SEQ_LEN_TOKENS)
    tokens = tokenizer.encode(texts)
    session = session_for(variant, os.cpu_count() or 1)
    plans = {name: batches for name, batches in batch_plans(tokens.lengths).items() if only is None or name in only}
    feeds = {
        name: [dict(zip(("input_ids", "attention_mask"), tokens.padded(rows), strict=True)) for rows in batches]
        for name, batches in plans.items()
    }
    for feed in next(iter(feeds.values()))[:4]:
        session.run(["sentence_embedding"], feed)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(rounds):
        for name, batches in feeds.items():
            done, started = 0, time.perf_counter()
            while True:
                for feed in batches:
                    session.run(["sentence_embedding"], feed)
                done += len(texts)
                if (elapsed := time.perf_counter() - started) >= seconds:
                    break
            rates[name].append(done / elapsed)
    best = {name: round(max(values), 1) for name, values in rates.items()}
    padded = {name: int(sum(len(rows) * int(tokens.lengths[rows].max()) for rows in plans[name])) for name in plans}
    sorted_plans = [name for name in plans if name in SORTED_PLANS]
    ceiling_plan = max(sorted_plans, key=best.get)
    return {
        "variant": variant,
        "sentences_per_s": best,
        "padded_tokens_per_real_token": {
            name: round(value / int(tokens.lengths.sum()), 3) for name, value in padded.items()
        },
        "batches": {name: len(batches) for name, batches in plans.items()},
        "ceiling_plan": ceiling_plan,
        "ceiling_per_s": best[ceiling_plan],
    }


def run(
    seconds: float = 3.0, variants=config.ENCODER_VARIANTS, batch_sizes=BATCH_SIZES, lengths=SEQUENCE_LENGTHS
) -> dict:
    export_all(settings().build_dir)
    threads = os.cpu_count() or 1
    texts = {16: texts_of_token_length(16, 10), 64: texts_of_token_length(64, 33)}
    rows = []
    for variant in variants:
        session = session_for(variant, threads)
        for length in lengths:
            for batch_size in batch_sizes:
                ids, mask = token_batch(texts[length], batch_size, length)
                rate = measure(session, ids, mask, seconds)
                rows.append(
                    {"variant": variant, "seq_len": length, "batch_size": batch_size, "sentences_per_s": round(rate, 1)}
                )
                log.info("encoder %s T=%d B=%d: %.0f sentences/s", variant, length, batch_size, rate)
    best = {
        f"{v}_T{t}": max(r["sentences_per_s"] for r in rows if r["variant"] == v and r["seq_len"] == t)
        for v in variants
        for t in lengths
    }
    return {"threads": threads, "seconds_per_point": seconds, "rows": rows, "best": best}


def plot(report: dict) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for variant in sorted({r["variant"] for r in report["rows"]}):
        for length in sorted({r["seq_len"] for r in report["rows"]}):
            points = [r for r in report["rows"] if r["variant"] == variant and r["seq_len"] == length]
            axes.plot(
                [p["batch_size"] for p in points],
                [p["sentences_per_s"] for p in points],
                marker="o",
                label=f"{variant}, {length} tokens",
            )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("sentences / s")
    axes.set_title("Encoder ceiling (ONNX Runtime in-process)")
    axes.legend()
    save_figure(figure, "encoder_ceiling")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per point (default %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(SEQUENCE_LENGTHS))
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.seconds, batch_sizes=args.batch_sizes, lengths=args.lengths)
    write_report("encoder_ceiling", report)
    plot(report)
    for key, value in report["best"].items():
        print(f"encoder ceiling {key}: {value:.0f} sentences/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
