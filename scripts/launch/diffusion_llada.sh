#!/usr/bin/env bash
# LLaDA diffusion LM (inclusionAI/LLaDA2.0-mini-preview) on port 8001. --help lists the options.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" llada "$0" "$@"
