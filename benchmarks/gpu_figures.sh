#!/usr/bin/env bash
# The "GPU figures" of benchmarks/README.md in one prepared run: the sd15 table (16x320x512, fp16, CFG batch 2,
# stock vs every variant, s/step and peak GiB), the level-0 processor micro-benchmarks, and the torch.compile + MFU
# table (stock vs MIVA, eager and compiled, for no adapter / 1 full adapter / 2 residual adapters).
#
#   bash benchmarks/gpu_figures.sh [OUT_DIR]        # default OUT_DIR: $OUT, else benchmarks/results
#   PARTS="compile" bash benchmarks/gpu_figures.sh  # only some of: pipeline processors compile (default: all)
#
# Needs a CUDA torch with diffusers and miva importable ($PYTHON, default python). pipeline + processors: about 3-5
# minutes on one H100/H200 (most of it building the random-weight SD1.5 UNet and motion adapter on the CPU);
# compile: not yet measured on a GPU, estimated 5-10 minutes (4 inductor compiles of the SD1.5 UNetMotionModel:
# stock once, MIVA once per variant).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/results}}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
PARTS="${PARTS:-pipeline processors compile}"
if [[ " $PARTS " == *" pipeline "* ]]; then
  "$PY" benchmarks/bench_pipeline.py --size sd15 --device cuda --dtype float16 --repeats 7 --warmup 3 --out "$OUT" \
      | tee "$OUT/pipeline_sd15_cuda_float16.md"
fi
if [[ " $PARTS " == *" processors "* ]]; then
  "$PY" benchmarks/bench_processors.py --level 0 --device cuda --dtype float16 --out "$OUT" \
      | tee "$OUT/processors_level0_cuda_float16.md"
fi
if [[ " $PARTS " == *" compile "* ]]; then
  "$PY" benchmarks/bench_compile.py --size sd15 --device cuda --dtype float16 --repeats 7 --warmup 3 --out "$OUT" \
      | tee "$OUT/compile_sd15_cuda_float16.md"
fi
