#!/bin/bash
while pgrep -f bench_final.sh >/dev/null; do sleep 5; done
OUT=/work/exp/i11/final; mkdir -p $OUT
ARGS="--presets lara,rdvla --dataset /work/data/mw6 --batch-size 32 --steps 3 --warmup 1 augment=true policy.cameras=corner4 policy.recurrent.mean_recurrence=12 policy.iterations=12"
run() { echo "== $1 $3"; PYTHONPATH=$2 MUJOCO_GL=egl /work/main/.venv/bin/latentvla bench train $ARGS $3 --json $OUT/$1.json 2>&1 | grep -v -i "USDT\|warn\|return torch"; }
run new2 /work/exp/i11/newsrc2 ""
run old2 /work/exp/i11/old/src ""
