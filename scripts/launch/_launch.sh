#!/usr/bin/env bash
# Shared body of the launch scripts: set up what is missing, then run a launch preset.
set -euo pipefail
preset=$1; script=$2; shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python -m diffusion_runtime.launcher.presets "$preset" "$script" "$@"
