"""A JSON results document rewritten whole after every change, so a run that is killed keeps what it did."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ResultsFile:
    """One JSON document on disk; ``put`` and ``append`` update it and write it again (atomically, by rename)."""

    def __init__(self, path: Path, initial: dict[str, Any]) -> None:
        self.path = path
        self.data = initial
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
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
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)
