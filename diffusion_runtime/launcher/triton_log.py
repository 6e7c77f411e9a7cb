"""What tritonserver's log says about models that failed to load.

When a model cannot load, tritonserver (with ``--exit-on-error``) exits before it is ready, and the reason is
only in its log, on a line such as::

    E1201 23:25:40.933263 19563 model_lifecycle.cc:642] "failed to load 'image_diffusion' version 1:
    Internal: ValueError: The provided pretrained_model_name_or_path \\"/models/flux\\" is neither ...\\n\\nAt:\\n ..."

(one line in the log; Triton 2.51 quotes the message and escapes its newlines and quotes, older releases print it bare).
``load_failures`` turns those lines into the model's name and the reason a user can act on: the Python
exception's message, without Triton's status prefix or the traceback the Python backend appends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_FAILED_TO_LOAD = re.compile(r"""failed to load '(?P<model>[^']+)' version \d+: (?P<reason>.*)$""")
# Triton's status codes as its log spells them before a message ("Internal: ValueError: ...").
_STATUS_PREFIX = re.compile(
    r"^(Internal|Invalid argument|Not found|Unavailable|Unknown|Unsupported|Already exists|Unauthenticated): "
)
_TRACEBACK = "\n\nAt:\n"  # the Python backend appends the stack after this


@dataclass(frozen=True)
class LoadFailure:
    """A model tritonserver could not load, and Triton's reason."""

    model: str
    reason: str


def _unquote(text: str) -> str:
    """The message as written, from Triton's quoted and escaped form (``...: reason"``) or the bare one."""
    if text.endswith('"'):
        try:
            return json.loads('"' + text[:-1] + '"')
        except json.JSONDecodeError:
            return text[:-1]
    return text


def load_failures(log_text: str) -> list[LoadFailure]:
    """Every model the log says failed to load, each once, in the order the log names them."""
    failures: dict[str, LoadFailure] = {}
    for line in log_text.splitlines():
        match = _FAILED_TO_LOAD.search(line)
        if not match or match["model"] in failures:
            continue
        reason = _unquote(match["reason"]).split(_TRACEBACK, 1)[0]
        reason = _STATUS_PREFIX.sub("", reason.strip())
        failures[match["model"]] = LoadFailure(match["model"], reason)
    return list(failures.values())


_ERROR_LINE = re.compile(r"^(error: |E\d{4} )")  # "error: creating server: ...", or an error-level log line


def error_lines(log_text: str, limit: int = 5) -> list[str]:
    """The last ``limit`` error lines of the log: why tritonserver stopped when no model is to blame."""
    return [line[:500] for line in log_text.splitlines() if _ERROR_LINE.match(line)][-limit:]


def read_log(log_file: Path | None) -> str:
    """The log's text; empty when there is no log to read."""
    return log_file.read_text(errors="replace") if log_file is not None and log_file.exists() else ""
