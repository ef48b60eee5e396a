#!/usr/bin/env bash
# one lane of the LIBERO-Object comparison at equal steps (seed 0); two lanes run side by side, 1 thread each
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl PYTHONPATH=${SRC:-src}  # src/ as of f60a2c4, copied, so edits cannot reach a running lane
PY=${PY:-python}
$PY -m latentvla.cli ablations --env libero --tasks libero_object --dataset ${DATA:-data/libero_object_20} \
  --seeds 0 --episodes 5 --workers 1 --presets "$1" --steps 1500 --out ${OUT:-outputs/libero_compare}/steps num_workers=0
