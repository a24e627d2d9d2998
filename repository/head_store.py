"""Heads on disk: written into the model repository atomically, versioned, archived.

Layout of one head (Triton model ``head_<name>``)::

    head_<name>/config.pbtxt        registration model: an ensemble into the shared executor
    head_<name>/<version>/model.onnx
    head_<name>/<version>/labels.txt   label names in output order
    head_<name>/<version>/head.json    labels, encoder fingerprint, training metrics

Every write is staged under ``<state dir>/staging`` and renamed into place (a single atomic
``rename``), so a crash never leaves a half-written head: a new head appears as a whole
folder, a new version as a whole version folder. Labels live in the version folder, so a new
version can change its classes while the previous one keeps serving.

One onboarding or offboarding of a name at a time: ``headroom.repository.locks``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from headroom import config
from headroom.head_format import (
    FINGERPRINT_KEY,
    HEAD_INFO_FILE,
    HEAD_INPUT,
    HEAD_OUTPUT,
    LABELS_FILE,
    MODEL_FILE,
    SLOTS_MODEL_FILE,
    TAGS_FILE,
    SlotFiles,
)
from headroom.model_config import format_model_config, parse_model_config
from headroom.naming import head_model_name, head_models_in

#: Comment at the top of a head's registration ``config.pbtxt``.
REGISTRATION_HEADER = """\
# Head of tenant '{name}', written by headroom onboarding: a registration model. Loading and
# unloading it switches the tenant on and off; the shared '{executor}' model runs the head from
# <version>/model.onnx and <version>/labels.txt. Called directly, it needs the request parameter
# "head" = "{name}" (an ensemble cannot inject a constant; Triton forwards request parameters).
"""
#: Rows one request to a registration model may carry (the executor's own max_batch_size).
REGISTRATION_MAX_BATCH_SIZE = 256


@dataclass(frozen=True)
class StoredHead:
    name: str
    model_name: str
    version: int
    path: Path


def registration_model_config(name: str):
    """Head ``name``'s registration model (Triton ``ModelConfig``): an ensemble whose one step is
    the shared ``executor``. Triton loads, unloads, versions and counts it like any model, at no
    process cost; the executor reads the version folder's model.onnx and labels.txt (Triton does not)."""
    from tritonclient.grpc import model_config_pb2 as pb

    model = pb.ModelConfig(name=head_model_name(name), platform="ensemble", max_batch_size=REGISTRATION_MAX_BATCH_SIZE)
    model.input.add(name=HEAD_INPUT, data_type=pb.TYPE_FP32, dims=[config.EMBEDDING_DIM])
    model.output.add(name=HEAD_OUTPUT, data_type=pb.TYPE_FP32, dims=[-1])
    step = model.ensemble_scheduling.step.add(model_name=config.EXECUTOR_MODEL, model_version=-1)
    step.input_map[HEAD_INPUT] = HEAD_INPUT
    step.output_map[HEAD_OUTPUT] = HEAD_OUTPUT
    model.version_policy.latest.num_versions = 1
    return model


def registration_config(name: str) -> str:
    """``config.pbtxt`` text of head ``name``'s registration model."""
    header = REGISTRATION_HEADER.format(name=name, executor=config.EXECUTOR_MODEL)
    return header + format_model_config(registration_model_config(name))


def is_registration(config_text: str) -> bool:
    """Whether a head's ``config.pbtxt`` is a registration model (an ensemble), not a per-head model."""
    return parse_model_config(config_text).platform == "ensemble"


def upgrade_registrations(repository: Path) -> list[str]:
    """Rewrite heads written as per-head ONNX Runtime models into registration models.

    Repositories from before the shared executor held one ``backend: "onnxruntime"`` model per
    head; their version folders already hold what the executor reads, so only ``config.pbtxt``
    changes (atomically). Run before the server starts; returns the heads rewritten.
    """
    upgraded = []
    for model_name in head_models_in(repository):
        name = model_name[len(config.HEAD_MODEL_PREFIX) :]
        path = repository / model_name / "config.pbtxt"
        if is_registration(path.read_text(encoding="utf-8")):
            continue
        tmp = path.with_name(f".config.pbtxt.{uuid.uuid4().hex}.tmp")
        _write_file(tmp, registration_config(name).encode("utf-8"))
        os.replace(tmp, path)
        upgraded.append(name)
    return upgraded


def read_encoder_info(repository: Path) -> dict:
    """The served encoder's ``encoder.json`` (fingerprint, variant, dimensions)."""
    path = config.encoder_version_dir(repository) / config.ENCODER_INFO_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `headroom export` first")
    return json.loads(path.read_text())


def copy_repository(source: Path, target: Path, heads: tuple[str, ...] | list[str]) -> Path:
    """Copy ``source``'s system models and only the heads named in ``heads`` to ``target`` (no
    bytecode): a server of the tests or benchmarks must not see tenants onboarded by hand."""
    wanted = {head_model_name(name) for name in heads}
    source = Path(source)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__"}
        if Path(directory) == source:
            skipped |= {n for n in names if n.startswith(config.HEAD_MODEL_PREFIX) and n not in wanted}
        return skipped

    shutil.copytree(source, target, ignore=ignore)
    return Path(target)


def head_dir(name: str, repository: Path) -> Path:
    return repository / head_model_name(name)


def versions_of(model_dir: Path) -> list[int]:
    """Numeric version folders of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_head_info(name: str, repository: Path) -> dict:
    """``head.json`` of the newest version of head ``name``."""
    model_dir = head_dir(name, repository)
    versions = versions_of(model_dir)
    if not versions:
        raise FileNotFoundError(f"head {name!r} has no version in {model_dir}")
    return json.loads((model_dir / str(versions[-1]) / HEAD_INFO_FILE).read_text())


def heads_trained_for(fingerprint: str, repository: Path) -> list[str]:
    """Heads of the repository whose newest version was trained against encoder ``fingerprint``."""
    names = []
    for model in head_models_in(repository):
        name = model[len(config.HEAD_MODEL_PREFIX) :]
        try:
            info = read_head_info(name, repository)
        except (OSError, ValueError):
            continue
        if info.get(FINGERPRINT_KEY) == fingerprint:
            names.append(name)
    return names


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def version_files(model_bytes: bytes, labels: list[str], info: dict, slots: SlotFiles | None) -> dict[str, bytes]:
    """The files of one head version folder, by name (``headroom.head_format``)."""
    files = {
        MODEL_FILE: model_bytes,
        LABELS_FILE: ("\n".join(labels) + "\n").encode("utf-8"),
        HEAD_INFO_FILE: (json.dumps(info, indent=2) + "\n").encode("utf-8"),
    }
    if slots is not None:
        files[SLOTS_MODEL_FILE] = slots.model
        files[TAGS_FILE] = ("\n".join(slots.tags) + "\n").encode("utf-8")
    return files


def _write_version(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, content in files.items():
        _write_file(folder / name, content)
    _fsync_dir(folder)


def head_info(fingerprint: str, metrics: dict, source: str) -> dict:
    """The ``head.json`` fields a head brings (``write_head_model`` adds name, version, labels, time)."""
    return {FINGERPRINT_KEY: fingerprint, "metrics": metrics, "trained_from": source}


def write_head_model(
    name: str,
    model_bytes: bytes,
    labels: list[str],
    info: dict,
    repository: Path,
    state_dir: Path,
    slots: SlotFiles | None = None,
) -> StoredHead:
    """Write any head file (``model.onnx`` bytes) with its labels and ``head.json`` fields (and
    a head with slots: its token head, ``slots``).

    The head becomes ``head_<name>/1`` (with its registration ``config.pbtxt``) or the next
    version of an existing head. Staged, then renamed into place: never half-written.
    """
    model_name = head_model_name(name)
    model_dir = repository / model_name
    staging_root = state_dir / "staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = staging_root / f"{model_name}.{uuid.uuid4().hex}"

    def version_info(version: int) -> dict:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {"name": name, "version": version, "labels": list(labels), "created_at": created, **info}

    try:
        if model_dir.exists():
            version = (versions_of(model_dir) or [0])[-1] + 1
            _write_version(staging, version_files(model_bytes, labels, version_info(version), slots))
            target = model_dir / str(version)
        else:
            version = 1
            staging.mkdir()
            _write_file(staging / "config.pbtxt", registration_config(name).encode("utf-8"))
            _write_version(staging / "1", version_files(model_bytes, labels, version_info(version), slots))
            _fsync_dir(staging)
            target = model_dir
        # rename() refuses to replace a non-empty folder, so two writers racing for the same
        # target cannot both win; the loser gets an OSError and its staging copy is removed.
        os.rename(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StoredHead(name=name, model_name=model_name, version=version, path=model_dir)


def archive_path(model_name: str, state_dir: Path, suffix: str = "") -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return state_dir / "archive" / f"{model_name}{suffix}.{stamp}.{uuid.uuid4().hex[:8]}"


def archive_old_versions(name: str, keep: int, repository: Path, state_dir: Path) -> list[Path]:
    """Move the versions older than ``keep`` out of the repository into the archive.

    Newer ones stay: another onboarding may have just written and loaded one.
    """
    model_dir = head_dir(name, repository)
    moved = []
    for version in versions_of(model_dir):
        if version < keep:
            target = archive_path(head_model_name(name), state_dir, suffix=f".v{version}")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(model_dir / str(version), target)
            moved.append(target)
    return moved


def archive_head(name: str, repository: Path, state_dir: Path, suffix: str = "") -> Path | None:
    """Move a head's whole folder into the archive; None when it was not there."""
    model_dir = head_dir(name, repository)
    if not model_dir.exists():
        return None
    target = archive_path(head_model_name(name), state_dir, suffix=suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(model_dir, target)
    return target


def archive_version(
    name: str,
    version: int,
    repository: Path,
    state_dir: Path,
    suffix: str = "",
) -> Path | None:
    """Move one version folder of a head into the archive; None when it was not there."""
    folder = head_dir(name, repository) / str(version)
    if not folder.is_dir():
        return None
    target = archive_path(head_model_name(name), state_dir, suffix=f".v{version}{suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder, target)
    return target


#: Staging folders younger than this may belong to an onboarding still running elsewhere.
STAGING_ABANDONED_AFTER_S = 3600


def clean_staging(state_dir: Path) -> int:
    """Remove staging leftovers of interrupted onboardings (older than an hour); returns how many."""
    staging_root = state_dir / "staging"
    if not staging_root.is_dir():
        return 0
    cutoff = time.time() - STAGING_ABANDONED_AFTER_S
    leftovers = [entry for entry in staging_root.iterdir() if entry.stat().st_mtime < cutoff]
    for entry in leftovers:
        shutil.rmtree(entry, ignore_errors=True)
    return len(leftovers)


def registration_load_config(name: str, versions: list[int]) -> str:
    """Head ``name``'s registration model as the JSON ``config`` of a load request, serving
    exactly ``versions``: how a replica loads from a store whose version folders may exist
    before they are complete (``headroom.repository.s3_store``)."""
    from google.protobuf import json_format

    model = registration_model_config(name)
    model.version_policy.specific.versions.extend(versions)
    return json_format.MessageToJson(model)


class LocalHeadStore:
    """The heads of a local model repository folder (atomic renames; archive in the state folder).

    The interface ``headroom.repository.s3_store.S3HeadStore`` shares, so onboarding and the
    reconciler work on either.
    """

    #: A version folder appears whole (rename), so a plain load takes only complete versions.
    atomic = True

    def __init__(self, repository: Path, state_dir: Path) -> None:
        self.repository = Path(repository)
        self.state_dir = Path(state_dir)

    @property
    def url(self) -> str:
        return str(self.repository)

    def check(self) -> None:
        """Nothing to check beyond what the launcher checks on disk."""

    def read_encoder_info(self) -> dict:
        return read_encoder_info(self.repository)

    def versions(self, name: str) -> list[int]:
        return versions_of(head_dir(name, self.repository))

    def complete_versions(self, name: str) -> list[int]:
        return self.versions(name)

    def complete_heads(self) -> dict[str, list[int]]:
        heads = {}
        for model in head_models_in(self.repository):
            versions = versions_of(self.repository / model)
            if versions:
                heads[model[len(config.HEAD_MODEL_PREFIX) :]] = versions
        return heads

    def write_head_model(
        self, name: str, model_bytes: bytes, labels: list[str], info: dict, slots: SlotFiles | None = None
    ) -> StoredHead:
        return write_head_model(name, model_bytes, labels, info, self.repository, self.state_dir, slots)

    def archive_old_versions(self, name: str, keep: int) -> list[Path]:
        return archive_old_versions(name, keep, self.repository, self.state_dir)

    def archive_head(self, name: str, suffix: str = "") -> Path | None:
        return archive_head(name, self.repository, self.state_dir, suffix=suffix)

    def archive_version(self, name: str, version: int, suffix: str = "") -> Path | None:
        return archive_version(name, version, self.repository, self.state_dir, suffix=suffix)


def open_head_store(repository: str | Path, state_dir: Path):
    """The head store of a model repository: ``S3HeadStore`` for ``s3://...``, else ``LocalHeadStore``."""
    from headroom.s3 import is_s3_url

    if is_s3_url(str(repository)):
        from headroom.repository.s3_store import S3HeadStore

        return S3HeadStore(str(repository))
    return LocalHeadStore(Path(repository), state_dir)
