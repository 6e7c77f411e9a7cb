#!/usr/bin/env bash
# FLUX text-to-image (black-forest-labs/FLUX.1-dev) on port 8000. --help lists the options.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" image "$0" "$@"
