"""The project's benchmark suite: what serving costs over the bare engine, and how it scales with load.

Entry point: ``scripts/bench/run.sh`` (``python -m scripts.bench``); see ``scripts/bench/__main__.py``.
"""
