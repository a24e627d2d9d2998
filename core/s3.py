"""Where an S3 model repository is, in Triton's own URL form, and a boto3 client for it.

Triton names an S3 repository ``s3://host:port/bucket/path`` (an S3-compatible server such as
SeaweedFS or MinIO, over HTTP) or ``s3://bucket/path`` (AWS); credentials and region come from
the standard ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``. headroom's
executor (inside Triton) and its host tools (onboarding, the reconciler, the launcher's checks)
parse the same URL here, so every part of a replica talks to the same bucket the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

S3_SCHEME = "s3://"
#: ``host:port`` as Triton writes it for a non-AWS endpoint (optionally ``http(s)://host:port``).
_ENDPOINT = re.compile(r"^(?:(https?)://)?([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(\d+)/")


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(S3_SCHEME)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix on one endpoint (``None``: AWS's own)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://host:port/bucket/path`` or ``s3://bucket/path`` (ValueError otherwise)."""
        if not is_s3_url(url):
            raise ValueError(f"not an S3 URL (s3://host:port/bucket/path): {url!r}")
        rest = url[len(S3_SCHEME) :]
        endpoint = None
        match = _ENDPOINT.match(rest)
        if match:
            scheme, host, port = match.groups()
            endpoint = f"{scheme or 'http'}://{host}:{port}"
            rest = rest[match.end() :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"S3 URL without a bucket: {url!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"), endpoint=endpoint)

    @property
    def url(self) -> str:
        host = ""
        if self.endpoint:
            host = self.endpoint.removeprefix("http://") + "/"
        return f"{S3_SCHEME}{host}{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under this prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def child(self, *parts: str) -> S3Location:
        return replace(self, prefix=self.key(*parts))

    def client(
        self,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        retries: int = 3,
        environ: dict[str, str] | None = None,
    ):
        """A boto3 S3 client for this endpoint with the credentials of the environment, as
        Triton's (``environ``: take ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
        ``AWS_DEFAULT_REGION`` from there instead)."""
        import boto3
        from botocore.config import Config

        settings = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": retries, "mode": "standard"},
            # Path-style URLs: S3-compatible servers on host:port have no per-bucket host names.
            s3={"addressing_style": "path"},
        )
        factory = boto3
        if environ is not None:
            factory = boto3.session.Session(
                aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY"),
                region_name=environ.get("AWS_DEFAULT_REGION"),
            )
        return factory.client("s3", endpoint_url=self.endpoint, config=settings)


def list_keys(client, location: S3Location, below: str = "") -> list[str]:
    """Every object key under ``location``'s prefix and ``below`` it, relative to that."""
    prefix = location.key(below)
    prefix = prefix + "/" if prefix else ""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        keys.extend(item["Key"][len(prefix) :] for item in page.get("Contents", ()))
    return keys
