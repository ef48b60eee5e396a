#!/usr/bin/env bash
# #11 ablations (3 seeds x 4 presets, equal steps) in two single-thread lanes; the rd depth lane runs separately
set -u
cd /work/main && source .venv/bin/activate
export MUJOCO_GL=egl OMP_NUM_THREADS=1 PYTHONPATH=/work/main/src
STEPS=${STEPS:-400}
OUT=/work/exp/s18/ablations
COMMON="--dataset /work/data/mw6 --out $OUT --steps $STEPS --seeds 0,1,2 --episodes 10 --max-steps 200 --workers 1"
OV="policy.cameras=corner4 policy.image_size=64 num_workers=1"
( latentvla ablations $COMMON --presets lara-no-cot,lara-explicit $OV > /work/exp/s18/ablA.log 2>&1 ) &
( latentvla ablations $COMMON --presets lara-latent-text,lara $OV > /work/exp/s18/ablB.log 2>&1 ) &
wait
latentvla ablations $COMMON $OV > /work/exp/s18/abl_final.log 2>&1
echo done > /work/exp/s18/abl.done
