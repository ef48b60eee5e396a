#!/usr/bin/env bash
# LaRA-VLA's CoT ablation ladder (Table 4) and the recurrent variants, one named preset per line.
set -euo pipefail
DATA=${1:?usage: runs/ablations.sh DATASET_DIR [STEPS]}; STEPS=${2:-3000}; OUT=${OUT:-outputs/ablations}
latentvla train --preset lara-no-cot      --dataset $DATA --out $OUT/no-cot      --steps $STEPS  # none
latentvla train --preset lara-explicit    --dataset $DATA --out $OUT/explicit    --steps $STEPS  # explicit text CoT
latentvla train --preset lara-latent-text --dataset $DATA --out $OUT/latent-text --steps $STEPS  # latent text
latentvla train --preset lara             --dataset $DATA --out $OUT/lara        --steps $STEPS  # latent text + visual
latentvla train --preset rdvla            --dataset $DATA --out $OUT/rdvla       --steps $STEPS  # recurrent depth
latentvla train --preset lara-rd          --dataset $DATA --out $OUT/lara-rd     --steps $STEPS  # both
latentvla train --preset ecot             --dataset $DATA --out $OUT/ecot        --steps $STEPS  # ECoT-style token actions (explicit latency baseline)
