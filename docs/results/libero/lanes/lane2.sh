#!/usr/bin/env bash
# after the seed-0 lane ($1 = its lane.sh pid) ends: the next (preset seed) pairs of the equal-steps comparison
set -uo pipefail
waitfor=$1; shift
while kill -0 "$waitfor" 2>/dev/null; do sleep 10; done
export OMP_NUM_THREADS=1 MUJOCO_GL=egl PYTHONPATH=${SRC:-src}  # src/ as of f60a2c4, copied, so edits cannot reach a running lane
for pair in "$@"; do
  preset=${pair%:*}; seed=${pair#*:}
  ${PY:-python} -m latentvla.cli ablations --env libero --tasks libero_object \
    --dataset ${DATA:-data/libero_object_20} --seeds "$seed" --episodes 5 --workers 1 --presets "$preset" \
    --steps 1500 --out ${OUT:-outputs/libero_compare}/steps num_workers=0
done
