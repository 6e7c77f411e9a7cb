#!/usr/bin/env bash
# Start the whole stack: tritonserver (the one on PATH, else the embedded one) and the OpenAI-compatible
# frontend on port 8000. With no model named, tiny models are built locally and served. Ctrl-C stops it all.
#   scripts/serve.sh [--port 8000] [--image-model black-forest-labs/FLUX.1-dev] [--help for everything]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python -m diffusion_runtime.launcher "$@"
