#!/usr/bin/env bash
cd "${EXP:-.}"  # the experiment directory: data/mw6, runs/, evals/, logs/ under it
while pgrep -f "laneB.sh" > /dev/null; do sleep 20; done
./run_lane.sh nocot_expertonly_b64_grid8 lara-no-cot policy.curriculum.fractions=0,1 policy.curriculum.mix_prob=0 batch_size=64 policy.backbone.vision.grid=8
