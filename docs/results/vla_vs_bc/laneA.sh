#!/usr/bin/env bash
cd "${EXP:-.}"  # the experiment directory: data/mw6, runs/, evals/, logs/ under it
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
[ -f data/mw6/meta/info.json ] || python -m latentvla.cli collect --env metaworld \
  --tasks button-press-topdown,drawer-close,window-open,reach,push,pick-place --episodes-per-task 25 \
  --image-size 64 --camera corner4 --workers 1 --seed 0 --out data/mw6 > logs/collect.log 2>&1
./run_lane.sh bc bc
./run_lane.sh nocot lara-no-cot
./run_lane.sh nocot_expertonly lara-no-cot policy.curriculum.fractions=0,1 policy.curriculum.mix_prob=0
./run_lane.sh nocot_expertonly_lite0 lara-no-cot policy.curriculum.fractions=0,1 policy.curriculum.mix_prob=0 policy.backbone.vision.kind=efficientnet_lite0
