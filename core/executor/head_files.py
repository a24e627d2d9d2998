"""Where a head's files are: the one place the executor reads the model repository.

A head named ``<name>`` is registered as the Triton model ``head_<name>``; each of its version
folders holds what the executor serves::

    <repository>/head_<name>/<version>/model.onnx    the head (any ONNX graph FP32 [B, D] -> [B, C])
    <repository>/head_<name>/<version>/labels.txt    class names in output order, one per line
    <repository>/head_<name>/<version>/head.json     encoder fingerprint, training metrics
    <repository>/head_<name>/<version>/slots.onnx    a head with slots: its token head [B, T, D] -> [B, T, K]
    <repository>/head_<name>/<version>/tags.txt      ... and its BIO tag names in output order

Reading goes through ``HeadFiles`` only; ``headroom.executor.s3_head_files.S3HeadFiles`` is the
same view of a head store on S3. Which names are heads is not decided here: the
executor checks each name with ``headroom.naming.head_name_problem`` before it asks for its files.
Pure Python, no Triton import.
"""

from __future__ import annotations

import json
import os

from headroom.config import ENCODER_INFO_FILE, HEAD_MODEL_PREFIX
from headroom.head_format import HEAD_INFO_FILE, LABELS_FILE, MODEL_FILE, SLOTS_MODEL_FILE, TAGS_FILE, SlotFiles


def version_numbers(model_dir: str) -> list[int]:
    """Numeric version folders of a model, newest first (OSError when the folder is gone)."""
    return sorted((int(n) for n in os.listdir(model_dir) if n.isascii() and n.isdigit()), reverse=True)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class HeadFiles:
    """Read-only view of the heads in one model repository folder."""

    def __init__(self, repository: str) -> None:
        self.repository = repository

    def model_name(self, head: str) -> str:
        return HEAD_MODEL_PREFIX + head

    def folder(self, head: str) -> str:
        return os.path.join(self.repository, self.model_name(head))

    def stamp(self, head: str) -> int | None:
        """Changes whenever a version folder is added or removed; None once the head is gone."""
        try:
            return os.stat(self.folder(head)).st_mtime_ns
        except OSError:
            return None

    def versions(self, head: str) -> list[int]:
        """Version numbers on disk, newest first; [] when the head is gone."""
        try:
            return version_numbers(self.folder(head))
        except OSError:
            return []

    def refresh(self, head: str) -> list[int] | None:
        """A folder is read afresh every time: nothing newer to learn (see ``S3HeadFiles``)."""
        return None

    def has_version(self, head: str, version: int) -> bool:
        return os.path.isdir(os.path.join(self.folder(head), str(version)))

    def read(self, head: str, version: int) -> tuple[bytes, list[str]]:
        """The head file and its labels (OSError when missing)."""
        version_dir = os.path.join(self.folder(head), str(version))
        with open(os.path.join(version_dir, MODEL_FILE), "rb") as handle:
            model_bytes = handle.read()
        # newline="\n": only line feeds separate labels (onboarding refuses labels with any).
        with open(os.path.join(version_dir, LABELS_FILE), encoding="utf-8", newline="\n") as handle:
            labels = [line.rstrip("\n") for line in handle if line.strip()]
        return model_bytes, labels

    def read_slots(self, head: str, version: int) -> SlotFiles | None:
        """The version's token head and its tags, or None for a head without slots."""
        version_dir = os.path.join(self.folder(head), str(version))
        try:
            with open(os.path.join(version_dir, SLOTS_MODEL_FILE), "rb") as handle:
                model_bytes = handle.read()
        except FileNotFoundError:
            return None
        with open(os.path.join(version_dir, TAGS_FILE), encoding="utf-8", newline="\n") as handle:
            tags = [line.rstrip("\n") for line in handle if line.strip()]
        return SlotFiles(model_bytes, tags)

    def trained_for(self, head: str, version: int) -> str | None:
        """Encoder fingerprint the version was trained against (None when not recorded)."""
        info = _read_json(os.path.join(self.folder(head), str(version), HEAD_INFO_FILE))
        value = info.get("encoder_fingerprint")
        return value if isinstance(value, str) else None


def encoder_fingerprint(folder: str) -> str | None:
    """The fingerprint in ``<folder>/encoder.json``, or None without one.

    ``headroom export`` writes the served encoder's ``encoder.json`` into the executor's own
    version folder: a model reads only its own folder, since Triton copies each model of an S3
    repository into a temporary folder of its own.
    """
    value = _read_json(os.path.join(folder, ENCODER_INFO_FILE)).get("fingerprint")
    return value if isinstance(value, str) else None
