#!/usr/bin/env bash
# The whole test suite. Sets up .venv (with the PyTorch CPU reference) on first use.
# Real data sets are read from $JAXALIGN_DATA (default ../shared/data); tests that need
# them are skipped, naming the missing file, when it is absent.
# Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" test
cd "$repo"
python -m pytest "$@"
