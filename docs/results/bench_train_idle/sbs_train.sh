#!/usr/bin/env bash
# side-by-side training throughput: old commit worktree vs new, alternating, same dataset and overrides
set -u
export MUJOCO_GL=egl
PY=/work/main/.venv/bin/python
D=/work/data/mw6; O=/work/exp/s18/sbs; mkdir -p $O
NEW=${NEW:-/work/wt/lead}
run() { # name dir presets json extra...
  local name=$1 dir=$2 presets=$3 json=$4; shift 4
  (cd $dir && PYTHONPATH=$dir/src $PY -m latentvla.cli bench train --presets $presets --dataset $D --batch-size 32 \
     --steps ${STEPS:-8} --warmup 2 --json $O/$json "$@" > $O/$json.log 2>&1)
  echo "$name $json: $(python3 -c "import json;print([(r['preset'],round(r['samples_per_s'],1)) for r in json.load(open('$O/$json'))['results']])" 2>&1)"
}
I11="augment=true policy.cameras=corner4 policy.recurrent.mean_recurrence=12 policy.iterations=12"
D32="augment=true policy.cameras=corner4 policy.recurrent.mean_recurrence=64 policy.recurrent.depth_sigma=0 policy.recurrent.max_depth=32"
SMALL="policy.backbone.size=small policy.recurrent.width=256 policy.recurrent.heads=8"
for rep in 1 2; do
  run old03e8 /work/exp/s18/old03e8 lara,rdvla i11_old_$rep.json $I11
  run new $NEW lara,rdvla i11_new_$rep.json $I11
  run old3c1b /work/exp/s18/old3c1b rdvla d32_tiny_old_$rep.json $D32
  run new $NEW rdvla d32_tiny_new_$rep.json $D32
  run old3c1b /work/exp/s18/old3c1b rdvla d32_small_old_$rep.json $D32 $SMALL
  run new $NEW rdvla d32_small_new_$rep.json $D32 $SMALL
done
