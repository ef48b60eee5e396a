#!/usr/bin/env bash
cd "${EXP:-.}"  # the experiment directory: data/mw6, runs/, evals/, logs/ under it
./run_lane.sh nocot_expertonly_b64 lara-no-cot policy.curriculum.fractions=0,1 policy.curriculum.mix_prob=0 batch_size=64
./run_lane.sh rdvla rdvla policy.recurrent.mean_recurrence=12 policy.iterations=12
