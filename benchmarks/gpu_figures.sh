#!/usr/bin/env bash
# The "GPU figures" of benchmarks/README.md in one prepared run: the sd15 table (16x320x512, fp16, CFG batch 2,
# stock vs every variant, s/step and peak GiB) and the level-0 processor micro-benchmarks.
#
#   bash benchmarks/gpu_figures.sh [OUT_DIR]        # default OUT_DIR: $OUT, else benchmarks/results
#
# Needs a CUDA torch with diffusers and miva importable ($PYTHON, default python). About 3-5 minutes on one H100/H200
# (most of it building the random-weight SD1.5 UNet and motion adapter on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/results}}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
"$PY" benchmarks/bench_pipeline.py --size sd15 --device cuda --dtype float16 --repeats 7 --warmup 3 --out "$OUT" \
    | tee "$OUT/pipeline_sd15_cuda_float16.md"
"$PY" benchmarks/bench_processors.py --level 0 --device cuda --dtype float16 --out "$OUT" \
    | tee "$OUT/processors_level0_cuda_float16.md"
