"""What a stopped server leaves behind is removed: shared-memory regions no live process maps."""

from __future__ import annotations

import mmap
import secrets
import time
from pathlib import Path

from headroom.server.ports import free_ports, port_is_free
from headroom.server.processes import SHM_REGION_MARK, unlink_orphaned_regions


def test_orphaned_regions_go_and_mapped_ones_stay():
    since = time.time() - 1
    orphan = Path("/dev/shm") / f"headroom_test{SHM_REGION_MARK}{secrets.token_hex(6)}"
    held = Path("/dev/shm") / f"headroom_test{SHM_REGION_MARK}{secrets.token_hex(6)}"
    orphan.write_bytes(b"\0" * 4096)
    held.write_bytes(b"\0" * 4096)
    try:
        with held.open("r+b") as handle, mmap.mmap(handle.fileno(), 4096):  # a live server's region
            removed = unlink_orphaned_regions(since)
            assert orphan.name in removed and not orphan.exists()
            assert held.name not in removed and held.exists()
    finally:
        orphan.unlink(missing_ok=True)
        held.unlink(missing_ok=True)


def test_free_ports_are_below_the_ephemeral_range_and_free():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(port < low for port in ports)
    assert all(port_is_free(port) for port in ports)
