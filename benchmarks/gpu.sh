#!/usr/bin/env bash
# The benchmark suite on one GPU, in under 8 minutes: every part time-boxed and independent (one
# that fails or runs over loses only itself), results under $OUT (else benchmarks/results/gpu-<UTC
# time>), a table at the end.
#
#   bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --dry-run  # print the parts' commands, run nothing
#   bash benchmarks/gpu.sh --tiny     # the same code paths at toy sizes (a CPU check of the script)
#
# Parts (seconds allowed; 460 in all):
#   setup            90  jaxalign importable (pip install -e . if not), jax[cuda12] if jax has no GPU backend
#   attention        75  kernels at 1k-16k tokens, bfloat16: einsum reference vs xla vs cudnn
#   dpo_precomputed 120  bf16 DPO step of the ~1.24B Llama (dpo_step.py --config llama-1b), reference precomputed
#   dpo_model        90  the same with the reference forward in the step
#   contrastive      55  bf16 supervised SimCSE step of a BERT-base-shaped encoder
#   vocab_memory     30  DPO gradient peak memory against vocabulary, chunked vs full log-probs
# MFU is against the chip's published dense bf16 peak (benchmarks/gpu_steps.py BF16_PEAKS; H100 and
# H200 SXM: 989 TFLOP/s), found from jax.devices()[0].device_kind.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0 TINY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --tiny) TINY=1 ;;
    *) echo "gpu.sh: unknown option $arg (use --dry-run or --tiny)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
export TQDM_DISABLE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
STATUS="$OUT/status.txt"
if [ "$DRY" = 0 ]; then mkdir -p "$OUT" && : > "$STATUS"; fi

# part NAME SECONDS COMMAND...: runs COMMAND under `timeout`, its output to $OUT/NAME.log.
part() {
  local name=$1 seconds=$(($2 * SCALE)); shift 2
  if [ "$DRY" = 1 ]; then echo "[$name, ${seconds}s] $*"; return 0; fi
  echo "== $name (at most ${seconds}s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$seconds" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local what=ok
  [ $rc = 124 ] || [ $rc = 137 ] && what="timed out after ${seconds}s"
  [ $rc != 0 ] && [ "$what" = ok ] && what="failed (exit $rc): $(tail -n 1 "$OUT/$name.log" | cut -c1-160)"
  echo "$name: $what ($((SECONDS - start))s)" | tee -a "$STATUS"
}

SCALE=1  # --tiny on a CPU: the time boxes x 4 (it compiles there what a GPU compiles in seconds)
if [ "$TINY" = 1 ]; then
  SCALE=4
  T=(--tiny --steps 2) PAIRS=(--pairs 2) BATCH=(--batch 8)
  LENGTHS=(--lengths 128 256 --dtype float32 --repeats 2 --model-layers 0) VOCAB=(--vocab 1024 4096 --length 64)
else
  T=(--steps 5) PAIRS=(--pairs 8 --length 1024) BATCH=(--batch 128 --length 128)
  LENGTHS=(--lengths 1024 2048 4096 8192 16384 --dtype bfloat16 --repeats 3 --model-layers 2 --model-length 4096)
  VOCAB=(--vocab 8192 32768 131072 262144 --length 1024)
fi

# Setup: jaxalign importable, and jax with a GPU backend unless --tiny.
setup() {
  "$PY" -c "import jaxalign" 2>/dev/null || "$PY" -m pip install -q -e . || return 1
  if [ "$TINY" = 0 ] && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    "$PY" -m pip install -q -U "jax[cuda12]" || return 1
  fi
  "$PY" -c "import jax; print(jax.__version__, jax.devices())"
  if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
}
export -f setup
export PY TINY
part setup 90 bash -c setup
part attention 75 "$PY" benchmarks/attention.py "${LENGTHS[@]}" --json "$OUT/attention.json"
part dpo_precomputed 120 "$PY" benchmarks/gpu_steps.py dpo --reference precomputed "${T[@]}" "${PAIRS[@]}" \
  --json "$OUT/dpo_precomputed.json"
part dpo_model 90 "$PY" benchmarks/gpu_steps.py dpo --reference model "${T[@]}" "${PAIRS[@]}" --json "$OUT/dpo_model.json"
part contrastive 55 "$PY" benchmarks/gpu_steps.py contrastive "${T[@]}" "${BATCH[@]}" --json "$OUT/contrastive.json"
part vocab_memory 30 "$PY" benchmarks/vocab_memory.py "${VOCAB[@]}" --json "$OUT/vocab_memory.json"

[ "$DRY" = 1 ] && exit 0
echo
"$PY" benchmarks/gpu_steps.py table --dir "$OUT" || true
if [ -f "$OUT/attention.json" ]; then tail -n 40 "$OUT/attention.log"; fi
if [ -f "$OUT/vocab_memory.json" ]; then grep -A 12 "peak memory" "$OUT/vocab_memory.log" || true; fi
echo "results in $OUT"
