"""A JSON results document rewritten whole after every change, so a run that is killed keeps what it did.

The smoke test records its checks through ``ResultsFile``; the benchmarks (``benchmarks/``) write their result
files with ``write_json``: one way of writing a results file that a reader never sees half written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_json(document: Any, path: Path, indent: int = 1) -> None:
    """Write ``document`` to ``path`` atomically: to a temporary file beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=indent, default=str) + "\n")
    tmp.replace(path)


class ResultsFile:
    """One JSON document on disk; ``put`` and ``append`` update it and write it again."""

    def __init__(self, path: Path, initial: dict[str, Any]) -> None:
        self.path = path
        self.data = initial
        self.lock = threading.Lock()
        self.save()

    def put(self, keys: Sequence[str], value: Any) -> None:
        with self.lock:
            node = self.data
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = value
            self.save()

    def append(self, key: str, item: Any) -> None:
        with self.lock:
            self.data.setdefault(key, []).append(item)
            self.save()

    def save(self) -> None:
        write_json(self.data, self.path)
