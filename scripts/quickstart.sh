#!/usr/bin/env bash
# The main job on the embedded default: all-MiniLM-L6-v2 (from PyPI) on the CPU.
# Sets up .venv on first use. Extra arguments go to `jaxalign eval sts`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
jaxalign eval sts --model all-MiniLM-L6-v2 --data builtin:sts-mini "$@"
