"""Demo tenants: their training data and the heads ``make serve`` builds for them.

- ``knowledge``, ``lifestyle`` and ``smalltalk`` come from the English topic files of the
  ``chatterbot-corpus`` package: every utterance of a topic file is labelled with that topic.
- ``smart_home`` is an intent-style tenant written for this project (``export/data/smart_home.jsonl``:
  400 utterances over 10 intents).

``prose_paragraphs`` is the longer real text that ships with every CPython: the paragraphs of
the Python documentation behind ``help()`` (``pydoc_data.topics``). Static quantisation
calibrates on part of it (``export.encoder.calibration_texts``); the traffic of texts of real
length draws from it (``client.traffic.real_text_mix``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from headroom import config

log = logging.getLogger(__name__)

#: tenant -> chatterbot-corpus English topic files (file stem -> label)
CORPUS_TENANTS: dict[str, tuple[str, ...]] = {
    "knowledge": ("computers", "coding", "science", "literature", "history", "politics"),
    "lifestyle": ("food", "health", "money", "movies", "sports"),
    "smalltalk": ("greetings", "emotion", "humor", "psychology", "ai", "gossip", "botprofile"),
}
FILE_TENANTS: dict[str, Path] = {"smart_home": config.DEMO_DATA_DIR / "smart_home.jsonl"}
DEMO_TENANTS = (*CORPUS_TENANTS, *FILE_TENANTS)


@dataclass(frozen=True)
class DemoTenant:
    name: str
    data_file: Path


def corpus_dir() -> Path:
    import chatterbot_corpus

    return Path(chatterbot_corpus.__file__).resolve().parent / "data" / "english"


def corpus_examples(topics: tuple[str, ...]) -> list[dict[str, str]]:
    """Every distinct utterance of each topic file, labelled by the topic (file stem)."""
    import yaml

    seen: set[str] = set()
    examples = []
    for topic in topics:
        document = yaml.safe_load((corpus_dir() / f"{topic}.yml").read_text(encoding="utf-8"))
        for conversation in document.get("conversations", []):
            for utterance in conversation:
                text = " ".join(str(utterance).split())
                if text and text not in seen:
                    seen.add(text)
                    examples.append({"text": text, "label": topic})
    return examples


def write_demo_data(destination: Path) -> list[DemoTenant]:
    """Materialise every demo tenant's training file as JSONL; returns them in order."""
    destination.mkdir(parents=True, exist_ok=True)
    tenants = []
    for name, topics in CORPUS_TENANTS.items():
        path = destination / f"{name}.jsonl"
        lines = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in corpus_examples(topics))
        if not path.exists() or path.read_text(encoding="utf-8") != lines:
            path.write_text(lines, encoding="utf-8")
        tenants.append(DemoTenant(name, path))
    tenants += [DemoTenant(name, path) for name, path in FILE_TENANTS.items()]
    return tenants


def prose_paragraphs() -> list[str]:
    """Prose paragraphs of Python's own documentation (``pydoc_data.topics``), code blocks left out.

    Distinct, whitespace-normalised, at least 8 words, in a fixed order (sorted topic names).
    """
    import re
    from pydoc_data.topics import topics

    paragraphs: dict[str, None] = {}
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(block.split())
            if not block.startswith(" ") and len(text.split()) >= 8:  # indented blocks are code
                paragraphs[text] = None
    return list(paragraphs)
