"""Where generated media is kept: one interface, with ``file://`` and ``s3://`` behind it.

Keys are always built by the project (``new_media_key``), never from user input, and every backend checks
them again (``check_key``) so a request path such as ``../../etc/passwd`` cannot reach outside the store.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

_KEY_RE = re.compile(r"^[a-z0-9]+(?:/[A-Za-z0-9][A-Za-z0-9._-]*)+$")


class MediaStorage(Protocol):
    url: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def public_url(self, key: str) -> str | None:
        """A URL clients can fetch the object from, or None when the frontend must serve it itself."""
        ...


def new_media_key(kind: str, request_id: str, index: int, extension: str) -> str:
    return f"{kind}/{request_id}/{index}.{extension}"


def new_request_id() -> str:
    return uuid.uuid4().hex


def check_key(key: str) -> str:
    if not _KEY_RE.match(key) or ".." in key.split("/"):
        raise KeyError(f"invalid media key {key!r}")
    return key


class FileStorage:
    """Media in a local folder. Writes go to a temporary file and are renamed, so readers never see half a file."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = url

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise KeyError(f"invalid media key {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".tmp-") as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, KeyError):
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def public_url(self, key: str) -> str | None:
        return None


class S3Storage:
    """Media in an S3 bucket (or any S3-compatible store: boto3 honours ``AWS_ENDPOINT_URL``, credentials and
    region from the standard AWS environment). Clients get presigned GET URLs that expire after
    ``presign_expiry`` seconds, unless the frontend was given ``--http-url``."""

    def __init__(self, bucket: str, prefix: str, presign_expiry: int = 3600) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign_expiry = presign_expiry
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = boto3.client(
            "s3",
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": 3},
                connect_timeout=5,  # a store that accepts but never answers must not hold requests for minutes
                read_timeout=30,
            ),
        )
        self._check_bucket()

    def _check_bucket(self) -> None:
        """Fail at startup, with the reason, rather than at the first generation."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = {
                "404": "does not exist",
                "NoSuchBucket": "does not exist",
                "403": "is not accessible with these credentials",
            }.get(code, f"cannot be used ({code})")
            raise StorageUnavailable(f"S3 bucket '{self.bucket}' {reason}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 bucket '{self.bucket}' cannot be reached: {exc}") from exc

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """boto3's errors (endpoint down, access denied...) as ``StorageUnavailable``, which the API answers
        with a 503 that says storage failed."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"{action} S3 bucket '{self.bucket}' failed: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with self._failures("writing to"):
            self._client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes | None:
        with self._failures("reading from"):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()
            except (self._client.exceptions.NoSuchKey, KeyError):
                return None

    def delete(self, key: str) -> None:
        with self._failures("deleting from"):
            self._client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def public_url(self, key: str) -> str | None:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)}, ExpiresIn=self.presign_expiry
        )


class StorageUnavailable(RuntimeError):
    """The configured store cannot be used (missing bucket, bad credentials, unreachable endpoint)."""


def open_storage(fs_url: str, presign_expiry: int = 3600) -> MediaStorage:
    """``file:///abs/path`` (or a bare path) → ``FileStorage``; ``s3://bucket/prefix`` → ``S3Storage``."""
    parsed = urlparse(fs_url)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else fs_url).expanduser()
        return FileStorage(path, f"file://{path.resolve()}")
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"--fs-url {fs_url!r} names no bucket (expected s3://bucket/prefix)")
        return S3Storage(parsed.netloc, parsed.path, presign_expiry)
    raise ValueError(f"unsupported --fs-url scheme {parsed.scheme!r} (expected file:// or s3://)")
