#!/usr/bin/env bash
# RL post-training on Meta-World on a 2-core CPU — the exact commands, in order. NOT RUN yet.
# Cost on 2 cores: the 30-min demo (if START is not given) + per model: one before-eval, then PPO and GRPO runs of
# MINUTES each, each followed by an after-eval (~2.5 h per model at MINUTES=60, ~8 h for the three models).
# Every step is resumable: re-running the script continues a killed RL run (--resume) and skips finished evals.
#
#   bash runs/rl_metaworld.sh                         # demo-length checkpoints first, then RL
#   START=outputs/demo bash runs/rl_metaworld.sh      # reuse a finished `latentvla demo --out outputs/demo`
#   MODELS=lara ALGOS=ppo MINUTES=10 bash runs/rl_metaworld.sh   # a shorter slice
#
# Writes OUT/eval/<model>_before, OUT/rl/<model>_<algo>, OUT/eval/<model>_<algo>_after, then
# docs/results/rl/summary.json + rl.png (python -m latentvla.rl.summary). Episodes of the before/after evals
# come from the eval split (held out from the RL rollouts' train split), same seed, same 200-step cap as the demo.
set -euo pipefail
export MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${OUT:-outputs/rl_mw}
MINUTES=${MINUTES:-60}
MODELS=${MODELS:-lara rdvla bc}
ALGOS=${ALGOS:-ppo grpo}
EP=${EP:-20}                      # held-out episodes per task, before and after
SIX=button-press-topdown,drawer-close,window-open,reach,push,pick-place
HARD=reach,push,pick-place        # RL tasks; the three easy ones are only evaluated (must not lose > 5 points)
# Untuned starting point (no Meta-World RL has run yet): 200-step episodes as in the demo's eval, both cores.
COMMON=(--env metaworld --tasks $HARD --minutes "$MINUTES" --no-progress --set max_steps=200 threads=2 eval_every=20)
PPO=(--algo ppo --num-envs 6 --set lr=1e-4 epochs=2 minibatches=4)
GRPO=(--algo grpo --num-envs 12 --group-size 4 --set lr=1e-4 epochs=2 minibatches=4)

if [ -z "${START:-}" ]; then   # 1. demo-length checkpoints: the demo itself (its 4 models, 30 min, six tasks)
  START=$OUT/demo
  latentvla demo --out "$START"
fi

for m in $MODELS; do
  ckpt=$START/runs/$m
  [ -f "$OUT/eval/${m}_before/eval_info.json" ] ||
    latentvla eval "$ckpt" --tasks $SIX --episodes "$EP" --max-steps 200 --workers 2 --quiet \
      --out "$OUT/eval/${m}_before"
  for algo in $ALGOS; do
    run=$OUT/rl/${m}_$algo
    resume=(); [ -d "$run/checkpoints" ] && resume=(--resume)
    if [ "$algo" = ppo ]; then args=("${PPO[@]}"); else args=("${GRPO[@]}"); fi
    [ -f "$run/rl_summary.json" ] ||
      latentvla rl "$ckpt" "${COMMON[@]}" "${args[@]}" --out "$run" "${resume[@]}"
    [ -f "$OUT/eval/${m}_${algo}_after/eval_info.json" ] ||
      latentvla eval "$run" --tasks $SIX --episodes "$EP" --max-steps 200 --workers 2 --quiet \
        --out "$OUT/eval/${m}_${algo}_after"
  done
done
python -m latentvla.rl.summary --root "$OUT" --out docs/results/rl
