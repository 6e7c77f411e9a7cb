#!/usr/bin/env bash
# Wan2.1 text-to-video (--wan-size 1b on one GPU, 14b over two) on port 8000. --help lists the options.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" t2v "$0" "$@"
