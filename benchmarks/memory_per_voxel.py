"""Peak device memory of one restoration per object-grid voxel (what the segment planner's
BYTES_PER_OBJECT_VOXEL predicts), on a device that reports it (GPUs do; CPUs do not).

    python benchmarks/memory_per_voxel.py [--shapes 32x256x256 64x512x512 ...]
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

import eprjax
from eprjax._segments import BYTES_PER_OBJECT_VOXEL
from eprjax._simulate import SEED_OPTICS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32x256x256", "64x512x512", "64x1024x1024"])
    args = parser.parse_args()
    device = jax.devices()[0]
    if "peak_bytes_in_use" not in (device.memory_stats() or {}):
        sys.exit(f"{device} does not report its peak memory")
    psf = np.asarray(eprjax.widefield_psf((24, 48, 48), **SEED_OPTICS))
    print(f"device {device.device_kind}; the planner assumes {BYTES_PER_OBJECT_VOXEL} bytes per object voxel\n")
    print("| data | object grid | peak bytes per object voxel |\n|---|---|---|")
    for text in args.shapes:
        shape = tuple(int(n) for n in text.split("x"))
        g = np.random.default_rng(0).poisson(50.0, shape).astype(np.float32)
        before = device.memory_stats()["bytes_in_use"]
        sol = eprjax.restore(g, psf, alpha=1e-3, max_iterations=5)
        jax.block_until_ready(sol.value)
        peak = device.memory_stats()["peak_bytes_in_use"] - before
        n = int(np.prod(sol.grid.object_shape))
        print(f"| {text} | {'x'.join(map(str, sol.grid.object_shape))} | {peak / n:.1f} |", flush=True)
        del sol


if __name__ == "__main__":
    main()
