#!/usr/bin/env bash
# The benchmark suite on this machine: overhead of serving over the bare engine, load, encoding, dLLM.
#   benchmarks/cpu/run.sh            # quick run (few repetitions)
#   benchmarks/cpu/run.sh --full     # many repetitions
#   benchmarks/cpu/run.sh --only overhead,load
# Writes benchmarks/results/cpu-<date>.{json,md,png}. See benchmarks/cpu/__main__.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m benchmarks.cpu "$@"
