#!/usr/bin/env bash
# one lane of LIBERO-Object at equal steps: $1 preset, $2 seed, $3 out dir, rest = overrides
set -euo pipefail
export OMP_NUM_THREADS=1 MUJOCO_GL=egl PYTHONPATH=/work/exp/src_238b72c
PY=/work/main/.venv/bin/python
P=$1; S=$2; OUT=$3; shift 3
$PY -m latentvla.cli ablations --env libero --tasks libero_object --dataset /work/data/libero_object_20 \
  --seeds $S --episodes 5 --workers 1 --presets "$P" --steps 1500 --out "$OUT" num_workers=0 "$@"
