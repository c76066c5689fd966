#!/usr/bin/env bash
# Merging two differently trained copies of the first 3 layers of all-MiniLM-L6-v2 (see
# experiments/README.md, "Model merging"): supervised SimCSE on builtin:nli-mini (the quickstart)
# and CoSENT on STS-B train pairs, merged by each `jaxalign merge` method, every model scored on
# builtin:sts-mini and STS-B dev. About 10 minutes on a 2-core CPU; a model already written is not
# trained again.
#   bash experiments/merge_small.sh [JAXALIGN]      (JAXALIGN: the command, default `jaxalign`)
set -euo pipefail
J=${1:-jaxalign}
R=runs/merge_small
STSB=${JAXALIGN_DATA:-../shared/data}/sts-b
[ -d $R/base ] || python - <<PY
import jax
from jaxalign.models import load_encoder
from jaxalign.models.export import export_hf
enc = load_encoder("all-MiniLM-L6-v2", num_layers=3)
export_hf(enc, jax.device_get(enc.params), "$R/base")
PY
[ -d $R/simcse/hf ] || $J train experiments/quickstart.yaml log.dir=$R/simcse checkpoint.dir=$R/simcse/ckpt export=$R/simcse/hf eval.every=40
[ -d $R/cosent/hf ] || $J train experiments/cosent_small.yaml data.path=$STSB/sts-train.csv eval.data=$STSB log.dir=$R/cosent \
  export=$R/cosent/hf eval.every=60
M="--base $R/base --models $R/simcse/hf $R/cosent/hf"
$J merge $M --method average --output $R/average
$J merge $M --method average --scale 1.5 --output $R/average_x1.5
$J merge $M --method slerp --output $R/slerp
$J merge $M --method ties --density 0.2 --output $R/ties_0.2
$J merge $M --method ties --density 0.2 --scale 2 --output $R/ties_0.2_x2
$J merge $M --method self-positioning --steps 150 --max-length 32 --output $R/self_positioning
$J merge $M --method self-positioning --steps 150 --max-length 32 --convention transcribed --output $R/self_positioning_tr
MODELS="base simcse/hf cosent/hf average average_x1.5 slerp ties_0.2 ties_0.2_x2 self_positioning self_positioning_tr"
for m in $MODELS; do
  $J eval sts --model $R/$m --data builtin:sts-mini $STSB --split dev --json $R/sts_${m//\//_}.json > /dev/null
done
python - $R $MODELS <<'PY'
import json, sys
root, *models = sys.argv[1:]
for m in models:
    tasks = json.load(open(f"{root}/sts_{m.replace('/', '_')}.json"))["tasks"]
    print(f"{m:22s}", "  ".join(f"{name} {t['all']:.2f}" for name, t in tasks.items()))
PY
