"""Which replicas a cluster has: a list of URLs, or the addresses behind a DNS name.

``HEADROOM_REPLICAS`` (``--replicas``) is either ``http://a:8000,http://b:8000`` or
``dns:<name>:<port>``: every address the name resolves to is one replica, which is how a
Kubernetes headless Service (``clusterIP: None``) lists its pods' IPs. Resolved when called, so a
replica added since is found by the next onboarding.
"""

from __future__ import annotations

import socket

DNS_PREFIX = "dns:"


def replica_urls(spec: str, scheme: str = "http") -> list[str]:
    """The replica URLs ``spec`` names, sorted and without duplicates ([] for an empty spec).

    ValueError for a malformed spec or a name that does not resolve.
    """
    spec = spec.strip()
    if not spec:
        return []
    if not spec.startswith(DNS_PREFIX):
        urls = [part.strip().rstrip("/") for part in spec.split(",") if part.strip()]
        bad = [url for url in urls if "://" not in url]
        if bad:
            raise ValueError(f"replica URLs need a scheme (http://host:port or grpc://host:port): {bad}")
        return sorted(set(urls))
    name, _, port = spec[len(DNS_PREFIX) :].rpartition(":")
    if not name or not port.isdigit():
        raise ValueError(f"expected dns:<name>:<port>, got {spec!r}")
    try:
        infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"replicas: {name} does not resolve ({exc.strerror})") from exc
    hosts = sorted({info[4][0] for info in infos})
    return [f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}" for host in hosts]
