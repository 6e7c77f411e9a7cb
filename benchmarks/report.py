"""What the CPU and GPU reports share: markdown tables, numbers as they are printed, and goals judged and shown
the same way (``benchmarks.stats.verdict``), so a verdict reads alike in every result file.

Each report keeps its own sections (``benchmarks/cpu/report.py``: overhead, load, encoding, dLLM and the plot;
``benchmarks/gpu/report.py``: served against bare per engine, pooled pairs, SGLang against diffusers, GPUs) and
writes its JSON with ``write_json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.stats import verdict
from scripts.gpu.results_file import write_json

__all__ = ["VERDICT_RULE", "judge", "markdown_table", "number", "targets_table", "write_json"]

VERDICT_RULE = (
    "A verdict is *met* when the measured value is on the goal's side, *missed* when the whole 95% bootstrap "
    "interval is on the wrong side, and *inconclusive* when the interval straddles the goal: the machine's noise is "
    "then larger than the distance to the goal."
)


def markdown_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals, ``–`` for a missing one, anything else as it is."""
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def judge(goal: float, measured: float, ci95: Sequence[float] | None, *, higher_is_better: bool) -> dict[str, Any]:
    """A goal's record: the goal, what was measured, its 95% interval, the verdict, and ``met``."""
    said = verdict(measured, ci95, goal, higher_is_better=higher_is_better)
    return {
        "goal": goal,
        "measured": measured,
        "ci95": list(ci95) if ci95 else None,
        "verdict": said,
        "met": said == "met",
    }


def targets_table(targets: Sequence[dict[str, Any]], digits: int = 2) -> str:
    """Goals (each a ``name``, an optional ``unit`` and ``judge``'s record) as a table, verdicts other than *met*
    in bold."""
    rows = []
    for target in targets:
        said = target.get("verdict") or ("met" if target["met"] else "missed")
        unit = target.get("unit", "")
        ci95 = target.get("ci95")
        interval = f"{number(ci95[0], digits)} to {number(ci95[1], digits)} {unit}".strip() if ci95 else "–"
        rows.append(
            [
                target["name"],
                f"{target['goal']} {unit}".strip(),
                f"{number(target['measured'], digits)} {unit}".strip(),
                interval,
                said if said == "met" else f"**{said}**",
            ]
        )
    return markdown_table(rows, ["target", "goal", "measured", "95% interval", "verdict"])
