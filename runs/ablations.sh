#!/usr/bin/env bash
# LaRA-VLA's CoT ablation ladder (Table 4) x 3 seeds at equal steps on the demo's six Meta-World tasks:
#   no CoT (lara-no-cot) / explicit text (lara-explicit) / latent text (lara-latent-text) / latent text + visual (lara)
# -> $OUT/ablations.md (mean ± std), ablations.json, ablations.png. Each (preset, seed) is skipped once done.
#   runs/ablations.sh /work/data/mw6 3000            # full size (4 x 3 runs: hours on 2 CPU cores)
#   PRESETS=lara-no-cot,lara,rdvla,lara-rd,ecot runs/ablations.sh DATA   # + the recurrent variants, ECoT tokens
set -euo pipefail
export MUJOCO_GL=${MUJOCO_GL:-egl}
DATA=${1:?usage: runs/ablations.sh DATASET_DIR [STEPS]}; STEPS=${2:-3000}
OUT=${OUT:-docs/results/ablations}; SEEDS=${SEEDS:-0,1,2}; EPISODES=${EPISODES:-10}; MAX_STEPS=${MAX_STEPS:-200}
TASKS=${TASKS:-button-press-topdown,drawer-close,window-open,reach,push,pick-place}
PRESETS=${PRESETS:-lara-no-cot,lara-explicit,lara-latent-text,lara}
latentvla ablations --dataset "$DATA" --out "$OUT" --steps "$STEPS" --seeds "$SEEDS" --tasks "$TASKS" \
    --presets "$PRESETS" --episodes "$EPISODES" --max-steps "$MAX_STEPS" ${EXTRA:-}
