#!/usr/bin/env bash
# Builds .gpu-pack/*.tar.xz (what the GPU machine needs and lacks) with the project's virtualenv; see pack.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python scripts/gpu/pack.py "$@"
