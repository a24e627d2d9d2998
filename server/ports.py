"""Free TCP ports and server addresses on them (tests and benchmarks run beside ``make serve``).

Ports are drawn *below* the kernel's ephemeral range: a port the kernel handed out for ``bind(0)``
is one it may hand again to any outgoing connection while a server is down, and a server that
restarts on the same ports (a crash test, a replica rolled) would then find one taken; Triton
aborts (SIGABRT) when its metrics port is.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from headroom import config

#: The lowest port drawn; the highest is just below the ephemeral range.
LOWEST_PORT = 20000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 unless configured otherwise)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a server could listen on ``port`` now (bound as servers bind: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct TCP ports free on this host right now, below the ephemeral range."""
    rng = rng or random.SystemRandom()
    high = max(ephemeral_low(), LOWEST_PORT + 1000)
    chosen: list[int] = []
    for _ in range(20 * count + 100):
        port = rng.randrange(LOWEST_PORT, high)
        if port not in chosen and port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise OSError(f"no {count} free ports between {LOWEST_PORT} and {high}")


def ports_in_use(address: config.ServerAddress) -> list[int]:
    """The ports of ``address`` that a server could not listen on now."""
    return [p for p in (address.http_port, address.grpc_port, address.metrics_port) if not port_is_free(p)]


def free_address(host: str = "localhost") -> config.ServerAddress:
    """A server address on free HTTP, gRPC and metrics ports."""
    http_port, grpc_port, metrics_port = free_ports(3)
    return config.ServerAddress(host, http_port, grpc_port, metrics_port)
