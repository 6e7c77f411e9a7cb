"""Run the reliability and security tests and keep the figures they measure.

``python scripts/reliability_report.py`` runs ``tests/test_bad_input.py``, ``test_fuzz.py``, ``test_faults.py``,
``test_load.py`` and ``test_security.py`` against real tritonserver and frontend processes, with
``RELIABILITY_REPORT`` naming ``benchmarks/results/reliability-<date>.json``. Each test adds its figures (cases
tried, 5xx seen, recovery times, 429 counts, memory before and after) to that file through ``record``; this
script adds the run itself (date, commit, host, outcome, duration). Under plain ``pytest`` nothing is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPORT_ENV = "RELIABILITY_REPORT"
TESTS = (
    "tests/test_bad_input.py",
    "tests/test_fuzz.py",
    "tests/test_faults.py",
    "tests/test_load.py",
    "tests/test_security.py",
)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def record(section: str, figures: dict[str, Any]) -> None:
    """Merge one test's figures into the report named by ``RELIABILITY_REPORT`` (a no-op when unset)."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    data = _read(path)
    data.setdefault("sections", {})[section] = figures
    _write(path, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    today = datetime.date.today().isoformat()
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / f"reliability-{today}.json")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    output = args.output.resolve()
    _write(output, {})
    command = [sys.executable, "-m", "pytest", "-ra", *TESTS, *args.pytest_args]
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, REPORT_ENV: str(output)}, check=False)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    data = _read(output)
    data = {
        "date": today,
        "command": "python scripts/reliability_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tests": list(TESTS),
        "passed": result.returncode == 0,
        "duration_s": round(time.monotonic() - start, 1),
        "commit": commit.stdout.strip() or None,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        **data,
    }
    _write(output, data)
    print(f"[reliability] {'passed' if result.returncode == 0 else 'FAILED'}; figures in {output}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
