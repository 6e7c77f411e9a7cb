"""The GPU benchmark: the served stack against the bare engine on any GPU host (``python -m benchmarks.gpu.bench``),
and the report that turns its runs into ``benchmarks/results/gpu-<date>.{json,md}`` (``benchmarks.gpu.report``).

It starts the stack, builds its models and records the host with the smoke test's helpers (``scripts/gpu/``), so
that what the smoke test proves runnable is what the benchmark measures.
"""
