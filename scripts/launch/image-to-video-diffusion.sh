#!/usr/bin/env bash
# Wan2.1 image-to-video 14B 480P over two GPUs on port 8000. --help lists the options.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" i2v "$0" "$@"
