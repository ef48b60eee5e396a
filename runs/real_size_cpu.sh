#!/usr/bin/env bash
# RD-VLA's MiniVLA at full size on this CPU with random weights: Qwen2.5-0.5B + DINOv2-L +
# SigLIP-so400m/14-224 written from their public configs (bench/memory.py REFERENCE_CONFIGS), `train --preset
# rdvla-minivla` in fp32 for 2 steps with a checkpoint each step, `--resume` for a third; peak RSS of each process
# next to `bench memory --device cpu --dtype float32`. Exit 1 if the prediction is off by more than 10 %.
# Needs ~12 GB free RAM and ~6 GB disk; about 10 min on 2 cores. Re-check only: add --check-only.
set -euo pipefail
OUT=${1:-outputs/real_size_cpu}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1
latentvla bench real-size --out "$OUT" --batch-size 2 --steps 2 "$@"
latentvla bench memory --preset rdvla-minivla --backbone "$OUT/models/qwen2.5-0.5b" \
    --vision "$OUT/models/dinov2-large" --vision "$OUT/models/siglip-so400m-224" \
    --batch-size 2 --cameras 2 --device cpu --dtype float32
