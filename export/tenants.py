"""Build a tenant's head from a labelled file: load, embed, train, store.

Used both offline (``make heads`` builds the demo tenants with the in-process embedder) and
by onboarding (``client.HeadroomClient.onboard`` trains with ``train_from_file``, embedding
through the server's ``embed`` model, and writes through its own checks and lock).
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path

from export.datasets import LabelledTexts, load_labelled_file
from export.demo import write_demo_data
from export.head_store import StoredHead, read_head_info, write_head
from export.heads import Embedder, TrainedHead, train_head
from headroom import config
from headroom.naming import validate_head_name

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_from_file(data: LabelledTexts, data_file: Path, embed: Embedder) -> TrainedHead:
    """Train a head on ``data`` (read from ``data_file``), recording the file's digest in its metrics."""
    head = train_head(data, embed)
    head.metrics["data_sha256"] = file_digest(data_file)
    return head


def build_head(
    name: str,
    data_file: Path,
    embed: Embedder,
    fingerprint: str,
    repository: Path = config.MODEL_REPOSITORY,
    state_dir: Path = config.STATE_DIR,
) -> StoredHead:
    """Train head ``name`` from ``data_file`` and write it (or its next version) atomically."""
    validate_head_name(name)
    head = train_from_file(load_labelled_file(data_file), Path(data_file), embed)
    return write_head(name, head, fingerprint, source=str(data_file), repository=repository, state_dir=state_dir)


def is_current(name: str, data_file: Path, fingerprint: str, repository: Path = config.MODEL_REPOSITORY) -> bool:
    """True when the newest version of ``name`` was trained on this file against this encoder."""
    try:
        info = read_head_info(name, repository)
    except FileNotFoundError:
        return False
    return info.get("encoder_fingerprint") == fingerprint and info.get("metrics", {}).get("data_sha256") == file_digest(
        data_file
    )


def build_demo_heads(
    repository: Path = config.MODEL_REPOSITORY, state_dir: Path = config.STATE_DIR
) -> list[tuple[str, dict]]:
    """Build every demo tenant's head that is missing or stale; returns (name, metrics) of all.

    A stale head gets a new version; older versions stay on disk, since a running server may be
    serving them (Triton loads only the newest at the next start).
    """
    from export.embeddings import RepositoryEmbedder
    from export.encoder import read_encoder_info
    from export.head_store import upgrade_registrations

    for name in upgrade_registrations(repository):
        log.info("head %s: registered with the shared executor (was its own ONNX Runtime model)", name)
    fingerprint = read_encoder_info(repository)["fingerprint"]
    embedder = None
    summary = []
    for tenant in write_demo_data():
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
            )
        summary.append((tenant.name, read_head_info(tenant.name, repository)["metrics"]))
    return summary
