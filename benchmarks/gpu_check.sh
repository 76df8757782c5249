#!/usr/bin/env bash
# One-shot check on the GPU machine (issue 17), about 8 minutes: the CUDA tests, then benchmarks/gpu.py.
# Prepare here first: `bash benchmarks/gpu_wheels.sh` (rltrain's dependencies as wheels, no torch), then
#   run(carry=[".gpu_wheels"], command="bash benchmarks/gpu_check.sh", timeout_s=560)
# Results land in $OUT: gpu.txt (device, versions), tests.txt, bench.md (the tables for README).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=egl WANDB_MODE=disabled
python3 -m pip install -q --no-index --no-build-isolation --find-links .gpu_wheels tensordict pyvers hydra-core omegaconf \
  antlr4-python3-runtime gymnasium farama-notifications mujoco glfw pyopengl minari typer 2>&1 | tail -5
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, tensordict; print('torch', torch.__version__, 'tensordict', tensordict.__version__,
torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/gpu.txt"
# 1) CUDA tests (compile and cudagraphs equal eager, K per call, no host sync per update): ~2.5 min at most
timeout 170 python3 -m pytest -n 0 -q -p no:cacheprovider -x tests/test_compile_cuda.py -rs 2>&1 | tee "$OUT/tests.txt"
# 2) the benchmark, 256x256 MLPs: batch 256 with every variant; batch 1024 eager vs cudagraphs+K=8 and
#    SAC online on HalfCheetah-v5 (each compiled cell compiles anew: inductor's cache shortens the repeats)
timeout 210 python3 benchmarks/gpu.py --seconds 1.5 --warmup 24 --batches 256 --online-steps 0 2>&1 \
  | grep -v "settotalmass" | tee "$OUT/bench.md"
timeout 120 python3 benchmarks/gpu.py --seconds 1.5 --warmup 24 --batches 1024 --variants eager cudagraphs+K=8 \
  --online-steps 6000 2>&1 | grep -v "settotalmass" | tee -a "$OUT/bench.md"
echo "exit codes: ${PIPESTATUS[*]}"
