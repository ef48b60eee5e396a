#!/usr/bin/env bash
# lara-explicit seed 2 in its own lane (its explicit-CoT evaluation is slow); lane A is stopped after seed 1
set -u
cd /work/main && source .venv/bin/activate
export MUJOCO_GL=egl OMP_NUM_THREADS=1 PYTHONPATH=/work/main/src
OV="policy.cameras=corner4 policy.image_size=64 num_workers=1"
latentvla ablations --dataset /work/data/mw6 --out /work/exp/s18/ablC --steps 400 --seeds 2 --episodes 10 --max-steps 200 \
    --workers 1 --presets lara-explicit $OV > /work/exp/s18/ablC.log 2>&1 &
C=$!
A=10340; MAIN=/work/exp/s18/ablations
while [ ! -f $MAIN/eval/lara-explicit/seed1/eval_info.json ]; do sleep 10; done
kill -9 $A 2>/dev/null; pkill -9 -P $A 2>/dev/null
echo "lane A stopped after seed1 $(date)"
wait $C
mkdir -p $MAIN/runs/lara-explicit $MAIN/eval/lara-explicit
mv /work/exp/s18/ablC/runs/lara-explicit/seed2 $MAIN/runs/lara-explicit/
mv /work/exp/s18/ablC/eval/lara-explicit/seed2 $MAIN/eval/lara-explicit/
echo "lane C moved $(date)"
