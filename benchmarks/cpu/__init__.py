"""The CPU benchmark: what serving costs over the bare engine, and how it scales with load, on the tiny models.

Run ``benchmarks/cpu/run.sh`` (sets up what is missing first) or ``python -m benchmarks.cpu`` in the project's
environment; see ``benchmarks/cpu/__main__.py``.
"""
