"""The tritonserver process group: tied to the launcher's life, and reaped after a stop."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("headroom.server.launcher")

#: In the name of the shared-memory region a Python-backend stub gets on its command line.
SHM_REGION_MARK = "_backend_shm_region_"


def die_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies, the kernel sends SIGTERM to Triton."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def process_group(pgid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process in process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        members.append((int(entry.name), [arg.decode("utf-8", "replace") for arg in argv if arg]))
    return members


def reap_process_group(pgid: int) -> int:
    """Kill what is left of a stopped server's process group and remove their shared memory.

    Python-backend stubs normally exit when tritonserver dies, but Triton 2.51's stub deadlocks
    when its parent dies while the stub waits for the parent's reply (a BLS call or a metric
    family being created): killed under traffic, tritonserver leaves such stubs running for good,
    each holding its model's memory and its ``/dev/shm`` region. Returns how many were killed.
    """
    leftovers = process_group(pgid)
    for pid, _argv in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _pid, argv in leftovers:
        for region in (arg for arg in argv if SHM_REGION_MARK in arg and "/" not in arg):
            try:
                os.unlink(Path("/dev/shm") / region)
            except FileNotFoundError:
                pass
    if leftovers:
        log.warning("killed %d process(es) the stopped tritonserver left behind", len(leftovers))
    return len(leftovers)


def mapped_shm_regions() -> set[str]:
    """Names of the ``/dev/shm`` files some live process has mapped (Linux ``/proc/*/maps``)."""
    mapped = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "maps").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            path = line.rsplit(None, 1)[-1] if "/dev/shm/" in line else ""
            if path.startswith("/dev/shm/"):
                mapped.add(path[len("/dev/shm/") :].removesuffix(" (deleted)"))
    return mapped


def unlink_orphaned_regions(since: float) -> list[str]:
    """Remove the Python backend's ``/dev/shm`` regions created since ``since`` (epoch seconds)
    that no live process maps any more; their names.

    A stub that ends with its killed parent usually removes its region, but not always (killed
    in turn, or dead of the deadlock ``reap_process_group`` describes, before it could): the
    region, up to the backend's shared-memory size, would stay until reboot. Regions of servers
    still running are mapped by them and their stubs, so they are left alone.
    """
    candidates = []
    for path in Path("/dev/shm").glob(f"*{SHM_REGION_MARK}*"):
        try:
            if path.stat().st_ctime >= since:
                candidates.append(path)
        except FileNotFoundError:
            continue
    if not candidates:
        return []
    mapped = mapped_shm_regions()
    removed = []
    for path in candidates:
        if path.name not in mapped:
            try:
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                pass
    if removed:
        log.warning("removed %d shared-memory region(s) the stopped tritonserver's stubs left", len(removed))
    return removed
