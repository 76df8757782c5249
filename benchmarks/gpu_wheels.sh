#!/usr/bin/env bash
# Run HERE (a machine with PyPI access) before benchmarks/gpu_check.sh: the GPU machine has torch but
# none of rltrain's other dependencies and cannot download. This fetches them as Python 3.12 x86-64
# wheels (no torch) into .gpu_wheels/ (git-ignored), which the device call carries:
#   bash benchmarks/gpu_wheels.sh
#   run(carry=[".gpu_wheels"], command="bash benchmarks/gpu_check.sh", timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu_wheels
mkdir -p "$dest"
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any)
pip download --no-deps -q -d "$dest" "${platform[@]}" "tensordict==$(python -c 'import tensordict; print(tensordict.__version__)')" \
  pyvers hydra-core==1.3.2 "omegaconf>=2.2.1,<2.4" "gymnasium>=1.1" farama-notifications "mujoco<3.4" glfw pyopengl \
  "minari>=0.5.2" typer
pip download --no-deps -q -d "$dest" --no-binary=:all: antlr4-python3-runtime==4.9.3   # an sdist only
du -sh "$dest"
