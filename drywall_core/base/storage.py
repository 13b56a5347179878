"""Artifact storage: one interface, two backends (a local folder, S3 through boto3).

Both give the registry what it needs to be safe under concurrency and partial failure:
verified uploads and downloads (sha256), and compare-and-swap writes -- ``create`` (fails if the
key exists; S3 ``IfNoneMatch="*"``) and ``replace`` (fails if the key changed since it was read;
S3 ``IfMatch=<etag>``). Locally the same is done with a lock file and an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from drywall_core.base.errors import CheckFailed, DrywallError, InputError
from drywall_core.base.fsutil import atomic_open, sha256_file


class Conflict(DrywallError):
    """A compare-and-swap write lost: someone else wrote the key first."""

    exit_code = 1


class IntegrityError(CheckFailed):
    """Stored bytes do not match their recorded sha256."""


class NotFound(DrywallError):
    exit_code = 2


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore(Protocol):
    url: str

    def put_file(self, local: Path, key: str) -> str: ...
    def get_file(self, key: str, local: Path, sha256: str | None = None) -> Path: ...
    def get_bytes(self, key: str) -> bytes: ...
    def read_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def create(self, key: str, data: bytes) -> str: ...
    def replace(self, key: str, data: bytes, etag: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def link(self, key: str) -> str: ...
    def modified(self, key: str) -> float: ...
    def delete(self, key: str) -> None: ...


class LocalStore:
    """A folder; etags are sha256 of the content, CAS under an exclusive lock file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()  # created by the first write: reading never makes an empty store
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root):
            raise InputError(f"{key}: key escapes the store {self.url}")
        return p

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / (sha256_bytes(key.encode())[:24] + ".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put_file(self, local: Path, key: str) -> str:
        dst = self._path(key)
        with atomic_open(dst, "wb") as out, open(local, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return _verify_local(dst, sha256_file(local), key)

    def get_file(self, key: str, local: Path, sha256: str | None = None) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{self.url}/{key}: not found")
        with atomic_open(Path(local), "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        if sha256:
            _verify_local(Path(local), sha256, key, remove=True)
        return Path(local)

    def get_bytes(self, key: str) -> bytes:
        p = self._path(key)
        if not p.is_file():
            raise NotFound(f"{self.url}/{key}: not found")
        return p.read_bytes()

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        p = self._path(key)
        if not p.is_file():
            return None
        data = p.read_bytes()
        return data, sha256_bytes(data)

    def create(self, key: str, data: bytes) -> str:
        with self._lock(key):
            if self._path(key).exists():
                raise Conflict(f"{key}: already exists")
            return self._write(key, data)

    def replace(self, key: str, data: bytes, etag: str) -> str:
        with self._lock(key):
            current = self.read_versioned(key)
            if current is None or current[1] != etag:
                raise Conflict(f"{key}: changed since it was read")
            return self._write(key, data)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, data)

    def _write(self, key: str, data: bytes) -> str:
        with atomic_open(self._path(key), "wb") as f:
            f.write(data)
        return sha256_bytes(data)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and ".locks" not in p.parts and not p.name.endswith(".tmp")
        )

    def link(self, key: str) -> str:
        return self._path(key).as_uri()

    def modified(self, key: str) -> float:
        """When the key was last written (unix seconds)."""
        return self._path(key).stat().st_mtime

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _verify_local(path: Path, expected: str, key: str, remove: bool = False) -> str:
    actual = sha256_file(path)
    if actual != expected:
        if remove:
            path.unlink(missing_ok=True)
        raise IntegrityError(f"{key}: checksum mismatch (expected {expected[:12]}, got {actual[:12]})")
    return actual


def s3_client(
    endpoint: str | None,
    region: str | None,
    access_key: str | None = None,
    secret_key: str | None = None,
    addressing_style: str = "path",
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 30.0,
    max_attempts: int = 3,
) -> Any:
    """A boto3 S3 client with bounded waits: an endpoint that accepts connections and never answers
    fails after about attempts x read timeout, not botocore's default of minutes."""
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": addressing_style},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or "us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def s3_client_from(settings: Any) -> Any:
    """The S3 client every stage uses, configured by the ``DRYWALL_S3_*`` settings."""
    return s3_client(
        settings.s3_endpoint_url,
        settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        connect_timeout_s=settings.s3_connect_timeout_s,
        read_timeout_s=settings.s3_read_timeout_s,
        max_attempts=settings.s3_max_attempts,
    )


class S3Store:
    """An S3 bucket/prefix through boto3 (multipart above 8 MB; any S3-compatible endpoint)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, multipart_mb: int = 8) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or s3_client(None, None)
        self.transfer = TransferConfig(multipart_threshold=multipart_mb << 20, multipart_chunksize=multipart_mb << 20)
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _err_code(self, exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def put_file(self, local: Path, key: str) -> str:
        expected = sha256_file(local)
        self.client.upload_file(
            str(local), self.bucket, self._key(key), Config=self.transfer, ExtraArgs={"Metadata": {"sha256": expected}}
        )
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        if digest.hexdigest() != expected:
            raise IntegrityError(f"{self.url}/{key}: checksum mismatch after upload")
        return expected

    def get_file(self, key: str, local: Path, sha256: str | None = None) -> Path:
        from botocore.exceptions import ClientError

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.download")
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self.transfer)
        except ClientError as exc:
            tmp.unlink(missing_ok=True)
            if self._err_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"{self.url}/{key}: not found") from None
            raise
        if sha256:
            _verify_local(tmp, sha256, key, remove=True)
        os.replace(tmp, local)
        return local

    def get_bytes(self, key: str) -> bytes:
        got = self.read_versioned(key)
        if got is None:
            raise NotFound(f"{self.url}/{key}: not found")
        return got[0]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._err_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return r["Body"].read(), r["ETag"]

    def _conditional_put(self, key: str, data: bytes, **cond: str) -> str:
        from botocore.exceptions import ClientError

        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
        except ClientError as exc:
            if self._err_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise Conflict(f"{self.url}/{key}: conditional write lost ({self._err_code(exc)})") from None
            raise
        return r["ETag"]

    def create(self, key: str, data: bytes) -> str:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, etag: str) -> str:
        return self._conditional_put(key, data, IfMatch=etag)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if self._err_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(keys)

    def modified(self, key: str) -> float:
        return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def link(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
        )


def store_from_settings(settings: Any) -> ArtifactStore:
    """S3 when ``DRYWALL_S3_BUCKET`` is set, else the local registry folder under ``DRYWALL_HOME``."""
    if settings.s3_bucket:
        client = s3_client_from(settings)
        return S3Store(settings.s3_bucket, settings.s3_prefix, client)
    return LocalStore(settings.registry_root)
