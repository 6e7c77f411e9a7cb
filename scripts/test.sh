#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite (unit tests and end-to-end tests that start real
# tritonserver and frontend processes). Extra arguments go to pytest, e.g. scripts/test.sh -k images -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -ra "$@"
