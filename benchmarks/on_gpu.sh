#!/usr/bin/env bash
# What a lent GPU machine runs (the `device` tool of our workplace, or any machine with a
# CUDA JAX): the GPU tests, then the per-iteration benchmark and whole vs segmented volumes.
# Logs and tables go to $OUT (default ./gpu-results).
#   bash benchmarks/on_gpu.sh [tests|bench|segments|big|all|suite]
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1 EPRJAX_CACHE_DIR=/tmp/eprjax-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
python3 -c "import jax, typer, equinox, tifffile; print('jax', jax.__version__, jax.devices(), 'typer', typer.__version__, 'equinox', equinox.__version__, 'tifffile', tifffile.__version__)" | tee -a "$OUT/device.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q -p no:cacheprovider -o addopts="--strict-markers -ra" -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
if [[ $what == big || $what == all ]]; then
  python3 benchmarks/memory_per_voxel.py --shapes 64x512x512 64x1024x1024 32x2048x2048 2>&1 | tail -6
  python3 benchmarks/bench_big_volume.py --shape 64x2048x2048 --iterations 50 --out "$OUT/big_volume.md" 2>&1 | tail -8
fi
if [[ $what == suite ]]; then  # the whole default suite, on the GPU where it uses JAX's default device
  timeout 480 python3 -m pytest -q -p no:cacheprovider -o addopts="--strict-markers -ra" -m "not slow" --durations=5 2>&1 | tee "$OUT/suite.log" | tail -25
fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/bench_restore.py --sizes 64x256x256 128x512x512 --repeats 5 --skip-skimage --out "$OUT/bench_small.md" 2>&1 | tail -14
  python3 benchmarks/bench_restore.py --sizes 64x1024x1024 256x1024x1024 --repeats 5 --skip-cpu-peers --out "$OUT/bench_large.md" 2>&1 | tail -10
fi
if [[ $what == segments || $what == all ]]; then
  python3 benchmarks/bench_segments.py --shape 64x1024x1024 --segment 512 --out "$OUT/segments.md" 2>&1 | tail -8
fi
