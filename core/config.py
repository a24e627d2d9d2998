"""Every setting of headroom in one place: paths, ports, model names, defaults.

Constants (model names, tensor sizes, file names) are module attributes. What a user may
override lives in ``Settings``: each field has a documented default and the environment
variable named next to it; ``Settings.from_env()`` reads the environment *when called*, and the
CLI's flags override it in turn. Nothing reads the environment at import: a function that needs
the repository, the state folder or a port takes it as an argument. Values that the *server-side*
models need (truncation length, thread counts) live in their own ``config.pbtxt`` instead,
because Triton hands those files to the models; the README lists both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _env_path(name: str, default: Path, environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(name) or str(default)).resolve()


def _env_str(name: str, default: str, environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(name) or default


def _env_float(name: str, default: float, environ: dict[str, str] | None = None) -> float:
    raw = _env_str(name, "", environ)
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from exc


def _env_int(name: str, default: int, environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
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
#: (activation ranges calibrated on real text, answers independent of the batch).
#: docs/benchmarks.md, "Choosing the encoder".
ENCODER_VARIANTS = ("fp32", "int8", "int8-static")
#: Variants whose answer for a text does not depend on its batch-mates or padding (to 1e-5): their
#: activation scales are fixed (fp32: none). Dynamic int8 computes scales per batch.
BATCH_INDEPENDENT_VARIANTS = ("fp32", "int8-static")
#: Which exported encoder ``make serve`` places in the repository (docs/benchmarks.md, "Choosing
#: the encoder"; env HEADROOM_ENCODER_VARIANT): int8-static, about twice fp32's speed with
#: answers as batch-independent as fp32's (<= 1e-5).
DEFAULT_ENCODER_VARIANT = "int8-static"
#: Metadata written next to the served encoder: fingerprint, variant, dimensions.
ENCODER_INFO_FILE = "encoder.json"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_VERSION = "1"
#: Encoder files ``headroom export`` copies into other models' own version folders, since a model
#: must read only its own folder (Triton copies each model of an S3 repository to a temporary
#: folder of its own): the tokenizer for ``embed`` and ``pipeline``, the fingerprint for ``executor``.
ENCODER_FILES_OF_MODELS = {
    EMBED_MODEL: (TOKENIZER_FILE,),
    PIPELINE_MODEL: (TOKENIZER_FILE,),
    EXECUTOR_MODEL: (ENCODER_INFO_FILE,),
}

# --- repositories on S3 (docs/cluster.md) ---------------------------------------------------
#: Where the executor reads heads (set by the launcher for Triton): a local folder or the same
#: ``s3://host:port/bucket/path`` as the model repository. Unset: the executor's own repository.
HEAD_STORE_ENV = "HEADROOM_HEAD_STORE"
#: The executor's S3 head store lists a head's versions at most this often (a version written
#: meanwhile is seen this much later; Triton readiness still decides what serves).
S3_LISTING_TTL_S = 2.0
#: How often a replica compares what it has loaded with the repository (``headroom reconcile``,
#: the launcher on an S3 repository; env HEADROOM_RECONCILE_PERIOD_S).
DEFAULT_RECONCILE_PERIOD_S = 2.0

#: The request header a router hashes to keep one tenant's requests on one replica (the client
#: library sends it with every request for a single head; ``headroom.cluster.router``).
TENANT_HEADER = "x-tenant"

# --- paths (defaults of ``Settings``) ---------------------------------------------------------
DEFAULT_MODEL_REPOSITORY = PROJECT_ROOT / "model_repository"
#: Exported encoder variants (every one of ENCODER_VARIANTS) before one is copied into the repository.
DEFAULT_BUILD_DIR = PROJECT_ROOT / "build"


def state_dir_for(repository: Path | str, environ: dict[str, str] | None = None) -> Path:
    """Staging and archive folders for onboarding into ``repository``.

    They must be on the repository's filesystem so that a finished head can be renamed into
    place atomically: by default ``<repository>/../.headroom`` (env HEADROOM_STATE_DIR). For an
    S3 repository (its archive is in the bucket) it holds the locks, the admin key and the
    launcher's backends: by default ``.headroom`` beside the default repository.
    """
    if str(repository).startswith("s3://"):
        return _env_path("HEADROOM_STATE_DIR", DEFAULT_MODEL_REPOSITORY.parent / ".headroom", environ)
    return _env_path("HEADROOM_STATE_DIR", Path(repository).resolve().parent / ".headroom", environ)


def repository_of(value: str | Path) -> Path | str:
    """A model repository as given: ``s3://...`` stays a string (``Path`` would fold its ``//``),
    a folder becomes an absolute ``Path``."""
    text = str(value)
    return text if text.startswith("s3://") else Path(text).resolve()


#: Demo tenants' training files that ship in the repo.
DEMO_DATA_DIR = PROJECT_ROOT / "export" / "data"

# --- server (defaults of ``Settings``) --------------------------------------------------------
DEFAULT_HOST = "localhost"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_READY_TIMEOUT_S = 300
DEFAULT_SHUTDOWN_TIMEOUT_S = 30
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
#: 30-35 MiB (``headroom.server.environment.glibc_malloc_settings``).
DEFAULT_MALLOC_ARENA_MAX = 1

# --- control plane (docs/security.md) --------------------------------------------------------
#: Environment variable holding the admin key; it wins over the key file.
ADMIN_KEY_ENV = "HEADROOM_ADMIN_KEY"
#: Environment variable naming the key file (default ``<state dir>/admin.key``).
ADMIN_KEY_FILE_ENV = "HEADROOM_ADMIN_KEY_FILE"
#: HTTP header carrying the key (the ``<key>`` of Triton's ``--http-restricted-api``).
ADMIN_KEY_HEADER = "admin-key"
#: Triton checks gRPC calls for the same key under this prefixed metadata name.
ADMIN_KEY_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
#: Triton API groups that need the admin key, over HTTP and gRPC alike. ``health``, ``metadata``
#: and ``inference`` stay open; docs/security.md says why each of these is closed.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")


def admin_key_file_for(state_dir: Path, environ: dict[str, str] | None = None) -> Path:
    """Where ``headroom serve`` keeps the admin key: ``<state dir>/admin.key`` (env HEADROOM_ADMIN_KEY_FILE)."""
    return _env_path(ADMIN_KEY_FILE_ENV, Path(state_dir) / "admin.key", environ)


# --- client (defaults of ``Settings``) --------------------------------------------------------
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_HTTP_PORT}"
DEFAULT_CLIENT_TIMEOUT_S = 60
#: Requests in flight at once when classifying or embedding many texts.
DEFAULT_CLIENT_CONCURRENCY = 16
#: Texts per ``pipeline`` request of ``classify`` (sent in chunks of similar length).
DEFAULT_CLIENT_BATCH_SIZE = 32
#: Texts per ``embed`` request of ``embed`` (head training through the server included).
DEFAULT_EMBED_BATCH_SIZE = 32
#: ``headroom classify --input`` classifies this many records at a time (bounds the client's memory).
DEFAULT_CLI_BLOCK_TEXTS = 4096
#: How long ``offboard`` waits for Triton to report an unloaded head no longer READY.
DEFAULT_LOAD_TIMEOUT_S = 120
#: How long onboarding/offboarding waits for another one of the same head name (on this host,
#: any process) to finish: they hold ``<state dir>/locks/<name>.lock`` while they write and load.
DEFAULT_HEAD_LOCK_TIMEOUT_S = 300
#: Text sent through ``pipeline`` to a head just loaded by ``onboard_model`` (``onboard`` sends
#: the first training text): the head must answer it with its own labels before onboarding succeeds.
ONBOARD_PROBE_TEXT = "headroom onboarding probe"

# --- head validation (onboarding refuses a head that fails these; repository/validation.py) -------
#: Rows of the random unit-length embeddings a head is run on before it is written.
HEAD_PROBE_ROWS = 2
#: How far a row of a head's output may sum from 1 (a head outputs probabilities, not logits).
HEAD_PROBABILITY_TOLERANCE = 1e-3

# --- head training ---------------------------------------------------------------------------
HOLDOUT_FRACTION = 0.2
#: Inverse regularisation strength of the logistic regression (scikit-learn's ``C``).
DEFAULT_HEAD_REGULARISATION_C = 10.0
TRAINING_SEED = 0


@dataclass(frozen=True)
class ServerAddress:
    """Ports of one Triton server; the launcher and the test fixture both use it."""

    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class Settings:
    """What a user may override, each field with its environment variable (README "Configuration").

    Built by ``from_env`` at the entry points (the CLI, the benchmarks, the locust file) and
    passed to what needs it.
    """

    #: HEADROOM_MODEL_REPOSITORY: the folder Triton loads, or ``s3://host:port/bucket/path``.
    model_repository: Path | str = DEFAULT_MODEL_REPOSITORY
    #: HEADROOM_BUILD_DIR: exported encoder variants.
    build_dir: Path = DEFAULT_BUILD_DIR
    #: HEADROOM_STATE_DIR: staging, archive, locks, the admin key (default: beside the repository).
    state_dir: Path = DEFAULT_MODEL_REPOSITORY.parent / ".headroom"
    #: HEADROOM_ENCODER_VARIANT: the encoder ``headroom export`` installs.
    encoder_variant: str = DEFAULT_ENCODER_VARIANT
    #: HEADROOM_HOST, HEADROOM_HTTP_PORT, HEADROOM_GRPC_PORT, HEADROOM_METRICS_PORT.
    address: ServerAddress = ServerAddress()
    #: HEADROOM_READY_TIMEOUT_S: how long a start waits for every model to be ready.
    ready_timeout_s: int = DEFAULT_READY_TIMEOUT_S
    #: HEADROOM_SHUTDOWN_TIMEOUT_S: how long a stop drains before it ends the server.
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S
    #: HEADROOM_JEMALLOC: ``auto`` (jemalloc when one of JEMALLOC_PATHS exists), ``off``, or a path.
    jemalloc: str = "auto"
    #: HEADROOM_MALLOC_ARENA_MAX (see DEFAULT_MALLOC_ARENA_MAX).
    malloc_arena_max: int = DEFAULT_MALLOC_ARENA_MAX
    #: HEADROOM_LOG_VERBOSE: Triton's --log-verbose level.
    log_verbose: int = 0
    #: HEADROOM_ADMIN_KEY_FILE (default ``<state dir>/admin.key``).
    admin_key_file: Path = DEFAULT_MODEL_REPOSITORY.parent / ".headroom" / "admin.key"
    #: HEADROOM_URL: ``http://host:port`` or ``grpc://host:port``; the scheme picks the protocol.
    url: str = DEFAULT_URL
    #: HEADROOM_CLIENT_TIMEOUT_S
    client_timeout_s: int = DEFAULT_CLIENT_TIMEOUT_S
    #: HEADROOM_CLIENT_CONCURRENCY
    client_concurrency: int = DEFAULT_CLIENT_CONCURRENCY
    #: HEADROOM_CLIENT_BATCH_SIZE
    client_batch_size: int = DEFAULT_CLIENT_BATCH_SIZE
    #: HEADROOM_EMBED_BATCH_SIZE
    embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE
    #: HEADROOM_CLI_BLOCK_TEXTS
    cli_block_texts: int = DEFAULT_CLI_BLOCK_TEXTS
    #: HEADROOM_LOAD_TIMEOUT_S
    load_timeout_s: int = DEFAULT_LOAD_TIMEOUT_S
    #: HEADROOM_HEAD_LOCK_TIMEOUT_S
    head_lock_timeout_s: int = DEFAULT_HEAD_LOCK_TIMEOUT_S
    #: HEADROOM_HEAD_C: inverse regularisation strength of head training.
    head_regularisation_c: float = DEFAULT_HEAD_REGULARISATION_C
    #: HEADROOM_RECONCILE_PERIOD_S: how often a replica on an S3 repository reconciles its heads.
    reconcile_period_s: float = DEFAULT_RECONCILE_PERIOD_S
    #: HEADROOM_REPLICAS: the replicas onboarding loads on, ``http://a:8000,http://b:8000`` or
    #: ``dns:<headless service>:<port>`` (one replica per address); empty: the server at ``url``.
    replicas: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """The settings the environment gives (``os.environ`` unless ``environ``), read now."""
        env = os.environ if environ is None else environ
        repository = repository_of(env.get("HEADROOM_MODEL_REPOSITORY") or DEFAULT_MODEL_REPOSITORY)
        state_dir = state_dir_for(repository, env)
        host = _env_str("HEADROOM_HOST", DEFAULT_HOST, env)
        http_port = _env_int("HEADROOM_HTTP_PORT", DEFAULT_HTTP_PORT, env)
        return cls(
            model_repository=repository,
            build_dir=_env_path("HEADROOM_BUILD_DIR", DEFAULT_BUILD_DIR, env),
            state_dir=state_dir,
            encoder_variant=_env_str("HEADROOM_ENCODER_VARIANT", DEFAULT_ENCODER_VARIANT, env),
            address=ServerAddress(
                host=host,
                http_port=http_port,
                grpc_port=_env_int("HEADROOM_GRPC_PORT", DEFAULT_GRPC_PORT, env),
                metrics_port=_env_int("HEADROOM_METRICS_PORT", DEFAULT_METRICS_PORT, env),
            ),
            ready_timeout_s=_env_int("HEADROOM_READY_TIMEOUT_S", DEFAULT_READY_TIMEOUT_S, env),
            shutdown_timeout_s=_env_int("HEADROOM_SHUTDOWN_TIMEOUT_S", DEFAULT_SHUTDOWN_TIMEOUT_S, env),
            jemalloc=_env_str("HEADROOM_JEMALLOC", "auto", env),
            malloc_arena_max=_env_int("HEADROOM_MALLOC_ARENA_MAX", DEFAULT_MALLOC_ARENA_MAX, env),
            log_verbose=_env_int("HEADROOM_LOG_VERBOSE", 0, env),
            admin_key_file=admin_key_file_for(state_dir, env),
            url=_env_str("HEADROOM_URL", f"http://{host}:{http_port}", env),
            client_timeout_s=_env_int("HEADROOM_CLIENT_TIMEOUT_S", DEFAULT_CLIENT_TIMEOUT_S, env),
            client_concurrency=_env_int("HEADROOM_CLIENT_CONCURRENCY", DEFAULT_CLIENT_CONCURRENCY, env),
            client_batch_size=_env_int("HEADROOM_CLIENT_BATCH_SIZE", DEFAULT_CLIENT_BATCH_SIZE, env),
            embed_batch_size=_env_int("HEADROOM_EMBED_BATCH_SIZE", DEFAULT_EMBED_BATCH_SIZE, env),
            cli_block_texts=_env_int("HEADROOM_CLI_BLOCK_TEXTS", DEFAULT_CLI_BLOCK_TEXTS, env),
            load_timeout_s=_env_int("HEADROOM_LOAD_TIMEOUT_S", DEFAULT_LOAD_TIMEOUT_S, env),
            head_lock_timeout_s=_env_int("HEADROOM_HEAD_LOCK_TIMEOUT_S", DEFAULT_HEAD_LOCK_TIMEOUT_S, env),
            head_regularisation_c=_env_float("HEADROOM_HEAD_C", DEFAULT_HEAD_REGULARISATION_C, env),
            reconcile_period_s=_env_float("HEADROOM_RECONCILE_PERIOD_S", DEFAULT_RECONCILE_PERIOD_S, env),
            replicas=_env_str("HEADROOM_REPLICAS", "", env),
        )


def encoder_version_dir(repository: Path) -> Path:
    """Folder holding the served encoder's ONNX file, tokenizer and fingerprint."""
    return Path(repository) / ENCODER_MODEL / ENCODER_VERSION
