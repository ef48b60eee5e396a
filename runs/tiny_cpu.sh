#!/usr/bin/env bash
# End-to-end recipe on a 2-core CPU, step by step (what `latentvla demo` does in one command).
set -euo pipefail
export MUJOCO_GL=${MUJOCO_GL:-egl}
OUT=${1:-outputs/tiny_cpu}
TASKS=button-press-topdown,drawer-close,window-open,coffee-pull
latentvla collect --env metaworld --tasks $TASKS --episodes-per-task 25 --image-size 64 --workers 2 --out $OUT/data
latentvla train --preset lara --dataset $OUT/data --out $OUT/lara --steps 2800
latentvla train --preset rdvla --dataset $OUT/data --out $OUT/rdvla --steps 2200 \
    policy.recurrent.mean_recurrence=12 policy.iterations=12
for m in lara rdvla; do
  latentvla eval $OUT/$m --env metaworld --tasks $TASKS --episodes 10 --max-steps 200 --out $OUT/eval_$m
  latentvla bench latency $OUT/$m --json $OUT/latency_$m.json
done
latentvla eval $OUT/rdvla --tasks $TASKS --episodes 5 --max-steps 200 --sweep-iterations 1,2,4,8,12,16 --out $OUT/sweep
