"""Free TCP ports and server addresses on them (tests and benchmarks run beside ``make serve``)."""

from __future__ import annotations

import socket

from headroom import config


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on this host right now (tests and benchmarks run beside ``make serve``)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_address(host: str = "localhost") -> config.ServerAddress:
    """A server address on free HTTP, gRPC and metrics ports."""
    http_port, grpc_port, metrics_port = free_ports(3)
    return config.ServerAddress(host, http_port, grpc_port, metrics_port)
