#!/usr/bin/env bash
# usage: run_lane.sh NAME PRESET [overrides...]   (one-factor runs at 1500 steps on the demo's 6 tasks)
set -u
cd "${EXP:-.}"  # the experiment directory: data/mw6, runs/, evals/, logs/ under it
export OMP_NUM_THREADS=1 MUJOCO_GL=egl
PY=python
name=$1; preset=$2; shift 2
[ -f runs/$name/done ] && exit 0
$PY -m latentvla.cli train --preset $preset --dataset data/mw6 --out runs/$name --steps 1500 --overwrite \
   policy.cameras=corner4 policy.image_size=64 num_workers=0 save_every=1500 log_every=50 seed=0 "$@" > logs/$name.train.log 2>&1 || exit 1
$PY -m latentvla.cli eval runs/$name --env metaworld --tasks button-press-topdown,drawer-close,window-open,reach,push,pick-place \
   --episodes 10 --max-steps 200 --workers 1 --out evals/$name > logs/$name.eval.log 2>&1 || exit 1
touch runs/$name/done
