#!/usr/bin/env bash
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
D=/work/data/libero_object_20
for spec in base_bc:/work/exp/lib/steps/runs/bc/seed0 base_rdvla:/work/exp/lib/steps/runs/rdvla/seed0 base_lara:/work/exp/lib/steps/runs/lara/seed0 base_lara-no-cot:/work/exp/lib/steps/runs/lara-no-cot/seed0 split_lara:/work/exp/lib2/paper_split/runs/lara/seed0 split_lara-no-cot:/work/exp/lib2/paper_split/runs/lara-no-cot/seed0 grid8_lara:/work/exp/lib2/grid8/runs/lara/seed0 grid8_rdvla:/work/exp/lib2/grid8/runs/rdvla/seed0 combo_lara-rd:/work/exp/lib2/combo/runs/lara-rd/seed0; do
  name=${spec%%:*}; run=${spec#*:}
  $PY -m latentvla.cli analyze actions $run --dataset $D --json /work/exp/diag/act/$name.json > /dev/null 2>&1 || echo "FAILED $name"
done
