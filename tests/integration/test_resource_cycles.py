"""Resources stay bounded (issue 5 §5), against the session's real tritonserver.

- ``test_onboard_offboard_cycles_return_resources_to_baseline``: ``HEADROOM_CYCLES`` (default 200)
  cycles of onboard (a ready-made head: checks, write, load, verified first answer), classify,
  offboard, each under a new head name, every fourth head one that runs as its own ONNX Runtime
  session in the executor. Measured after a warm-up (200 cycles and a burst of 2,000 requests:
  tritonserver's memory grows by about 7 MiB over its first 2,000 requests, then stays flat) and
  again at the end, with the executor's sweep and the allocators given time to settle (median of 5
  samples): tritonserver plus its Python-backend stubs' resident and anonymous memory, open file
  descriptors, number of stubs, and the ``/dev/shm`` files they map (count, allocated bytes). Each
  may grow by at most 2 %. Reported, not held to 2 %: PSS (it moves whenever another process on
  the host maps the same libraries) and tritonserver's own memory, which grows by 4-7 KiB per
  distinct model name ever loaded (Triton keeps a record of every name it has loaded; unloading
  does not drop it: ``/v2/models/<gone>`` answers "has no available versions", where a name never
  loaded "is not found"; loading and unloading one name again and again costs nothing). That
  figure is held to ``MAX_SERVER_BYTES_PER_NAME`` instead.
- ``test_soak_cycles`` (marker ``soak``): the same with ``HEADROOM_SOAK_CYCLES`` (default 1,000)
  cycles; skipped unless ``HEADROOM_SOAK=1``.
- ``test_concurrent_onboardings_of_one_name_run_one_after_the_other``: two processes onboard the
  same new name at the same moment, a few times. Both succeed, one after the other (docs/onboarding.md,
  "Concurrent onboarding of one name"): the first to take the name's lock becomes version 1, the other version
  2 once version 1 has answered; version 1 is then archived. Never two versions READY, never a
  half-written folder.
- ``test_onboarding_waits_for_the_names_lock_across_processes``: the CLI refuses to write while
  another process holds the name's lock (after ``HEADROOM_HEAD_LOCK_TIMEOUT_S``), then succeeds.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from headroom import config
from headroom.client.inference import HeadroomError
from headroom.export.encoder import read_encoder_info
from headroom.repository import locks

from tests.onnx_heads import changes, graph_head, linear_head, snapshot, write_head_files

pytestmark = pytest.mark.integration

CYCLES = int(os.environ.get("HEADROOM_CYCLES", "200"))
SOAK_CYCLES = int(os.environ.get("HEADROOM_SOAK_CYCLES", "1000"))
WARM_UP_CYCLES = 200
WARM_UP_REQUESTS = 2000
#: Allowed growth of each resource between the warm-up and the end.
MAX_GROWTH = 0.02
#: tritonserver's own heap per distinct head name loaded and unloaded: Triton keeps 4-7 KiB each
#: (module docstring; measured with jemalloc and with glibc's malloc alike).
MAX_SERVER_BYTES_PER_NAME = 16 * 1024
SETTLE_S = 3.0
SAMPLES = 5
SESSION_HEAD_EVERY = 4


# --- measuring ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    rss: int  # bytes, tritonserver + stubs
    anonymous: int  # bytes of anonymous memory (heaps): what a leak grows
    pss: int  # bytes; reported only (shared library pages are split with other servers on the host)
    server_rss: int  # tritonserver alone; reported only (see the module docstring)
    server_anonymous: int
    fds: int
    stubs: int
    shm_files: int
    shm_bytes: int  # allocated bytes of those /dev/shm files


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values


def _shm_files(pid: int) -> set[str]:
    """The ``/dev/shm`` files a process maps or holds open."""
    found = set()
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            path = line.split(maxsplit=5)[-1].strip() if line.count(" ") >= 5 else ""
            if path.startswith("/dev/shm/"):
                found.add(path.removesuffix(" (deleted)"))
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            found.add(target.removesuffix(" (deleted)"))
    return found


def measure(pid: int) -> Resources:
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    rss = anonymous = pss = fds = server_rss = server_anonymous = 0
    shm: set[str] = set()
    for process in processes:
        try:
            rollup = _rollup(process.pid)
            fds += process.num_fds()
            shm |= _shm_files(process.pid)
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue
        rss += rollup["Rss"]
        anonymous += rollup["Anonymous"]
        pss += rollup["Pss"]
        if process.pid == pid:
            server_rss, server_anonymous = rollup["Rss"], rollup["Anonymous"]
    shm_bytes = 0
    for path in shm:
        try:
            shm_bytes += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            pass
    return Resources(rss, anonymous, pss, server_rss, server_anonymous, fds, len(processes) - 1, len(shm), shm_bytes)


def settled(pid: int) -> Resources:
    """Each figure's median over ``SAMPLES`` readings, after ``SETTLE_S`` of quiet."""
    time.sleep(SETTLE_S)
    readings = []
    for _ in range(SAMPLES):
        readings.append(asdict(measure(pid)))
        time.sleep(0.5)
    return Resources(**{key: int(statistics.median(r[key] for r in readings)) for key in readings[0]})


def _uses_jemalloc(pid: int) -> bool:
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
        return "jemalloc" in handle.read()


# --- cycles ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head_files(triton, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    fingerprint = read_encoder_info(triton.repository)["fingerprint"]
    folder = tmp_path_factory.mktemp("cycle_heads")
    return {
        "stacked": write_head_files(folder, "stacked", *linear_head(5, seed=21, fingerprint=fingerprint)),
        "session": write_head_files(folder, "session", *graph_head(4, seed=22, fingerprint=fingerprint)),
    }


def run_cycles(client, onboarding, head_files, first: int, count: int) -> list[float]:
    """``count`` onboard/classify/offboard cycles; each one's seconds."""
    seconds = []
    for index in range(first, first + count):
        started = time.perf_counter()
        kind = "session" if index % SESSION_HEAD_EVERY == SESSION_HEAD_EVERY - 1 else "stacked"
        name = f"cycle-{index:05d}"
        onnx_file, labels_file = head_files[kind]
        result = onboarding.onboard_model(name, onnx_file, labels_file)
        assert result.version == 1
        (answer,) = client.classify([f"cycle {index}: turn on the lights"], name)
        assert answer.label in answer.probabilities
        onboarding.offboard(name)
        seconds.append(time.perf_counter() - started)
    return seconds


def _growth(before: int, after: int) -> float:
    return (after - before) / before if before else float(after > 0)


#: Figures reported but not held to ``MAX_GROWTH`` (module docstring).
REPORTED_ONLY = ("pss", "server_rss", "server_anonymous")


def warm_up(client, onboarding, head_files) -> None:
    run_cycles(client, onboarding, head_files, 0, WARM_UP_CYCLES)
    heads = ("smart_home", "knowledge", "lifestyle", "smalltalk")
    texts = [f"warm-up request {i}: turn on the lights" for i in range(WARM_UP_REQUESTS)]
    client.classify(texts, [heads[i % len(heads)] for i in range(len(texts))])


def cycles_keep_resources_bounded(triton, head_files, cycles: int) -> None:
    pid = triton.server.process.pid
    original = snapshot(triton.repository)
    with triton.client() as client:
        warm_up(client, triton.onboarding(client), head_files)
        baseline = settled(pid)
        started = time.perf_counter()
        seconds = run_cycles(client, triton.onboarding(client), head_files, WARM_UP_CYCLES, cycles)
        elapsed = time.perf_counter() - started
        after = settled(pid)
    per_name = (after.server_anonymous - baseline.server_anonymous) / cycles
    lines = [
        f"\n{cycles} onboard/classify/offboard cycles in {elapsed:.0f} s (median cycle "
        f"{1000 * statistics.median(seconds):.0f} ms, p95 {1000 * float(np.percentile(seconds, 95)):.0f} ms); "
        f"jemalloc preloaded: {_uses_jemalloc(pid)}; tritonserver anonymous memory per distinct name "
        f"{per_name / 1024:.1f} KiB"
    ]
    failures = []
    for key, before_value in asdict(baseline).items():
        after_value = getattr(after, key)
        growth = _growth(before_value, after_value)
        asserted = key not in REPORTED_ONLY
        lines.append(
            f"  {key:<17} {before_value:>14,} -> {after_value:>14,}  {100 * growth:+.2f} %"
            + ("" if asserted else "  (reported)")
        )
        if asserted and growth > MAX_GROWTH:
            failures.append(f"{key} grew {100 * growth:.2f} % ({before_value:,} -> {after_value:,})")
    if per_name > MAX_SERVER_BYTES_PER_NAME:
        failures.append(f"tritonserver kept {per_name / 1024:.1f} KiB per distinct head name")
    print("\n".join(lines))
    # Every cycle took its head out again, and nothing was left half-done.
    assert changes(original, snapshot(triton.repository)) == []
    staging = triton.state_dir / "staging"
    assert not staging.exists() or not list(staging.iterdir())
    assert not failures, "; ".join(failures)


@pytest.mark.timeout(max(600, 3 * CYCLES))
def test_onboard_offboard_cycles_return_resources_to_baseline(triton, head_files):
    cycles_keep_resources_bounded(triton, head_files, CYCLES)


@pytest.mark.soak
@pytest.mark.timeout(max(600, 3 * SOAK_CYCLES))
@pytest.mark.skipif(os.environ.get("HEADROOM_SOAK") != "1", reason="soak run: set HEADROOM_SOAK=1")
def test_soak_cycles(triton, head_files):
    cycles_keep_resources_bounded(triton, head_files, SOAK_CYCLES)


# --- two processes, one name --------------------------------------------------------------------------
def _onboard_at_barrier(url, repository, state_dir, admin_key, name, onnx_file, labels_file, barrier, results):
    """Child process: wait for the other one, then onboard ``name``; report the outcome."""
    sys.dont_write_bytecode = True
    from headroom.client.inference import HeadroomClient, HeadroomError
    from headroom.client.onboarding import Onboarding

    with HeadroomClient(url, admin_key=admin_key) as client:
        barrier.wait(timeout=120)
        started = time.perf_counter()
        try:
            result = Onboarding(client, Path(repository), Path(state_dir)).onboard_model(name, onnx_file, labels_file)
            outcome = ("ok", result.version, result.seconds_total)
        except HeadroomError as exc:
            outcome = ("error", str(exc), time.perf_counter() - started)
    results.put((str(labels_file), *outcome))


ROUNDS = 3


def test_concurrent_onboardings_of_one_name_run_one_after_the_other(triton, tmp_path):
    fingerprint = read_encoder_info(triton.repository)["fingerprint"]
    files = {
        side: write_head_files(tmp_path, side, *linear_head(3, seed=30 + i, fingerprint=fingerprint, prefix=side))
        for i, side in enumerate(("left", "right"))
    }
    context = multiprocessing.get_context("spawn")
    for round_ in range(ROUNDS):
        name = f"race-{round_}"
        barrier, results = context.Barrier(2), context.Queue()
        workers = [
            context.Process(
                target=_onboard_at_barrier,
                args=(
                    triton.http_url,
                    str(triton.repository),
                    str(triton.state_dir),
                    triton.admin_key,
                    name,
                    str(files[side][0]),
                    str(files[side][1]),
                    barrier,
                    results,
                ),
            )
            for side in files
        ]
        for worker in workers:
            worker.start()
        outcomes = {}
        for _ in workers:
            labels_file, status, detail, seconds = results.get(timeout=300)
            outcomes[Path(labels_file).stem.split(".")[0]] = (status, detail, seconds)
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert all(status == "ok" for status, _, _ in outcomes.values()), outcomes
        assert sorted(detail for _, detail, _ in outcomes.values()) == [1, 2], outcomes
        winner = next(side for side, (_, version, _) in outcomes.items() if version == 2)
        # Whole folders only: config.pbtxt and the one version that serves.
        model_dir = triton.repository / f"head_{name}"
        assert sorted(p.name for p in model_dir.iterdir()) == ["2", "config.pbtxt"]
        assert sorted(p.name for p in (model_dir / "2").iterdir()) == ["head.json", "labels.txt", "model.onnx"]
        assert (model_dir / "2" / "model.onnx").read_bytes() == files[winner][0].read_bytes()
        assert f'name: "head_{name}"' in (model_dir / "config.pbtxt").read_text()
        with triton.client() as client:
            ready = [h for h in client.list_heads() if h.name == name and h.state == "READY"]
            assert [h.version for h in ready] == ["2"], ready
            (answer,) = client.classify(["hello"], name)
            assert list(answer.probabilities) == [f"{winner}{i}" for i in range(3)]
            triton.onboarding(client).offboard(name)
        print(
            f"\nround {round_}: "
            + ", ".join(f"{side} v{version} in {seconds:.2f} s" for side, (_, version, seconds) in outcomes.items())
        )
    staging = triton.state_dir / "staging"
    assert not staging.exists() or not list(staging.iterdir())


def test_onboarding_waits_for_the_names_lock_across_processes(triton, tmp_path):
    fingerprint = read_encoder_info(triton.repository)["fingerprint"]
    onnx_file, labels_file = write_head_files(tmp_path, "locked", *linear_head(2, fingerprint=fingerprint))
    env = {
        **os.environ,
        config.ADMIN_KEY_ENV: triton.admin_key,
        "HEADROOM_STATE_DIR": str(triton.state_dir),
        "HEADROOM_HEAD_LOCK_TIMEOUT_S": "3",
    }
    command = [
        sys.executable, "-m", "headroom.client.cli", "--repository", str(triton.repository), "onboard", "locked",
        "--url", triton.http_url, "--onnx", str(onnx_file), "--labels", str(labels_file),
    ]  # fmt: skip
    before = snapshot(triton.repository)
    with locks.head_lock("locked", triton.state_dir):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.PROJECT_ROOT, env=env)
    assert done.returncode == 1
    assert "error: head 'locked' is being onboarded or offboarded elsewhere" in done.stderr, done.stderr
    assert changes(before, snapshot(triton.repository)) == []
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.PROJECT_ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert "onboarded locked v1" in done.stdout
    with triton.client() as client:
        assert client.is_head_ready("locked")
        triton.onboarding(client).offboard("locked")
        with pytest.raises(HeadroomError, match="not loaded"):
            client.classify(["hello"], "locked")
