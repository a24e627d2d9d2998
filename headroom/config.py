"""Every setting of headroom in one place: paths, ports, model names, defaults.

Each value has a documented default and can be overridden by the environment variable named
next to it (the CLI's flags override the environment in turn). Values that the *server-side*
models need (truncation length, thread counts) live in their own ``config.pbtxt`` instead,
because Triton hands those files to the models; the README lists both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name, str(default))).resolve()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


# --- model names (the model repository's folder names) -------------------------------------
ENCODER_MODEL = "encoder"
#: Texts -> sentence embeddings: tokenizes, groups texts of similar length, calls the encoder per group.
EMBED_MODEL = "embed"
PIPELINE_MODEL = "pipeline"
#: Runs every head; each head is registered as an ensemble ``head_<name>`` with one step into it.
EXECUTOR_MODEL = "executor"
#: In load order: a model's dependencies come before it.
SYSTEM_MODELS = (ENCODER_MODEL, EMBED_MODEL, EXECUTOR_MODEL, PIPELINE_MODEL)
#: Heads are Triton models named ``head_<name>``; clients and ``pipeline`` use ``<name>``.
HEAD_MODEL_PREFIX = "head_"

# --- encoder ---------------------------------------------------------------------------------
EMBEDDING_DIM = 384
#: Maximum tokens per text, [CLS] and [SEP] included (sentence-transformers' value for MiniLM).
MAX_SEQ_LEN_TOKENS = 256
#: fp32; int8: dynamic quantisation (activation scales per batch); int8-static: static quantisation
#: (activation ranges calibrated on real text, answers independent of the batch). README "Choosing the encoder".
ENCODER_VARIANTS = ("fp32", "int8", "int8-static")
#: Variants whose answer for a text does not depend on its batch-mates or padding (to 1e-5): their
#: activation scales are fixed (fp32: none). Dynamic int8 computes scales per batch.
BATCH_INDEPENDENT_VARIANTS = ("fp32", "int8-static")
#: Which exported encoder ``make serve`` places in the repository (README: "Choosing the encoder"):
#: int8-static, about twice fp32's speed with answers as batch-independent as fp32's (<= 1e-5).
ENCODER_VARIANT = os.environ.get("HEADROOM_ENCODER_VARIANT", "int8-static")
#: Metadata written next to the served encoder: fingerprint, variant, dimensions.
ENCODER_INFO_FILE = "encoder.json"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_VERSION = "1"

# --- paths -----------------------------------------------------------------------------------
MODEL_REPOSITORY = _env_path("HEADROOM_MODEL_REPOSITORY", PROJECT_ROOT / "model_repository")
#: Exported encoder variants (every one of ENCODER_VARIANTS) before one is copied into the repository.
BUILD_DIR = _env_path("HEADROOM_BUILD_DIR", PROJECT_ROOT / "build")


def state_dir_for(repository: Path) -> Path:
    """Staging and archive folders for onboarding into ``repository``.

    They must be on the repository's filesystem so that a finished head can be renamed into
    place atomically: by default ``<repository>/../.headroom`` (env HEADROOM_STATE_DIR).
    """
    return _env_path("HEADROOM_STATE_DIR", Path(repository).resolve().parent / ".headroom")


STATE_DIR = state_dir_for(MODEL_REPOSITORY)
#: Demo tenants' training files that ship in the repo.
DEMO_DATA_DIR = PROJECT_ROOT / "export" / "data"

# --- server ----------------------------------------------------------------------------------
HOST = os.environ.get("HEADROOM_HOST", "localhost")
HTTP_PORT = _env_int("HEADROOM_HTTP_PORT", 8000)
GRPC_PORT = _env_int("HEADROOM_GRPC_PORT", 8001)
METRICS_PORT = _env_int("HEADROOM_METRICS_PORT", 8002)
SERVER_READY_TIMEOUT_S = _env_int("HEADROOM_READY_TIMEOUT_S", 300)
SERVER_SHUTDOWN_TIMEOUT_S = _env_int("HEADROOM_SHUTDOWN_TIMEOUT_S", 30)
#: Allocator for tritonserver: ``auto`` (jemalloc when one of JEMALLOC_PATHS exists), ``off``,
#: or a library path (env HEADROOM_JEMALLOC).
JEMALLOC = os.environ.get("HEADROOM_JEMALLOC", "auto")
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
#: glibc malloc arenas for tritonserver and its stubs when jemalloc is not preloaded (env
#: HEADROOM_MALLOC_ARENA_MAX; 0 leaves glibc's default of 8 per core; an explicit MALLOC_ARENA_MAX
#: in the environment wins). Each ``load_model`` with 10,000 heads loaded passes through ~100 MiB
#: of short-lived allocations, and glibc keeps the peak of every arena they ran in: with its 16
#: arenas (2 cores) 20 onboardings over gRPC left tritonserver ~1.7 GB larger, with one arena
#: 30-35 MiB (``server.triton.glibc_malloc_settings``).
MALLOC_ARENA_MAX = _env_int("HEADROOM_MALLOC_ARENA_MAX", 1)
#: Triton's --log-verbose level.
SERVER_LOG_VERBOSE = _env_int("HEADROOM_LOG_VERBOSE", 0)

# --- control plane (README "Security") -------------------------------------------------------
#: Environment variable holding the admin key; it wins over the key file.
ADMIN_KEY_ENV = "HEADROOM_ADMIN_KEY"
#: Environment variable naming the key file (default ``<state dir>/admin.key``).
ADMIN_KEY_FILE_ENV = "HEADROOM_ADMIN_KEY_FILE"
#: HTTP header carrying the key (the ``<key>`` of Triton's ``--http-restricted-api``).
ADMIN_KEY_HEADER = "admin-key"
#: Triton checks gRPC calls for the same key under this prefixed metadata name.
ADMIN_KEY_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
#: Triton API groups that need the admin key, over HTTP and gRPC alike. ``health``, ``metadata``
#: and ``inference`` stay open; README "Security" says why each of these is closed.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")


def admin_key_file_for(state_dir: Path) -> Path:
    """Where ``headroom serve`` keeps the admin key: ``<state dir>/admin.key`` (env HEADROOM_ADMIN_KEY_FILE)."""
    return _env_path(ADMIN_KEY_FILE_ENV, Path(state_dir) / "admin.key")


ADMIN_KEY_FILE = admin_key_file_for(STATE_DIR)

# --- client ----------------------------------------------------------------------------------
#: ``http://host:port`` or ``grpc://host:port``; the scheme picks the protocol.
DEFAULT_URL = os.environ.get("HEADROOM_URL", f"http://{HOST}:{HTTP_PORT}")
CLIENT_TIMEOUT_S = _env_int("HEADROOM_CLIENT_TIMEOUT_S", 60)
#: Requests in flight at once when classifying or embedding many texts.
CLIENT_CONCURRENCY = _env_int("HEADROOM_CLIENT_CONCURRENCY", 16)
#: Texts per ``pipeline`` request of ``classify`` (sent in chunks of similar length).
CLIENT_BATCH_SIZE = _env_int("HEADROOM_CLIENT_BATCH_SIZE", 32)
#: Texts per ``embed`` request of ``embed`` (head training through the server included).
EMBED_BATCH_SIZE = _env_int("HEADROOM_EMBED_BATCH_SIZE", 32)
#: ``headroom classify --input`` classifies this many records at a time (bounds the client's memory).
CLI_BLOCK_TEXTS = _env_int("HEADROOM_CLI_BLOCK_TEXTS", 4096)
#: How long ``offboard`` waits for Triton to report an unloaded head no longer READY.
LOAD_TIMEOUT_S = _env_int("HEADROOM_LOAD_TIMEOUT_S", 120)
#: How long onboarding/offboarding waits for another one of the same head name (on this host,
#: any process) to finish: they hold ``<state dir>/locks/<name>.lock`` while they write and load.
HEAD_LOCK_TIMEOUT_S = _env_int("HEADROOM_HEAD_LOCK_TIMEOUT_S", 300)
#: Text sent through ``pipeline`` to a head just loaded by ``onboard_model`` (``onboard`` sends
#: the first training text): the head must answer it with its own labels before onboarding succeeds.
ONBOARD_PROBE_TEXT = "headroom onboarding probe"

# --- head validation (onboarding refuses a head that fails these; export/validation.py) -------
#: Rows of the random unit-length embeddings a head is run on before it is written.
HEAD_PROBE_ROWS = 2
#: How far a row of a head's output may sum from 1 (a head outputs probabilities, not logits).
HEAD_PROBABILITY_TOLERANCE = 1e-3

# --- head training ---------------------------------------------------------------------------
HOLDOUT_FRACTION = 0.2
#: Inverse regularisation strength of the logistic regression (scikit-learn's ``C``).
HEAD_REGULARISATION_C = float(os.environ.get("HEADROOM_HEAD_C", "10.0"))
TRAINING_SEED = 0


@dataclass(frozen=True)
class ServerAddress:
    """Ports of one Triton server; the launcher and the test fixture both use it."""

    host: str = HOST
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"


def encoder_version_dir(repository: Path = MODEL_REPOSITORY) -> Path:
    """Folder holding the served encoder's ONNX file, tokenizer and fingerprint."""
    return repository / ENCODER_MODEL / ENCODER_VERSION
