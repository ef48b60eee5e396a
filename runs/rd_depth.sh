#!/usr/bin/env bash
# RD-VLA test-time depth (Fig. 4) and adaptive halting on the demo's six tasks, from ONE rdvla checkpoint
# trained with the paper's depth distribution (mean recurrence 32, TBPTT 8):
#   1. train rdvla, policy.recurrent.mean_recurrence=32
#   2. success vs fixed iterations 1,2,4,8,12,16,24,32          -> $OUT/sweep_iterations/ (table + plot)
#   3. mse-halting delta sweep (cap 32) with mean iterations used -> $OUT/sweep_delta/      (compare to fixed 12)
#   runs/rd_depth.sh /work/data/mw6 3000
set -euo pipefail
export MUJOCO_GL=${MUJOCO_GL:-egl}
DATA=${1:?usage: runs/rd_depth.sh DATASET_DIR [STEPS]}; STEPS=${2:-3000}
OUT=${OUT:-docs/results/rd_depth}; EPISODES=${EPISODES:-10}; MAX_STEPS=${MAX_STEPS:-200}
TASKS=${TASKS:-button-press-topdown,drawer-close,window-open,reach,push,pick-place}
ITERS=${ITERS:-1,2,4,8,12,16,24,32}; DELTAS=${DELTAS:-1e-4,3e-4,1e-3,3e-3,1e-2}
if [ ! -d "$OUT/rdvla32/checkpoints" ]; then
  latentvla train --preset rdvla --dataset "$DATA" --out "$OUT/rdvla32" --steps "$STEPS" \
      policy.recurrent.mean_recurrence=32 policy.iterations=12 ${EXTRA:-}
fi
latentvla eval "$OUT/rdvla32" --tasks "$TASKS" --episodes "$EPISODES" --max-steps "$MAX_STEPS" \
    --sweep-iterations "$ITERS" --out "$OUT/sweep_iterations"
latentvla eval "$OUT/rdvla32" --tasks "$TASKS" --episodes "$EPISODES" --max-steps "$MAX_STEPS" \
    --iterations "${MAX_ITERS:-32}" --halting mse --sweep-delta "$DELTAS" --out "$OUT/sweep_delta"
