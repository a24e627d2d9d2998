"""Readiness and model control of a running tritonserver, through ``tritonclient.http``.

Each helper opens a client of its own (``tritonclient.http`` is gevent-based and not thread-safe:
a client must stay on the thread that made it) unless it is given one, e.g. a poll loop's.
"""

from __future__ import annotations

from collections.abc import Iterable

from headroom import config
from headroom.admin_key import admin_headers
from headroom.client.metrics import metrics_up

#: Seconds a readiness probe waits for an answer.
PROBE_TIMEOUT_S = 2.0


def http_address(http_url: str) -> str:
    """``host:port`` of ``http://host:port`` (what ``tritonclient.http`` takes)."""
    return http_url.split("://", 1)[-1].rstrip("/")


def http_client(http_url: str, timeout_s: float = PROBE_TIMEOUT_S):
    """A ``tritonclient.http`` client for the server at ``http_url``; close it after use."""
    import tritonclient.http as triton_http

    return triton_http.InferenceServerClient(
        http_address(http_url), connection_timeout=timeout_s, network_timeout=timeout_s
    )


def _answers(call) -> bool:
    """Whether a probe answered True (False when it answered otherwise or nothing answered)."""
    try:
        return bool(call())
    except Exception:  # tritonclient raises InferenceServerException, sockets OSError, gevent its own
        return False


def is_live(http_url: str, client=None) -> bool:
    """``GET /v2/health/live`` answered 200."""
    if client is not None:
        return _answers(client.is_server_live)
    with http_client(http_url) as own:
        return _answers(own.is_server_live)


def is_model_ready(http_url: str, model: str, client=None) -> bool:
    """``GET /v2/models/<model>/ready`` answered 200."""
    if client is not None:
        return _answers(lambda: client.is_model_ready(model))
    with http_client(http_url) as own:
        return _answers(lambda: own.is_model_ready(model))


def answers(http_url: str) -> bool:
    """Whether anything at ``http_url`` answers HTTP at all (whatever the status of ``/v2/health/live``)."""
    from tritonclient.utils import InferenceServerException

    with http_client(http_url) as client:
        try:
            client.is_server_live()
        except InferenceServerException:
            return True  # answered, with an error
        except Exception:
            return False
    return True


def server_up(address: config.ServerAddress, models: Iterable[str], client=None) -> bool:
    """Live, every one of ``models`` READY, and the metrics page up (Triton opens it after HTTP)."""
    url = address.http_url
    if client is None:
        with http_client(url) as own:
            return server_up(address, models, own)
    return (
        is_live(url, client)
        and all(is_model_ready(url, name, client) for name in models)
        and metrics_up(address.host, address.metrics_port)
    )


def repository_index(http_url: str, admin_key: str | None = None, timeout_s: float = 60.0) -> list[dict]:
    """Triton's model repository index: every model it knows, with ``name``, ``version``, ``state``.

    Raises what ``tritonclient`` raises (``InferenceServerException``) or the socket's ``OSError``.
    """
    with http_client(http_url, timeout_s) as client:
        return list(client.get_model_repository_index(headers=admin_headers(admin_key, "http")))


def model_states(http_url: str, admin_key: str | None = None, timeout_s: float = 60.0) -> dict[str, str]:
    """Model name -> its state in the repository index (READY, UNLOADING, UNAVAILABLE...)."""
    return {entry["name"]: entry.get("state", "") for entry in repository_index(http_url, admin_key, timeout_s)}


def ready_models(http_url: str, admin_key: str | None = None, timeout_s: float = 60.0) -> set[str]:
    """Names READY in the repository index (one call, however many models)."""
    index = repository_index(http_url, admin_key, timeout_s)
    return {entry["name"] for entry in index if entry.get("state") == "READY"}


def unload_model(http_url: str, model: str, admin_key: str | None = None, timeout_s: float = 10.0) -> None:
    """Ask Triton to unload ``model`` (returns at once; the model drains as UNLOADING)."""
    with http_client(http_url, timeout_s) as client:
        client.unload_model(model, headers=admin_headers(admin_key, "http"))


def load_model(http_url: str, model: str, admin_key: str | None = None, timeout_s: float = 600.0) -> None:
    """Ask Triton to load (or reload) ``model``; returns once it is loaded or failed."""
    with http_client(http_url, timeout_s) as client:
        client.load_model(model, headers=admin_headers(admin_key, "http"))
