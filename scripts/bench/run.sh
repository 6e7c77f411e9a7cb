#!/usr/bin/env bash
# The benchmark suite on this machine: overhead of serving over the bare engine, load, encoding, dLLM.
#   scripts/bench/run.sh            # quick run (few repetitions)
#   scripts/bench/run.sh --full     # many repetitions
#   scripts/bench/run.sh --only overhead,load
# Writes benchmarks/results/cpu-<date>.{json,md,png}. See scripts/bench/__main__.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m scripts.bench "$@"
