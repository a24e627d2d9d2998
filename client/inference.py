"""The thin client of a headroom server, over Triton's HTTP or gRPC API (``tritonclient``).

    client = HeadroomClient("http://localhost:8000")     # or "grpc://localhost:8001"
    client.classify(["turn on the lights"], head="smart_home")[0].label
    client.embed(["some text"])                           # FP32 [1, 384]
    client.list_heads()

It needs only ``tritonclient`` and numpy (``pip install headroom``) and works from anywhere.
Onboarding, which writes into the model repository, is ``headroom.client.onboarding``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from headroom import config
from headroom.admin_key import AdminKeyError, admin_headers, load_admin_key
from headroom.naming import head_model_name, head_name_of
from headroom.token_features import TokenFeatures

log = logging.getLogger(__name__)

EMBEDDING = "sentence_embedding"
#: ``embed``'s per-token outputs (slot training, ``HeadroomClient.embed_tokens``).
TOKEN_OUTPUTS = ["token_embeddings", "token_offsets", "token_count"]
ENTITY_OUTPUTS = ["ENTITY_COUNT", "ENTITY_LABELS", "ENTITY_STARTS", "ENTITY_ENDS", "ENTITY_TEXTS", "ENTITY_SCORES"]
#: The pipeline answers ``ENTITY_*`` only for requests with a row whose head has slots.
CLASSIFY_OUTPUTS = ["LABEL", "SCORE", "PROBS", "LABELS", *ENTITY_OUTPUTS]
#: What Triton answers (403 over HTTP, UNAVAILABLE over gRPC) to a restricted call without the key.
RESTRICTED_TEXT = "is restricted, expecting header"


class HeadroomError(RuntimeError):
    """A request the server refused or could not answer; ``status`` is Triton's code."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Entity:
    """A slot found in a text: ``text[start:end]`` (code points, end exclusive) is ``text``."""

    label: str
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class Classification:
    text: str
    head: str
    label: str
    score: float
    probabilities: dict[str, float] = field(repr=False)
    #: The entities of a head with slots (possibly none found); None for a head without slots.
    entities: tuple[Entity, ...] | None = None


@dataclass(frozen=True)
class HeadStatus:
    name: str
    model_name: str
    state: str
    version: str
    reason: str = ""


def parse_url(url: str) -> tuple[str, str]:
    """``http://host:port`` / ``grpc://host:port`` / ``host:port`` -> (protocol, host:port)."""
    if "://" in url:
        scheme, _, address = url.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "grpc"):
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: use http:// or grpc://")
        return scheme, address.rstrip("/")
    return "http", url.rstrip("/")


def default_http_url(settings: config.Settings | None = None) -> str:
    """``HEADROOM_URL`` when it is an HTTP URL (``http://host:port`` or ``host:port``), else the
    configured host and HTTP port (``settings``, default: the environment now)."""
    settings = settings or config.Settings.from_env()
    if parse_url(settings.url)[0] == "http":
        return settings.url.rstrip("/") if "://" in settings.url else f"http://{settings.url.rstrip('/')}"
    return settings.address.http_url


def status_of(exc: Exception) -> str | None:
    """Triton's status of a tritonclient exception (HTTP code or gRPC status), if it has one."""
    status = getattr(exc, "status", None)
    value = status() if callable(status) else status
    return None if value is None else str(value)


def message_of(exc: Exception) -> str:
    """The server's message of a tritonclient exception; the exception itself for other errors."""
    message = getattr(exc, "message", None)
    return message() if callable(message) else f"{type(exc).__name__}: {exc}"


def length_sorted_chunks(texts: Sequence[str], size: int) -> list[list[int]]:
    """Indices of ``texts`` sorted by length (characters: a client has no tokenizer) in chunks of
    at most ``size``: texts of similar length travel together, as the encoder wants them."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    return [order[start : start + size] for start in range(0, len(order), size)]


def names_a_row(error: HeadroomError) -> bool:
    """Whether the server failed a request of several texts for one of its rows (``row 3: ...``)."""
    return str(error).startswith("row ")


def to_classifications(result, rows: Sequence[int], texts: Sequence[str], heads: Sequence[str]) -> list[Classification]:
    """The ``Classification`` of each row of one ``pipeline`` answer (``rows``: indices into ``texts``)."""
    labels = result.as_numpy("LABEL").reshape(len(rows))
    scores = result.as_numpy("SCORE").reshape(len(rows))
    probabilities = result.as_numpy("PROBS").reshape(len(rows), -1)
    names = result.as_numpy("LABELS").reshape(len(rows), -1)
    entities = to_entities(result, len(rows))
    classifications = []
    for position, row in enumerate(rows):
        # Rows are padded to the widest head of the request with label "" (never a real label).
        row_names = [name.decode("utf-8") for name in names[position] if name]
        classifications.append(
            Classification(
                text=texts[row],
                head=heads[row],
                label=labels[position].decode("utf-8"),
                score=float(scores[position]),
                probabilities=dict(
                    zip(row_names, (float(p) for p in probabilities[position, : len(row_names)]), strict=True)
                ),
                entities=entities[position],
            )
        )
    return classifications


def to_entities(result, count: int) -> list[tuple[Entity, ...] | None]:
    """Each row's entities from a ``pipeline`` answer (None for every row when it has none:
    no head of the request has slots; None for a row whose ``ENTITY_COUNT`` is -1)."""
    counts = result.as_numpy("ENTITY_COUNT")
    if counts is None:
        return [None] * count
    counts = counts.reshape(count)
    arrays = {name: result.as_numpy(name).reshape(count, -1) for name in ENTITY_OUTPUTS[1:]}
    rows: list[tuple[Entity, ...] | None] = []
    for row in range(count):
        if counts[row] < 0:
            rows.append(None)
            continue
        rows.append(
            tuple(
                Entity(
                    label=arrays["ENTITY_LABELS"][row, i].decode("utf-8"),
                    start=int(arrays["ENTITY_STARTS"][row, i]),
                    end=int(arrays["ENTITY_ENDS"][row, i]),
                    text=arrays["ENTITY_TEXTS"][row, i].decode("utf-8"),
                    score=float(arrays["ENTITY_SCORES"][row, i]),
                )
                for i in range(int(counts[row]))
            )
        )
    return rows


def bytes_input(triton, name: str, values: Sequence[str | bytes]):
    """A BYTES ``InferInput`` of shape [len(values), 1] for ``tritonclient.http`` or ``.grpc``."""
    array = np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in values], dtype=np.object_)
    tensor = triton.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


class HeadroomClient:
    def __init__(
        self,
        url: str = config.DEFAULT_URL,
        concurrency: int = config.DEFAULT_CLIENT_CONCURRENCY,
        timeout_s: float = config.DEFAULT_CLIENT_TIMEOUT_S,
        admin_key: str | None = None,
        admin_key_file: Path | None = None,
    ) -> None:
        """``admin_key``: sent with load, unload and the repository index (docs/security.md);
        None (default) reads ``HEADROOM_ADMIN_KEY``, else ``admin_key_file`` when given; ``""``
        sends none."""
        self.url = url
        self.protocol, self.address = parse_url(url)
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.admin_key_file = Path(admin_key_file) if admin_key_file is not None else None
        self._admin_key_problem: AdminKeyError | None = None
        if admin_key is None:
            try:
                admin_key = load_admin_key(self.admin_key_file)
            except AdminKeyError as exc:  # inference needs no key: reported by control calls only
                self._admin_key_problem = exc
        self._control_headers = admin_headers(admin_key, self.protocol)
        if self.protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton
        self._triton = triton
        kwargs = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if self.protocol == "http" else {}
        self._client = triton.InferenceServerClient(self.address, **kwargs)
        self._local = threading.local()
        self._creator = threading.current_thread()
        self._thread_clients: list = []
        self._thread_clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="headroom-http")
        # Control-plane calls (load/unload) are serialised per client: Triton handles them one
        # at a time anyway, and overlapping loads of one head must not interleave.
        self._control_lock = threading.RLock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for client in self._thread_clients:
            client.close()
        self._client.close()

    def __enter__(self) -> HeadroomClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- inference ---------------------------------------------------------------------------
    def _string_input(self, name: str, values: Sequence[str | bytes]):
        return bytes_input(self._triton, name, values)

    def _submit(self, model: str, inputs: list, outputs: list[str], headers: dict[str, str] | None = None) -> Future:
        """Start one inference; the future holds the result or a ``HeadroomError``.

        ``headers`` travel as HTTP headers (gRPC metadata): ``x-tenant`` lets a router keep a
        tenant's requests on one replica (``headroom.cluster.router``)."""
        future: Future = Future()
        requested = [self._triton.InferRequestedOutput(name) for name in outputs]
        if self.protocol == "grpc":

            def done(result, error) -> None:
                if error is not None:
                    future.set_exception(HeadroomError(message_of(error), status_of(error)))
                else:
                    future.set_result(result)

            try:
                self._client.async_infer(
                    model, inputs, callback=done, outputs=requested, client_timeout=self.timeout_s, headers=headers
                )
            except Exception as exc:  # refused before sending (bad input, closed channel)
                future.set_exception(HeadroomError(message_of(exc), status_of(exc)))
            return future

        def call() -> None:
            try:
                future.set_result(self._thread_client().infer(model, inputs, outputs=requested, headers=headers))
            except Exception as exc:  # tritonclient raises InferenceServerException
                future.set_exception(HeadroomError(message_of(exc), status_of(exc)))

        self._pool.submit(call)
        return future

    def _thread_client(self):
        """This thread's tritonclient: gRPC's is thread-safe and shared; ``tritonclient.http`` is
        gevent-based and must stay on the thread that made it, so each thread gets its own."""
        if self.protocol == "grpc":
            return self._client
        client = getattr(self._local, "client", None)
        if client is None:
            if threading.current_thread() is self._creator:
                client = self._client
            else:
                client = self._triton.InferenceServerClient(
                    self.address, network_timeout=self.timeout_s, connection_timeout=self.timeout_s
                )
                with self._thread_clients_lock:
                    self._thread_clients.append(client)
            self._local.client = client
        return client

    def classify(
        self,
        texts: Sequence[str],
        head: str | Sequence[str],
        return_errors: bool = False,
        batch_size: int = config.DEFAULT_CLIENT_BATCH_SIZE,
        progress: bool = False,
    ) -> list[Classification | HeadroomError]:
        """Classify each text with ``head`` (one name, or one name per text); results in ``texts`` order.

        Texts are sent in requests of ``batch_size`` texts of similar length (sorted by length,
        ``concurrency`` requests in flight), which the server's dynamic batcher mixes with other
        tenants' traffic. A request fails as a whole when one of its rows fails (the server names
        the row): its texts are then sent again one per request, so every text gets its own answer
        or error. Raises the first ``HeadroomError`` (in ``texts`` order) unless ``return_errors``,
        in which case failed items are returned in place as ``HeadroomError``. ``progress`` shows a
        bar on a terminal.
        """
        heads = [head] * len(texts) if isinstance(head, str) else list(head)
        if len(heads) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(heads)} head names")
        results: list = [None] * len(texts)

        def call(rows: list[int]) -> tuple[str, list, list[str], dict[str, str] | None]:
            inputs = [
                self._string_input("TEXT", [texts[row] for row in rows]),
                self._string_input("HEAD", [heads[row] for row in rows]),
            ]
            tenants = {heads[row] for row in rows}
            headers = {config.TENANT_HEADER: heads[rows[0]]} if len(tenants) == 1 else None
            return config.PIPELINE_MODEL, inputs, CLASSIFY_OUTPUTS, headers

        chunks = length_sorted_chunks(texts, batch_size)
        again: list[int] = []
        answers = self._run_all([call(rows) for rows in chunks], progress, [len(rows) for rows in chunks], "classify")
        for rows, answer in zip(chunks, answers, strict=True):
            if isinstance(answer, HeadroomError) and len(rows) > 1 and names_a_row(answer):
                again.extend(rows)  # one bad row failed its request: ask for every row alone
            elif isinstance(answer, HeadroomError):
                for row in rows:
                    results[row] = answer
            else:
                for row, classification in zip(rows, to_classifications(answer, rows, texts, heads), strict=True):
                    results[row] = classification
        for row, answer in zip(again, self._run_all([call([row]) for row in again]), strict=True):
            failed = isinstance(answer, HeadroomError)
            results[row] = answer if failed else to_classifications(answer, [row], texts, heads)[0]
        if not return_errors:
            failed = next((result for result in results if isinstance(result, HeadroomError)), None)
            if failed is not None:
                raise failed
        return results

    def _run_all(
        self,
        calls: list[tuple],
        progress: bool = False,
        weights: list[int] | None = None,
        description: str = "requests",
    ) -> list:
        """Run every (model, inputs, outputs[, headers]) call, ``concurrency`` at a time; results in order.

        Each item is tritonclient's result or a ``HeadroomError`` (timeouts included).
        ``progress`` shows a bar on a terminal, advanced by each call's ``weights`` (texts).
        """
        from tqdm import tqdm

        weights = weights or [1] * len(calls)
        gate = threading.BoundedSemaphore(self.concurrency)
        bar = tqdm(total=sum(weights), desc=description, unit="text", leave=False, disable=None if progress else True)
        futures = []
        for (model, inputs, outputs, *headers), weight in zip(calls, weights, strict=True):
            gate.acquire()
            future = self._submit(model, inputs, outputs, *headers)

            def done(_future: Future, weight: int = weight) -> None:
                gate.release()
                bar.update(weight)

            future.add_done_callback(done)
            futures.append(future)
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=self.timeout_s))
            except HeadroomError as exc:
                results.append(exc)
            except TimeoutError:
                results.append(HeadroomError(f"no answer within {self.timeout_s:.0f} s", "DEADLINE_EXCEEDED"))
        bar.close()
        return results

    def embed(
        self, texts: Sequence[str], batch_size: int = config.DEFAULT_EMBED_BATCH_SIZE, progress: bool = False
    ) -> np.ndarray:
        """Sentence embeddings from the served encoder (model ``embed``): FP32 [len(texts), 384].

        Texts are sent in requests of ``batch_size`` texts of similar length, ``concurrency`` at a
        time; rows come back in ``texts`` order. ``progress`` shows a bar on a terminal.
        """
        chunks = length_sorted_chunks(texts, batch_size)
        calls = [
            (config.EMBED_MODEL, [self._string_input("TEXT", [texts[row] for row in rows])], [EMBEDDING])
            for rows in chunks
        ]
        embeddings = np.zeros((len(texts), config.EMBEDDING_DIM), dtype=np.float32)
        answers = self._run_all(calls, progress, [len(rows) for rows in chunks], "embedding")
        for rows, result in zip(chunks, answers, strict=True):
            if isinstance(result, HeadroomError):
                raise result
            embeddings[rows] = result.as_numpy(EMBEDDING)
        return embeddings

    def embed_tokens(
        self, texts: Sequence[str], batch_size: int = config.DEFAULT_EMBED_BATCH_SIZE, progress: bool = False
    ) -> list[TokenFeatures]:
        """Each text's token embeddings and token offsets from the served encoder (model
        ``embed``): what token heads (slots) are trained on. Texts longer than the encoder's
        ``max_length`` tokens are truncated, as when they are served."""
        chunks = length_sorted_chunks(texts, batch_size)
        calls = [
            (config.EMBED_MODEL, [self._string_input("TEXT", [texts[row] for row in rows])], TOKEN_OUTPUTS)
            for rows in chunks
        ]
        features: list = [None] * len(texts)
        answers = self._run_all(calls, progress, [len(rows) for rows in chunks], "embedding tokens")
        for rows, result in zip(chunks, answers, strict=True):
            if isinstance(result, HeadroomError):
                raise result
            tokens, offsets = result.as_numpy("token_embeddings"), result.as_numpy("token_offsets")
            counts = result.as_numpy("token_count").reshape(-1)
            for position, row in enumerate(rows):
                count = int(counts[position])
                features[row] = TokenFeatures(tokens[position, :count].copy(), offsets[position, :count].copy())
        return features

    # --- heads and model control -------------------------------------------------------------
    def is_head_ready(self, name: str) -> bool:
        return self.is_model_ready(head_model_name(name))

    def _control_error(self, action: str, exc: Exception) -> HeadroomError:
        """A ``HeadroomError`` for a control call (``action``, e.g. "load of head_x") that failed."""
        message = message_of(exc)
        if RESTRICTED_TEXT in message:
            which = "wrong" if self._control_headers else "missing"
            message = (
                f"the server refused {action}: admin key {which} "
                f"(set {config.ADMIN_KEY_ENV} or the key file {self.admin_key_file or '(none given)'})"
            )
            if self._admin_key_problem is not None:
                message += f"; {self._admin_key_problem}"
        else:
            message = f"Triton refused {action}: {message}"
        return HeadroomError(message, status_of(exc))

    def list_heads(self) -> list[HeadStatus]:
        """Every head in the server's repository index, with its state (READY, UNAVAILABLE...)."""
        try:
            index = self._thread_client().get_model_repository_index(headers=self._control_headers)
        except Exception as exc:  # tritonclient raises InferenceServerException
            raise self._control_error("the repository index", exc) from exc
        if self.protocol == "grpc":
            entries = [
                {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models
            ]
        else:
            entries = index
        heads = []
        for entry in entries:
            name = head_name_of(entry.get("name", ""))
            if name is not None:
                heads.append(
                    HeadStatus(
                        name,
                        entry["name"],
                        entry.get("state", "") or "UNKNOWN",
                        str(entry.get("version", "")),
                        entry.get("reason", ""),
                    )
                )
        return sorted(heads, key=lambda h: h.name)

    def load_model(self, model_name: str, config: str | None = None) -> None:
        """Load (or reload) a Triton model through the model-control API, with the admin key.

        ``config``: the model's configuration as JSON, used instead of its ``config.pbtxt``
        (how a load names the versions to serve, ``registration_load_config``)."""
        with self._control_lock:
            try:
                self._thread_client().load_model(model_name, headers=self._control_headers, config=config)
            except Exception as exc:  # tritonclient raises InferenceServerException
                raise self._control_error(f"load of {model_name}", exc) from exc

    def unload_model(self, model_name: str) -> None:
        """Unload a Triton model through the model-control API, with the admin key."""
        with self._control_lock:
            try:
                self._thread_client().unload_model(model_name, headers=self._control_headers)
            except Exception as exc:
                raise self._control_error(f"unload of {model_name}", exc) from exc

    def is_model_ready(self, model_name: str) -> bool:
        return bool(self._thread_client().is_model_ready(model_name))
