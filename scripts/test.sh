#!/usr/bin/env bash
# Set up what is missing, then lint and run the test suite: by default the whole of it (unit tests, and
# end-to-end tests that start real tritonserver, frontend and S3 processes); --unit runs only the unit tests
# (pytest -m "not e2e": in process, about a minute), --e2e only the end-to-end ones. Other arguments go to
# pytest, e.g. scripts/test.sh --unit -k images -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lane=()
pytest_args=()
for arg in "$@"; do
  case "$arg" in
    --unit) lane=(-m "not e2e") ;;
    --e2e) lane=(-m e2e) ;;
    *) pytest_args+=("$arg") ;;
  esac
done
"$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -ra ${lane[@]+"${lane[@]}"} ${pytest_args[@]+"${pytest_args[@]}"}
