#!/usr/bin/env bash
# Checks that tunelab's library compiles with `--features cuda` on a machine without a GPU.
#
# nvcc and the CUDA headers/libraries come from NVIDIA's PyPI wheels (CUDA 13.4, ~1.2 GB),
# installed into a cache directory; candle's kernels are compiled for compute capability 8.0.
# The result cannot run here (no driver, no GPU): this only proves the `cuda` code path builds.
# Cached: the wheels and a separate target directory live under $CUDA_CHECK_CACHE
# (default ~/.cache/tunelab-ci), so a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${CUDA_CHECK_CACHE:-$HOME/.cache/tunelab-ci}"
TOOLKIT="$CACHE/cuda-toolkit"
WHEELS="nvidia-cuda-nvcc==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-cuda-nvrtc==13.4.92 nvidia-cublas nvidia-curand nvidia-cuda-cccl"

if [ ! -x "$TOOLKIT/nvidia/cu13/bin/nvcc" ]; then
  echo "cuda-check: installing the CUDA 13.4 toolkit wheels into $TOOLKIT"
  rm -rf "$TOOLKIT.part"
  python3 -m pip install --disable-pip-version-check -q --no-deps --target "$TOOLKIT.part" $WHEELS
  rm -rf "$TOOLKIT" && mv "$TOOLKIT.part" "$TOOLKIT"
fi

CU="$TOOLKIT/nvidia/cu13"
# The wheels ship versioned .so files only; the linker wants the unversioned names.
for lib in "$CU"/lib/*.so.*; do
  base="${lib%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
[ -d "$CU/lib64" ] || ln -s lib "$CU/lib64"

export CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_ROOT="$CU" CUDA_TOOLKIT_ROOT_DIR="$CU"
export PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="$CACHE/target-cuda"
echo "cuda-check: nvcc $(nvcc --version | tail -1)"
cargo build --lib --features cuda
touch "$CARGO_TARGET_DIR/.tunelab-cuda-ok"
echo "cuda-check: tunelab --features cuda builds (compute capability $CUDA_COMPUTE_CAP); not run: no GPU here"
