"""Build a tenant's head from a labelled file: load, embed, train, store.

Used both offline (``headroom heads`` builds the demo tenants with the in-process embedder and
writes them into the repository with ``write_head``) and by onboarding
(``headroom.client.onboarding`` trains with ``train_from_file``, embedding through the server's
``embed`` model, and writes through its own checks and lock).
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path

from headroom import config
from headroom.export.datasets import LabelledTexts, load_labelled_file
from headroom.export.demo import write_demo_data
from headroom.export.heads import Embedder, TrainedHead, exported_head, train_head
from headroom.head_format import FINGERPRINT_KEY
from headroom.naming import validate_head_name
from headroom.repository.head_store import StoredHead, head_info, read_head_info, write_head_model

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_from_file(
    data: LabelledTexts,
    data_file: Path,
    embed: Embedder,
    regularisation_c: float = config.DEFAULT_HEAD_REGULARISATION_C,
) -> TrainedHead:
    """Train a head on ``data`` (read from ``data_file``), recording the file's digest in its metrics."""
    head = train_head(data, embed, regularisation_c)
    head.metrics["data_sha256"] = file_digest(data_file)
    return head


def write_head(
    name: str, head: TrainedHead, fingerprint: str, *, repository: Path, state_dir: Path, source: str = ""
) -> StoredHead:
    """Write a trained head as a new head, or the next version of an existing one, atomically."""
    info = head_info(fingerprint, head.metrics, source)
    return write_head_model(name, exported_head(head, fingerprint), head.labels, info, repository, state_dir)


def build_head(
    name: str,
    data_file: Path,
    embed: Embedder,
    fingerprint: str,
    repository: Path,
    state_dir: Path,
    regularisation_c: float = config.DEFAULT_HEAD_REGULARISATION_C,
) -> StoredHead:
    """Train head ``name`` from ``data_file`` and write it (or its next version) atomically."""
    validate_head_name(name)
    head = train_from_file(load_labelled_file(data_file), Path(data_file), embed, regularisation_c)
    return write_head(name, head, fingerprint, source=str(data_file), repository=repository, state_dir=state_dir)


def is_current(name: str, data_file: Path, fingerprint: str, repository: Path) -> bool:
    """True when the newest version of ``name`` was trained on this file against this encoder."""
    try:
        info = read_head_info(name, repository)
    except FileNotFoundError:
        return False
    return info.get(FINGERPRINT_KEY) == fingerprint and info.get("metrics", {}).get("data_sha256") == file_digest(
        data_file
    )


def build_demo_heads(
    repository: Path, state_dir: Path, build_dir: Path, regularisation_c: float = config.DEFAULT_HEAD_REGULARISATION_C
) -> list[tuple[str, dict]]:
    """Build every demo tenant's head that is missing or stale; returns (name, metrics) of all.

    A stale head gets a new version; older versions stay on disk, since a running server may be
    serving them (Triton loads only the newest at the next start).
    """
    from headroom.export.embeddings import RepositoryEmbedder
    from headroom.export.encoder import read_encoder_info
    from headroom.repository.head_store import upgrade_registrations

    for name in upgrade_registrations(repository):
        log.info("head %s: registered with the shared executor (was its own ONNX Runtime model)", name)
    fingerprint = read_encoder_info(repository)["fingerprint"]
    embedder = None
    summary = []
    for tenant in write_demo_data(build_dir / "demo_data"):
        if not is_current(tenant.name, tenant.data_file, fingerprint, repository):
            embedder = embedder or RepositoryEmbedder(repository)
            log.info("training demo head %s from %s", tenant.name, tenant.data_file)
            build_head(
                tenant.name,
                tenant.data_file,
                partial(embedder, progress=True),
                fingerprint,
                repository,
                state_dir,
                regularisation_c,
            )
        summary.append((tenant.name, read_head_info(tenant.name, repository)["metrics"]))
    return summary
