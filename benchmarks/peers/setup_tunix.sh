#!/usr/bin/env bash
# Tunix (PyPI google-tunix, a JAX post-training library) in its own virtual environment: it pins its own
# jax/flax versions, so it must not share jaxalign's. Creates .venv-tunix at the repository root (git-ignored),
# CPU-only. Used by benchmarks/dpo_step.py --peers tunix (see benchmarks/peers/tunix_dpo.py).
#   bash benchmarks/peers/setup_tunix.sh            # TUNIX_VERSION=0.1.7, PYTHON=python3.11 by default
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-tunix}"
PYTHON="${PYTHON:-python3.11}"
TUNIX_VERSION="${TUNIX_VERSION:-0.1.7}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip >/dev/null
# safetensors and numpy read the exported Hugging Face checkpoint; nothing from jaxalign is installed here.
"$VENV/bin/python" -m pip install "google-tunix==$TUNIX_VERSION" safetensors numpy
"$VENV/bin/python" -c "import tunix, jax, flax; print('tunix', getattr(tunix, '__version__', '$TUNIX_VERSION'), 'jax', jax.__version__, 'flax', flax.__version__)"
