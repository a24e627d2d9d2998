"""Encoder variants side by side: fidelity to fp32, demo heads' hold-out accuracy, batch independence, speed.

For every variant in ``config.ENCODER_VARIANTS`` (fp32, int8 = dynamic quantisation,
int8-static = static quantisation calibrated on real text):

- cosine to fp32, min/mean over real texts (every demo tenant's texts, and the pydoc prose
  paragraphs the static variant was *not* calibrated on), each text encoded alone;
- each demo head retrained on the variant's embeddings exactly as ``make heads`` does
  (``export.heads.train_head``, texts embedded in batches of 32 in file order): hold-out
  accuracy and macro-F1;
- batch independence: each text alone (batch of 1, no padding) against the same text inside
  batches of 32 of other texts, once randomly mixed (padded to the longest of 32 random texts)
  and once grouped by token length as the served system groups them: max |delta| of the
  sentence embedding, max |delta| of every demo head's probabilities, label flips;
- speed, in-process ONNX Runtime with ``--threads`` intra-op threads: sentences/s and CPU ms
  per sentence on (a) texts of at most 16 tokens in batches of 32 and (b) a mix of demo texts and
  pydoc prose sorted into length groups of 32. Variants take turns within each round (A, B, C,
  A, B, C, ...); figures are medians over rounds, ratios medians of per-round ratios to fp32
  (the machine is shared);
- with ``--build-times``, each variant's export from scratch, in seconds.

    python -m bench.encoder_variants [--rounds 7] [--build-times] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from headroom import config
from headroom.export.demo import prose_paragraphs
from headroom.export.encoder import export_all, model_source_dir, variant_path
from headroom.text_tokenizer import TextTokenizer

from bench.common import log, pyplot, save_figure, settings, setup_logging, write_report

BATCH_SIZE = 32
SHORT_MAX_TOKENS = 16
#: Texts of the short workload (a) and batches of it timed per round and variant.
SHORT_TEXTS = 512
THREADS = 2


def tokenizer():
    return TextTokenizer(model_source_dir() / config.TOKENIZER_FILE, max_length=config.MAX_SEQ_LEN_TOKENS)


def session_for(path: Path, threads: int = THREADS, spinning: bool = True):
    """``spinning=False``: idle worker threads sleep, so the process's CPU time is the work done."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def token_counts(texts: Sequence[str], tokenize) -> np.ndarray:
    """Tokens per text, [CLS] and [SEP] included, truncated at ``config.MAX_SEQ_LEN_TOKENS``."""
    return np.array([int(tokenize([text])[1].sum()) for text in texts])


def encode(session, tokenize, texts: Sequence[str]) -> np.ndarray:
    """One encoder call for ``texts`` (padded to the longest of them): sentence embeddings [N, 384]."""
    ids, mask = tokenize(list(texts))
    return session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]


def encode_in_batches(session, tokenize, texts: Sequence[str], order: np.ndarray | None = None) -> np.ndarray:
    """Embeddings of ``texts`` in their own order, computed in batches of 32 taken in ``order``."""
    order = np.arange(len(texts)) if order is None else order
    out = np.zeros((len(texts), config.EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(order), BATCH_SIZE):
        chosen = order[start : start + BATCH_SIZE]
        out[chosen] = encode(session, tokenize, [texts[i] for i in chosen])
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def demo_datasets() -> dict:
    """Every demo tenant's labelled texts (``make heads`` writes the corpus tenants' files)."""
    from headroom.export.datasets import load_labelled_file
    from headroom.export.demo import write_demo_data

    return {
        tenant.name: load_labelled_file(tenant.data_file)
        for tenant in write_demo_data(settings().build_dir / "demo_data")
    }


def train_heads(session, tokenize, datasets: dict) -> dict:
    """Each demo head trained on this variant's embeddings as ``make heads`` trains it."""
    from headroom.export.heads import train_head

    def embed(texts):
        return encode_in_batches(session, tokenize, texts)

    return {name: train_head(data, embed) for name, data in datasets.items()}


def batch_independence(alone: np.ndarray, batched: np.ndarray, heads: dict) -> dict:
    """How far each text's answer moves between alone and inside a batch; every head on every text."""
    per_head = {}
    for name, head in heads.items():
        p_alone, p_batched = head.predict_proba(alone), head.predict_proba(batched)
        flips = int((p_alone.argmax(axis=1) != p_batched.argmax(axis=1)).sum())
        per_head[name] = {
            "max_abs_delta_prob": float(np.abs(p_alone - p_batched).max()),
            "label_flips": flips,
            "label_flip_share": round(flips / len(alone), 5),
        }
    changed = np.abs(alone - batched).max(axis=1)
    return {
        "texts": len(alone),
        "max_abs_delta_embedding": float(changed.max()),
        "texts_with_any_change": int((changed > 0).sum()),
        "max_abs_delta_prob": max(h["max_abs_delta_prob"] for h in per_head.values()),
        "label_flips": sum(h["label_flips"] for h in per_head.values()),
        "heads": per_head,
    }


def length_groups(texts: Sequence[str], counts: np.ndarray) -> list[list[str]]:
    """``texts`` sorted by token count and cut into groups of 32 (how the served system batches)."""
    order = np.argsort(counts, kind="stable")
    return [[texts[i] for i in order[start : start + BATCH_SIZE]] for start in range(0, len(order), BATCH_SIZE)]


def percentiles(counts: np.ndarray) -> dict:
    return {
        "texts": len(counts),
        "p50": float(np.percentile(counts, 50)),
        "p90": float(np.percentile(counts, 90)),
        "p99": float(np.percentile(counts, 99)),
        "max": int(counts.max()),
    }


def time_batches(session, feeds: list[dict], sentences: int) -> tuple[float, float]:
    """One pass over ``feeds``: (sentences per wall-clock second, CPU milliseconds per sentence)."""
    session.run(["sentence_embedding"], feeds[0])  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    for feed in feeds:
        session.run(["sentence_embedding"], feed)
    return sentences / (time.perf_counter() - started), 1000 * (time.process_time() - cpu_started) / sentences


def measure_speed(paths: dict[str, Path], tokenize, workloads: dict[str, list[list[str]]], rounds: int, threads: int):
    """Interleaved rounds: within a round every variant runs each workload once, in turn.

    Wall-clock sentences/s come from sessions as the server runs them (spinning worker threads);
    CPU ms per sentence from a second session per variant whose idle threads sleep, a figure
    that other work on a shared machine disturbs far less. Both are medians over rounds; ratios
    are medians of the per-round ratios to fp32.
    """
    sessions = {name: (session_for(p, threads), session_for(p, threads, spinning=False)) for name, p in paths.items()}
    feeds = {
        w: [dict(zip(("input_ids", "attention_mask"), tokenize(batch), strict=True)) for batch in batches]
        for w, batches in workloads.items()
    }
    sizes = {w: sum(len(batch) for batch in batches) for w, batches in workloads.items()}
    wall = {w: {v: [] for v in sessions} for w in workloads}
    cpu = {w: {v: [] for v in sessions} for w in workloads}
    for number in range(rounds):
        for workload in workloads:
            for variant, (spinning, sleeping) in sessions.items():
                wall[workload][variant].append(time_batches(spinning, feeds[workload], sizes[workload])[0])
                cpu[workload][variant].append(time_batches(sleeping, feeds[workload], sizes[workload])[1])
        log.info(
            "speed round %d/%d: %s",
            number + 1,
            rounds,
            ", ".join(f"{w} {v} {wall[w][v][-1]:.0f}/s" for w in workloads for v in sessions),
        )
    result = {}
    for workload in workloads:
        base_wall, base_cpu = wall[workload]["fp32"], cpu[workload]["fp32"]
        result[workload] = {
            variant: {
                "sentences_per_s": round(statistics.median(wall[workload][variant]), 1),
                "ratio_to_fp32": round(
                    statistics.median(v / b for v, b in zip(wall[workload][variant], base_wall, strict=True)), 3
                ),
                "cpu_ms_per_sentence": round(statistics.median(cpu[workload][variant]), 4),
                "cpu_speedup_to_fp32": round(
                    statistics.median(b / v for v, b in zip(cpu[workload][variant], base_cpu, strict=True)), 3
                ),
                "rounds_sentences_per_s": [round(v, 1) for v in wall[workload][variant]],
            }
            for variant in sessions
        }
    return result


def build_times(destination: Path) -> dict[str, float]:
    """Seconds to build each variant from scratch into ``destination`` (the build folder is not touched)."""
    from headroom.export.encoder import export_fp32, export_int8, export_int8_static

    paths = {name: variant_path(name, destination) for name in config.ENCODER_VARIANTS}
    builders = {
        "fp32": lambda: export_fp32(paths["fp32"]),
        "int8": lambda: export_int8(paths["fp32"], paths["int8"]),
        "int8-static": lambda: export_int8_static(paths["fp32"], paths["int8-static"]),
    }
    seconds = {}
    for name in config.ENCODER_VARIANTS:
        started = time.perf_counter()
        builders[name]()
        seconds[name] = round(time.perf_counter() - started, 1)
        log.info("built %s from scratch in %.0f s", name, seconds[name])
    return seconds


def run(
    rounds: int = 7,
    variants: dict[str, Path] | None = None,
    quick: bool = False,
    threads: int = THREADS,
    seed: int = 0,
    measure_builds: bool = False,
) -> dict:
    """``variants``: name -> ONNX file (default every exported variant; fp32 must be among them).

    ``quick``: a few hundred texts and two rounds, for the smoke test. ``measure_builds``: also
    time each variant's export from scratch (in a temporary folder; about a minute).
    """
    if variants is None:
        build_dir = settings().build_dir
        export_all(build_dir)
        variants = {name: variant_path(name, build_dir) for name in config.ENCODER_VARIANTS}
    if "fp32" not in variants:
        raise ValueError("fp32 is the reference: it must be one of the variants")
    tokenize = tokenizer()
    datasets = demo_datasets()
    demo = list(dict.fromkeys(t for data in datasets.values() for t in data.texts))
    held_out_prose = prose_paragraphs()[1::2]  # export.encoder.calibration_texts takes the others
    if quick:
        demo, held_out_prose = demo[:200], held_out_prose[:40]
        datasets = {name: _first_per_class(data, 12) for name, data in datasets.items()}
        rounds = min(rounds, 2)
    texts = demo + held_out_prose
    counts = token_counts(texts, tokenize)
    rng = np.random.default_rng(seed)
    mixed_order = rng.permutation(len(texts))
    grouped_order = np.argsort(counts, kind="stable")

    sessions = {name: session_for(path, threads) for name, path in variants.items()}
    embeddings, quality = {}, {}
    for name, session in sessions.items():
        started = time.perf_counter()
        alone = np.concatenate([encode(session, tokenize, [text]) for text in texts])
        mixed = encode_in_batches(session, tokenize, texts, mixed_order)
        grouped = encode_in_batches(session, tokenize, texts, grouped_order)
        heads = train_heads(session, tokenize, datasets)
        embeddings[name] = alone
        quality[name] = {
            "model_bytes": Path(variants[name]).stat().st_size,
            "holdout": {
                tenant: {k: head.metrics[k] for k in ("holdout_accuracy", "holdout_macro_f1", "holdout_examples")}
                for tenant, head in heads.items()
            },
            "batch_independence": {
                "random_mix": batch_independence(alone, mixed, heads),
                "length_groups": batch_independence(alone, grouped, heads),
            },
        }
        log.info(
            "%s: embedded and trained heads in %.0f s; alone vs in a random batch: max |dp| %.2g, %d label flips",
            name,
            time.perf_counter() - started,
            quality[name]["batch_independence"]["random_mix"]["max_abs_delta_prob"],
            quality[name]["batch_independence"]["random_mix"]["label_flips"],
        )
    demo_rows = np.arange(len(demo))
    prose_rows = np.arange(len(demo), len(texts))
    for name in variants:
        similarity = cosine(embeddings[name], embeddings["fp32"])
        quality[name]["cosine_to_fp32"] = {
            part: {"min": float(similarity[rows].min()), "mean": float(similarity[rows].mean()), "texts": len(rows)}
            for part, rows in (("all", np.arange(len(texts))), ("demo", demo_rows), ("prose", prose_rows))
        }

    short = [t for t, c in zip(texts, counts, strict=True) if c <= SHORT_MAX_TOKENS][: 64 if quick else SHORT_TEXTS]
    mix = demo + prose_paragraphs()
    if quick:
        mix = mix[:: max(1, len(mix) // 256)]
    mix_counts = token_counts(mix, tokenize)
    workloads = {
        f"short_le{SHORT_MAX_TOKENS}_b{BATCH_SIZE}": [
            short[i : i + BATCH_SIZE] for i in range(0, len(short) - BATCH_SIZE + 1, BATCH_SIZE)
        ],
        "mix_length_groups": length_groups(mix, mix_counts),
    }
    del sessions
    speed = measure_speed(variants, tokenize, workloads, rounds, threads)
    built = None
    if measure_builds:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="headroom-encoder-build-") as folder:
            built = build_times(Path(folder))
    return {
        "build_seconds": built,
        "threads": threads,
        "rounds": rounds,
        "batch_size": BATCH_SIZE,
        "evaluation_texts": {"demo": len(demo), "held_out_prose": len(held_out_prose)},
        "evaluation_tokens": percentiles(counts),
        "mix_tokens": percentiles(mix_counts),
        "variants": quality,
        "speed": speed,
    }


def _first_per_class(data, per_class: int):
    from headroom.export.datasets import LabelledTexts

    kept, seen = [], {}
    for text, label in zip(data.texts, data.labels, strict=True):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            kept.append((text, label))
    return LabelledTexts([t for t, _ in kept], [label for _, label in kept])


def summary_rows(report: dict) -> list[str]:
    """One line per variant: the figures docs/benchmarks.md's encoder table quotes."""
    lines = []
    for name, q in report["variants"].items():
        accuracy = ", ".join(f"{t} {h['holdout_accuracy']:.3f}" for t, h in q["holdout"].items())
        mix, groups = q["batch_independence"]["random_mix"], q["batch_independence"]["length_groups"]
        speed = "; ".join(
            f"{w} {s[name]['sentences_per_s']:.0f}/s (x{s[name]['ratio_to_fp32']:.2f}, "
            f"CPU x{s[name]['cpu_speedup_to_fp32']:.2f})"
            for w, s in report["speed"].items()
        )
        lines.append(
            f"{name}: cosine to fp32 min {q['cosine_to_fp32']['all']['min']:.4f} mean "
            f"{q['cosine_to_fp32']['all']['mean']:.4f}; hold-out {accuracy}; alone vs batch max |dp| "
            f"{mix['max_abs_delta_prob']:.2g} random / {groups['max_abs_delta_prob']:.2g} length groups, "
            f"{mix['label_flips']} / {groups['label_flips']} label flips; {speed}"
        )
    return lines


def plot(report: dict) -> None:
    plt = pyplot()
    names = list(report["variants"])
    figure, (speed_axes, delta_axes) = plt.subplots(1, 2, figsize=(10, 4))
    workloads = list(report["speed"])
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        speed_axes.bar(
            [w + index * width for w in range(len(workloads))],
            [report["speed"][w][name]["sentences_per_s"] for w in workloads],
            width,
            label=name,
        )
        delta_axes.bar(
            [index],
            [max(report["variants"][name]["batch_independence"]["random_mix"]["max_abs_delta_prob"], 1e-9)],
            label=name,
        )
    speed_axes.set_xticks([w + width * (len(names) - 1) / 2 for w in range(len(workloads))], workloads)
    speed_axes.set_ylabel(f"sentences / s ({report['threads']} threads)")
    speed_axes.set_title("Encoder speed (median of interleaved rounds)")
    speed_axes.legend()
    delta_axes.set_yscale("log")
    delta_axes.axhline(1e-5, color="grey", linestyle="--", label="1e-5")
    delta_axes.set_xticks(range(len(names)), names)
    delta_axes.set_ylabel("max |Δ probability|, alone vs in a batch of 32")
    delta_axes.set_title("Batch independence (every demo head)")
    figure.suptitle("Encoder variants")
    save_figure(figure, "encoder_variants")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved speed rounds (default %(default)s)")
    parser.add_argument("--threads", type=int, default=THREADS, help="intra-op threads (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a few hundred texts, two rounds (smoke test)")
    parser.add_argument(
        "--build-times", action="store_true", help="also time each variant's export from scratch (about a minute)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args.rounds, quick=args.quick, threads=args.threads, measure_builds=args.build_times)
    write_report("encoder_variants", report)
    plot(report)
    for line in summary_rows(report):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
