"""Where generated media is kept: one interface, ``file://`` here and ``s3://`` beside it.

Keys are always built by the project (``new_media_key``), never from user input, and every backend checks
them again (``check_key``) so a request path such as ``../../etc/passwd`` cannot reach outside the store.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
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


def open_storage(fs_url: str) -> MediaStorage:
    """``file:///abs/path`` (or a bare path) → ``FileStorage``."""
    parsed = urlparse(fs_url)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else fs_url).expanduser()
        return FileStorage(path, f"file://{path.resolve()}")
    raise ValueError(f"unsupported --fs-url scheme {parsed.scheme!r} (expected file://)")
