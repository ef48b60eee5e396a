#!/usr/bin/env bash
# The LIBERO-Object comparison of the reasoning policies against plain BC, on demonstrations from the scripted
# expert (envs/libero_expert.py). What has run (2026-12-07, docs/results/libero/): part 1 at 1,500 steps, seed 0 for
# the four models and more seeds for lara / lara-no-cot, split over two single-thread lanes
# (docs/results/libero/lanes/); parts 2 and 3 have not run. Costs measured on 2 cores: ~0.8-1.2 optimizer steps/s per
# single-thread lane (22-30 min per 1,500-step run), an evaluation episode ~5-10 s (a render per chunk of 8),
# 4.5-8.5 min per 50-episode evaluation.
#
#   bash runs/libero_compare.sh                  # writes $OUT/{steps,minutes,ladder}/ablations.{json,md,png}
#   SEEDS=0 EPISODES=2 STEPS=200 bash runs/libero_compare.sh      # a quick slice
#
# Choices: 128 px (a policy is built at its dataset's resolution; 128 px was the expert's collection size), both
# cameras (agent view + wrist, LeRobot's LIBERO layout), the papers' protocol (init state i for episode i, 10 no-op steps,
# libero_object's 280-step limit, the whole chunk executed), init states 0..EPISODES-1 for the seed sweeps (a
# fixed, documented subset; EPISODES=50 for final numbers).
set -euo pipefail
export MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-outputs/libero_compare}; DATA=${DATA:-data/libero_object_20}; SUITE=${SUITE:-libero_object}
SEEDS=${SEEDS:-0,1,2}; EPISODES=${EPISODES:-5}; STEPS=${STEPS:-1500}; MINUTES=${MINUTES:-20}; WORKERS=${WORKERS:-2}

[ -f "$DATA/meta/info.json" ] || latentvla collect --env libero --tasks "$SUITE" --episodes-per-task 20 \
  --image-size 128 --workers "$WORKERS" --seed 0 --out "$DATA"
COMMON=(--env libero --tasks "$SUITE" --dataset "$DATA" --seeds "$SEEDS" --episodes "$EPISODES" --workers "$WORKERS")
MAIN=lara,lara-no-cot,rdvla,bc
# 1. equal optimizer steps
latentvla ablations "${COMMON[@]}" --presets "$MAIN" --steps "$STEPS" --out "$OUT/steps"
# 2. equal wall clock (STEPS is the schedule's length and a cap)
latentvla ablations "${COMMON[@]}" --presets "$MAIN" --steps 100000 --minutes "$MINUTES" --out "$OUT/minutes"
# 3. LaRA Table 4's ladder at equal steps
latentvla ablations "${COMMON[@]}" --steps "$STEPS" --out "$OUT/ladder"
# 4. the explicit CoT of the lara runs against the simulator's annotation (box IoU on the target, subtask match)
for s in ${SEEDS//,/ }; do
  latentvla analyze cot "$OUT/steps/runs/lara/seed$s" --dataset "$DATA" --episodes 24 --json "$OUT/steps/cot_lara_seed$s.json"
done
